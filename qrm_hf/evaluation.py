"""Measures of how good a reward model and its reward distributions are.

All functions take numpy arrays (or anything `np.asarray` accepts) and ignore NaN labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pinball_loss(labels, predictions, levels: Sequence[float]) -> np.ndarray:
    """Mean pinball (quantile) loss per attribute and level.

    labels [n, M] (NaN where missing), predictions [n, M, K] -> [M, K]. Lower is better; it is the
    loss quantile regression minimises, so it scores a whole predicted distribution.
    """
    labels, predictions = np.asarray(labels, dtype=float), np.asarray(predictions, dtype=float)
    residual = labels[:, :, None] - predictions
    levels = np.asarray(levels, dtype=float)
    loss = np.maximum(levels * residual, (levels - 1) * residual)
    return np.nanmean(np.where(np.isnan(residual), np.nan, loss), axis=0)


def crps(labels, predictions, levels: Sequence[float]) -> np.ndarray:
    """Continuous ranked probability score per attribute, in its quantile-score form.

    labels [n, M] (NaN where missing), predictions [n, M, K] at ``levels`` [K] -> [M].
    For one label y and quantile estimates q_k, the score is ``2 * mean_k pinball_{tau_k}(y - q_k)``,
    which approximates the CRPS of the predicted distribution (the integral of 2 * pinball over
    all levels, read at the K levels). It is averaged over the labelled rows of each attribute
    (NaN labels are ignored; an attribute without any label gives NaN). Lower is better; in label
    units. The estimates are used as given (not sorted).
    """
    loss = _pinball_per_row(labels, predictions, levels)  # [n, M, K], NaN where the label is missing
    return 2 * _nanmean(loss.mean(-1), axis=0)


def interval_bounds(predictions, levels: Sequence[float], width: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper ends of the central ``width`` interval [q_{(1-w)/2}, q_{(1+w)/2}], each [n, M].

    predictions [n, M, K] at ``levels`` [K]. The ends are read exactly as :func:`qrm_hf.risk.quantile`
    reads a quantile: estimates sorted along K, linear interpolation between levels, clamped to the
    outermost levels (nothing is extrapolated into the tails).
    """
    if not 0 < width < 1:
        raise ValueError(f"`width` must lie in (0, 1), got {width}.")
    predictions = np.sort(np.asarray(predictions, dtype=float), axis=-1)
    levels = np.asarray(levels, dtype=float)
    if levels.ndim != 1 or levels.size != predictions.shape[-1]:
        raise ValueError(
            f"`levels` has {levels.size} entries but the predictions have K = {predictions.shape[-1]}."
        )
    if (np.diff(levels) <= 0).any():
        raise ValueError(f"`levels` must be strictly increasing, got {levels.tolist()}.")
    return _quantile(predictions, levels, (1 - width) / 2), _quantile(predictions, levels, (1 + width) / 2)


def interval_coverage(labels, predictions, levels: Sequence[float], width: float) -> np.ndarray:
    """Fraction of labels inside the central ``width`` interval, per attribute.

    labels [n, M] (NaN ignored), predictions [n, M, K] at ``levels`` [K] -> [M]. The interval is
    [q_{(1-w)/2}, q_{(1+w)/2}] with both ends included, read by :func:`interval_bounds` (linear
    interpolation between levels as :func:`qrm_hf.risk.quantile`, clamped to the outermost levels).
    A calibrated model covers a fraction ``width``. An attribute without any label gives NaN.
    """
    labels = np.asarray(labels, dtype=float)
    low, high = interval_bounds(predictions, levels, width)
    inside = np.where(np.isnan(labels), np.nan, (labels >= low) & (labels <= high))
    return _nanmean(inside, axis=0)


def interval_width(predictions, levels: Sequence[float], width: float) -> np.ndarray:
    """Width q_{(1+w)/2} - q_{(1-w)/2} of the central ``width`` interval: predictions [n, M, K] -> [n, M].

    Ends read as in :func:`interval_bounds` (clamped to the outermost levels, so a 0.95 interval of
    quantiles estimated at 0.05..0.95 is the 0.90 one).
    """
    low, high = interval_bounds(predictions, levels, width)
    return high - low


def _quantile(sorted_predictions: np.ndarray, levels: np.ndarray, tau: float) -> np.ndarray:
    """The tau-quantile of sorted estimates [..., K] by linear interpolation (risk.quantile in numpy)."""
    if levels.size == 1:
        return sorted_predictions[..., 0]
    tau = min(max(tau, levels[0]), levels[-1])
    low = int(np.clip(np.searchsorted(levels, tau, side="right") - 1, 0, levels.size - 2))
    fraction = (tau - levels[low]) / (levels[low + 1] - levels[low])
    q_low, q_high = sorted_predictions[..., low], sorted_predictions[..., low + 1]
    return q_low + fraction * (q_high - q_low)


def _pinball_per_row(labels, predictions, levels: Sequence[float]) -> np.ndarray:
    """Pinball loss of every row, attribute and level: [n, M, K], NaN where the label is missing."""
    labels, predictions = np.asarray(labels, dtype=float), np.asarray(predictions, dtype=float)
    if labels.ndim != 2 or predictions.ndim != 3 or predictions.shape[:2] != labels.shape:
        raise ValueError(
            f"Expected labels [n, M] and predictions [n, M, K], got {labels.shape} and {predictions.shape}."
        )
    residual = labels[:, :, None] - predictions
    levels = np.asarray(levels, dtype=float)
    return np.maximum(levels * residual, (levels - 1) * residual)  # NaN labels stay NaN


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """np.nanmean without the warning for an all-NaN slice (which gives NaN)."""
    count = (~np.isnan(values)).sum(axis)
    total = np.nansum(values, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def calibration_error(labels, predictions, levels: Sequence[float]) -> float:
    """Mean over levels of |fraction of labels <= predicted tau-quantile - tau| (0 = calibrated).

    labels [n, M], predictions [n, M, K]; pooled over attributes.
    """
    labels, predictions = np.asarray(labels, dtype=float), np.asarray(predictions, dtype=float)
    observed = ~np.isnan(labels)
    below = labels[observed][:, None] <= predictions[observed]  # [n_observed, K]
    return float(np.mean(np.abs(below.mean(0) - np.asarray(levels, dtype=float))))


def pairwise_accuracy(chosen_scores, rejected_scores) -> float:
    """Fraction of pairs where the chosen response scores higher (ties count one half)."""
    chosen, rejected = np.asarray(chosen_scores, dtype=float), np.asarray(rejected_scores, dtype=float)
    if chosen.shape != rejected.shape or chosen.size == 0:
        raise ValueError(
            f"Expected two non-empty score arrays of the same shape, got {chosen.shape}, {rejected.shape}."
        )
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))


def unique_conversations(conversations) -> tuple[list, np.ndarray]:
    """The distinct conversations (message lists), in first-seen order, and each input's row among them."""
    unique, position, index = [], {}, []
    for conversation in conversations:
        key = tuple((message["role"], message["content"]) for message in conversation)
        if key not in position:
            position[key] = len(unique)
            unique.append(conversation)
        index.append(position[key])
    return unique, np.array(index, dtype=int)


def _score_unique(model, tokenizer, conversations, batch_size):
    """Score each distinct conversation once; return the outputs and each input's row in them."""
    from .scoring import score_conversations

    unique, index = unique_conversations(conversations)
    return score_conversations(model, tokenizer, unique, batch_size=batch_size), index


def evaluate_ratings(model, tokenizer, rows, label_range, attributes=None, batch_size: int = 8) -> dict:
    """Pinball loss and calibration of the model's attribute quantiles on rating rows (DESIGN.md §6).

    Returns `pinball` (mean over attributes and levels), `pinball_per_attribute`, `calibration_error`
    and, when rows carry a `kind` column, `pinball_by_kind`.
    """
    from .presets import DatasetPreset, attribute_examples

    attributes = list(attributes or model.config.attribute_names)
    if attributes != list(model.config.attribute_names):
        raise ValueError(
            f"Rating columns {attributes} differ from the model's attributes {model.config.attribute_names}."
        )
    preset = DatasetPreset.custom(
        "attribute", prompt="prompt", response="response", attributes=attributes, label_ranges=label_range,
        name="rating rows",
    )  # fmt: skip
    conversations, labels, index = attribute_examples(rows, preset, with_index=True)
    rows = [rows[i] for i in index]  # rows without any label are left out
    outputs, index = _score_unique(model, tokenizer, conversations, batch_size)
    predictions = outputs["attribute_quantiles"].numpy()[index]  # [n, M, K]
    levels = model.config.quantile_levels
    loss = pinball_loss(labels, predictions, levels)
    report = {
        "pinball": float(loss.mean()),
        "pinball_per_attribute": dict(zip(attributes, loss.mean(1).tolist(), strict=True)),
        "calibration_error": calibration_error(labels, predictions, levels),
    }
    kinds = np.array([row.get("kind") for row in rows])
    if kinds.any():
        report["pinball_by_kind"] = {
            str(kind): float(pinball_loss(labels[kinds == kind], predictions[kinds == kind], levels).mean())
            for kind in dict.fromkeys(kinds)
        }
    return report


def evaluate_pairs(model, tokenizer, rows, batch_size: int = 8) -> dict:
    """Pairwise accuracy of the expected reward on (prompt, chosen, rejected) rows, overall and by `kind`."""
    from .presets import DatasetPreset, preference_examples

    preset = DatasetPreset.custom(
        "preference", prompt="prompt", chosen="chosen", rejected="rejected", name="preference rows"
    )
    pairs = preference_examples(rows, preset)
    conversations = [chosen for chosen, _ in pairs] + [rejected for _, rejected in pairs]
    outputs, index = _score_unique(model, tokenizer, conversations, batch_size)
    scores = outputs["logits"][:, 0].numpy()[index]
    chosen, rejected = scores[: len(pairs)], scores[len(pairs) :]
    report = {"accuracy": pairwise_accuracy(chosen, rejected), "pairs": len(pairs)}
    kinds = np.array([row.get("kind") for row in rows])
    if kinds.any():
        report["accuracy_by_kind"] = {
            str(kind): pairwise_accuracy(chosen[kinds == kind], rejected[kinds == kind])
            for kind in dict.fromkeys(kinds)
        }
    return report
