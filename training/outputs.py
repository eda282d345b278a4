"""The outputs of the fitting stages on disk, typed (docs/design.md §4.2-4.4).

Each is a small dataclass of its tensors and its description (the JSON file) with `save(directory)` and
`load(directory)`; `load` checks the files are there and agree with each other (shapes, attribute names),
as `PretrainedConfig` does for a model, so that every reader gets the same checks and error messages.

    QuantileHeadsOutput  heads.safetensors (coef [M, K, H], intercept [M, K]; with E > 1 members also
                         member_coef [E, M, K, H], member_intercept [E, M, K]) + heads.json
    TransformOutput      transform.safetensors (transform [M, M]) + transform.json
    GatingOutput         gating.safetensors (the network's state dict) + gating.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file, save

from ..io import interrupted_replacement_note, write_bytes_atomic, write_json_atomic


class _StageOutput:
    stem: ClassVar[str]  # file stem: <stem>.safetensors + <stem>.json
    command: ClassVar[str]  # the `qrm` command that writes it (for the error message)
    info: dict

    @property
    def attribute_names(self) -> list[str]:
        return list(self.info["attribute_names"])

    @classmethod
    def _read(cls, directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
        directory = Path(directory)
        tensors_path, info_path = directory / f"{cls.stem}.safetensors", directory / f"{cls.stem}.json"
        if not (tensors_path.exists() and info_path.exists()):
            raise FileNotFoundError(
                f"{directory} has no {cls.stem}.safetensors + {cls.stem}.json: give the output directory of "
                f"`qrm {cls.command}`{interrupted_replacement_note(directory)}."
            )
        return load_file(str(tensors_path)), json.loads(info_path.read_text())

    def _write(self, directory: str | Path, tensors: dict[str, torch.Tensor]) -> None:
        directory = Path(directory)
        write_bytes_atomic(directory / f"{self.stem}.safetensors", save(tensors))
        write_json_atomic(directory / f"{self.stem}.json", self.info)

    def _fail(self, where, message: str):
        raise ValueError(f"{where}: {message} (a damaged or hand-edited output of `qrm {self.command}`?)")


@dataclass
class QuantileHeadsOutput(_StageOutput):
    """The fitted quantile heads: `coef` [M, K, H], `intercept` [M, K] and `info` (heads.json: attribute
    names, levels, settings, backbone identity, samples per attribute, validation report).

    With E > 1 members, `member_coef` [E, M, K, H] and `member_intercept` [E, M, K] hold them and `coef`,
    `intercept` their mean: heads whose expected rewards are the members' mean expected rewards (the model's
    expected reward), what the later stages (debiasing, gating) fit on."""

    coef: torch.Tensor
    intercept: torch.Tensor
    info: dict
    member_coef: torch.Tensor | None = None
    member_intercept: torch.Tensor | None = None
    stem: ClassVar[str] = "heads"
    command: ClassVar[str] = "fit-quantiles"

    @property
    def quantile_levels(self) -> list[float]:
        return list(self.info["quantile_levels"])

    @property
    def hidden_size(self) -> int:
        return self.info["hidden_size"]

    @property
    def num_members(self) -> int:
        return 1 if self.member_coef is None else self.member_coef.shape[0]

    @property
    def members(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(coef [E, M, K, H], intercept [E, M, K]) of every member (E = 1: the heads themselves)."""
        if self.member_coef is None:
            return self.coef.unsqueeze(0), self.intercept.unsqueeze(0)
        return self.member_coef, self.member_intercept

    def validate(self, where: str | Path = "quantile heads") -> QuantileHeadsOutput:
        shape = (len(self.attribute_names), len(self.quantile_levels))
        if (self.member_coef is None) != (self.member_intercept is None):
            self._fail(where, "member_coef and member_intercept come together")
        if self.member_coef is not None and (
            self.member_coef.shape[1:] != self.coef.shape
            or tuple(self.member_intercept.shape) != (self.member_coef.shape[0], *shape)
        ):
            self._fail(
                where,
                f"member_coef {list(self.member_coef.shape)} and member_intercept "
                f"{list(self.member_intercept.shape)} do not fit coef {list(self.coef.shape)}",
            )
        if self.coef.ndim != 3 or tuple(self.coef.shape[:2]) != shape:
            self._fail(where, f"coef has shape {list(self.coef.shape)}, expected [{shape[0]}, {shape[1]}, H]")
        if tuple(self.intercept.shape) != shape:
            self._fail(where, f"intercept has shape {list(self.intercept.shape)}, expected {list(shape)}")
        if self.info.get("hidden_size", self.coef.shape[2]) != self.coef.shape[2]:
            self._fail(where, f"coef has hidden size {self.coef.shape[2]}, heads.json {self.hidden_size}")
        return self

    def save(self, directory: str | Path) -> None:
        tensors = {"coef": self.coef, "intercept": self.intercept}
        if self.member_coef is not None:
            tensors.update(member_coef=self.member_coef, member_intercept=self.member_intercept)
        self.validate()._write(directory, tensors)

    @classmethod
    def load(cls, directory: str | Path) -> QuantileHeadsOutput:
        tensors, info = cls._read(directory)
        members = (tensors.get("member_coef"), tensors.get("member_intercept"))
        return cls(tensors["coef"], tensors["intercept"], info, *members).validate(directory)


@dataclass
class TransformOutput(_StageOutput):
    """The reward transform T [M, M] of verbosity debiasing and `info` (transform.json: penalties,
    correlations before and after)."""

    transform: torch.Tensor
    info: dict
    stem: ClassVar[str] = "transform"
    command: ClassVar[str] = "debias"

    def validate(self, where: str | Path = "reward transform") -> TransformOutput:
        size = len(self.attribute_names)
        if tuple(self.transform.shape) != (size, size):
            self._fail(where, f"transform has shape {list(self.transform.shape)}, expected [{size}, {size}]")
        return self

    def save(self, directory: str | Path) -> None:
        self.validate()._write(directory, {"transform": self.transform})

    @classmethod
    def load(cls, directory: str | Path) -> TransformOutput:
        tensors, info = cls._read(directory)
        return cls(tensors["transform"], info).validate(directory)

    @classmethod
    def matrix(cls, directory: str | Path | None, attribute_names) -> torch.Tensor:
        """T [M, M] of a `qrm debias` output (identity for None), checked against the heads' attributes."""
        if directory is None:
            return torch.eye(len(attribute_names))
        output = cls.load(directory)
        if output.attribute_names != list(attribute_names):
            raise ValueError(
                f"The transform in {directory} is for attributes {output.attribute_names}, the heads have "
                f"{list(attribute_names)}."
            )
        return output.transform


@dataclass
class GatingOutput(_StageOutput):
    """The fitted gating network: its `state_dict` and `info` (gating.json: attribute names, hidden size,
    settings, per-epoch history, noisy-label counts)."""

    state_dict: dict[str, torch.Tensor]
    info: dict
    stem: ClassVar[str] = "gating"
    command: ClassVar[str] = "fit-gating"

    @property
    def hidden_size(self) -> int:
        return self.info["hidden_size"]

    def check_fits(self, heads: QuantileHeadsOutput, where: str | Path = "the gating network") -> None:
        """The gating network must be fitted for the heads' attributes and hidden size."""
        if self.attribute_names != heads.attribute_names or self.hidden_size != heads.hidden_size:
            raise ValueError(
                f"The gating network in {where} was fitted for attributes {self.attribute_names} and hidden "
                f"size {self.hidden_size}; the heads have {heads.attribute_names} and {heads.hidden_size}."
            )

    def save(self, directory: str | Path) -> None:
        self._write(directory, self.state_dict)

    @classmethod
    def load(cls, directory: str | Path) -> GatingOutput:
        return cls(*cls._read(directory))
