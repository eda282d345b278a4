"""Configuration of a Quantile Reward Model (QRM).

This file travels with every saved QRM (``trust_remote_code=True``); it depends on
transformers only.
"""

import copy
import math
import numbers

from transformers import AutoConfig, LlamaConfig, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

# The 19 attributes of the paper, in the order of the released checkpoints.
DEFAULT_ATTRIBUTE_NAMES = [
    "helpsteer-helpfulness",
    "helpsteer-correctness",
    "helpsteer-coherence",
    "helpsteer-complexity",
    "helpsteer-verbosity",
    "ultrafeedback-overall_score",
    "ultrafeedback-instruction_following",
    "ultrafeedback-truthfulness",
    "ultrafeedback-honesty",
    "ultrafeedback-helpfulness",
    "beavertails-is_safe",
    "prometheus-score",
    "argilla-overall_quality",
    "argilla-judge_lm",
    "code-complexity",
    "code-style",
    "code-explanation",
    "code-instruction-following",
    "code-readability",
]
DEFAULT_QUANTILE_LEVELS = [round(0.05 * k, 2) for k in range(1, 20)]  # 0.05, 0.10, ..., 0.95
# The gating network of the paper (an MLP of three hidden layers, ArmoRM's width and temperature): the
# defaults of `QRMConfig`, of `QRMGatingSizes` and of the gating settings of the training pipeline.
GATING_DEFAULTS = {
    "gating_hidden_dim": 1024,
    "gating_n_hidden": 3,
    "gating_temperature": 10.0,
    "gating_batch_norm": False,
}

AUTO_MAP = {
    "AutoConfig": "configuration_qrm.QRMConfig",
    "AutoModel": "modeling_qrm.QRMForSequenceClassification",
    "AutoModelForSequenceClassification": "modeling_qrm.QRMForSequenceClassification",
}
# The fields of a QRM of its own (a backbone's config.json lacks them); given as keyword arguments at load,
# they go through `QRMConfig.__init__` and its checks (`QRMConfig.from_dict`).
QRM_FIELDS = (
    "attribute_names",
    "quantile_levels",
    "gating_hidden_dim",
    "gating_n_hidden",
    "gating_temperature",
    "gating_batch_norm",
    "regression_bias",
    "prompt_end_pattern",
    "gating_fallback",
    "quantile_mixing",
    "monotone_quantiles",
    "num_members",
    "calibration",
)
GATING_FALLBACKS = ("error", "last_token")
QUANTILE_MIXINGS = ("average", "mixture")


def check_calibration(calibration, num_attributes: int, num_levels: int):
    """`calibration` (None, or the dict `qrm calibrate` writes) if it fits M attributes and K levels, else a
    ValueError. The model reads four fields: `offsets` [G, M, K] (finite), `width_bin_edges` [G - 1] (sorted),
    `width_scales` [M] (> 0) and `width_level_indices` [low, high] (the levels whose gap is a width); the
    other fields (method, calibration size) only describe the fit."""
    if calibration is None:
        return None
    fields = ("offsets", "width_bin_edges", "width_scales", "width_level_indices")
    if not isinstance(calibration, dict) or any(name not in calibration for name in fields):
        raise ValueError(f"`calibration` must be None or a dict with {', '.join(fields)}.")

    def finite_list(values, count):
        fits = isinstance(values, (list, tuple)) and len(values) == count
        return fits and all(isinstance(v, numbers.Real) and math.isfinite(v) for v in values)

    offsets, edges, scales = (
        calibration["offsets"],
        calibration["width_bin_edges"],
        calibration["width_scales"],
    )
    groups = len(offsets) if isinstance(offsets, (list, tuple)) else 0
    offsets_fit = groups > 0 and all(
        isinstance(group, (list, tuple))
        and len(group) == num_attributes
        and all(finite_list(row, num_levels) for row in group)
        for group in offsets
    )
    edges_fit = finite_list(edges, groups - 1) and list(edges) == sorted(edges)
    scales_fit = finite_list(scales, num_attributes) and all(scale > 0 for scale in scales)
    low_high = calibration["width_level_indices"]
    indices_fit = (
        isinstance(low_high, (list, tuple))
        and len(low_high) == 2
        and all(isinstance(k, int) and not isinstance(k, bool) for k in low_high)
        and 0 <= low_high[0] < low_high[1] < num_levels
    )
    if not (offsets_fit and edges_fit and scales_fit and indices_fit):
        raise ValueError(
            f"`calibration` does not fit a model of {num_attributes} attributes and {num_levels} levels: it needs "
            f"finite offsets [G][{num_attributes}][{num_levels}], sorted width_bin_edges [G - 1], width_scales "
            f"[{num_attributes}] > 0 and two width_level_indices 0 <= low < high < {num_levels}."
        )
    return dict(calibration)


def _backbone_config(backbone_config) -> PretrainedConfig:
    """The decoder's config: a `LlamaConfig` by default, a dict with its `model_type`, or a copy of a config
    (building a model sets fields, e.g. `_attn_implementation`, on its config)."""
    if backbone_config is None:
        return LlamaConfig()
    if not isinstance(backbone_config, dict):
        return copy.deepcopy(backbone_config)
    if "model_type" not in backbone_config:
        raise ValueError("`backbone_config` given as a dict must contain `model_type`.")
    backbone_config = dict(backbone_config)
    model_type = backbone_config.pop("model_type")
    if model_type not in CONFIG_MAPPING:  # (its own code, if it names any, is not looked for)
        raise ValueError(
            f"`backbone_config` has model_type {model_type!r}, which this transformers does not know."
        )
    return CONFIG_MAPPING[model_type](**backbone_config)


def _attribute_names(attribute_names) -> list[str]:
    """The M attribute names (the paper's 19 by default): a non-empty list of distinct strings."""
    names = attribute_names if attribute_names is not None else DEFAULT_ATTRIBUTE_NAMES
    # A string is a sequence too: "abc" would become the attributes a, b and c.
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"`attribute_names` must be a list of strings, got {names!r}.")
    if len(names) == 0 or len(set(names)) != len(names):
        raise ValueError(f"`attribute_names` must be non-empty and unique, got {list(names)}.")
    return list(names)


def _quantile_levels(quantile_levels) -> list[float]:
    """The K quantile levels (0.05, ..., 0.95 by default): strictly increasing numbers inside (0, 1)."""
    given = quantile_levels if quantile_levels is not None else DEFAULT_QUANTILE_LEVELS
    if not isinstance(given, (list, tuple)) or not all(
        isinstance(t, numbers.Real) and not isinstance(t, bool) for t in given
    ):
        raise ValueError(f"`quantile_levels` must be a list of numbers, got {given!r}.")
    levels = [float(t) for t in given]
    if len(levels) == 0 or any(not 0.0 < t < 1.0 for t in levels):
        raise ValueError(f"`quantile_levels` must be non-empty and inside (0, 1), got {levels}.")
    if any(b <= a for a, b in zip(levels[:-1], levels[1:], strict=True)):
        raise ValueError(f"`quantile_levels` must be strictly increasing (sorted, no repeats), got {levels}.")
    return levels


def _check_sizes(hidden_dim, n_hidden, temperature, num_members) -> None:
    """Whole numbers for the width (>= 1) and depth (>= 0) of the gating MLP and the members (>= 1), a finite
    temperature > 0."""
    # NaN compares false with everything, so each check is written to fail on it.
    temperature_is_number = isinstance(temperature, numbers.Real) and not isinstance(temperature, bool)
    if not (temperature_is_number and 0 < temperature < math.inf):
        raise ValueError(f"`gating_temperature` must be a finite number > 0, got {temperature!r}.")
    for name, value, least in (
        ("gating_hidden_dim", hidden_dim, 1),
        ("gating_n_hidden", n_hidden, 0),
        ("num_members", num_members, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ValueError(f"`{name}` must be a whole number >= {least}, got {value!r}.")


def _prompt_end_pattern(pattern) -> list[int] | None:
    """The token ids that open the assistant turn, or None."""
    if pattern is None:
        return None
    pattern = list(pattern)
    # Token ids: a float such as 7.9 would be truncated to 7 when matched against the input ids.
    if any(isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0 for t in pattern):
        raise ValueError(f"`prompt_end_pattern` must be token ids (whole numbers >= 0), got {pattern}.")
    return pattern


class QRMConfig(PretrainedConfig):
    r"""Configuration of [`QRMForSequenceClassification`].

    Args:
        backbone_config (`PretrainedConfig` or `dict`, *optional*):
            Config of the decoder backbone (a `LlamaConfig` by default). A dict must carry `model_type`.
        attribute_names (`list[str]`, *optional*):
            Names of the M attributes, in the order of the quantile heads. Defaults to the paper's 19.
        quantile_levels (`list[float]`, *optional*):
            The K strictly increasing quantile levels in (0, 1). Defaults to 0.05, 0.10, ..., 0.95.
        gating_hidden_dim (`int`, defaults to 1024), gating_n_hidden (`int`, defaults to 3):
            Width and number of hidden layers of the gating MLP.
        gating_temperature (`float`, defaults to 10.0):
            Softmax temperature of the gating output.
        gating_batch_norm (`bool`, defaults to `False`):
            Hidden blocks are Linear(no bias) -> ReLU -> BatchNorm1d (released QRM format)
            instead of Linear -> ReLU.
        regression_bias (`bool`, defaults to `False`):
            Whether the quantile heads have a bias.
        prompt_end_pattern (`list[int]`, *optional*):
            Token ids that open the assistant turn. The gating position is the first token of the
            pattern's last occurrence.
        gating_fallback (`str`, defaults to `"error"`):
            `"error"` or `"last_token"`: what to do when the pattern is absent from a row.
        quantile_mixing (`str`, defaults to `"average"`):
            `"average"`: Q_mix(tau) = sum_m g_m Q_m(tau) (paper eq. 3); `"mixture"`: quantiles of the
            mixture distribution sum_m g_m F_m.
        monotone_quantiles (`bool`, defaults to `True`):
            Sort each attribute's K quantiles so that they never cross (does not change any mean).
        num_members (`int`, defaults to 1):
            E, the number of members: sets of quantile heads on the shared backbone and gating (e.g.
            refits on bootstrap resamples). Their quantiles are averaged level by level into
            `attribute_quantiles`; how much their expected rewards disagree is the epistemic spread.
            1 is the format of a single set of heads.
        calibration (`dict`, *optional*):
            Conformal offsets added to the attribute quantiles (written by `qrm calibrate`; see
            `check_calibration`). `None`: the quantiles as the heads predict them.
    """

    model_type = "qrm"
    sub_configs = {"backbone_config": AutoConfig}

    def __init__(
        self,
        backbone_config=None,
        attribute_names=None,
        quantile_levels=None,
        gating_hidden_dim=GATING_DEFAULTS["gating_hidden_dim"],
        gating_n_hidden=GATING_DEFAULTS["gating_n_hidden"],
        gating_temperature=GATING_DEFAULTS["gating_temperature"],
        gating_batch_norm=GATING_DEFAULTS["gating_batch_norm"],
        regression_bias=False,
        prompt_end_pattern=None,
        gating_fallback="error",
        quantile_mixing="average",
        monotone_quantiles=True,
        num_members=1,
        calibration=None,
        pad_token_id=None,
        **kwargs,
    ):
        self.backbone_config = _backbone_config(backbone_config)
        self.attribute_names = _attribute_names(attribute_names)
        self.quantile_levels = _quantile_levels(quantile_levels)
        if gating_fallback not in GATING_FALLBACKS:
            raise ValueError(f"`gating_fallback` must be one of {GATING_FALLBACKS}, got {gating_fallback!r}.")
        if quantile_mixing not in QUANTILE_MIXINGS:
            raise ValueError(f"`quantile_mixing` must be one of {QUANTILE_MIXINGS}, got {quantile_mixing!r}.")
        _check_sizes(gating_hidden_dim, gating_n_hidden, gating_temperature, num_members)
        for name, value in (
            ("gating_batch_norm", gating_batch_norm),
            ("regression_bias", regression_bias),
            ("monotone_quantiles", monotone_quantiles),
        ):
            if not isinstance(value, bool):  # the string "false" would read as true
                raise ValueError(f"`{name}` must be true or false, got {value!r}.")
        self.gating_hidden_dim = int(gating_hidden_dim)
        self.gating_n_hidden = int(gating_n_hidden)
        self.num_members = int(num_members)
        self.gating_temperature = float(gating_temperature)
        self.gating_batch_norm = gating_batch_norm
        self.regression_bias = regression_bias
        self.prompt_end_pattern = _prompt_end_pattern(prompt_end_pattern)
        self.gating_fallback = gating_fallback
        self.quantile_mixing = quantile_mixing
        self.monotone_quantiles = monotone_quantiles
        self.calibration = check_calibration(
            calibration, len(self.attribute_names), len(self.quantile_levels)
        )
        if pad_token_id is None:
            pad_token_id = getattr(self.backbone_config, "pad_token_id", None)
        kwargs.setdefault("num_labels", 1)
        # One output, the expected reward, returned as is (no sigmoid in pipeline("text-classification")).
        if kwargs.get("problem_type") not in (None, "regression"):
            raise ValueError(
                f"A QRM is a regression model (problem_type='regression'), got {kwargs['problem_type']!r}."
            )
        kwargs["problem_type"] = "regression"
        # Every saved QRM loads through any of these Auto classes with trust_remote_code=True.
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        super().__init__(pad_token_id=pad_token_id, **kwargs)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        """The config dict of a QRM; that of another model (e.g. a plain Llama directory) becomes the
        `backbone_config` of a fresh QRM, whose own fields come from `kwargs` (see `from_dict`)."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type", cls.model_type) != cls.model_type:
            config_dict = {"model_type": cls.model_type, "backbone_config": config_dict}
        return config_dict, kwargs

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        """`PretrainedConfig.from_dict`, with the QRM fields and `problem_type` given as keyword arguments
        (e.g. `from_pretrained(path, gating_temperature=...)`) passed to `__init__`, which checks them, instead
        of being set on the built config unchecked. A saved config must name its `backbone_config`."""
        if config_dict.get("backbone_config") is None and kwargs.get("backbone_config") is None:
            # `QRMConfig()` defaults to an 8B Llama: building it would take minutes and tens of GB, then fail.
            raise ValueError("The config of this QRM has no `backbone_config` (the config of its decoder).")
        fields = {name: kwargs.pop(name) for name in (*QRM_FIELDS, "problem_type") if name in kwargs}
        return super().from_dict({**config_dict, **fields}, **kwargs)

    @property
    def num_labels(self) -> int | None:
        return PretrainedConfig.num_labels.fget(self)

    @num_labels.setter
    def num_labels(self, num_labels: int):
        if num_labels != 1:
            raise ValueError(
                f"A QRM has one output, the expected reward: num_labels must be 1, got {num_labels}. Its M "
                "attributes are `attribute_names` and its K quantile levels `quantile_levels`."
            )
        PretrainedConfig.num_labels.fset(self, num_labels)

    @property
    def vocab_size(self) -> int:
        """The backbone's vocabulary size (kept in one place, so resizing updates both)."""
        return self.backbone_config.vocab_size

    @vocab_size.setter
    def vocab_size(self, vocab_size: int):
        self.backbone_config.vocab_size = vocab_size

    def get_text_config(self, decoder=None, encoder=None) -> PretrainedConfig:
        """The backbone's config: what resizing, TRL's pad/eos handling and `Trainer` must read and write."""
        return self.backbone_config.get_text_config(decoder=decoder, encoder=encoder)

    @property
    def num_attributes(self) -> int:
        return len(self.attribute_names)

    @property
    def num_quantiles(self) -> int:
        return len(self.quantile_levels)

    @property
    def hidden_size(self) -> int:
        return self.backbone_config.hidden_size


__all__ = [
    "QRMConfig",
    "DEFAULT_ATTRIBUTE_NAMES",
    "DEFAULT_QUANTILE_LEVELS",
    "GATING_DEFAULTS",
    "check_calibration",
]
