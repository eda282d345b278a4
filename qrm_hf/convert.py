"""Convert a released QRM checkpoint (the format of the public QRM-Llama3.1-8B models) into a qrm-hf model.

The released format is a Llama config with five extra fields (`num_objectives` M, `num_quantiles` K,
`gating_temperature`, `gating_hidden_dim`, `gating_n_hidden`) and safetensors weights whose names already
match `QRMForSequenceClassification` with `gating_batch_norm=True`: `model.*`, `regression_layer.weight`
[M*K, H], `reward_transform_matrix` [M, M], `gating.logit_scale` [1] and `gating.layers.*`.
"""

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from .io import check_output_directory, replace_directory
from .modeling.configuration_qrm import DEFAULT_ATTRIBUTE_NAMES, QRMConfig
from .modeling.modeling_qrm import QRMForSequenceClassification

CONVERT_COMMAND = "qrm convert"  # the owner of its output directories (`qrm_hf.io` markers)
QRM_FIELDS = ("num_objectives", "num_quantiles", "gating_temperature", "gating_hidden_dim", "gating_n_hidden")
# <|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n : the released models gate on its first token.
LLAMA3_ASSISTANT_PATTERN = [128009, 128006, 78191, 128007, 271]
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
# Config entries that describe the released wrapper, not the backbone.
_NOT_BACKBONE = {
    "architectures",
    "auto_map",
    "_name_or_path",
    "transformers_version",
    "num_labels",
    "id2label",
    "label2id",
}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # recomputed buffers that some old checkpoints store
# Model key -> checkpoint key where they differ: the transform is the module `reward_transform`, whose
# checkpoint key stays `reward_transform_matrix`.
_CHECKPOINT_KEY = {"reward_transform.weight": "reward_transform_matrix"}


def convert_released_checkpoint(src, dst, attribute_names=None, *, dtype=None) -> Path:
    """Convert the released QRM checkpoint in directory `src` into a qrm-hf model directory `dst`.

    The result reproduces the released score and quantiles: levels linspace(0, 1, K+2)[1:-1], gating on
    the Llama-3 assistant header, "average" mixing and `monotone_quantiles=False` (the released code does
    not sort each attribute's quantiles, so neither does the converted model; set it to True afterwards
    to remove quantile crossing at the price of exact fidelity).

    Args:
        src: local directory with `config.json` and safetensors weights (sharded or not).
        dst: output directory, written whole and renamed into place (`qrm_hf.io.replace_directory`): absent,
            empty or an earlier output of `qrm convert`; tokenizer files of `src` are copied into it.
        attribute_names: the M attribute names; default the paper's 19 when M = 19, else attribute_0, ...
        dtype: dtype of the saved backbone (default: as stored). Heads and gating are saved in float32.

    Example:
        >>> from qrm_hf import convert_released_checkpoint, QRMForSequenceClassification
        >>> path = convert_released_checkpoint("QRM-Llama3.1-8B-v2", "qrm-llama3.1-8b-v2-hf")  # doctest: +SKIP
        >>> model = QRMForSequenceClassification.from_pretrained(path)  # doctest: +SKIP
    """
    src, dst = Path(src), Path(dst)
    check_output_directory(dst, CONVERT_COMMAND)  # before reading gigabytes of weights
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory (expected a released QRM checkpoint directory).")
    config = _qrm_config(src, attribute_names)
    files = _weight_files(src)
    with torch.device("meta"):  # no memory for the weights: load_state_dict(assign=True) brings the real ones
        model = QRMForSequenceClassification(config)
    expected = {
        _CHECKPOINT_KEY.get(key, key): tuple(value.shape) for key, value in model.state_dict().items()
    }
    _check_weights(config, expected, _checkpoint_shapes(files))
    model.load_state_dict(_read_state_dict(files, dtype), strict=True, assign=True)
    with replace_directory(dst, CONVERT_COMMAND) as directory:
        model.eval().save_pretrained(directory, safe_serialization=True)
        # save_pretrained records the dtype of the first parameter (the float32 transform); record the
        # backbone's instead, so that from_pretrained(dtype="auto") loads e.g. a bfloat16 backbone as bfloat16.
        model.config.dtype = model.model.dtype
        model.config.save_pretrained(directory)
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, directory / name)
    return dst


def _checkpoint_shapes(files: list[Path]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Checkpoint key -> (shape, file name) of every stored tensor, read from the headers only."""
    found = {}
    for file in files:
        with safe_open(file, framework="pt") as reader:
            for key in reader.keys():
                if not key.endswith(_IGNORED_SUFFIXES):
                    found[key] = (tuple(reader.get_slice(key).get_shape()), file.name)
    return found


def _read_state_dict(files: list[Path], dtype) -> dict[str, torch.Tensor]:
    """The model's state dict from the checkpoint: the backbone in `dtype` (None: as stored), heads,
    transform and gating in float32."""
    model_key = {value: key for key, value in _CHECKPOINT_KEY.items()}
    state = {}
    for file in files:
        with safe_open(file, framework="pt") as reader:
            for key in reader.keys():
                if key.endswith(_IGNORED_SUFFIXES):
                    continue
                tensor = reader.get_tensor(key)
                if tensor.is_floating_point():
                    if not key.startswith("model."):
                        tensor = tensor.float()
                    elif dtype is not None:
                        tensor = tensor.to(dtype)
                state[model_key.get(key, key)] = tensor
    return state


def _qrm_config(src: Path, attribute_names) -> QRMConfig:
    path = src / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a released QRM checkpoint needs its config.json.")
    raw = json.loads(path.read_text())
    missing = [field for field in QRM_FIELDS if field not in raw]
    if missing:
        raise ValueError(
            f"{path} lacks the released QRM field(s) {missing} (needs all of {list(QRM_FIELDS)})."
        )
    num_attributes, num_levels = int(raw["num_objectives"]), int(raw["num_quantiles"])
    if attribute_names is None:
        attribute_names = (
            DEFAULT_ATTRIBUTE_NAMES
            if num_attributes == 19
            else [f"attribute_{m}" for m in range(num_attributes)]
        )
    elif len(attribute_names) != num_attributes:
        raise ValueError(
            f"{len(attribute_names)} attribute_names given but {path} has num_objectives = {num_attributes}."
        )
    backbone = {k: v for k, v in raw.items() if k not in _NOT_BACKBONE and k not in QRM_FIELDS}
    model_type = backbone.pop("model_type", "llama")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"{path} has unknown model_type {model_type!r}.")
    return QRMConfig(
        backbone_config=CONFIG_MAPPING[model_type](**backbone),
        attribute_names=list(attribute_names),
        quantile_levels=[round((k + 1) / (num_levels + 1), 10) for k in range(num_levels)],
        gating_hidden_dim=int(raw["gating_hidden_dim"]),
        gating_n_hidden=int(raw["gating_n_hidden"]),
        gating_temperature=float(raw["gating_temperature"]),
        gating_batch_norm=True,
        regression_bias=False,
        prompt_end_pattern=LLAMA3_ASSISTANT_PATTERN,
        quantile_mixing="average",
        monotone_quantiles=False,  # fidelity: the released code does not sort quantiles
    )


def _weight_files(src: Path) -> list[Path]:
    index = src / "model.safetensors.index.json"
    if index.is_file():
        files = [src / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        absent = [file.name for file in files if not file.is_file()]
        if absent:
            raise FileNotFoundError(f"{index} names weight file(s) missing from {src}: {absent}.")
        return files
    files = sorted(src.glob("*.safetensors"))
    if files:
        return files
    if any(src.glob("*.bin")) or any(src.glob("*.pt")) or any(src.glob("*.pth")):
        raise ValueError(
            f"{src} holds only PyTorch pickle weights (*.bin/*.pt); qrm-hf reads safetensors only, never "
            "pickles. Convert them to safetensors in an environment you trust, then run the conversion again."
        )
    raise FileNotFoundError(f"No *.safetensors weights in {src}.")


def _check_weights(config: QRMConfig, expected: dict, found: dict) -> None:
    """Clear errors for released weights that do not fit the config (found: key -> (shape, file))."""
    num_attributes, num_levels, hidden = config.num_attributes, config.num_quantiles, config.hidden_size
    heads = found.get("regression_layer.weight")
    if heads is not None and heads[0] != (num_attributes * num_levels, hidden):
        raise ValueError(
            f"regression_layer.weight in {heads[1]} has shape {list(heads[0])}, expected "
            f"[M*K = {num_attributes}*{num_levels} = {num_attributes * num_levels}, hidden_size = {hidden}] "
            "(num_objectives M and num_quantiles K from config.json)."
        )
    transform = found.get("reward_transform_matrix")
    if transform is not None and transform[0] != (num_attributes, num_attributes):
        raise ValueError(
            f"reward_transform_matrix in {transform[1]} has shape {list(transform[0])}, "
            f"expected M x M = [{num_attributes}, {num_attributes}]."
        )
    gating_expected = {k: v for k, v in expected.items() if k.startswith("gating.layers.")}
    gating_found = {k: v[0] for k, v in found.items() if k.startswith("gating.layers.")}
    if gating_found != gating_expected:
        raise ValueError(
            f"The gating layers do not fit gating_hidden_dim = {config.gating_hidden_dim}, gating_n_hidden = "
            f"{config.gating_n_hidden} (hidden_size {hidden}, M = {num_attributes}): expected "
            f"{_shapes(gating_expected)}, found {_shapes(gating_found)}."
        )
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"Released checkpoint weights: missing keys {missing}, unexpected keys {unexpected}."
        )
    wrong = {k: (list(found[k][0]), list(shape)) for k, shape in expected.items() if found[k][0] != shape}
    if wrong:
        raise ValueError(f"Weights whose shape does not fit config.json (found, expected): {wrong}.")


def _shapes(shapes: dict) -> str:
    return "{" + ", ".join(f"{k}: {list(v)}" for k, v in sorted(shapes.items())) + "}"


__all__ = ["convert_released_checkpoint", "LLAMA3_ASSISTANT_PATTERN"]
