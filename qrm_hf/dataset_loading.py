"""Training data on Hugging Face `datasets`: the loader and the converters to the two kinds of examples
of docs/design.md §6, for a dataset described by a `qrm_hf.dataset_preset.DatasetPreset` (the named
presets of the paper's datasets are in `qrm_hf.presets`).

- :func:`load_rows` loads a Hub dataset or a local json/jsonl/parquet/arrow file, a directory of such
  files, or a directory written by ``Dataset.save_to_disk``.
- `DatasetPreset` (`qrm_hf.dataset_preset`) describes a dataset: where the data lives (Hub id, split), which columns hold
  the conversation, which hold the labels (and under which qrm attribute name), and the label range of
  each attribute. :meth:`DatasetPreset.custom` maps any dataset.
- :func:`attribute_examples` turns attribute (rating) data into conversations and labels normalised to
  [0, 1] (NaN = missing); :func:`preference_examples` turns preference data into (chosen, rejected)
  conversation pairs.

A conversation is a list of ``{"role", "content"}`` messages ending with the assistant's response.

Datasets whose rows are not one conversation each (UltraFeedback: four rated completions per prompt;
a rated chosen/rejected pair; HH-RLHF transcripts) have a ``transform`` that turns a source row into
zero or more *flat* rows, which the column mapping then reads. Every example remembers the index of
its source row (``with_index=True``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .data import row_location
from .dataset_preset import Conversation, DatasetPreset, Kind

# --------------------------------------------------------------------------------------------- loading

_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".arrow": "arrow", ".csv": "csv"}
_COMPRESSIONS = {".gz", ".bz2", ".xz", ".zst", ".lz4"}


def _builder_for(path: Path) -> str:
    """The `datasets` packaged builder for a data file, from its extension (compression suffix allowed)."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes = suffixes[:-1]
    if not suffixes or suffixes[-1] not in _BUILDERS:
        raise ValueError(
            f"Cannot tell the format of {path} from its extension; use one of {sorted(_BUILDERS)} "
            f"(optionally compressed: {sorted(_COMPRESSIONS)}), or a directory written by `save_to_disk`."
        )
    return _BUILDERS[suffixes[-1]]


def looks_like_local_path(source: str) -> bool:
    """True for a data source that can only be a local file or directory (not a Hub dataset id)."""
    return source.startswith((".", "/", "~")) or any(
        source.lower().endswith(ext + comp) for ext in _BUILDERS for comp in ("", *_COMPRESSIONS)
    )


def _explain_unreadable_file(path: Path, builder: str, error: Exception) -> None:
    """Raise a ValueError naming the file and the line that `datasets` could not read, if it can be found."""
    from .data import read_jsonl

    if builder == "json" and path.suffix.lower() in (".json", ".jsonl"):
        head = path.read_bytes()[:4096].lstrip()
        if head.startswith(b"["):  # one JSON array
            text = path.read_bytes()
            try:
                json.loads(text.decode("utf-8"))
            except UnicodeDecodeError as decode_error:
                line = text[: decode_error.start].count(b"\n") + 1
                raise ValueError(f"{path} line {line}: bytes that are not UTF-8 text.") from error
            except json.JSONDecodeError as json_error:
                raise ValueError(
                    f"{path} line {json_error.lineno}: not valid JSON ({json_error})."
                ) from error
        else:
            read_jsonl(path)  # raises naming the line of the first malformed row
    elif builder == "csv":
        for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path} line {number}: bytes that are not UTF-8 text.") from error
    raise ValueError(f"Cannot read the dataset file {path} as {builder}: {error}") from error


def _pick_split(dataset_dict, split: str, source: str):
    if split not in dataset_dict:
        raise ValueError(f"{source} has no split {split!r}; it has {sorted(dataset_dict)}.")
    return dataset_dict[split]


def load_rows(
    source: str | Path,
    split: str = "train",
    limit: int | None = None,
    data_files=None,
    **load_kwargs: Any,
):
    """Load one split of a dataset as a ``datasets.Dataset``.

    `source` is a local file (``.json``, ``.jsonl``, ``.parquet``, ``.arrow``, ``.csv``, optionally
    ``.gz``/``.xz``/... compressed: the file is the split), a local directory (written by
    ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or holding data files), or a Hub dataset
    id (``datasets.load_dataset(source, split=split, data_files=data_files, **load_kwargs)``, e.g.
    ``name=`` for a configuration; `data_files` also selects files of a local directory). `limit`
    keeps the first `limit` rows.

    A local JSON Lines file is first read by `qrm_hf.data.read_jsonl` (the one reader: malformed rows,
    bytes that are not UTF-8 and lone surrogates are refused naming their line), and the dataset keeps
    each row's ``"FILE line N"`` in ``dataset.row_locations``, which every error about a row names
    (`qrm_hf.data.row_location`).
    """
    import datasets

    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}.")
    source = str(source)
    path = Path(source).expanduser()
    locations = None  # of the rows of a JSON Lines file
    if path.is_file():
        dataset, locations = _load_file(path, split, load_kwargs)
    elif path.is_dir():
        dataset = _load_directory(path, split, data_files, load_kwargs)
    elif looks_like_local_path(source):
        raise FileNotFoundError(f"{source} does not exist (and is not a Hub dataset id).")
    else:
        dataset = datasets.load_dataset(source, data_files=data_files, split=split, **load_kwargs)
    if isinstance(dataset, datasets.DatasetDict):
        dataset = _pick_split(dataset, split, source)
    if limit is not None and limit < len(dataset):
        dataset = dataset.select(range(limit))
    if locations is not None and len(locations) >= len(
        dataset
    ):  # pyarrow keeps every non-blank line, in order
        dataset.row_locations = locations[: len(dataset)]
    return dataset


def _load_file(path: Path, split: str, load_kwargs: dict):
    """(the dataset of one local data file, the "FILE line N" of its rows for JSON Lines else None); a file
    that is empty, not UTF-8 or unreadable is refused naming the file and, where it can, the line."""
    import datasets

    from .data import check_utf8, jsonl_row_locations

    if path.stat().st_size == 0:
        raise ValueError(f"The dataset file {path} is empty.")
    builder = _builder_for(path)
    locations = None
    if path.suffix.lower() == ".jsonl":  # (a .json file may be one object or array)
        locations = jsonl_row_locations(path)
    elif builder in ("json", "csv") and path.suffix.lower() not in _COMPRESSIONS:
        check_utf8(path)  # pyarrow would read some bytes that are not UTF-8 and fail later, anywhere
    try:
        dataset = datasets.load_dataset(builder, data_files={split: str(path)}, split=split, **load_kwargs)
    except Exception as error:  # pyarrow / datasets errors name neither the file nor the line
        _explain_unreadable_file(path, builder, error)
        raise
    return dataset, locations


def _load_directory(path: Path, split: str, data_files, load_kwargs: dict):
    """One split of a local directory: written by ``save_to_disk`` (a Dataset or a DatasetDict), or
    holding data files (`data_files` selects among them)."""
    import datasets

    if (path / "state.json").is_file():  # a Dataset written by save_to_disk
        return datasets.load_from_disk(str(path))
    if (path / "dataset_dict.json").is_file():  # a DatasetDict written by save_to_disk
        return _pick_split(datasets.load_from_disk(str(path)), split, str(path))
    return datasets.load_dataset(str(path), data_files=data_files, split=split, **load_kwargs)


def get_preset(preset: str | DatasetPreset) -> DatasetPreset:
    """The preset itself, or the registered one of that name."""
    if isinstance(preset, DatasetPreset):
        return preset
    from .presets import PRESETS  # the table is built from the classes of this module

    if preset not in PRESETS:
        raise ValueError(
            f"Unknown dataset preset {preset!r}. Known presets: {', '.join(sorted(PRESETS))}; "
            "or map your columns with DatasetPreset.custom(...)."
        )
    return PRESETS[preset]


def load_preset(
    preset: str | DatasetPreset,
    source: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    **load_kwargs: Any,
):
    """:func:`load_rows` with the preset's defaults: its Hub id (unless `source` is given), split, config."""
    preset = get_preset(preset)
    source = source if source is not None else preset.hub_id
    if source is None:
        raise ValueError(f"Preset {preset.name!r} has no Hub id: pass the data `source`.")
    if preset.config is not None and source == preset.hub_id:
        load_kwargs.setdefault("name", preset.config)
    return load_rows(source, split=split or preset.split, limit=limit, **load_kwargs)


# --------------------------------------------------------------------------------------------- converters


def _messages(value: Any, default_role: str, where: str) -> Conversation:
    """A string (one message with `default_role`) or a list of message dicts, as {"role", "content"}."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, Sequence) or not value:
        raise ValueError(f"{where}: expected a string or a non-empty list of messages, got {value!r:.80}.")
    result = []
    for message in value:
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(
                f"{where}: a message must be a dict with 'role' and 'content', got {message!r:.80}."
            )
        if message["content"] is None:  # not an empty answer: a missing one, refused as a null response is
            raise ValueError(f"{where}: the content of a {message['role']!r} message is missing (null).")
        # Not str(): a list of parts ([{"type": "text", ...}]) or a number would be scored as its Python repr.
        for key in ("role", "content"):
            if not isinstance(message[key], str):
                raise ValueError(
                    f"{where}: the {key} of a message must be a string, got {message[key]!r:.80}"
                    + (
                        " (join the text of its parts into one string)"
                        if isinstance(message[key], list)
                        else ""
                    )
                    + "."
                )
        result.append({"role": message["role"], "content": message["content"]})
    return result


def build_conversation(prompt: Any, response: Any, system: Any, where: str) -> Conversation:
    """The full conversation of a prompt and a response (or of a response that is already one), with the
    `system` prompt first when given; `where` names the row in errors."""
    if response is None:
        raise ValueError(f"{where}: the response is missing (null).")
    turns = _messages(response, "assistant", where)
    if not any(message["role"] == "user" for message in turns):  # a response only: put the prompt first
        other = [message["role"] for message in turns if message["role"] != "assistant"]
        if other:  # placed after the prompt it would be out of order, and moved before it rewritten
            raise ValueError(
                f"{where}: the response holds a {other[0]!r} turn but no user turn; a response is the "
                "assistant's turn(s) only (put a system prompt in the prompt or a system column, or give "
                "the whole conversation, user turn included)."
            )
        if prompt is None:
            raise ValueError(f"{where}: the response holds no user turn and there is no prompt column/value.")
        turns = _messages(prompt, "user", where) + turns
    if system and turns[0]["role"] != "system":
        turns = [{"role": "system", "content": str(system)}, *turns]
    if turns[-1]["role"] != "assistant":
        raise ValueError(
            f"{where}: the conversation ends with a {turns[-1]['role']!r} turn, not the assistant's response."
        )
    return turns


def _column_names(dataset) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is not None:
        return list(names)
    return list(dataset[0]) if len(dataset) else []


def _looks_like(columns: Sequence[str]) -> str | None:
    if "chosen" in columns and "rejected" in columns:
        return "preference"
    if {"response", "messages", "completions", "responses"} & set(columns):
        return "attribute"
    return None


def _source_rows(dataset, preset: DatasetPreset, kind: Kind):
    """Check the preset's kind and the dataset's columns; yield (row index, source row)."""
    if preset.kind != kind:
        other = "preference_examples" if preset.kind == "preference" else "attribute_examples"
        raise ValueError(f"Preset {preset.name!r} is for {preset.kind} data, not {kind} data: use {other}().")
    if len(dataset) == 0:
        raise ValueError(f"The dataset given for preset {preset.name!r} is empty.")
    columns = _column_names(dataset)
    missing = [column for column in preset.columns if column not in columns]
    if missing:
        message = f"The dataset lacks column(s) {missing} needed by preset {preset.name!r}; it has {columns}."
        looks = _looks_like(columns)
        if looks is not None and looks != kind:
            message += f" It looks like {looks} data: use {looks}_examples() with a {looks} preset."
        raise ValueError(message)
    if preset.row_filter is None and hasattr(dataset, "select_columns"):  # decode only what is read
        dataset = dataset.select_columns(preset.columns)
    for index, row in enumerate(dataset):
        if preset.row_filter is None or preset.row_filter(row):
            yield index, row


def _get(row: dict, column: str | None):
    return None if column is None else row.get(column)


def _flat_rows(preset: DatasetPreset, row: dict, where: str) -> list[dict]:
    if preset.transform is None:
        return [row]
    try:
        return preset.transform(row)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{where}: cannot read the row with preset {preset.name!r} ({error}).") from error


_MISSING_STRINGS = {"", "n/a", "na", "nan", "none", "null"}


def _label(value: Any, where: str) -> float:
    """A label as a float (NaN = missing)."""
    if value is None:
        return math.nan
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        if value.strip().lower() in _MISSING_STRINGS:
            return math.nan
        try:
            return float(value)
        except ValueError:
            pass
    raise ValueError(f"{where}: label {value!r:.60} is not a number, a boolean or missing.")


def attribute_examples(
    dataset, preset: str | DatasetPreset, *, with_index: bool = False, allow_empty_attributes: bool = False
):
    """Conversations and labels of attribute (rating) data.

    Returns ``(conversations, labels)``: a list of N message lists (each ending with the assistant's
    response) and a float64 array [N, M] (M = ``len(preset.attributes)``, in that order), normalised to
    [0, 1] with each attribute's label range, NaN where missing. With ``with_index=True`` also the
    int64 array [N] of source row indices (a row may give several examples, or none: filtered rows and
    examples without any label are skipped).
    `dataset` is a ``datasets.Dataset`` (or a list of row dicts). Raises ValueError for a preference
    preset, an empty dataset, missing columns, unreadable rows, labels outside the declared range, and
    (unless `allow_empty_attributes`) an attribute without a single label.
    """
    preset = get_preset(preset)
    attributes = list(preset.attributes.items())
    low = np.array([preset.label_ranges[name][0] for name, _ in attributes], dtype=np.float64)
    high = np.array([preset.label_ranges[name][1] for name, _ in attributes], dtype=np.float64)
    conversations, labels, index = [], [], []
    for row_index, row in _source_rows(dataset, preset, "attribute"):
        where = row_location(dataset, row_index, f"Preset {preset.name!r}")
        for flat in _flat_rows(preset, row, where):
            response = _get(flat, preset.messages or preset.response)
            conversation = build_conversation(
                _get(flat, preset.prompt), response, _get(flat, preset.system), where
            )
            values = []
            for m, (name, column) in enumerate(attributes):
                value = _label(flat.get(column), f"{where}, column {column!r}")
                if not math.isnan(value) and not low[m] <= value <= high[m]:
                    raise ValueError(
                        f"{where}: label {value:g} in column {column!r} (attribute {name!r}) is outside the "
                        f"declared range [{low[m]:g}, {high[m]:g}]."
                    )
                values.append(value)
            if all(math.isnan(value) for value in values):
                continue  # nothing to learn from (e.g. a response the judge did not rate)
            conversations.append(conversation)
            labels.append(values)
            index.append(row_index)
    if not conversations:
        raise ValueError(
            f"Preset {preset.name!r}: no labelled example (every row was filtered out or unlabelled)."
        )
    labels = (np.asarray(labels, dtype=np.float64) - low) / (high - low)
    empty = [name for (name, _), column in zip(attributes, labels.T, strict=True) if np.isnan(column).all()]
    if empty and not allow_empty_attributes:
        raise ValueError(
            f"Preset {preset.name!r}: attribute(s) {empty} have no label at all in these {len(labels)} "
            "examples (a row limit that only reaches other sources?)."
        )
    if with_index:
        return conversations, labels, np.asarray(index, dtype=np.int64)
    return conversations, labels


def response_conversations(
    rows: Sequence[Mapping], *, prompt: str = "prompt", response: str = "response", name: str = "rows"
) -> list[Conversation]:
    """The conversations of rows to score (``qrm score --file``): `prompt` + `response` per row.

    The same checks as the converters of training and evaluation data: a missing `response` column, a null
    response and a conversation that does not end with the assistant's turn (e.g. user turns only) are
    errors naming the row (`qrm_hf.data.row_location`: the file's line for rows of `read_jsonl`) instead of
    scoring the prompt as if it were the answer.
    """
    conversations = []
    for index, row in enumerate(rows):
        where = row_location(rows, index, name)
        if not isinstance(row, Mapping):
            raise ValueError(
                f"{where}: expected an object with {prompt!r} and {response!r}, got {row!r:.80}."
            )
        if response not in row:
            raise ValueError(f"{where} has no {response!r} column (it has {sorted(row)}).")
        conversations.append(build_conversation(row.get(prompt), row[response], None, where))
    if not conversations:
        raise ValueError(f"{name}: no conversation to score.")
    return conversations


def preference_examples(dataset, preset: str | DatasetPreset, *, with_index: bool = False):
    """(chosen, rejected) conversation pairs of preference data.

    Each side is a full message list (the shared prompt, then that side's response). With
    ``with_index=True`` returns ``(pairs, index)`` with the int64 array of source row indices. Raises
    ValueError for an attribute preset, an empty dataset, missing columns and unreadable rows.
    """
    preset = get_preset(preset)
    pairs, index = [], []
    for row_index, row in _source_rows(dataset, preset, "preference"):
        where = row_location(dataset, row_index, f"Preset {preset.name!r}")
        for flat in _flat_rows(preset, row, where):
            prompt, system = _get(flat, preset.prompt), _get(flat, preset.system)
            chosen = build_conversation(prompt, flat.get(preset.chosen), system, f"{where} (chosen)")
            rejected = build_conversation(prompt, flat.get(preset.rejected), system, f"{where} (rejected)")
            pairs.append((chosen, rejected))
            index.append(row_index)
    if not pairs:
        raise ValueError(f"Preset {preset.name!r}: no pair left (every row was filtered out or empty).")
    if with_index:
        return pairs, np.asarray(index, dtype=np.int64)
    return pairs


__all__ = [
    "attribute_examples",
    "get_preset",
    "load_preset",
    "load_rows",
    "looks_like_local_path",
    "preference_examples",
    "response_conversations",
]
