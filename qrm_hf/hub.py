"""Share QRMs on the Hugging Face Hub: push a saved model directory, load one by repo id.

A QRM on the Hub is a normal transformers repository: safetensors weights (one file or shards with an
index), ``config.json`` with ``auto_map``, the two ``modeling/`` files (``configuration_qrm.py``,
``modeling_qrm.py``) that ``trust_remote_code=True`` runs, the tokenizer files and a model card
(``README.md``). `qrm_hf.training.assemble.save_qrm` writes such a directory; `push_model_dir` (CLI:
``qrm push MODEL_DIR REPO_ID``, `qrm_hf.cli_push`) checks it is complete and uploads it in one commit with
huggingface_hub; `qrm_hf.training.assemble.push_qrm` does both for a model in memory. ``model.push_to_hub(repo_id)`` (inherited from transformers)
also works: it uploads weights, config and the code files, and keeps the model card already in the repo
(else transformers writes its generic card), but not the tokenizer.

Loading needs no qrm-hf: ``AutoModelForSequenceClassification.from_pretrained(repo_id,
trust_remote_code=True, revision=..., code_revision=...)`` runs the code files of the repo. With qrm-hf
installed no code of the repo is needed: `load_qrm` (behind ``qrm score`` / ``qrm evaluate``) checks the
config is a QRM's, builds the model with the installed classes and loads the tokenizer without remote code,
with errors that name the repo and the revision; it runs the repo's code only for a model that is not
of type ``"qrm"``, and only with ``trust_remote_code=True`` (CLI ``--trust-remote-code``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from .io import interrupted_replacement_note
from .model_cards import (
    PLACEHOLDER_REPO_ID,
    check_homepage,
    retarget_model_card,
    set_card_homepage,
)

CODE_FILES = ("configuration_qrm.py", "modeling_qrm.py")
SINGLE_WEIGHTS, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
TOKENIZER_VOCABULARIES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
CARD = "README.md"
# Pickle-based checkpoints are never uploaded: a QRM's weights are safetensors only.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Files of a previous upload that the new directory does not have and that would change what loads
# (a stale model.safetensors next to new shards, an old special_tokens_map.json, ...): deleted in the same
# commit. Other files in the repo (images, notes) are left alone, as upload_folder does.
STALE_PATTERNS = (
    "*.safetensors",
    "*.safetensors.index.json",
    "*.bin",
    "*.bin.index.json",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.pkl",
    "*.h5",
    "*.msgpack",
    "config.json",
    "generation_config.json",
    "configuration_*.py",
    "modeling_*.py",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
    "additional_chat_templates/*",
)
_FULL_SHA = re.compile(r"[0-9a-f]{40}")


class IncompleteModelDirError(FileNotFoundError):
    """A directory to push lacks files that a QRM on the Hub needs."""


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a valid Hub model id ('name' or 'namespace/name'), else a clear ValueError."""
    if not repo_id:
        raise HFValidationError("The Hub repo id is empty; give 'namespace/name'.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HFValidationError(
            f"{repo_id!r} is not a valid Hub repo id: {error} A model repo id is 'namespace/name' (or 'name' "
            "for your own namespace), made of letters, digits, '-', '_' and '.', at most 96 characters, "
            "without '--' or '..'."
        ) from error
    return repo_id


def _local_files(model_dir: Path) -> list[str]:
    """Paths (relative, posix) of the files to upload: everything but hidden files and caches.

    A symbolic link that leads out of `model_dir` (to a token file, say) is refused (ValueError naming it):
    only the directory's own files are uploaded. Links inside the directory are followed for files only.
    """
    root = model_dir.resolve()
    files = []
    for folder, subfolders, names in os.walk(model_dir):  # never descends into linked folders
        folder = Path(folder)
        subfolders[:] = [n for n in subfolders if not n.startswith(".") and n != "__pycache__"]
        for name in [*subfolders, *names]:
            path = folder / name
            if name.startswith(".") or not path.is_symlink():
                continue
            try:
                target = path.resolve()
            except (RuntimeError, OSError) as error:  # RuntimeError: a loop of links (Python < 3.13)
                raise ValueError(
                    f"{path} is a symbolic link that leads nowhere ({error}): qrm push uploads only the files "
                    "of the model directory. Remove the link."
                ) from None
            if target != root and root not in target.parents:
                raise ValueError(
                    f"{path} is a symbolic link to {target}, outside {model_dir}: qrm push uploads only the "
                    "files of the model directory. Replace the link by a copy of the file, or remove it."
                )
        files += [
            (folder / name).relative_to(model_dir).as_posix() for name in names if not name.startswith(".")
        ]
    return sorted(name for name in files if (model_dir / name).is_file())


def check_model_dir(model_dir: str | Path) -> Path:
    """Check that `model_dir` is a complete qrm-hf model directory, ready for the Hub.

    Complete means: ``config.json`` of a QRM (``model_type: qrm``) with ``auto_map``; safetensors weights,
    one ``model.safetensors`` or ``model.safetensors.index.json`` with all its shards; the code files
    ``configuration_qrm.py`` and ``modeling_qrm.py``; the tokenizer (``tokenizer_config.json`` and a
    vocabulary such as ``tokenizer.json``); the model card ``README.md`` with metadata; no pickle files; and no
    symbolic link leading out of the directory (a ValueError names it).

    Raises:
        IncompleteModelDirError: files are missing (all of them are named).
        ValueError: a file is there but wrong (not a QRM config, no ``auto_map``, pickle weights, ...).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"{model_dir} is not a directory{interrupted_replacement_note(model_dir)}; save the model with "
            "qrm_hf.training.assemble.save_qrm."
        )
    files = set(_local_files(model_dir))
    _refuse_missing_files(model_dir, files)
    _refuse_wrong_files(model_dir, files)
    return model_dir


def _refuse_missing_files(model_dir: Path, files: set[str]) -> None:
    """`IncompleteModelDirError` naming every file a QRM on the Hub needs that `files` lacks."""
    missing = [name for name in ("config.json", *CODE_FILES, TOKENIZER_CONFIG, CARD) if name not in files]
    if TOKENIZER_CONFIG not in missing and not files.intersection(TOKENIZER_VOCABULARIES):
        missing.append(" or ".join(TOKENIZER_VOCABULARIES) + " (the tokenizer's vocabulary)")
    if WEIGHTS_INDEX in files:
        try:
            shards = sorted(set(json.loads((model_dir / WEIGHTS_INDEX).read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as error:
            raise ValueError(
                f"{model_dir / WEIGHTS_INDEX} is not a safetensors index ({error!r})."
            ) from error
        missing += [f"{shard} (a shard listed in {WEIGHTS_INDEX})" for shard in shards if shard not in files]
    elif SINGLE_WEIGHTS not in files:
        missing.append(f"{SINGLE_WEIGHTS} (or {WEIGHTS_INDEX} with its shards)")
    if missing:
        raise IncompleteModelDirError(
            f"{model_dir} is not a complete qrm-hf model directory: missing {', '.join(missing)}. "
            "Save the model with qrm_hf.training.assemble.save_qrm(model, directory, tokenizer=...) "
            "(or `import qrm_hf` before model.save_pretrained, plus tokenizer.save_pretrained and a card from "
            "qrm_hf.model_cards.render_model_card)."
        )


def _refuse_wrong_files(model_dir: Path, files: set[str]) -> None:
    """ValueError for pickle files, a config that is not a QRM's or lacks ``auto_map``, a card without metadata."""
    pickles = sorted(name for name in files if name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise ValueError(
            f"{model_dir} holds pickle files ({', '.join(pickles)}); a QRM is shared with safetensors weights "
            "only. Remove them (or move them out of the directory) and push again."
        )
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{model_dir / 'config.json'} is not valid JSON ({error}).") from error
    if config.get("model_type") != "qrm":
        raise ValueError(
            f"{model_dir / 'config.json'} has model_type {config.get('model_type')!r}, not 'qrm'. Released QRM "
            "checkpoints (model_type 'llama') are converted first: qrm convert SRC DST."
        )
    auto_map = config.get("auto_map") or {}
    needed = {"AutoConfig": "configuration_qrm.", "AutoModelForSequenceClassification": "modeling_qrm."}
    wrong = [key for key, module in needed.items() if not str(auto_map.get(key, "")).startswith(module)]
    if wrong:
        raise ValueError(
            f"{model_dir / 'config.json'} has no auto_map entry for {', '.join(wrong)} pointing at the code "
            f"files (found {auto_map!r}), so trust_remote_code=True could not load it. Save the model after "
            "`import qrm_hf` (which registers the classes for auto_map)."
        )
    card_text = (model_dir / CARD).read_text(encoding="utf-8")
    if not card_text.lstrip().startswith("---"):
        raise ValueError(
            f"{model_dir / CARD} has no metadata block (library_name, pipeline_tag, tags); render the card with "
            "qrm_hf.model_cards.render_model_card."
        )


def _stale_files(api: HfApi, repo_id: str, revision: str | None, keep: set[str]) -> list[str]:
    try:
        remote = api.list_repo_files(repo_id, revision=revision)
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
        return []
    return sorted(
        path
        for path in remote
        if path not in keep and any(fnmatch.fnmatch(path, pattern) for pattern in STALE_PATTERNS)
    )


def _card_to_upload(
    model_dir: Path, repo_id: str, results: Sequence[str | Path], homepage: str | None
) -> str:
    """The model card as uploaded: with the scores of the `results` files, the `homepage` link, and
    `repo_id` in its snippets when it was rendered without one (the local card is left as it is)."""
    card_text = (model_dir / CARD).read_text(encoding="utf-8")
    if results:
        from .model_cards import add_evaluation_to_card
        from .rewardbench import results_file_entries

        card_text = str(
            add_evaluation_to_card(card_text, results_file_entries([str(path) for path in results]))
        )
    if homepage:
        card_text = str(set_card_homepage(card_text, homepage))
    if PLACEHOLDER_REPO_ID in card_text:  # rendered without a repo id: name this repo in the snippets
        card_text = str(retarget_model_card(card_text, repo_id))
    return card_text


def push_model_dir(
    model_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    commit_description: str | None = None,
    delete_stale: bool = True,
    results: Sequence[str | Path] = (),
    homepage: str | None = None,
):
    """Upload a saved QRM directory to the Hub repo `repo_id` in one commit; returns its `CommitInfo`.

    The directory is checked first (`check_model_dir`: nothing is uploaded when a file is missing). The repo
    is created if needed (`private` applies only then), and the branch `revision` too (from ``main``). A card
    rendered without a repo id gets `repo_id` in its snippets. With `delete_stale`, weight, config, code and
    tokenizer files of an earlier upload that this directory does not have are deleted in the same commit,
    so that the repo loads exactly this model.

    Args:
        model_dir: a directory written by `save_qrm` (or `save_pretrained` + tokenizer + card).
        repo_id: 'namespace/name' on the Hub.
        revision: the branch to commit to (default ``main``); a ``refs/pr/N`` ref commits to that PR.
        commit_message: defaults to "Upload QRM".
        token: a Hub token (default: ``HF_TOKEN`` or the token saved by ``hf auth login``).
        results: `qrm rewardbench --output` files whose scores go into the uploaded card's `model-index`
            (the local card is left as it is).
        homepage: an http(s) URL the uploaded card links as the project page (`set_card_homepage`; the
            local card is left as it is).

    Returns:
        `huggingface_hub.CommitInfo`: ``.oid`` is the commit id to pin with ``revision=``.
    """
    if homepage:
        check_homepage(homepage)  # before anything is read or created
    model_dir = check_model_dir(model_dir)
    repo_id = check_repo_id(repo_id)
    if revision is not None and _FULL_SHA.fullmatch(revision):
        raise ValueError(f"revision={revision!r} is a commit id; push to a branch name instead.")
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision is not None and not revision.startswith("refs/pr/"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    files = _local_files(model_dir)
    card = _card_to_upload(model_dir, repo_id, results, homepage).encode("utf-8")
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=card if name == CARD else str(model_dir / name))
        for name in files
    ]
    if delete_stale:
        stale = _stale_files(api, repo_id, revision, set(files))
        operations = [CommitOperationDelete(path_in_repo=path) for path in stale] + operations
    return api.create_commit(
        repo_id,
        operations=operations,
        commit_message=commit_message or "Upload QRM",
        commit_description=commit_description,
        revision=revision,
    )


def _looks_like_a_path(name: str) -> bool:
    """True for names that can only be local paths (not a Hub repo id 'name' or 'namespace/name')."""
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def model_location(name: str | Path) -> str:
    """`name` as a local directory or a Hub repo id; a clear FileNotFoundError for a path that does not exist.

    (Without this check transformers reports a missing directory as "Repo id must be in the form ...".)
    """
    name = str(name)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{name} is a file, not a model directory.")
        return str(path)
    if _looks_like_a_path(name) or interrupted_replacement_note(path):
        raise FileNotFoundError(
            f"The model directory {name} does not exist{interrupted_replacement_note(path)} (and it is not a "
            "Hub repo id)."
        )
    return name


def check_tokenizer_files(directory: str | Path, what: str = "model") -> None:
    """A clear error when a local model directory has no tokenizer (else transformers asks for sentencepiece)."""
    directory = Path(directory)
    if not directory.is_dir():
        return  # a Hub repo: the client names what is missing
    if not (directory / TOKENIZER_CONFIG).is_file() or not any(
        (directory / name).is_file() for name in TOKENIZER_VOCABULARIES
    ):
        raise FileNotFoundError(
            f"The {what} directory {directory} has no tokenizer ({TOKENIZER_CONFIG} and one of "
            f"{', '.join(TOKENIZER_VOCABULARIES)}): save it next to the weights with tokenizer.save_pretrained "
            "(save_qrm and `qrm assemble` do)."
        )


@contextlib.contextmanager
def reading_model_files(name: str | Path, what: str = "model"):
    """Around a load of a model's config, tokenizer or weights from a user's directory or repo: a malformed file
    (``tokenizer.json`` without ``added_tokens``, a config field of the wrong type, ...) makes transformers or
    tokenizers raise KeyError, TypeError, AttributeError or a bare Exception from deep inside; that becomes one
    ValueError naming the model (`qrm_hf.cli.main` prints it in one line; --debug shows the original)."""
    try:
        yield
    except (OSError, ValueError):  # already worded as the user's error (or the Hub's)
        raise
    except Exception as error:
        raise ValueError(
            f"The {what} {name} cannot be loaded, a file of it is malformed ({type(error).__name__}: {error}). "
            "Save or download it again."
        ) from error


@contextlib.contextmanager
def refusing_model_code(name: str | Path, what: str = "model"):
    """Around loads with ``trust_remote_code=False``: transformers' refusal of a model's own code (which
    asks for ``trust_remote_code=True``, a flag the commands that load backbones, base models and policies
    do not have) becomes one line saying that the code was not run."""
    try:
        yield
    except ValueError as error:
        if "trust_remote_code" not in str(error):
            raise
        raise ValueError(
            f"The {what} {name} comes with code of its own (an auto_map in its config.json or "
            "tokenizer_config.json), which was not run: use a model of a transformers model type."
        ) from error


def read_model_config(name: str, revision: str | None = None, token: str | None = None) -> dict:
    """The ``config.json`` of a local directory or a Hub repo as a dict: read as JSON, no code runs."""
    path = Path(name)
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{name} has no config.json: it is not a saved model directory.")
    else:
        from huggingface_hub import hf_hub_download

        config_path = Path(hf_hub_download(name, "config.json", revision=revision, token=token))
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"The config.json of {name} is not valid JSON ({error}).") from error
    if not isinstance(config, dict):
        raise ValueError(f"The config.json of {name} is not a JSON object.")
    return config


def load_qrm(
    repo_id_or_path: str | Path,
    revision: str | None = None,
    code_revision: str | None = None,
    token: str | None = None,
    dtype=None,
    trust_remote_code: bool = False,
):
    """A QRM and its tokenizer from a local directory or a Hub repo id, without running code of the model.

    ``config.json`` is read first (as JSON: no code, no weights). A QRM (``model_type: "qrm"``) is built
    with the classes of the installed qrm-hf, not with the code files saved next to its weights, even with
    `trust_remote_code`: the installed code is the code the user already runs, and the saved copy adds
    nothing but a second, unreviewed version of it. The one exception asks for the saved code twice:
    ``trust_remote_code=True`` in a process started with ``QRM_HF_REMOTE_CODE_ONLY=1`` (which also leaves
    the Auto classes unregistered) loads the saved files, to check that they reproduce the installed ones
    (the demo's reload does this). The tokenizer never runs code (a
    tokenizer_config ``auto_map`` without a standard ``tokenizer_class`` is refused). A model of another
    type is refused, unless ``trust_remote_code=True`` (CLI: ``--trust-remote-code``): then, and only then,
    it loads through the Auto classes with the code files of its directory or repo (at `code_revision`),
    e.g. a released QRM checkpoint with its own modeling file.

    `revision` pins weights, config and tokenizer (branch, tag or commit id). Weights load from
    safetensors only. With ``HF_HUB_OFFLINE=1`` the files come from the local cache. Errors of the Hub
    client (unknown repo or revision, no network) are passed on as `OSError` naming the repo and the
    revision; a directory that does not exist, or one without tokenizer, is a `FileNotFoundError`; a model
    that is not a QRM a `ValueError`, and so are weights holding NaN or infinite values
    (`check_finite_weights`).
    """
    name = model_location(repo_id_or_path)
    where = f"the QRM {name!r} at revision {revision or 'main'!r}" + (
        f" (code revision {code_revision!r})" if code_revision else ""
    )
    model_type = _model_type(name, where, revision, token, trust_remote_code)
    check_tokenizer_files(name, "QRM")
    tokenizer = _load_tokenizer(name, where, revision, token)
    model, info = _load_model_weights(
        name, where, model_type, revision, code_revision, token, dtype, trust_remote_code
    )
    _refuse_incomplete_weights(name, info)
    check_finite_weights(model, name)
    return model.eval(), tokenizer


def _model_type(name: str, where: str, revision, token, trust_remote_code: bool) -> str | None:
    """The ``model_type`` of `name`'s config.json; a model that is not a QRM is refused unless
    `trust_remote_code`."""
    try:
        config = read_model_config(name, revision=revision, token=token)
    except (OSError, HfHubHTTPError, HFValidationError) as error:
        if isinstance(error, FileNotFoundError) and Path(name).is_dir():
            raise
        raise OSError(f"Cannot load {where}: {error}") from error
    model_type = config.get("model_type")
    if model_type != "qrm" and not trust_remote_code:
        raise ValueError(
            f"{name} is not a Quantile Reward Model of qrm-hf: its config.json has model_type {model_type!r}, "
            "not 'qrm'. A released QRM checkpoint is converted first (qrm convert SRC DST); to run the code that "
            "comes with this model instead, pass --trust-remote-code (Python: trust_remote_code=True) if you "
            "trust its authors."
        )
    return model_type


def _load_tokenizer(name: str, where: str, revision, token):
    """The tokenizer of `name`, never with code of its own: a QRM's tokenizer is its backbone's, a standard one."""
    from transformers import AutoTokenizer

    try:
        with reading_model_files(name, "QRM"):
            return AutoTokenizer.from_pretrained(
                name, trust_remote_code=False, revision=revision, token=token
            )
    except OSError as error:
        raise OSError(f"Cannot load the tokenizer of {where}: {error}") from error
    except ValueError as error:
        if "custom code" not in str(error) and "trust_remote_code" not in str(error):
            raise
        raise ValueError(
            f"The tokenizer of {name} names code of its own (auto_map in {TOKENIZER_CONFIG}) and no standard "
            "tokenizer class; qrm-hf never runs tokenizer code. Set tokenizer_class in "
            f"{TOKENIZER_CONFIG} to a transformers class (a QRM uses its backbone's tokenizer)."
        ) from error


def _load_model_weights(name, where, model_type, revision, code_revision, token, dtype, trust_remote_code):
    """(model, loading info) from safetensors: with the installed QRM classes, or through the Auto classes
    and the model's own code for a model of another type (or when `_saved_code_requested`)."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as transformers_logging

    from .modeling.modeling_qrm import QRMForSequenceClassification

    kwargs = dict(
        revision=revision,
        token=token,
        dtype=dtype if dtype is not None else torch.float32,
        use_safetensors=True,
        output_loading_info=True,
    )
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # load_qrm's own checks replace transformers' load report
    # a malformed config or weights file (not a safetensors one: worded below) is one line naming the model
    with reading_model_files(name, "QRM"):
        try:
            if model_type != "qrm" or _saved_code_requested(trust_remote_code):
                return AutoModelForSequenceClassification.from_pretrained(
                    name, trust_remote_code=trust_remote_code, code_revision=code_revision, **kwargs
                )
            return QRMForSequenceClassification.from_pretrained(name, trust_remote_code=False, **kwargs)
        except OSError as error:
            raise OSError(f"Cannot load {where}: {error}") from error
        except Exception as error:
            if type(error).__name__ != "SafetensorError":
                raise
            raise OSError(
                f"Cannot read the weights of {where}: {_unreadable_weights(name)} is truncated or corrupt ({error}). "
                "Save or download the model again."
            ) from error
        finally:
            transformers_logging.set_verbosity(verbosity)


def _saved_code_requested(trust_remote_code: bool) -> bool:
    """Whether a QRM loads with its saved code files: both `trust_remote_code` and QRM_HF_REMOTE_CODE_ONLY=1."""
    return trust_remote_code and os.environ.get("QRM_HF_REMOTE_CODE_ONLY") == "1"


def _refuse_incomplete_weights(name: str, info: dict) -> None:
    """A model to score holds every tensor of its checkpoint: nothing initialised at random, nothing left over."""
    tensors = {
        "missing (they would be random)": info["missing_keys"],
        "unexpected": info["unexpected_keys"],
        "of the wrong shape": [key for key, _, _ in info["mismatched_keys"]],
    }
    problems = [f"{what}: {', '.join(sorted(keys))}" for what, keys in tensors.items() if keys]
    if problems:
        raise ValueError(
            f"The weights of {name} are not a complete QRM: tensors {'; '.join(problems)}. Save the model "
            "with save_qrm (or download it) again."
        )


def _unreadable_weights(name: str) -> str:
    """The first local `.safetensors` file of `name` that safetensors cannot open, else a description."""
    from safetensors import safe_open

    for path in sorted(Path(name).glob("*.safetensors")) if Path(name).is_dir() else []:
        try:
            with safe_open(path, framework="pt") as reader:
                for key in reader.keys():
                    reader.get_slice(key)
        except Exception:  # noqa: BLE001 - safetensors raises its own SafetensorError, not importable by name
            return str(path)
    return "its safetensors weights"


def check_finite_weights(model, name: str) -> None:
    """Refuse a model with NaN or infinite values in its parameters or buffers, naming the tensors: it
    would score every conversation NaN (or a number computed from an overflow)."""
    import torch

    tensors = [*model.named_parameters(), *model.named_buffers()]
    bad = [key for key, tensor in tensors if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"{name} has NaN or infinite values in {len(bad)} tensor(s): {listed}.")


__all__ = [
    "IncompleteModelDirError",
    "check_model_dir",
    "check_repo_id",
    "check_tokenizer_files",
    "load_qrm",
    "check_finite_weights",
    "model_location",
    "push_model_dir",
    "read_model_config",
]
