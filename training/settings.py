"""The settings of the pipeline stages, defined once (docs/design.md §4).

One dataclass per stage is the single source of its settings and their defaults, as TRL's configs are:
its fields (with `metadata={"help": ...}`) are the options of the stage's `qrm` command
(`add_settings_arguments`, `settings_from_args`), the keys of its block in a `qrm train` YAML file
(`settings_from_mapping`), and the argument of its function in `qrm_hf.training.stages`. Adding a
setting is one field. A field's `metadata["cli"]` holds the argparse keywords that differ from the
ones derived from its default (`flag` renames the option; `False` leaves it off the command line).

This module is imported when the `qrm` parser is built: keep it free of torch and the stages.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from ..arguments import positive_int

# The paper's 19 levels 0.05 ... 0.95, the default of QRMConfig.quantile_levels too. Spelled out here rather
# than imported from modeling/configuration_qrm.py, which imports transformers (tests check they are equal).
PAPER_LEVELS = [round(0.05 * k, 2) for k in range(1, 20)]


def _alpha_argument(value: str) -> float | str:
    """A penalty on the command line: a number or the word "cv"."""
    if value == "cv":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number or "cv", got {value!r}') from None


def _one_or_many(values: list) -> Any:
    """`--alpha 0.003` is one penalty, `--alpha 0.1 0.01` a grid, `--alpha cv` the word."""
    return values[0] if isinstance(values, list) and len(values) == 1 else values


def setting(default: Any = MISSING, *, help: str, cli: dict | bool = True, **kwargs) -> Any:
    """A dataclass field with its help text and, in `cli`, the argparse keywords of its option."""
    if isinstance(default, list):
        kwargs["default_factory"] = lambda default=default: list(default)
    elif default is not MISSING:
        kwargs["default"] = default
    return field(metadata={"help": help, "cli": cli}, **kwargs)


def model_setting(config_field: str, *, help: str, cli: dict) -> Any:
    """A setting of the saved model whose default is the model's own (`QRMConfig`'s `config_field`, defined
    in modeling/configuration_qrm.py): None until `resolve_model_defaults` fills it in."""
    return field(default=None, metadata={"help": help, "cli": cli, "config_field": config_field})


def resolve_model_defaults(settings) -> None:
    """Set the `model_setting` fields of `settings` left None to the defaults of `QRMConfig` (imports
    transformers, so it runs when settings are made, not when the `qrm` parser is built)."""
    import inspect

    from ..modeling.configuration_qrm import QRMConfig

    defaults = inspect.signature(QRMConfig.__init__).parameters
    for f in fields(settings):
        if "config_field" in f.metadata and getattr(settings, f.name) is None:
            setattr(settings, f.name, defaults[f.metadata["config_field"]].default)


# ------------------------------------------------------------------------------------------- the stages


@dataclass
class ExtractionSettings:
    """Stage 1, `qrm extract`: how the frozen backbone encodes a dataset."""

    max_length: int | None = setting(
        4096,
        help="skip (and count) conversations longer than this many tokens",
        cli={"type": positive_int},
    )
    batch_size: int = setting(16, help="conversations per forward pass", cli={"type": positive_int})
    shard_size: int = setting(4096, help="examples per shard file", cli={"type": positive_int})
    dtype: str = setting(
        "float32",
        help="dtype of the backbone",
        cli={"choices": ["float32", "bfloat16", "float16"]},
    )
    # Keep every embedding in memory across the datasets of a run, so that a conversation in several
    # datasets (e.g. rated responses re-used as preference pairs) is encoded once. Small runs only.
    reuse_across_datasets: bool = setting(
        False, help="encode a conversation shared by several datasets of a run once (small runs)", cli=False
    )

    def fingerprint(self) -> dict:
        """What defines the extracted features (sharing embeddings across datasets does not change them)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "reuse_across_datasets"}


@dataclass
class HeadsSettings:
    """Stage 2, `qrm fit-quantiles`: L1-penalised linear quantile regression (paper defaults)."""

    quantile_levels: list[float] = setting(
        PAPER_LEVELS,
        help="quantile levels",
        cli={"flag": "--levels", "nargs": "+", "type": float, "metavar": "LEVEL"},
    )
    alpha: float | list[float] | str = setting(
        0.003,
        help='L1 penalty; several values or "cv" choose one per attribute by cross-validation',
        cli={"type": _alpha_argument, "nargs": "+", "convert": _one_or_many},
    )
    cv: int = setting(5, help="folds of the penalty choice")
    solver: str = setting(
        "fast",
        help="fast: batched interior point in torch; sklearn: QuantileRegressor (paper)",
        cli={"choices": ["fast", "sklearn"]},
    )
    max_samples_per_attribute: int = setting(60_000, help="training samples per attribute (random subset)")
    seed: int = setting(0, help="random seed of the subsets and folds")
    n_jobs: int = setting(1, help="parallel fits (sklearn solver)")
    ridge_baseline: bool = setting(
        False, help="also report a ridge point estimate with residual quantiles (loads all features)"
    )
    gaussian_baseline: bool = setting(
        False, help="also report a heteroscedastic Gaussian (mean and log-std heads; loads all features)"
    )
    num_members: int = model_setting(
        "num_members",
        help="members E: with E > 1, E sets of heads refitted on bootstrap resamples of the training responses, "
        "whose disagreement the model reports as its epistemic spread",
        cli={"type": positive_int},
    )

    def __post_init__(self):
        resolve_model_defaults(self)
        value = self.num_members
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"num_members must be a whole number >= 1, got {value!r}.")

    def fingerprint(self) -> dict:
        """What defines the fitted heads: every setting, and `cv` only when a grid or "cv" uses it."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if isinstance(self.alpha, (int, float)):
            del values["cv"]
        return values


@dataclass
class DebiasSettings:
    """Stage 3, `qrm debias`: ArmoRM's verbosity debiasing."""

    reference_datasets: list = setting(
        [],
        help="datasets of reference responses (YAML only; the command takes feature directories)",
        cli=False,
    )
    verbosity_attribute: str | None = setting(
        None, help="default: the attribute whose name ends with 'verbosity'", cli={"type": str}
    )
    threshold: float = setting(0.03, help="largest Spearman correlation with the verbosity reward")

    def fingerprint(self) -> dict:
        """What defines the transform besides its inputs (the reference datasets are inputs of the stage)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "reference_datasets"}


# Settings of the noisy-label remedies: a gating fit that leaves them at their defaults is the paper's.
NOISE_SETTINGS = (
    "label_smoothing",
    "adaptive_margin",
    "flip_below",
    "drop_below",
    "strength",
    "ensemble_size",
)


@dataclass
class GatingSettings:
    """Stage 4, `qrm fit-gating`: the gating network and its Bradley-Terry fit (paper defaults)."""

    hidden_dim: int = model_setting("gating_hidden_dim", help="width of the hidden layers", cli={"type": int})
    n_hidden: int = model_setting("gating_n_hidden", help="number of hidden layers", cli={"type": int})
    temperature: float = model_setting(
        "gating_temperature", help="softmax temperature of the gating weights", cli={"type": float}
    )
    batch_norm: bool = model_setting(
        "gating_batch_norm", help="BatchNorm hidden blocks (released format)", cli={"action": "store_true"}
    )
    learning_rate: float = setting(3e-4, help="AdamW learning rate")
    batch_size: int = setting(1024, help="pairs per step")
    epochs: int = setting(3, help="passes over the training pairs")
    weight_decay: float = setting(1e-3, help="AdamW weight decay")
    validation_fraction: float = setting(0.1, help="share of the pairs held out for the validation accuracy")
    seed: int = setting(0, help="random seed of the split, the initialisation and the batches")
    # "transformed": the rewards the assembled model computes (after T). ArmoRM's stage-2 script fits on
    # the untransformed rewards (it computes the transformed ones but does not use them): "untransformed".
    rewards: str = setting(
        "transformed",
        help="fit on the rewards after T (as the model computes them) or before (ArmoRM's script)",
        cli={"choices": ["transformed", "untransformed"]},
    )
    # Noisy preference labels (Secrets of RLHF II; training/gating.py), off by default. The thresholds
    # and the margin use each pair's strength P(chosen > rejected), measured on the same features by
    # `strength`: "probability" (the QRM of a plain first fit) or "ensemble" (the mean over
    # `ensemble_size` bootstrap refits of heads and gating, qrm_hf.training.bootstrap).
    label_smoothing: float = setting(0.0, help="label smoothing of the Bradley-Terry loss (noisy labels)")
    adaptive_margin: float = setting(0.0, help="margin scaled by the strength of each pair (noisy labels)")
    flip_below: float | None = setting(
        None,
        help="flip the training pairs whose measured P(chosen > rejected) is below P (noisy labels; default off)",
        cli={"type": float, "metavar": "P"},
    )
    drop_below: float | None = setting(
        None,
        help="drop the training pairs whose measured P(chosen > rejected) is below P (noisy labels; default off)",
        cli={"type": float, "metavar": "P"},
    )
    strength: str = setting(
        "probability",
        help="how the strength of a pair is measured: the QRM's own P(chosen > rejected) after a plain first "
        "fit, or the mean over a bootstrap ensemble (--ensemble-size)",
        cli={"choices": ["probability", "ensemble"]},
    )
    ensemble_size: int = setting(10, help="bootstrap refits of the ensemble strength")
    # Against a collapsed gating (training/gating.py), off by default (the paper's recipe); the demo
    # turns them on.
    standardize_prompts: bool = setting(
        False, help="train on prompt embeddings standardised per dimension (folded into the first layer)"
    )
    restore_best_epoch: bool = setting(
        False, help="hold out whole prompts and keep the epoch with the lowest validation Bradley-Terry loss"
    )
    fit_loss_scale: bool = setting(
        False,
        help="weights sum to one (logit_scale fixed at 1); the Bradley-Terry loss scales the reward margins by "
        "a factor fitted once on the uniform mix",
    )

    def __post_init__(self):
        if self.rewards not in ("transformed", "untransformed"):
            raise ValueError(
                f"gating rewards must be 'transformed' or 'untransformed', got {self.rewards!r}."
            )
        if self.strength not in ("probability", "ensemble"):
            raise ValueError(f"gating strength must be 'probability' or 'ensemble', got {self.strength!r}.")
        resolve_model_defaults(self)

    def noise_settings(self) -> dict:
        """The noisy-label settings that differ from their defaults (none: the paper's plain fit)."""
        default = GatingSettings()
        return {
            name: getattr(self, name)
            for name in NOISE_SETTINGS
            if getattr(self, name) != getattr(default, name)
        }

    def fingerprint(self) -> dict:
        """What defines the fitted gating: every setting."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def config_kwargs(self) -> dict:
        """The `QRMConfig` keywords of the gating network."""
        return {
            f.metadata["config_field"]: getattr(self, f.name)
            for f in fields(self)
            if "config_field" in f.metadata
        }


@dataclass
class AssembleSettings:
    """Stage 5, `qrm assemble`: extra settings of the saved model."""

    quantile_mixing: str = model_setting(
        "quantile_mixing",
        help="how the attributes' quantiles are mixed",
        cli={"choices": ["average", "mixture"], "type": str},
    )
    gating_fallback: str = model_setting(
        "gating_fallback",
        help="without the prompt-end pattern: an error, or gate on the last token",
        cli={"choices": ["error", "last_token"], "type": str},
    )
    datasets: list[str] = setting([], help="Hub dataset ids to list in the model card", cli={"nargs": "+"})
    homepage: str | None = setting(
        None,
        help="a project page for the model card to link (the card links no other)",
        cli={"metavar": "URL", "type": str},
    )
    push_to_hub: str | None = setting(
        None, help="push the saved model to this Hub repo", cli={"metavar": "REPO_ID", "type": str}
    )
    results: list[str] = setting(
        [],
        help="`qrm rewardbench --output` files for the card's model-index",
        cli={"nargs": "+", "metavar": "FILE"},
    )

    def __post_init__(self):
        resolve_model_defaults(self)
        if self.homepage:  # a bad URL fails before any stage runs, not when the card is written
            from ..model_cards import check_homepage

            check_homepage(self.homepage)

    def fingerprint(self) -> dict:
        """What defines the saved model besides its inputs: every setting."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ------------------------------------------------------------------------------------------- readers


def check_keys(cls, values: dict, where: str) -> None:
    """The one unknown-key check of the YAML mappings: every key must be a field of the dataclass `cls`."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}.")


def settings_from_mapping(cls, values: dict | None, where: str):
    """The dataclass `cls` of a YAML mapping (None: the defaults), naming unknown keys and checking each
    one-value setting as its command-line option checks it (`checked_value`)."""
    values = dict(values or {})
    check_keys(cls, values, where)
    by_name = {f.name: f for f in fields(cls)}
    return cls(**{name: checked_value(by_name[name], value, where) for name, value in values.items()})


def checked_value(setting_field, value, where: str):
    """`value` of a YAML file for a one-value setting, checked as its option is: the option's type
    (`positive_int`, int, float, ...; a whole number for an int) and choices, a bool for an on/off setting.
    A list setting, one with a conversion of its own, or a None value is returned as it is."""
    options = setting_field.metadata.get("cli")
    options = options if isinstance(options, dict) else {}
    default = None if setting_field.default is MISSING else setting_field.default
    if value is None or "nargs" in options or "convert" in options:
        return value
    label = f"{where}: {setting_field.name}"
    if isinstance(default, bool) or options.get("action") == "store_true":
        if not isinstance(value, bool):
            raise ValueError(f"{label} must be true or false, got {value!r}.")
        return value
    check = options.get("type", type(default) if default is not None else None)
    if check is not None:
        if isinstance(value, bool) or isinstance(value, float) and check in (int, positive_int):
            raise ValueError(f"{label} must be a whole number, got {value!r}.")
        try:
            value = check(str(value))
        except argparse.ArgumentTypeError as error:
            raise ValueError(f"{label}: {error}.") from None
        except (TypeError, ValueError):
            raise ValueError(
                f"{label} must be a {getattr(check, '__name__', 'valid')} value, got {value!r}."
            ) from None
    if "choices" in options and value not in options["choices"]:
        raise ValueError(f"{label} must be one of {options['choices']}, got {value!r}.")
    return value


def _cli_fields(cls):
    for f in fields(cls):
        if f.metadata.get("cli", False) is not False:
            yield f


def add_settings_arguments(parser: argparse.ArgumentParser, cls, names: Sequence[str] | None = None) -> None:
    """An option per field of the settings dataclass `cls` (`--field-name`), its default and help included;
    only the fields in `names` when given (a command that overrides a few settings, e.g. `qrm train`).
    The defaults are read from the fields, without making the settings (`resolve_model_defaults` would import
    transformers): a `model_setting` shows as the model's default."""
    for f in _cli_fields(cls):
        if names is not None and f.name not in names:
            continue
        options = dict(f.metadata["cli"]) if isinstance(f.metadata["cli"], dict) else {}
        options.pop("convert", None)
        flag = options.pop("flag", "--" + f.name.replace("_", "-"))
        default = f.default_factory() if f.default is MISSING else f.default
        if isinstance(default, bool):
            options["action"] = "store_true"
        elif options.get("action") != "store_true":
            options.setdefault("type", type(default))
        options["default"] = default
        if "nargs" in options:
            options["type"] = options["type"] if options["type"] is not list else None
        shown = "off" if default is None or default is False else default
        if "config_field" in f.metadata:
            shown = f"the model's, QRMConfig.{f.metadata['config_field']}"
        parser.add_argument(flag, dest=f.name, help=f"{f.metadata['help']} (default: {shown})", **options)


def settings_from_args(cls, args: argparse.Namespace):
    """The settings dataclass `cls` of parsed options added by `add_settings_arguments`."""
    values = {}
    for f in _cli_fields(cls):
        value = getattr(args, f.name)
        convert = f.metadata["cli"].get("convert") if isinstance(f.metadata["cli"], dict) else None
        values[f.name] = convert(value) if convert else value
    return cls(**values)
