"""The trainer config of `qrm sft`, `qrm rloo` and `qrm grpo` from the command line, TRL's way.

Every field of the command's config class (`PaperSFTConfig`, `PaperRLOOConfig`, `PaperGRPOConfig`: TRL's
config, transformers' `TrainingArguments` and the risk fields) is an option, parsed by TRL's `TrlParser`,
and `--config FILE.yaml` gives values from a file (the command line wins over the file, the file over the
defaults). Two qrm options decide fields of the config: `--batch-size` (examples per optimizer step, which
sets `gradient_accumulation_steps`) and `--precision` (which sets `bf16` / `fp16` unless those are given).
"""

from __future__ import annotations

import argparse

import torch
from trl import TrlParser

from .paper_rlhf import PRECISIONS
from .sft import gradient_accumulation_for


def precision_flags(precision: str) -> dict[str, bool]:
    """The `bf16` / `fp16` fields of a precision name; "auto" is bf16 on a GPU that supports it, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


class TrainerConfigParser(TrlParser):
    """`TrlParser` of one trainer config class whose gradient accumulation follows from `batch_size`
    examples per optimizer step (over all processes) and whose mixed precision follows from `precision`
    unless `--bf16` / `--fp16` are given (TRL's `bf16` default, None, means not given)."""

    def __init__(
        self, config_cls, *, batch_size: int, precision: str, config_file: str | None = None, **kwargs
    ):
        # no abbreviations: a misspelt option (`--learning_rat`) is refused, not taken for the field it prefixes
        super().__init__((config_cls,), allow_abbrev=False, **kwargs)
        self.batch_size, self.precision = batch_size, precision
        self.config_name, self.config_file = config_cls.__name__, config_file
        # None marks "not given": `--batch-size` decides it, so a value from the user would be overwritten
        self.set_defaults(gradient_accumulation_steps=None)

    def error(self, message: str):
        """A bad trainer option is a one-line user error (ValueError), not argparse's page of usage."""
        raise ValueError(message)

    def set_defaults_with_config(self, **values) -> list[str]:
        """TRL's, refusing a key of the --config file that is no field of the config (a misspelling, or a
        qrm option such as `data`, which goes on the command line)."""
        remaining = super().set_defaults_with_config(**values)
        unknown = [key for key in values if f"--{key}" in remaining]
        if unknown:
            raise ValueError(
                f"{self.config_file}: unknown field {', '.join(unknown)} of {self.config_name} (the keys of a "
                "--config file are trainer config fields; qrm options such as --data or --lora-r go on the "
                "command line)."
            )
        return remaining

    def parse_known_args(self, args=None, namespace=None):
        """argparse's, then the batch size and precision set on the fields before the config is made."""
        namespace, remaining = super().parse_known_args(args, namespace)
        if namespace.gradient_accumulation_steps is not None:
            raise ValueError(
                "gradient_accumulation_steps follows from --batch-size (examples per optimizer step over all "
                "processes) and --per-device-batch-size: give --batch-size instead."
            )
        namespace.gradient_accumulation_steps = gradient_accumulation_for(
            self.batch_size, namespace.per_device_train_batch_size
        )
        if self.precision != "auto" or (namespace.bf16 is None and not namespace.fp16):
            vars(namespace).update(precision_flags(self.precision))
        return namespace, remaining


def parse_trainer_config(
    config_cls, argv: list[str], *, batch_size: int, precision: str, output_dir: str, prog: str
):
    """The `config_cls` of the options `argv` (and of the YAML file of `--config FILE`), `output_dir` being
    the default of its `output_dir`. A bad value is a ValueError (an unknown option exits as argparse does)."""
    config_file = argv[argv.index("--config") + 1] if "--config" in argv else None
    parser = TrainerConfigParser(
        config_cls, batch_size=batch_size, precision=precision, config_file=config_file, prog=prog
    )
    parser.set_defaults(output_dir=output_dir)
    try:
        (config,) = parser.parse_args_and_config(argv)
    except TypeError as error:  # a value of the wrong kind in the YAML file
        raise ValueError(str(error)) from error
    return config


def trainer_options_help(config_cls) -> str:
    """The options of `config_cls` as `TrlParser` lists them (for `qrm sft|rloo|grpo --help`)."""
    parser = TrlParser((config_cls,), usage=argparse.SUPPRESS, add_help=False)
    return parser.format_help()


__all__ = [
    "TrainerConfigParser",
    "parse_trainer_config",
    "precision_flags",
    "trainer_options_help",
]
