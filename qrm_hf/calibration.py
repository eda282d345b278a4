"""Split conformal calibration of a QRM's attribute quantiles, stored in the model (`qrm calibrate`).

`ConformalQuantileCalibrator` fits, on held-out ratings, one offset per attribute and quantile level
(optionally per group of responses, Mondrian); `QRMConfig.calibration` stores them and
`modeling_qrm.calibrate_quantiles` adds them inside `score_embeddings`, so every consumer of the model
(TRL, risk measures, preference probabilities, the remote code without qrm-hf) reads calibrated quantiles.

The guarantee (docs/design.md, "Conformal calibration"): for a new response exchangeable with the calibration
responses (of its group) and one of its ratings drawn at random, P(y <= q_tau) >= tau for tau >= 1/2 and
P(y < q_tau) <= tau for tau < 1/2, so each central interval [q_tau, q_{1 - tau}] covers at least 1 - 2 tau.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from numbers import Integral

import numpy as np

CALIBRATE_COMMAND = "qrm calibrate"
# The interval whose width sorts responses into the Mondrian groups (the 80 % interval of the targets).
GROUPING_WIDTH = 0.8
# Rounding slack of the weighted counts (sums of 1 / ratings-per-response).
COUNT_TOLERANCE = 1e-9


def minimum_responses(levels: Sequence[float]) -> int:
    """Fewest calibration responses per attribute and group for a finite offset at every level: n with
    (n + 1) min(tau, 1 - tau) >= 1 (19 for levels 0.05 ... 0.95)."""
    smallest_tail = min(min(tau, 1 - tau) for tau in levels)
    return int(np.ceil(1 / smallest_tail - COUNT_TOLERANCE)) - 1


def width_level_indices(levels: Sequence[float], width: float = GROUPING_WIDTH) -> list[int]:
    """Indices of the levels nearest (1 - width) / 2 and (1 + width) / 2 (0.1 and 0.9 for width 0.8)."""
    levels = np.asarray(levels, dtype=float)
    low = int(np.abs(levels - (1 - width) / 2).argmin())
    high = int(np.abs(levels - (1 + width) / 2).argmin())
    if low >= high:
        raise ValueError(f"Calibration needs at least two quantile levels, got {levels.tolist()}.")
    return [low, high]


def upper_conformal_offset(scores, weights, level: float, responses: int) -> float:
    """Smallest score s with sum(weights[scores <= s]) >= level (responses + 1): the one-sided split conformal
    quantile (a weight of 1 per response, shared among its ratings). Infinite when the weights never get there."""
    order = np.argsort(scores, kind="stable")
    reached = np.cumsum(np.asarray(weights)[order]) >= level * (responses + 1) - COUNT_TOLERANCE
    return float(np.asarray(scores)[order][reached.argmax()]) if reached.any() else float("inf")


def conformal_offset(scores, weights, level: float, responses: int) -> float:
    """Offset c of the level-tau quantile: P(y <= q + c) >= tau for tau >= 1/2, P(y < q + c) <= tau below
    (the upper rule on the negated scores), so the central intervals between the two are valid."""
    if level >= 0.5:
        return upper_conformal_offset(scores, weights, level, responses)
    return -upper_conformal_offset(-np.asarray(scores), weights, 1 - level, responses)


def _check_inputs(predictions, labels, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arrays of `fit`, refused with a one-line ValueError when shapes differ or values are not finite."""
    predictions, labels = np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    if predictions.ndim != 3 or labels.shape != predictions.shape[:2] or groups.shape != labels.shape[:1]:
        raise ValueError(
            "Expected predictions [n, M, K], labels [n, M] and groups [n], got shapes "
            f"{predictions.shape}, {labels.shape} and {groups.shape}."
        )
    for name, values, bad in (
        ("predictions", predictions, ~np.isfinite(predictions)),
        ("labels", labels, np.isinf(labels)),
    ):
        rows = np.flatnonzero(bad.reshape(len(values), -1).any(-1))
        if rows.size:
            raise ValueError(
                f"The calibration {name} are not finite in {rows.size} row(s) (0-based): {rows[:5].tolist()}."
            )
    return predictions, labels, np.unique(groups, return_inverse=True)[1]


class ConformalQuantileCalibrator:
    """Split conformal offsets for every attribute and quantile level, with scikit-learn's habits.

    Args:
        levels: the model's K quantile levels.
        width_bins: G >= 1 Mondrian groups: bins of equal calibration count of each response's predicted
            spread, the mean over attributes of its `GROUPING_WIDTH` interval width divided by the attribute's
            median calibration width (1: one group, the marginal guarantee).

    `fit(predictions, labels, groups)` takes the model's uncalibrated attribute quantiles of each rating row
    [n, M, K], the ratings [n, M] (NaN where missing) and the response each row rates [n]: the ratings of one
    response are not independent draws, so each response weighs 1 in total, shared among its ratings.
    Fitted attributes: `offsets_` [G, M, K], `width_scales_` [M], `width_bin_edges_` [G - 1],
    `width_level_indices_`, `responses_` and `ratings_` [G, M] (calibration counts per group and attribute).
    """

    def __init__(self, levels: Sequence[float], width_bins: int = 1):
        self.levels = levels
        self.width_bins = width_bins

    def fit(self, predictions, labels, groups=None) -> ConformalQuantileCalibrator:
        """Fit the offsets; refuses (ValueError) a group with too few responses for the outermost levels."""
        if (
            isinstance(self.width_bins, bool)
            or not isinstance(self.width_bins, Integral)
            or self.width_bins < 1
        ):
            raise ValueError(f"width_bins must be a whole number >= 1, got {self.width_bins!r}.")
        levels = [float(tau) for tau in self.levels]
        predictions, labels, response = _check_inputs(predictions, labels, groups)
        if predictions.shape[-1] != len(levels):
            raise ValueError(f"The predictions have {predictions.shape[-1]} levels, expected {len(levels)}.")
        self.width_level_indices_ = width_level_indices(levels)
        low, high = self.width_level_indices_
        first = np.unique(response, return_index=True)[1]  # one row per response: they share the prediction
        widths = predictions[first, :, high] - predictions[first, :, low]  # [responses, M]
        # A model that predicts no width at all still gets a positive scale (its spread is then 0 or huge).
        self.width_scales_ = np.maximum(np.median(widths, axis=0), 1e-12)
        spread = (widths / self.width_scales_).mean(-1)
        self.width_bin_edges_ = np.quantile(spread, np.arange(1, self.width_bins) / self.width_bins)
        group = np.searchsorted(self.width_bin_edges_, spread, side="right")[response]  # [n]
        shape = (self.width_bins, labels.shape[1])
        self.offsets_ = np.zeros((*shape, len(levels)))
        self.responses_, self.ratings_ = np.zeros(shape, dtype=int), np.zeros(shape, dtype=int)
        for m in range(labels.shape[1]):
            for g in range(self.width_bins):
                self._fit_group(predictions, labels, response, ~np.isnan(labels[:, m]) & (group == g), m, g)
        return self

    def _fit_group(self, predictions, labels, response, rows, m: int, g: int) -> None:
        """The offsets of attribute m in group g from its rated rows (`rows`: a mask)."""
        _, per_row, count = np.unique(response[rows], return_inverse=True, return_counts=True)
        self.responses_[g, m], self.ratings_[g, m] = len(count), int(rows.sum())
        needed = minimum_responses(self.levels)
        if len(count) < needed:
            where = f" in width group {g + 1} of {self.width_bins}" if self.width_bins > 1 else ""
            raise ValueError(
                f"Attribute {m} has {len(count)} rated calibration response(s){where}; split conformal at levels "
                f"{min(self.levels)}..{max(self.levels)} needs at least {needed} per group: give more "
                "calibration ratings" + (" or fewer width bins." if self.width_bins > 1 else ".")
            )
        weights = 1.0 / count[per_row]  # each response weighs 1, shared among its ratings
        for k, level in enumerate(self.levels):
            scores = labels[rows, m] - predictions[rows, m, k]
            self.offsets_[g, m, k] = conformal_offset(scores, weights, float(level), len(count))

    def config_value(self, **description) -> dict:
        """The `QRMConfig.calibration` dict of the fitted offsets (plus `description`, e.g. the method)."""
        return {
            "method": "split conformal" + (" (Mondrian by predicted width)" if self.width_bins > 1 else ""),
            "offsets": self.offsets_.tolist(),
            "width_bin_edges": self.width_bin_edges_.tolist(),
            "width_scales": self.width_scales_.tolist(),
            "width_level_indices": list(self.width_level_indices_),
            "calibration_responses": self.responses_.tolist(),
            "calibration_ratings": self.ratings_.tolist(),
            **description,
        }

    def predict(self, predictions) -> np.ndarray:
        """Calibrated quantiles [n, M, K] of uncalibrated ones, as the model computes them."""
        return apply_calibration(predictions, self.config_value())


def apply_calibration(predictions, calibration: dict, monotone: bool = True) -> np.ndarray:
    """Quantiles [n, M, K] moved by `calibration` (a `QRMConfig.calibration`) through the model's own step
    (`modeling_qrm.calibrate_quantiles`), then sorted when `monotone`, as a model with `monotone_quantiles`
    sorts them (one without leaves crossed offsets crossed)."""
    import torch

    from .modeling.modeling_qrm import calibrate_quantiles

    quantiles = calibrate_quantiles(torch.as_tensor(np.asarray(predictions, dtype=float)), calibration)
    return (quantiles.sort(-1).values if monotone else quantiles).numpy()


@contextmanager
def uncalibrated(model):
    """`model` with its calibration switched off inside the block: the quantiles the heads predict."""
    saved = model.config.calibration
    model.config.calibration = None
    try:
        yield model
    finally:
        model.config.calibration = saved


def rating_predictions(
    model, tokenizer, rows, label_range, batch_size: int = 8, max_length: int | None = None
):
    """(quantiles [n, M, K], labels [n, M], response [n], kinds [n] or None) of rating rows (the format of
    `qrm evaluate --ratings`: prompt, response, one column per attribute, optional `kind`; labels mapped to
    [0, 1] with `label_range`): each distinct response is scored once through `qrm_hf.scoring`, with the
    model as it is (use `uncalibrated` for the heads' own quantiles). Over-long conversations are refused."""
    from .evaluation import GROUP_COLUMN, kinds_of, score_rating_rows

    rated = score_rating_rows(
        model, tokenizer, rows, list(model.config.attribute_names), tuple(label_range), batch_size, max_length,
        too_long="error",
    )  # fmt: skip
    return rated.quantiles, rated.labels, rated.responses, kinds_of(rated.rows, GROUP_COLUMN)


def calibrate_model(
    model,
    tokenizer,
    rows,
    label_range,
    width_bins: int = 1,
    batch_size: int = 8,
    max_length: int | None = None,
) -> ConformalQuantileCalibrator:
    """Fit conformal calibration of `model` on rating rows (see `rating_predictions`) from the heads' own
    quantiles (an earlier calibration is replaced, not stacked) and store it in `model.config.calibration`."""
    from .modeling.configuration_qrm import check_calibration

    with uncalibrated(model):
        predictions, labels, response, _ = rating_predictions(
            model, tokenizer, rows, label_range, batch_size, max_length
        )
    calibrator = ConformalQuantileCalibrator(model.config.quantile_levels, width_bins)
    calibrator.fit(predictions, labels, response)
    config = model.config
    config.calibration = check_calibration(
        calibrator.config_value(), config.num_attributes, config.num_quantiles
    )
    return calibrator


def check_heldout_apart(calibration_rows, heldout_rows) -> None:
    """Refuse (ValueError) held-out rating rows that rate a response of the calibration rows (same prompt and
    response): their coverage would be measured on the data the offsets were fitted on, and look better.
    Rows without a prompt or a response are left to the readers, which refuse them by name."""

    def conversation(row):
        prompt, response = row.get("prompt"), row.get("response")
        return None if prompt is None or response is None else (repr(prompt), repr(response))

    calibrated = {conversation(row) for row in calibration_rows} - {None}
    shared = [i for i, row in enumerate(heldout_rows) if conversation(row) in calibrated]
    if shared:
        raise ValueError(
            f"{len(shared)} held-out row(s) rate a calibration response (0-based rows {shared[:5]}): held-out "
            "coverage needs responses the calibration has not seen; split the ratings by prompt."
        )


def coverage_report(model, tokenizer, rows, label_range, batch_size: int = 8, max_length: int | None = None):
    """Held-out measures of `model` before and after its calibration, on rating rows: {"before", "after"} ->
    {"all", and each kind} -> `qrm_hf.evaluation.distribution_measures` (pinball, CRPS, 50/80/90 % coverage,
    90 % width; lists over attributes), plus "attributes", "responses" and "ratings"."""
    from .evaluation import distribution_measures

    if model.config.calibration is None:
        raise ValueError("The model is not calibrated: there is no after to compare.")
    with uncalibrated(model):
        before, labels, response, kinds = rating_predictions(
            model, tokenizer, rows, label_range, batch_size, max_length
        )
    after = apply_calibration(before, model.config.calibration, model.config.monotone_quantiles)
    predictions = {"before": before, "after": after}
    selections = {"all": np.ones(len(labels), dtype=bool)}
    selections.update({kind: kinds == kind for kind in dict.fromkeys(kinds)} if kinds is not None else {})
    levels = model.config.quantile_levels
    report = {
        stage: {
            name: distribution_measures(labels[selected], values[selected], levels, response[selected])
            for name, selected in selections.items()
        }
        for stage, values in predictions.items()
    }
    report.update(
        attributes=list(model.config.attribute_names), responses=len(np.unique(response)), ratings=len(labels)
    )
    return report


def format_coverage_report(report: dict) -> str:
    """The before / after table of `coverage_report`: 80 % coverage, pinball and CRPS by attribute and kind."""
    columns = ("coverage_80", "pinball", "crps")
    header = f"  {'attribute':<16} {'kind':<14}" + "".join(
        f"{c + ' before':>20}{'after':>8}" for c in columns
    )
    lines = [header]
    for kind in report["before"]:
        for m, attribute in enumerate(report["attributes"]):
            cells = "".join(
                f"{report['before'][kind][c][m]:>20.3f}{report['after'][kind][c][m]:>8.3f}" for c in columns
            )
            lines.append(f"  {attribute:<16} {kind:<14}" + cells)
    mean = {
        stage: {c: np.mean(report[stage]["all"][c]) for c in ("pinball", "crps")}
        for stage in ("before", "after")
    }
    lines.append(
        "  mean over attributes: "
        + ", ".join(f"{c} {mean['before'][c]:.4f} -> {mean['after'][c]:.4f}" for c in ("pinball", "crps"))
        + f" ({100 * (mean['after']['pinball'] / mean['before']['pinball'] - 1):+.1f} % pinball)"
    )
    return "\n".join(lines)


def calibration_card_section(calibration: dict, heldout: dict | None = None) -> str:
    """Markdown of the model card's "Calibration" section: the method, the calibration size and, with a
    `coverage_report` of held-out rows, the 80 % coverage before and after per attribute and kind."""
    responses = np.asarray(calibration["calibration_responses"]).sum(0)  # [M]
    ratings = np.asarray(calibration["calibration_ratings"]).sum(0)
    lines = [
        f"The attribute quantiles are calibrated by {calibration['method']} (`qrm calibrate`): each attribute and "
        "quantile level moves by an offset fitted on held-out ratings, so that a quantile at level tau >= 1/2 "
        "lies above a new rating with probability at least tau, one below 1/2 under it with probability at "
        f"most tau. Calibration data: {int(responses.min())}-{int(responses.max())} responses "
        f"({int(ratings.min())}-{int(ratings.max())} ratings) per attribute; the ratings of one response count "
        "as one response.",
        "",
    ]
    if heldout is None:
        return "\n".join(lines + ["Coverage was not measured on held-out data."])
    lines += [
        f"80 % interval coverage on {heldout['responses']} held-out responses ({heldout['ratings']} ratings):",
        "",
        "| attribute | rows | before | after |",
        "|---|---|---|---|",
    ]
    for kind in heldout["before"]:
        for m, attribute in enumerate(heldout["attributes"]):
            before, after = (
                heldout["before"][kind]["coverage_80"][m],
                heldout["after"][kind]["coverage_80"][m],
            )
            lines.append(f"| {attribute} | {kind} | {before:.3f} | {after:.3f} |")
    return "\n".join(lines)


def save_calibrated(
    model, tokenizer, source, output_dir, heldout: dict | None = None, homepage: str | None = None
):
    """Write the calibrated `model` with its tokenizer into `output_dir` (`qrm_hf.io.replace_directory`: absent,
    empty or an earlier output of `qrm calibrate`), with the model card of `source` (a local directory; else a
    new card), its calibration section (`calibration_card_section`) and `homepage` linked when given.
    Returns the directory."""
    from pathlib import Path

    from .io import replace_directory
    from .model_cards import check_homepage, render_model_card, set_card_calibration, set_card_homepage

    if homepage:
        check_homepage(homepage)  # before anything is written
    source_card = Path(source) / "README.md"
    card = (
        source_card.read_text(encoding="utf-8") if source_card.is_file() else render_model_card(model.config)
    )
    card = set_card_calibration(card, calibration_card_section(model.config.calibration, heldout))
    if homepage:
        card = set_card_homepage(card, homepage)
    with replace_directory(output_dir, CALIBRATE_COMMAND) as directory:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        card.save(directory / "README.md")
    return Path(output_dir)
