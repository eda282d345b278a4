"""What a dataset preset is: :class:`DatasetPreset` says where a dataset lives and how to read its rows
(docs/design.md §6). The named presets of the paper's datasets are in `qrm_hf.presets`; the loader and
the converters that read a preset in `qrm_hf.dataset_loading`. Both import this module, which imports
neither.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

Kind = Literal["attribute", "preference"]
Conversation = list[dict[str, str]]  # {"role", "content"} messages, ending with the assistant's response
KINDS = ("attribute", "preference")


@dataclass(frozen=True)
class DatasetPreset:
    """How to read one dataset.

    Column fields name columns of the (flat) rows: ``prompt`` + ``response``, or ``messages``, for
    attribute data; ``chosen`` + ``rejected`` (+ an optional ``prompt``) for preference data. A prompt
    or response may be a string or a list of messages; a response list holding a user turn is taken as
    the whole conversation. ``system`` optionally names a column with a system prompt.

    ``attributes`` maps each qrm attribute name to its label column (in label order); ``label_ranges``
    gives each attribute's (low, high) range, mapped linearly to [0, 1]. Labels may be numbers, numeric
    strings, booleans (1/0) or missing (None, NaN, "N/A", "").

    ``row_filter`` keeps a source row when it returns True; ``transform`` maps a source row to a list of
    flat rows (then ``source_columns`` lists the source columns it needs).
    """

    name: str
    kind: Kind
    hub_id: str | None = None
    split: str = "train"
    config: str | None = None
    prompt: str | None = None
    response: str | None = None
    messages: str | None = None
    system: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)
    label_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    row_filter: Callable[[dict], bool] | None = None
    transform: Callable[[dict], list[dict]] | None = None
    source_columns: tuple[str, ...] = ()
    notes: str = ""

    def __post_init__(self):
        problems = _preset_problems(self)
        if problems:
            raise ValueError(f"Invalid dataset preset {self.name!r}: " + "; ".join(problems) + ".")

    @property
    def attribute_names(self) -> list[str]:
        return list(self.attributes)

    @property
    def columns(self) -> list[str]:
        """The columns a dataset must have for this preset."""
        if self.transform is not None:
            return list(self.source_columns)
        names = [self.prompt, self.response, self.messages, self.system, self.chosen, self.rejected]
        return list(dict.fromkeys(name for name in (*names, *self.attributes.values()) if name is not None))

    @classmethod
    def custom(
        cls,
        kind: Kind,
        *,
        prompt: str | None = None,
        response: str | None = None,
        messages: str | None = None,
        system: str | None = None,
        chosen: str | None = None,
        rejected: str | None = None,
        attributes: Mapping[str, str] | Sequence[str] | None = None,
        label_ranges: Mapping[str, Sequence[float]] | Sequence[float] | None = None,
        name: str = "custom",
        hub_id: str | None = None,
        split: str = "train",
        config: str | None = None,
        row_filter: Callable[[dict], bool] | None = None,
    ) -> DatasetPreset:
        """A preset for any dataset, from its column names.

        `attributes` maps qrm attribute names to label columns (a list of columns: same names);
        `label_ranges` maps each attribute to its (low, high) range, or is one (low, high) pair for all.
        """
        if attributes is not None and not isinstance(attributes, Mapping):
            attributes = {column: column for column in attributes}
        attributes = dict(attributes or {})
        if label_ranges is not None and not isinstance(label_ranges, Mapping):
            label_ranges = {attribute: label_ranges for attribute in attributes}
        label_ranges = {attribute: tuple(bounds) for attribute, bounds in (label_ranges or {}).items()}
        return cls(
            name=name,
            kind=kind,
            hub_id=hub_id,
            split=split,
            config=config,
            prompt=prompt,
            response=response,
            messages=messages,
            system=system,
            chosen=chosen,
            rejected=rejected,
            attributes=attributes,
            label_ranges=label_ranges,
            row_filter=row_filter,
        )

    def with_label_ranges(self, ranges: Mapping[str, tuple[float, float]]) -> DatasetPreset:
        """A copy with the label ranges of some attributes replaced (e.g. when a scale differs)."""
        unknown = [attribute for attribute in ranges if attribute not in self.attributes]
        if unknown:
            raise ValueError(
                f"Preset {self.name!r} has no attribute(s) {unknown}; it has {self.attribute_names}."
            )
        return replace(self, label_ranges={**self.label_ranges, **ranges})


def _preset_problems(preset: DatasetPreset) -> list[str]:
    problems = []
    if preset.kind not in KINDS:
        return [f"kind must be one of {KINDS}, got {preset.kind!r}"]
    if preset.transform is not None and not preset.source_columns:
        problems.append("a preset with a transform must list its source_columns")
    if preset.kind == "attribute":
        if (preset.messages is None) == (preset.response is None):
            problems.append(
                "attribute data needs either `messages` or `response` (with an optional `prompt`)"
            )
        if preset.messages is not None and preset.prompt is not None:
            problems.append("give `messages` or `prompt` + `response`, not both")
        if preset.chosen is not None or preset.rejected is not None:
            problems.append("attribute data has no `chosen`/`rejected` columns (use kind='preference')")
        if not preset.attributes:
            problems.append("attribute data needs at least one attribute (attributes={'name': 'column'})")
        missing = [attribute for attribute in preset.attributes if attribute not in preset.label_ranges]
        if missing:
            problems.append(
                f"attribute(s) {missing} have no label range (label_ranges={{name: (low, high)}})"
            )
        extra = [attribute for attribute in preset.label_ranges if attribute not in preset.attributes]
        if extra:
            problems.append(f"label_ranges names unknown attribute(s) {extra}")
        for attribute, bounds in preset.label_ranges.items():
            low, high = bounds if len(bounds) == 2 else (math.nan, math.nan)
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                problems.append(f"label range {tuple(bounds)} of {attribute!r} is not finite with low < high")
    else:
        if preset.chosen is None or preset.rejected is None:
            problems.append("preference data needs `chosen` and `rejected` columns")
        if preset.response is not None or preset.messages is not None:
            problems.append("preference data has no `response`/`messages` column (use kind='attribute')")
        if preset.attributes or preset.label_ranges:
            problems.append("preference data has no attributes (use kind='attribute')")
    return problems
