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


def _score_unique(model, tokenizer, conversations, batch_size, max_length=None):
    """Score each distinct conversation once; return the outputs, each input's row in them, and which
    inputs are longer than `max_length` (left out and counted, never truncated, as `qrm extract` does)."""
    from .scoring import score_conversations

    unique, position, index = [], {}, []
    for conversation in conversations:
        key = tuple((message["role"], message["content"]) for message in conversation)
        if key not in position:
            position[key] = len(unique)
            unique.append(conversation)
        index.append(position[key])
    outputs = score_conversations(
        model, tokenizer, unique, batch_size=batch_size, max_length=max_length, too_long="skip"
    )
    index = np.array(index)
    return outputs, index, outputs["too_long"].numpy()[index]


def evaluate_ratings(
    model, tokenizer, rows, label_range, attributes=None, batch_size: int = 8, max_length: int | None = None
) -> dict:
    """Pinball loss and calibration of the model's attribute quantiles on rating rows (DESIGN.md §6).

    Returns `pinball` (mean over attributes and levels), `pinball_per_attribute`, `calibration_error`,
    `skipped_too_long` (rows longer than `max_length` tokens, default the backbone's positions, left out)
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
    outputs, index, too_long = _score_unique(model, tokenizer, conversations, batch_size, max_length)
    rows = [row for row, skip in zip(rows, too_long, strict=True) if not skip]
    labels, index = labels[~too_long], index[~too_long]
    predictions = outputs["attribute_quantiles"].numpy()[index]  # [n, M, K]
    levels = model.config.quantile_levels
    loss = pinball_loss(labels, predictions, levels)
    report = {
        "pinball": float(loss.mean()),
        "pinball_per_attribute": dict(zip(attributes, loss.mean(1).tolist(), strict=True)),
        "calibration_error": calibration_error(labels, predictions, levels),
        "skipped_too_long": int(too_long.sum()),
    }
    kinds = np.array([row.get("kind") for row in rows])
    if kinds.any():
        report["pinball_by_kind"] = {
            str(kind): float(pinball_loss(labels[kinds == kind], predictions[kinds == kind], levels).mean())
            for kind in dict.fromkeys(kinds)
        }
    return report


def evaluate_pairs(model, tokenizer, rows, batch_size: int = 8, max_length: int | None = None) -> dict:
    """Pairwise accuracy of the expected reward on (prompt, chosen, rejected) rows, overall and by `kind`;
    pairs with a side longer than `max_length` tokens are left out and counted in `skipped_too_long`."""
    from .presets import DatasetPreset, preference_examples

    preset = DatasetPreset.custom(
        "preference", prompt="prompt", chosen="chosen", rejected="rejected", name="preference rows"
    )
    pairs, pair_rows = preference_examples(rows, preset, with_index=True)
    conversations = [chosen for chosen, _ in pairs] + [rejected for _, rejected in pairs]
    outputs, index, too_long = _score_unique(model, tokenizer, conversations, batch_size, max_length)
    kept = ~(too_long[: len(pairs)] | too_long[len(pairs) :])
    scores = outputs["logits"][:, 0].numpy()[index]
    chosen, rejected = scores[: len(pairs)][kept], scores[len(pairs) :][kept]
    report = {
        "accuracy": pairwise_accuracy(chosen, rejected),
        "pairs": int(kept.sum()),
        "skipped_too_long": int((~kept).sum()),
    }
    kinds = np.array([rows[i].get("kind") for i in pair_rows[kept]])
    if kinds.any():
        report["accuracy_by_kind"] = {
            str(kind): pairwise_accuracy(chosen[kinds == kind], rejected[kinds == kind])
            for kind in dict.fromkeys(kinds)
        }
    return report
