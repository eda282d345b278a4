"""Stage 1, extract: run the frozen backbone once per conversation and keep two hidden states.

For every conversation the last layer's hidden state of the last real token (the response
embedding) and of the gating position (the prompt embedding) are stored, in shards of safetensors:

    embeddings         [N, H]  or [N, 2, H] for preference pairs (chosen first)
    prompt_embeddings  [N, H]  or [N, 2, H]
    index              [N]     dataset row of each entry
    labels             [N, M]  attribute labels normalised to [0, 1], NaN where missing (attribute data)

plus ``manifest.json``. A shard is written under a temporary name and renamed when complete, so an
interrupted run never leaves a shard that a re-run would trust; a re-run skips complete shards.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from ..chat import check_max_length, check_token_ids, split_by_length
from ..io import (
    check_output_directory,
    claim_directory,
    directory_lock,
    interrupted_replacement_note,
    write_bytes_atomic,
    write_json_atomic,
)
from ..scoring import BackboneEncoder, check_finite_rows
from .settings import ExtractionSettings

MANIFEST = "manifest.json"
EXTRACT_COMMAND = "qrm extract"  # the owner of feature directories (`qrm_hf.io` markers)


def write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> dict:
    """Write a safetensors shard atomically (a crash leaves no file under the final name); returns its
    `shard_check` (size and CRC-32), computed from the bytes written."""
    data = save({name: value.contiguous() for name, value in tensors.items()})
    write_bytes_atomic(path, data)
    check = {"bytes": len(data), "crc32": zlib.crc32(data)}
    _checked[_file_key(path)] = check["crc32"]
    return check


# CRC-32 of the shards this process has written or verified, by (path, size, mtime): each file is read once.
_checked: dict[tuple, int] = {}


def _file_key(path: Path) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def shard_check(path: str | Path) -> dict:
    """Size in bytes and CRC-32 of a shard file (what the manifest records to detect a damaged shard)."""
    path = Path(path)
    key = _file_key(path)
    if key not in _checked:
        crc = 0
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                crc = zlib.crc32(block, crc)
        _checked[key] = crc
    return {"bytes": key[1], "crc32": _checked[key]}


def shard_problem(path: Path, recorded: dict | None, rows: int | None = None) -> str | None:
    """Why the shard at `path` cannot be used (missing, size or checksum not as recorded, unreadable), or None.

    Without a `recorded` check (a shard of an interrupted extraction) the file must open and hold `rows` rows.
    """
    if not path.is_file():
        return "missing"
    if recorded is not None:
        found = shard_check(path)
        if found["bytes"] != recorded["bytes"]:
            return f"{found['bytes']} bytes instead of the {recorded['bytes']} written"
        if found["crc32"] != recorded["crc32"]:
            return "its checksum differs from the one recorded when it was written"
        return None
    try:
        with safe_open(str(path), framework="pt") as shard:
            found_rows = shard.get_slice("index").get_shape()[0]
    except Exception as error:  # safetensors reports truncation and garbage as SafetensorError
        return f"unreadable ({error})"
    return None if rows is None or found_rows == rows else f"{found_rows} rows instead of {rows}"


class DamagedFeaturesError(ValueError):
    """Shards of a finished feature directory are missing or differ from what was written."""


def damaged_shards(directory: str | Path, manifest: dict | None = None) -> dict[str, str]:
    """{shard name: problem} for the shards of a finished feature directory that cannot be used."""
    directory = Path(directory)
    if manifest is None:
        if not (directory / MANIFEST).is_file():
            return {MANIFEST: "missing"}
        manifest = json.loads((directory / MANIFEST).read_text())
    checks = manifest.get("shard_checks", {})
    problems = {
        name: shard_problem(directory / name, checks.get(name)) for name in manifest.get("shards", [])
    }
    return {name: problem for name, problem in problems.items() if problem is not None}


def write_manifest(directory: Path, manifest: dict) -> None:
    write_json_atomic(directory / MANIFEST, manifest)


def extract_to_shards(
    encoder: BackboneEncoder,
    sequences: Sequence[Sequence[int]] | Sequence[tuple[Sequence[int], Sequence[int]]],
    directory: str | Path,
    manifest: dict,
    labels: torch.Tensor | None = None,
    shard_size: int = ExtractionSettings.shard_size,
    max_length: int | None = None,
    row_index: Sequence[int] | None = None,
    row_names: Sequence[str] | None = None,
) -> Path:
    """Encode `sequences` (single conversations, or (chosen, rejected) pairs) into shards under `directory`.

    `manifest` (backbone, dataset, attribute names, pattern, ...) is completed with counts and shard
    names. Complete shards from an earlier run with the same settings and data (`content_key`) are kept; an
    earlier extraction of other settings or data is replaced; a directory that is not an output of
    `qrm extract` is refused (`qrm_hf.io.claim_directory`). A shard is only ever visible under its final name
    once complete. A `max_length` above the backbone's positions is refused
    (`qrm_hf.chat.check_max_length`). Conversations longer than `max_length` tokens are
    skipped (never truncated: that would cut the response) and counted in the manifest; `index` keeps
    the dataset row of each stored entry (`row_index`, aligned with `sequences`; default: its position).
    A NaN or infinite embedding is an error naming its rows (`row_names`, aligned with `sequences`, e.g.
    "data.jsonl line 4"; default "conversation i"), never a shard.

    Under `accelerate launch --num_processes N`, process p encodes the shards p, p + N, ...; the result
    is the same as in one process.
    """
    from accelerate import PartialState

    directory = Path(directory)
    if len(sequences) == 0:
        raise ValueError(f"No conversations to extract for {directory}: the dataset is empty.")
    settings, kept = _shard_settings(encoder, sequences, manifest, labels, shard_size, max_length, row_index)
    check_output_directory(directory, EXTRACT_COMMAND)
    previous = json.loads((directory / MANIFEST).read_text()) if (directory / MANIFEST).exists() else {}
    stale = bool(previous) and previous.get("settings") != settings
    state = PartialState(cpu=not torch.cuda.is_available())  # CPU processes talk through gloo
    # The main process holds the directory's lock: another run extracting into it gets a clear error.
    with directory_lock(directory) if state.is_main_process else nullcontext():
        if state.is_main_process:
            if stale:
                changed = _changed_keys(settings, previous.get("settings", {}))
                print(
                    f"{directory} holds features of other data or settings ({', '.join(changed)}): extracting anew"
                )
            claim_directory(directory, EXTRACT_COMMAND, fresh=stale)
        return _extract_shards(
            encoder,
            sequences,
            directory,
            settings,
            kept,
            labels,
            shard_size,
            row_index,
            row_names,
            state,
            {} if stale else previous,
        )


def _changed_keys(settings: dict, previous: dict) -> list[str]:
    return sorted(key for key in {*settings, *previous} if settings.get(key) != previous.get(key))


def _shard_settings(encoder, sequences, manifest, labels, shard_size, max_length, row_index):
    """(the settings a feature directory records: `manifest` with the kind, content key, counts, lengths;
    the positions of the sequences kept). Sequences longer than `max_length` are skipped and counted, never
    truncated; ValueError when none is left, or for a length or token ids the backbone cannot take."""
    check_max_length(max_length, getattr(encoder.backbone, "config", None))
    check_token_ids(sequences, getattr(encoder.backbone, "config", None))
    pairs = isinstance(sequences[0], tuple)
    lengths = [max(map(len, entry)) if pairs else len(entry) for entry in sequences]
    kept, _ = split_by_length(lengths, max_length)
    if not kept:
        raise ValueError(
            f"All {len(sequences)} conversations are longer than max_length={max_length} tokens."
        )
    settings = {
        **manifest,
        "kind": "preference" if pairs else "attribute",
        "content": content_key(sequences, labels, row_index),
        "count": len(kept),
        "skipped_too_long": len(sequences) - len(kept),
        "max_length": max_length,
        "shard_size": shard_size,
    }
    return settings, kept


def _file_digest(path: Path, digest) -> None:
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def content_signature(location: str, read_limit: int = 1 << 26) -> str | None:
    """A hash of a local file or directory (None for a Hub id): a changed file changes it.

    Files up to `read_limit` bytes are hashed by content; larger ones (backbone weights, big data files)
    by name, size and modification time, so that planning a run never reads gigabytes.
    """
    path = Path(location)
    if not path.exists():
        return None
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode())
        stat = file.stat()
        if stat.st_size <= read_limit:
            _file_digest(file, digest)
        else:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def content_key(sequences, labels: torch.Tensor | None = None, row_index=None) -> str:
    """A hash of what an extraction encodes (token ids of every conversation, labels, dataset rows): features
    recorded with another key are of other data, even with the same row count."""
    digest = hashlib.sha256()
    for entry in sequences:
        for sequence in entry if isinstance(entry, tuple) else (entry,):
            digest.update(len(sequence).to_bytes(8, "little"))
            digest.update(np.asarray(sequence, dtype=np.int64).tobytes())
    if labels is not None:
        digest.update(labels.float().numpy().tobytes())
    if row_index is not None:
        digest.update(np.asarray(row_index, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def _extract_shards(
    encoder, sequences, directory, settings, kept, labels, shard_size, row_index, row_names, state, previous
):
    pairs = settings["kind"] == "preference"
    checks = previous.get("shard_checks", {})  # of shards finished by an earlier run
    starts = range(0, len(kept), shard_size)
    shard_names = [f"features-{number:05d}.safetensors" for number in range(len(starts))]
    finished = previous.get("complete") and not damaged_shards(directory, previous)
    if not finished:
        state.wait_for_everyone()  # every process has read the old manifest before it is rewritten
        if state.is_main_process:
            directory.mkdir(parents=True, exist_ok=True)
            write_manifest(directory, {"settings": settings, "complete": False, "shard_checks": checks})
        state.wait_for_everyone()
    for number in range(state.process_index, len(starts), state.num_processes):
        path = directory / shard_names[number]
        # The rows of a shard, its batches and the embeddings it can reuse depend on the shard (and the
        # shards before it) alone: a resumed extraction writes the same bits as an uninterrupted one.
        rows = kept[starts[number] : starts[number] + shard_size]
        if pairs:
            flat = [sequence for row in rows for sequence in sequences[row]]
        else:
            flat = [sequences[row] for row in rows]
        if path.exists():
            problem = shard_problem(path, checks.get(path.name), len(rows))
            if problem is None:  # finished by an earlier run
                if encoder.remembers:  # as if encoded now: later shards reuse the same values
                    with safe_open(str(path), framework="pt") as shard:
                        response, prompt = (
                            shard.get_tensor("embeddings"),
                            shard.get_tensor("prompt_embeddings"),
                        )
                    encoder.remember_known(flat, response.flatten(0, -2), prompt.flatten(0, -2))
                continue
            print(f"{path} is damaged ({problem}): extracting it again")  # write_shard replaces it
        desc = f"extracting {directory.name} shard {number + 1}/{len(starts)}"
        response, prompt = encoder.encode(flat, desc=desc)
        if pairs:
            response, prompt = response.view(len(rows), 2, -1), prompt.view(len(rows), 2, -1)
        # Features are an output like a score: a NaN one (e.g. a float16 overflow) is refused, naming the row.
        check_finite_rows(
            [response, prompt], [row_names[row] for row in rows] if row_names else None, "embedding"
        )
        index = torch.tensor(rows) if row_index is None else torch.as_tensor(row_index)[rows]
        tensors = {"embeddings": response, "prompt_embeddings": prompt, "index": index}
        if labels is not None:
            tensors["labels"] = labels[rows].float()
        write_shard(path, tensors)
    if finished:  # nothing was extracted (a finished directory, read again to warm the remembered embeddings)
        return directory
    state.wait_for_everyone()
    if state.is_main_process:
        checks = {name: shard_check(directory / name) for name in shard_names}
        manifest = {"settings": settings, "complete": True, "shards": shard_names, "shard_checks": checks}
        write_manifest(directory, manifest)
    state.wait_for_everyone()
    return directory


def read_manifest(directory: str | Path, kind: str | None = None, verify: bool = True) -> dict:
    """The manifest of a finished feature directory, checked to hold `kind` features if given.

    With `verify`, every shard is checked against the size and CRC-32 recorded when it was written (each
    file is read once per process). Raises FileNotFoundError when there is no manifest, `DamagedFeaturesError`
    naming the shards that are missing, truncated or changed, and ValueError when the extraction did not
    finish or the features are of the other kind (attribute vs preference).
    """
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"{manifest_path} not found: {directory} is not a feature directory of `qrm extract` "
            f"(or the extraction never started){interrupted_replacement_note(directory)}."
        )
    manifest = json.loads(manifest_path.read_text())
    if not manifest.get("complete"):
        raise ValueError(f"Feature extraction into {directory} did not finish: run it again to complete it.")
    damaged = damaged_shards(directory, manifest) if verify else {}
    if damaged:
        raise DamagedFeaturesError(
            f"Damaged feature shard(s) in {directory}: "
            + "; ".join(f"{name}: {problem}" for name, problem in damaged.items())
            + ". Run the same `qrm extract` (or `qrm train`) again: it extracts these shards again."
        )
    found = manifest["settings"].get("kind")
    if kind is not None and found != kind:
        needs = {
            "attribute": "attribute (rating) features with labels, e.g. for the quantile heads",
            "preference": "preference-pair features (chosen, rejected), e.g. for the gating network",
        }[kind]
        raise ValueError(f"{directory} holds {found} features; this step needs {needs}.")
    return manifest


def backbone_identity(settings: dict) -> dict:
    """What must agree between feature directories (and heads) for them to be used together."""
    return {key: settings.get(key) for key in ("backbone", "revision", "hidden_size", "prompt_end_pattern")}


def check_same_backbone(named_settings: dict[str, dict]) -> dict:
    """Refuse features (or heads) computed with different backbones; returns the common identity."""
    identities = {name: backbone_identity(settings) for name, settings in named_settings.items()}
    first_name, first = next(iter(identities.items()))
    for name, identity in identities.items():
        if identity != first:
            differing = {key: (first[key], identity[key]) for key in first if first[key] != identity[key]}
            raise ValueError(
                f"{name} was computed with another backbone than {first_name} ({differing}); features of "
                "different backbones cannot be mixed: extract them again with one backbone."
            )
    return first


def check_features_fit_model(model, directories) -> dict[str, dict]:
    """Refuse feature directories of `qrm extract` that do not come from the model's backbone; returns
    their settings by directory.

    The manifests must agree with each other and with the model on the hidden size and the prompt-end
    pattern (tokenizer and chat template). Features of another backbone with the same size and template
    pass that (`qrm preference-strength` also checks that the model's heads fit their ratings).
    """
    settings = {str(d): read_manifest(d)["settings"] for d in directories}
    check_same_backbone(settings)
    for name, values in settings.items():
        if values.get("hidden_size") != model.config.hidden_size:
            raise ValueError(
                f"{name} holds features of a backbone with hidden size {values.get('hidden_size')}, the model's "
                f"has {model.config.hidden_size}: they come from another backbone."
            )
        pattern = list(model.config.prompt_end_pattern or [])
        if pattern and values.get("prompt_end_pattern") != pattern:
            raise ValueError(
                f"{name} was extracted with the prompt-end pattern {values.get('prompt_end_pattern')}, the model "
                f"uses {pattern}: the features come from another backbone or tokenizer."
            )
    return settings


def load_features(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """All shards of a feature directory concatenated, and the settings they were extracted with."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    shards = [load_file(str(directory / name)) for name in manifest["shards"]]
    tensors = {name: torch.cat([shard[name] for shard in shards]) for name in shards[0]}
    return tensors, manifest["settings"]


# ------------------------------------------------------------------------------------------- reading
# The one reader of feature directories for the stages, the evaluation baselines, bootstrap ensembles and
# `qrm preference-strength`: estimators get arrays, and only the readers know the disk format.


def feature_settings(directories: Sequence[str | Path], kind: str) -> dict[str, dict]:
    """{directory: settings} of finished, undamaged `kind` feature directories of one backbone."""
    if not directories:
        raise ValueError(f"No {kind} feature directory given.")
    settings = {str(d): read_manifest(d, kind=kind)["settings"] for d in directories}
    check_same_backbone(settings)
    return settings


def iter_shards(directories: Sequence[str | Path], names: Sequence[str], desc: str = "reading features"):
    """Yield dicts of the tensors `names`, one shard at a time, in order (features never all in memory)."""
    paths = [Path(d) / shard for d in directories for shard in read_manifest(d)["shards"]]
    for path in tqdm(paths, desc=desc, unit="shard"):
        with safe_open(str(path), framework="pt") as shard:
            yield {name: shard.get_tensor(name) for name in names}


def attribute_names_of(directories: Sequence[str | Path], names: Sequence[str] | None = None) -> list[str]:
    """The label columns of attribute feature directories: `names` (checked to cover every attribute they
    label) or, by default, their attributes in order of appearance."""
    found = [
        a for settings in feature_settings(directories, "attribute").values() for a in settings["attributes"]
    ]
    names = list(dict.fromkeys(found)) if names is None else list(names)
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise ValueError(
            f"The features label attribute(s) {unknown} that are not among attribute_names {names}."
        )
    return names


def load_labelled(
    directories: Sequence[str | Path], names: Sequence[str], select_rows=None
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings X [N, H] (float64) and labels Y [N, M] (label column m is attribute `names[m]`, NaN where
    a directory does not label it) of attribute feature directories of one backbone, concatenated in order.

    `select_rows` (labels [N, M] -> the rows of each attribute, e.g. `MultiQuantileRegressor.select_rows`)
    reads the labels first and then only the embeddings of the selected rows, one shard at a time (never
    `prompt_embeddings`): X and Y then hold the union of the selected rows, and a label outside its
    attribute's selection is NaN, so that fitting on them uses exactly the selected rows.
    """
    directories = [Path(d) for d in ([directories] if isinstance(directories, (str, Path)) else directories)]
    settings = feature_settings(directories, "attribute")
    names = list(names)
    labels = []
    for directory, directory_settings in zip(directories, settings.values(), strict=True):
        columns = [names.index(name) for name in directory_settings["attributes"]]
        for shard in iter_shards([directory], ["labels"], "reading labels"):
            block = np.full((shard["labels"].shape[0], len(names)), np.nan)
            block[:, columns] = shard["labels"].double().numpy()
            labels.append(block)
    Y = np.concatenate(labels)
    if select_rows is None:
        X = torch.cat([shard["embeddings"] for shard in iter_shards(directories, ["embeddings"])])
        return X.double().numpy(), Y
    try:
        rows_per_attribute = select_rows(Y)
    except ValueError as error:
        raise ValueError(f"{error} (attributes {names}; features {list(settings)})") from error
    union = np.unique(np.concatenate(rows_per_attribute))
    offsets = np.cumsum([0, *(len(block) for block in labels)])
    paths = [directory / shard for directory in directories for shard in read_manifest(directory)["shards"]]
    blocks = []
    for number, path in enumerate(tqdm(paths, desc="reading features", unit="shard")):
        local = union[(union >= offsets[number]) & (union < offsets[number + 1])] - offsets[number]
        if len(local):  # shards without a selected row are not opened
            with safe_open(str(path), framework="pt") as shard:
                blocks.append(shard.get_tensor("embeddings")[torch.as_tensor(local)])
    selected = np.full((len(union), len(names)), np.nan)
    for m, rows in enumerate(rows_per_attribute):
        position = np.searchsorted(union, rows)
        selected[position, m] = Y[rows, m]
    return torch.cat(blocks).double().numpy(), selected


def load_pairs(directories) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompt, chosen, rejected) embeddings [N, H] (float32) of preference feature directories of one
    backbone, in order."""
    directories = [directories] if isinstance(directories, (str, Path)) else list(directories)
    feature_settings(directories, "preference")
    tensors = [load_features(directory)[0] for directory in directories]
    embeddings = torch.cat([t["embeddings"] for t in tensors]).float()  # [N, 2, H], chosen first
    prompts = torch.cat([t["prompt_embeddings"] for t in tensors]).float()
    return prompts[:, 0], embeddings[:, 0], embeddings[:, 1]
