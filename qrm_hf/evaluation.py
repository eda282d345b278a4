"""Measures of how good a reward model and its reward distributions are.

All functions take numpy arrays (or anything `np.asarray` accepts) and ignore NaN labels. A NaN or
infinite prediction or score is never counted (as a wrong pair, a coverage miss, ...): it is refused
with a ValueError naming its rows, as `qrm_hf.scoring` refuses such model outputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from .data import CONTRAST, GROUP_COLUMN


def _finite(values, what: str) -> np.ndarray:
    """`values` as a float array, refused (ValueError naming the first rows) if any is NaN or infinite."""
    values = np.asarray(values, dtype=float)
    if values.ndim == 0:
        values = values.reshape(1)
    bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(-1))
    if bad.size:
        raise ValueError(
            f"The {what} are NaN or infinite in {bad.size} row(s) (0-based): {bad[:5].tolist()}"
            f"{' ...' if bad.size > 5 else ''}; such a value is never counted as an answer."
        )
    return values


def _labels(labels) -> np.ndarray:
    """`labels` as a float array: NaN marks a missing label, an infinite one is refused."""
    labels = np.asarray(labels, dtype=float)
    rows = np.flatnonzero(np.isinf(labels).reshape(len(labels), -1).any(-1))
    if rows.size:
        raise ValueError(
            f"The labels are infinite in {rows.size} row(s) (0-based): {rows[:5].tolist()} (NaN marks a missing "
            "label)."
        )
    return labels


def pinball_loss(labels, predictions, levels: Sequence[float]) -> np.ndarray:
    """Mean pinball (quantile) loss per attribute and level.

    labels [n, M] (NaN where missing), predictions [n, M, K] -> [M, K]. Lower is better; it is the
    loss quantile regression minimises, so it scores a whole predicted distribution.
    """
    labels, predictions = _labels(labels), _finite(predictions, "predictions")
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
    predictions = np.sort(_finite(predictions, "predictions"), axis=-1)
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
    labels = _labels(labels)
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


def median_spread(member_predictions, levels: Sequence[float], width: float = 0.9) -> np.ndarray:
    """How far the heads' own uncertainty moves the median, per response and attribute.

    member_predictions [E, n, M, K]: the quantiles of E reward models refitted on bootstrap resamples
    (`qrm_hf.training.bootstrap.fit_bootstrap_heads`). Returns [n, M]: the width of a central ``width``
    normal interval of the members' medians, 2 z sigma (z the normal quantile at (1 + width) / 2: 3.29
    sigma for 90 %), comparable with :func:`interval_width` of the model's own quantiles.
    """
    members = np.sort(_finite(member_predictions, "member predictions"), axis=-1)
    if members.ndim != 4 or members.shape[0] < 2:
        raise ValueError(f"Expected member predictions [E >= 2, n, M, K], got shape {members.shape}.")
    medians = _quantile(members, np.asarray(levels, dtype=float), 0.5)  # [E, n, M]
    return 2 * NormalDist().inv_cdf((1 + width) / 2) * medians.std(axis=0)


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
    labels, predictions = _labels(labels), _finite(predictions, "predictions")
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
    labels, predictions = _labels(labels), _finite(predictions, "predictions")
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
    _finite(chosen, "chosen scores")
    _finite(rejected, "rejected scores")
    return float(np.mean((chosen > rejected) + 0.5 * (chosen == rejected)))


# ----------------------------------------------------------------- uncertainty that ranks the mistakes

COVERAGE_GRID = tuple(k / 10 for k in range(1, 11))  # the coverages reported: 10 %, 20 %, ..., 100 %
SURER_FRACTION = 0.5  # MAE@50 / R²@50: the half of the samples the model is surest about (UARM)
RATING_INTERVAL = 0.8  # the central interval whose width ranks ratings (narrower = surer)
RANDOM_DRAWS = 200  # random halves averaged for the R² of a random half (seeded: the same every run)


def kept_count(fraction: float, n: int) -> int:
    """How many of `n` samples a coverage `fraction` in (0, 1] keeps: ceil(fraction * n), at least one."""
    if not 0 < fraction <= 1:
        raise ValueError(f"A coverage must lie in (0, 1], got {fraction}.")
    return max(1, math.ceil(fraction * n - 1e-9))  # 1e-9: 0.3 * 10 is 3.0000000000000004 in floats


def _tie_averaged(values: np.ndarray, certainty: np.ndarray) -> np.ndarray:
    """`values` in order of decreasing `certainty`, each run of tied certainties replaced by its mean: the
    running sums are then the expectation over every order of the tied samples (no tie-break decides)."""
    order = np.argsort(-certainty, kind="stable")
    values, certainty = values[order], certainty[order]
    starts = np.flatnonzero(np.r_[True, certainty[1:] != certainty[:-1]])
    sums = np.add.reduceat(values, starts)
    lengths = np.diff(np.r_[starts, len(values)])
    return np.repeat(sums / lengths, lengths)


def _kept_weights(certainty: np.ndarray, keep: int) -> np.ndarray:
    """Weight of each sample when the `keep` surest are kept: 1 above the cut, 0 below, and the samples
    tied at the cut share the places left equally (the expectation over the orders of the tied ones)."""
    cut = np.sort(certainty)[::-1][keep - 1]
    above, tied = certainty > cut, certainty == cut
    return np.where(above, 1.0, np.where(tied, (keep - above.sum()) / tied.sum(), 0.0))


def _certainty(values, what: str) -> np.ndarray:
    """A ranking signal as a float array [n]: +inf is allowed (surest), NaN is refused by rows."""
    values = np.asarray(values, dtype=float).reshape(-1)
    bad = np.flatnonzero(np.isnan(values) | (values == -np.inf))
    if bad.size:
        raise ValueError(
            f"The {what} is NaN or -inf in {bad.size} row(s) (0-based): {bad[:5].tolist()}"
            f"{' ...' if bad.size > 5 else ''}; such a sample cannot be ranked."
        )
    return without_rounding_noise(values)


def without_rounding_noise(values: np.ndarray, digits: int = 9) -> np.ndarray:
    """`values` rounded to `digits` significant digits of the largest finite magnitude, so that values equal up
    to floating-point rounding (e.g. the widths q_hi - q_lo of a constant-width model, which differ in the last
    bits with the size of q) tie when ranked instead of ranking by their rounding errors."""
    finite = np.abs(values[np.isfinite(values)])
    scale = finite.max() if finite.size and finite.max() > 0 else 1.0
    step = 10.0 ** (np.floor(np.log10(scale)) - digits + 1)
    return np.where(np.isfinite(values), np.round(values / step) * step, values)


def accuracy_coverage(correct, certainty, coverages: Sequence[float] = COVERAGE_GRID) -> dict:
    """Accuracy on the pairs a ranking signal is surest about, against the fraction kept.

    `correct` [n]: 1 for a pair the model orders right, 0 wrong, 1/2 a tie (as `pairwise_accuracy`);
    NaN marks an unknown answer, left out and counted in ``left_out``. `certainty` [n]: the signal, higher
    = surer (+inf allowed, NaN refused). At coverage c the ``kept_count(c, n)`` surest pairs are kept;
    pairs tied in certainty at the cut enter with their mean correctness (the expectation over every
    order of the tied pairs). ``area`` is the mean over k = 1..n of the accuracy of the k surest pairs:
    the area under the accuracy-coverage step curve. A signal that says nothing about the mistakes has
    every accuracy, and the area, equal to the overall accuracy (``random``); one that puts every
    mistake last has the largest area.
    """
    correct = np.asarray(correct, dtype=float).reshape(-1)
    certainty = _certainty(certainty, "ranking signal")
    if correct.shape != certainty.shape:
        raise ValueError(f"Expected one certainty per answer, got {certainty.shape} and {correct.shape}.")
    known = ~np.isnan(correct)
    if not known.any():
        raise ValueError("No answer is known (every one is NaN): there is nothing to rank.")
    running = np.cumsum(_tie_averaged(correct[known], certainty[known]))
    accuracy = running / np.arange(1, len(running) + 1)  # of the k surest, k = 1..n
    n = int(known.sum())
    return {
        "coverage": [float(c) for c in coverages],
        "accuracy": [float(accuracy[kept_count(c, n) - 1]) for c in coverages],
        "area": float(accuracy.mean()),
        "random": float(accuracy[-1]),
        "n": n,
        "left_out": int((~known).sum()),
    }


def _r_squared(labels: np.ndarray, predictions: np.ndarray, weights: np.ndarray) -> float:
    """Weighted coefficient of determination 1 - SS_res / SS_tot around the kept labels' own mean (NaN
    when those labels do not vary)."""
    mean = np.average(labels, weights=weights)
    total = np.sum(weights * (labels - mean) ** 2)
    return float(1 - np.sum(weights * (labels - predictions) ** 2) / total) if total > 0 else math.nan


def selective_error(
    labels, predictions, uncertainty, fraction: float = SURER_FRACTION, seed: int = 0
) -> dict:
    """MAE and R² of point predictions on the `fraction` of samples with the lowest `uncertainty`, next to
    a random subset of the same size (UARM's MAE@50 / R²@50 for `fraction` = 0.5).

    labels, predictions, uncertainty [n]; NaN labels are left out and counted in ``left_out``. The kept
    samples are the ``kept_count(fraction, n)`` least uncertain; those tied at the cut (e.g. the ratings
    of one response, which share its prediction) share the places left with equal weight. ``mae_random``
    is the exact expectation over random subsets (the overall MAE); ``r2_random`` averages
    `RANDOM_DRAWS` random subsets drawn with `seed`. R² is 1 - SS_res / SS_tot on the kept samples
    around their own mean (NaN when they do not vary).
    """
    labels = _labels(labels).reshape(-1)
    predictions = _finite(predictions, "predictions").reshape(-1)
    certainty = -without_rounding_noise(_finite(uncertainty, "uncertainty").reshape(-1))
    known = ~np.isnan(labels)
    labels, predictions, certainty = labels[known], predictions[known], certainty[known]
    n = len(labels)
    if n == 0:
        return {"n": 0, "left_out": int((~known).sum())}
    keep = kept_count(fraction, n)
    weights = _kept_weights(certainty, keep)
    error = np.abs(labels - predictions)
    rng = np.random.default_rng(seed)
    draws = [rng.choice(n, keep, replace=False) for _ in range(RANDOM_DRAWS)]
    r2_random = [_r_squared(labels[d], predictions[d], np.ones(keep)) for d in draws]
    return {
        "mae_surer": float(np.sum(weights * error) / keep),
        "mae_random": float(error.mean()),
        "r2_surer": _r_squared(labels, predictions, weights),
        "r2_random": float(np.nanmean(r2_random)) if not np.isnan(r2_random).all() else math.nan,
        "kept": keep,
        "n": n,
        "left_out": int((~known).sum()),
    }


def rating_selective_error(
    labels, predictions, levels: Sequence[float], attributes: Sequence[str], width: float = RATING_INTERVAL
) -> dict:
    """`selective_error` of the predicted median per attribute, the samples ranked by the width of the
    central `width` interval (narrower = surer). labels [n, M] (NaN where missing), predictions
    [n, M, K] at `levels` -> {attribute: report} with the interval ``width`` recorded."""
    labels, predictions = _labels(labels), _finite(predictions, "predictions")
    medians = _quantile(np.sort(predictions, axis=-1), np.asarray(levels, dtype=float), 0.5)
    widths = interval_width(predictions, levels, width)
    return {
        name: {"interval": width, **selective_error(labels[:, m], medians[:, m], widths[:, m])}
        for m, name in enumerate(attributes)
    }


def pair_ranking_signals(
    chosen_scores, rejected_scores, chosen_quantiles, rejected_quantiles, chosen_epistemic=None,
    rejected_epistemic=None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """The ranking signals of pairs, each [N], higher = surer the model orders the pair right.

    ``margin`` |s_c - s_r| of the model's scores (what a point reward model has); ``probability``
    |P(R_c > R_r) - 1/2| and ``effect_size`` |d| of the reward distributions [N, K]
    (`qrm_hf.preference.preference_strength`). With the members' spread of each side's expected reward
    (`reward_epistemic_std` [N] each; None: a model without members, these signals are left out):
    ``epistemic`` minus the combined spread sqrt(s_c^2 + s_r^2) (members that agree: surer) and
    ``margin_over_epistemic`` the margin in units of that spread (a z-score: how far the members would
    have to move for the order to flip; +inf for a non-zero margin the members agree on exactly).
    """
    from .preference import preference_strength

    margin = np.asarray(chosen_scores, dtype=float) - np.asarray(rejected_scores, dtype=float)
    strength = preference_strength(np.asarray(chosen_quantiles), np.asarray(rejected_quantiles))
    signals = {
        "margin": np.abs(margin),
        "probability": np.abs(np.asarray(strength.probability) - 0.5),
        "effect_size": np.abs(np.asarray(strength.effect_size)),
    }
    if chosen_epistemic is not None and rejected_epistemic is not None:
        spread = np.hypot(np.asarray(chosen_epistemic, float), np.asarray(rejected_epistemic, float))
        signals["epistemic"] = -spread
        with np.errstate(divide="ignore", invalid="ignore"):
            signals["margin_over_epistemic"] = np.where(margin == 0, 0.0, np.abs(margin) / spread)
    return signals


def pair_ranking_report(correct, signals: dict, coverages: Sequence[float] = COVERAGE_GRID) -> dict:
    """`accuracy_coverage` of every signal of `pair_ranking_signals` -> {"pairs", "accuracy", "signals":
    {name: curve}}. `correct` [N]: 1 for a pair the model orders right, 0 wrong, a fraction for a tie as
    the benchmark counts it (`pairwise_accuracy`: one half); the overall accuracy is what a signal that
    knows nothing about the mistakes reaches at every coverage."""
    correct = np.asarray(correct, dtype=float)
    curves = {name: accuracy_coverage(correct, values, coverages) for name, values in signals.items()}
    return {"pairs": len(correct), "accuracy": float(np.nanmean(correct)), "signals": curves}


def format_ranking_report(report: dict, coverage: float = SURER_FRACTION) -> str:
    """The ranking table of a `pair_ranking_report`: per signal, the accuracy on the surest `coverage`
    of the pairs and the area under the accuracy-coverage curve (random: the overall accuracy)."""
    lines = [
        f"  Ranking the mistakes on {report['pairs']} pairs: accuracy on the surest {coverage:.0%} and area "
        "under the accuracy-coverage curve (higher is better)",
        f"    {'signal':<22}{'acc@' + format(coverage, '.0%'):>9}{'area':>8}",
    ]
    for name, curve in report["signals"].items():
        at = curve["accuracy"][curve["coverage"].index(coverage)]
        lines.append(f"    {name:<22}{at:>9.3f}{curve['area']:>8.3f}")
    lines.append(f"    {'random':<22}{report['accuracy']:>9.3f}{report['accuracy']:>8.3f}")
    return "\n".join(lines)


def format_selective_error(models: dict) -> str:
    """The MAE@50 / R²@50 table of `rating_selective_error` reports ({model name: report}): the surer half
    by predicted width against a random half, per attribute and model."""
    attributes = next(iter(models.values()))  # {attribute: report} of the first model
    first = next(iter(attributes.values()))
    lines = [
        f"  Error of the median on the {SURER_FRACTION:.0%} of ratings with the narrowest {first['interval']:.0%} "
        f"interval, next to a random {SURER_FRACTION:.0%} (MAE: lower is better, R²: higher)",
        f"    {'attribute':<16}{'model':<10}{'MAE@50':>9}{'random':>9}{'R²@50':>9}{'random':>9}{'ratings':>9}",
    ]
    for attribute in attributes:
        for name, report in models.items():
            entry = report[attribute]
            if entry["n"] == 0:
                lines.append(f"    {attribute:<16}{name:<10}  no labels")
                continue
            lines.append(
                f"    {attribute:<16}{name:<10}{entry['mae_surer']:>9.3f}{entry['mae_random']:>9.3f}"
                f"{entry['r2_surer']:>9.3f}{entry['r2_random']:>9.3f}{entry['n']:>9}"
            )
    return "\n".join(lines)


# A gating network is degenerate when one attribute takes more than DEGENERATE_WEIGHT of the mix on more
# than DEGENERATE_SHARE of the prompts: the prompt then decides nothing (docs/design.md "Gating collapse").
DEGENERATE_WEIGHT = 0.99
DEGENERATE_SHARE = 0.9


def normalised_entropy(weights) -> np.ndarray:
    """Entropy of each row of mixing weights [N, M] (rescaled to sum to one) divided by log M: 0 for a
    single attribute, 1 for the uniform mix."""
    weights = np.asarray(weights, dtype=float)
    if weights.ndim != 2 or weights.shape[1] < 2 or np.any(weights < 0) or not np.all(weights.sum(1) > 0):
        raise ValueError(
            f"Expected non-negative weights [N, M >= 2] with positive rows, got {weights.shape}."
        )
    p = weights / weights.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(1) / np.log(weights.shape[1])


def fixed_mix_accuracies(
    chosen_rewards, rejected_rewards, attribute_names: Sequence[str]
) -> dict[str, float]:
    """Pairwise accuracy of the fixed mixes of the attribute rewards ([N, M] each): every attribute alone
    ("<name> only") and the uniform mix ("uniform") -- what a gating network has to beat."""
    chosen, rejected = np.asarray(chosen_rewards, dtype=float), np.asarray(rejected_rewards, dtype=float)
    if chosen.ndim != 2 or chosen.shape != rejected.shape or chosen.shape[1] != len(attribute_names):
        raise ValueError(
            f"Expected rewards [N, {len(attribute_names)}] for {list(attribute_names)}, got {chosen.shape} "
            f"and {rejected.shape}."
        )
    mixes = {
        f"{name} only": pairwise_accuracy(chosen[:, m], rejected[:, m])
        for m, name in enumerate(attribute_names)
    }
    mixes["uniform"] = pairwise_accuracy(chosen.mean(1), rejected.mean(1))
    return mixes


def gating_report(
    prompt_weights,
    chosen_rewards,
    rejected_rewards,
    attribute_names: Sequence[str],
    chosen_weights,
    rejected_weights=None,
) -> dict:
    """How the gating network mixes, against the fixed mixes, on preference pairs.

    `prompt_weights` [P, M]: the gating output of each distinct prompt (entropy and degeneracy are per
    prompt); `chosen_rewards`, `rejected_rewards` [N, M]: the attribute rewards of both sides of each pair;
    `chosen_weights`, `rejected_weights` [N, M]: the gating output each side was scored with (the rejected
    side's defaults to the chosen side's: both have the pair's prompt). Returns the gated accuracy (the
    reward being weights . rewards, as the model's score), the fixed mixes' (`fixed_mix_accuracies`), the
    mean normalised entropy, the share of prompts on which one attribute weighs more than
    DEGENERATE_WEIGHT, and the mean weights (each row rescaled to sum to one).
    """
    prompt_weights = np.asarray(prompt_weights, dtype=float)
    chosen, rejected = np.asarray(chosen_rewards, dtype=float), np.asarray(rejected_rewards, dtype=float)
    chosen_weights = np.asarray(chosen_weights, dtype=float)
    rejected_weights = (
        chosen_weights if rejected_weights is None else np.asarray(rejected_weights, dtype=float)
    )
    if chosen_weights.shape != chosen.shape or rejected_weights.shape != chosen.shape:
        raise ValueError(
            f"Expected gating weights of shape {chosen.shape} per pair, got {chosen_weights.shape} and "
            f"{rejected_weights.shape}."
        )
    shares = prompt_weights / prompt_weights.sum(1, keepdims=True)
    return {
        "accuracy": pairwise_accuracy((chosen_weights * chosen).sum(1), (rejected_weights * rejected).sum(1)),
        "fixed_mixes": fixed_mix_accuracies(chosen, rejected, attribute_names),
        "mean_normalised_entropy": float(normalised_entropy(prompt_weights).mean()),
        "degenerate_prompt_share": float(np.mean(shares.max(1) > DEGENERATE_WEIGHT)),
        "mean_weights": dict(zip(attribute_names, shares.mean(0).tolist(), strict=True)),
        "prompts": len(prompt_weights),
    }


def gating_warnings(report: dict, pairs: str = "the training pairs") -> list[str]:
    """The problems a `gating_report` shows, one sentence each with its numbers (none: the gating mixes and
    beats every fixed mix): a degenerate gating -- unless its dominant attribute alone is as accurate as
    every fixed mix, when one attribute explains the preferences and a constant gating is right -- or a
    gated reward less accurate than a fixed mix."""
    problems = []
    shares, mixes = report["mean_weights"], report["fixed_mixes"]
    top = max(shares, key=shares.get)
    if report["degenerate_prompt_share"] > DEGENERATE_SHARE and mixes[f"{top} only"] < max(mixes.values()):
        problems.append(
            f"The gating network is degenerate: one attribute weighs more than {DEGENERATE_WEIGHT} on "
            f"{report['degenerate_prompt_share']:.0%} of the prompts (mean weights: "
            + ", ".join(f"{name} {value:.3f}" for name, value in shares.items())
            + f"; mean normalised entropy {report['mean_normalised_entropy']:.3f}): the prompt decides little "
            f"and {top} alone ({mixes[f'{top} only']:.3f} on {pairs}) dominates the reward."
        )
    better = {name: value for name, value in report["fixed_mixes"].items() if value > report["accuracy"]}
    if better:
        problems.append(
            f"The gated reward is less accurate on {pairs} ({report['accuracy']:.3f}) than fixed mixes of "
            "the attribute rewards: "
            + ", ".join(f"{name} {value:.3f}" for name, value in better.items())
            + "."
        )
    return problems


def format_gating_report(report: dict) -> str:
    """The lines `qrm evaluate --pairs` prints for a `gating_report`: the gated accuracy next to the fixed
    mixes', the entropy, the mean weights (by category when known) and any `gating_warnings`."""
    lines = [
        f"  Gating: accuracy {report['accuracy']:.3f} against fixed mixes "
        + ", ".join(f"{name} {value:.3f}" for name, value in report["fixed_mixes"].items()),
        f"  Gating: mean normalised entropy {report['mean_normalised_entropy']:.3f} over {report['prompts']} "
        f"prompts (0: one attribute, 1: uniform); mean weights "
        + ", ".join(f"{name} {value:.3f}" for name, value in report["mean_weights"].items()),
    ]
    for category, weights in report.get("mean_weights_by_category", {}).items():
        lines.append(
            f"    {category}: " + ", ".join(f"{name} {value:.3f}" for name, value in weights.items())
        )
    lines += [f"  Warning: {problem}" for problem in gating_warnings(report, "these pairs")]
    return "\n".join(lines)


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


def _score_unique(
    model, tokenizer, conversations, batch_size, max_length=None, row_names=None, too_long="skip"
):
    """Score each distinct conversation once; return the outputs, the distinct conversations, each input's
    row among them, the distinct conversations' names (from `row_names`, one per input, in errors about
    their scores), and which inputs are longer than `max_length` (never truncated: with `too_long` "skip"
    left out and counted, as `qrm extract` does; with "error" refused by row)."""
    from .scoring import names_of_distinct, score_conversations

    unique, index = unique_conversations(conversations)
    names = names_of_distinct(index, row_names, len(unique)) if row_names is not None else None
    outputs = score_conversations(
        model,
        tokenizer,
        unique,
        batch_size=batch_size,
        max_length=max_length,
        too_long=too_long,
        row_names=names,
    )
    return outputs, unique, index, names, outputs["too_long"].numpy()[index]


COVERAGE_WIDTHS = (0.5, 0.8, 0.9)
PIT_BINS = 10


def probability_integral_transform(labels, predictions, levels: Sequence[float]) -> np.ndarray:
    """PIT values F(y) of the labelled entries: labels [n, M], predictions [n, M, K] -> [number labelled].

    F is the predicted CDF read from the sorted quantiles by linear interpolation between (q_k, tau_k);
    a label below q_1 gets tau_1 / 2 and one above q_K gets (1 + tau_K) / 2 (the middle of the tail mass
    the quantiles do not describe); a label on a flat stretch of quantiles gets the middle of its levels.
    For a calibrated model the values are uniform on [0, 1].
    """
    labels = _labels(labels)
    predictions = np.sort(_finite(predictions, "predictions"), axis=-1)
    levels = np.asarray(levels, dtype=float)
    observed = ~np.isnan(labels)
    y, q = labels[observed], predictions[observed]  # [L], [L, K]
    values = np.empty(len(y))
    for i, (label, quantiles) in enumerate(zip(y, q, strict=True)):
        below, at_most = np.sum(quantiles < label), np.sum(quantiles <= label)
        if at_most == 0:
            values[i] = levels[0] / 2
        elif below == len(levels):
            values[i] = (1 + levels[-1]) / 2
        elif below < at_most:  # the label equals quantiles below..at_most-1: the middle of their levels
            values[i] = (levels[below] + levels[at_most - 1]) / 2
        else:  # strictly between quantiles below-1 and below
            fraction = (label - quantiles[below - 1]) / (quantiles[below] - quantiles[below - 1])
            values[i] = levels[below - 1] + fraction * (levels[below] - levels[below - 1])
    return values


def distribution_measures(labels, predictions, levels: Sequence[float], groups=None) -> dict:
    """Per attribute: pinball, CRPS, coverage of the 50/80/90 % central intervals, mean 90 % width.

    labels [n, M], predictions [n, M, K]. The width is averaged over distinct responses when `groups`
    [n] (the response of each row; rows of one response share the prediction) is given, else over rows.
    Returns lists of M floats under ``pinball``, ``crps``, ``coverage_50``, ``coverage_80``,
    ``coverage_90``, ``width_90``.
    """
    labels, predictions = _labels(labels), _finite(predictions, "predictions")
    first = np.unique(groups, return_index=True)[1] if groups is not None else np.arange(len(labels))
    measures = {
        "pinball": _nanmean(_pinball_per_row(labels, predictions, levels).mean(-1), axis=0),
        "crps": crps(labels, predictions, levels),
    }
    for width in COVERAGE_WIDTHS:
        measures[f"coverage_{round(100 * width)}"] = interval_coverage(labels, predictions, levels, width)
    measures["width_90"] = interval_width(predictions[first], levels, 0.9).mean(0)
    return {name: [float(value) for value in values] for name, values in measures.items()}


def annotator_spread(labels, groups) -> np.ndarray:
    """Mean over responses of the annotators' own label standard deviation (population), per attribute.

    labels [n, M] (one row per rating), groups [n] (the response rated). Responses with fewer than two
    labels of an attribute are left out of its mean. -> [M]
    """
    labels = np.asarray(labels, dtype=float)
    _, group = np.unique(np.asarray(groups), return_inverse=True)
    spreads = []
    for m in range(labels.shape[1]):
        per_response = []
        for g in range(group.max() + 1):
            values = labels[group == g, m]
            values = values[~np.isnan(values)]
            if len(values) >= 2:
                per_response.append(values.std())
        spreads.append(np.mean(per_response) if per_response else np.nan)
    return np.array(spreads)


def _model_report(labels, predictions, levels, attributes, kinds, responses, contrast) -> dict:
    """Distribution measures of one model: per attribute, overall, per kind (the values of the group
    column, `kinds` [n] or None), the `contrast` width ratio, the reliability / PIT data of the plots and
    the `rating_selective_error` of its median. `responses` [n]: the response of each row."""

    def by_attribute(measures):
        return {
            attribute: {name: values[m] for name, values in measures.items()}
            for m, attribute in enumerate(attributes)
        }

    measures = distribution_measures(labels, predictions, levels, responses)
    observed = ~np.isnan(labels)
    below = labels[observed][:, None] <= np.sort(predictions, axis=-1)[observed]  # [L, K]
    pit = probability_integral_transform(labels, predictions, levels)
    report = {
        "attributes": by_attribute(measures),
        "overall": {name: float(np.nanmean(values)) for name, values in measures.items()},
        "reliability": {"levels": [float(t) for t in levels], "observed": below.mean(0).tolist()},
        "pit_histogram": (np.histogram(pit, bins=PIT_BINS, range=(0, 1))[0] / max(len(pit), 1)).tolist(),
        "selective_error": rating_selective_error(labels, predictions, levels, attributes),
    }
    if kinds is not None:
        report["by_kind"] = {
            str(kind): by_attribute(
                distribution_measures(
                    labels[kinds == kind], predictions[kinds == kind], levels, responses[kinds == kind]
                )
            )
            for kind in dict.fromkeys(kinds)
        }
        numerator, denominator = contrast or (None, None)
        if contrast and {numerator, denominator} <= set(report["by_kind"]):
            report["width_ratio"] = {
                attribute: report["by_kind"][numerator][attribute]["width_90"]
                / report["by_kind"][denominator][attribute]["width_90"]
                for attribute in attributes
            }
    return report


@dataclass
class RatedRows:
    """Rating rows scored by the model (rows without any label and over-long ones left out).

    rows: the rows kept; labels [n, M] in [0, 1] (NaN where missing); responses [n]: each row's
    distinct conversation in `conversations`, named by `names`; quantiles [n, M, K]: the model's
    attribute quantiles of each row; too_long: how many rows were longer than `max_length`; epistemic
    [n, M]: the members' `attribute_epistemic_std` of each row (None for a model without members)."""

    rows: list
    labels: np.ndarray
    responses: np.ndarray
    conversations: list
    names: list
    quantiles: np.ndarray
    too_long: int
    epistemic: np.ndarray | None = None


def score_rating_rows(
    model, tokenizer, rows, attributes, label_range, batch_size=8, max_length=None, too_long="skip"
) -> RatedRows:
    """Score docs/design.md §6 rating rows with `model` (each distinct response once) -> `RatedRows`; rows
    longer than `max_length` are left out and counted (`too_long="skip"`) or refused by row ("error")."""
    from .data import row_location
    from .dataset_loading import attribute_examples
    from .dataset_preset import DatasetPreset

    preset = DatasetPreset.custom(
        "attribute", prompt="prompt", response="response", attributes=attributes, label_ranges=label_range,
        name="rating rows",
    )  # fmt: skip
    conversations, labels, labelled = attribute_examples(rows, preset, with_index=True)
    row_names = [row_location(rows, i, "rating rows") for i in labelled]
    outputs, unique, responses, names, too_long = _score_unique(
        model, tokenizer, conversations, batch_size, max_length, row_names, too_long
    )
    kept = [rows[i] for i, skip in zip(labelled, too_long, strict=True) if not skip]
    responses = responses[~too_long]
    quantiles = outputs["attribute_quantiles"].double().numpy()[responses]
    epistemic = outputs.get("attribute_epistemic_std")  # a model with members
    if epistemic is not None:
        epistemic = epistemic.double().numpy()[responses]
    return RatedRows(
        kept, labels[~too_long], responses, unique, names, quantiles, int(too_long.sum()), epistemic
    )


def _comparison_predictions(model, tokenizer, rated: RatedRows, baselines, members, batch_size, max_length):
    """Predictions [n, M, K] of each of `baselines` on the rated rows and, with `members` (bootstrap refits
    of the heads), their `median_spread` [n, M] and their number (else None, 0); from the backbone's
    embeddings of the responses."""
    from .scoring import conversation_embeddings

    used = np.unique(rated.responses)  # the distinct responses of the rows kept
    distinct = conversation_embeddings(
        model, tokenizer, [rated.conversations[i] for i in used], batch_size, max_length,
        desc="baseline features", row_names=[rated.names[i] for i in used],
    )[0].double().numpy()  # fmt: skip
    row_of = np.searchsorted(used, rated.responses)  # the distinct response of each row
    predictions = {name: baseline.predict(distinct)[row_of] for name, baseline in baselines.items()}
    if members is None:
        return predictions, None, 0
    import torch

    member_quantiles = members.attribute_quantiles(torch.from_numpy(distinct)).numpy()  # [E, responses, M, K]
    spread = median_spread(member_quantiles, model.config.quantile_levels)[row_of]
    return predictions, spread, len(member_quantiles)


def kinds_of(rows, group_column: str | None) -> np.ndarray | None:
    """Each row's value of `group_column` as a string array, or None when no row has a value there."""
    if not group_column or not any(row.get(group_column) is not None for row in rows):
        return None
    return np.array([str(row.get(group_column)) for row in rows])


def _own_uncertainty(heads_spread, responses, kinds, attributes, members: int) -> dict:
    """``own_uncertainty`` of `evaluate_ratings`: the mean `median_spread` over distinct responses, overall
    and per kind (`heads_spread` [n, M] per row, `responses` [n] each row's response)."""
    first = np.unique(responses, return_index=True)[1]  # one row per distinct response
    selections = {"all": np.ones(len(responses), dtype=bool)}
    if kinds is not None:
        selections.update({kind: kinds == kind for kind in dict.fromkeys(kinds)})
    return {
        "members": members,
        "median_spread_90": {
            name: dict(zip(attributes, heads_spread[first[selected[first]]].mean(0).tolist(), strict=True))
            for name, selected in selections.items()
        },
    }


def _annotator_report(labels, kinds, responses, attributes, contrast) -> dict:
    """``annotator_spread`` per kind of the annotators' own labels and, when both kinds of `contrast` are
    present, ``annotator_spread_ratio`` (first / second)."""
    spreads = {
        kind: annotator_spread(labels[kinds == kind], responses[kinds == kind])
        for kind in dict.fromkeys(kinds)
    }
    report = {
        "annotator_spread": {
            kind: dict(zip(attributes, v.tolist(), strict=True)) for kind, v in spreads.items()
        }
    }
    if contrast and set(contrast) <= set(spreads):
        with np.errstate(divide="ignore", invalid="ignore"):  # no spread on the second kind: NaN / inf
            ratio = spreads[contrast[0]] / spreads[contrast[1]]
        report["annotator_spread_ratio"] = dict(zip(attributes, ratio.tolist(), strict=True))
    return report


def evaluate_ratings(
    model,
    tokenizer,
    rows,
    label_range,
    attributes=None,
    batch_size: int = 8,
    max_length: int | None = None,
    baselines: Mapping[str, Any] | None = None,
    members=None,
    group_column: str | None = GROUP_COLUMN,
    contrast: tuple[str, str] | None = CONTRAST,
) -> dict:
    """Pinball loss and the distribution measures of the model's attribute quantiles on rating rows.

    Rows are docs/design.md §6 rating rows (prompt, response, one column per attribute, one row per
    annotator rating; optional ``conversation_id`` and `group_column`, whose values are the *kinds*).
    Returns ``pinball`` (mean over attributes and levels; also ``pinball_per_attribute``,
    ``pinball_by_kind``), ``calibration_error``, ``skipped_too_long`` (rows longer than `max_length`
    tokens, left out), ``models`` ({``qrm``, and each of `baselines`: name -> a fitted estimator whose
    ``predict`` maps the backbone's response embeddings [n, H] to quantiles [n, M, K], e.g.
    `qrm_hf.training.baselines.fit_baselines`}: `_model_report` each, with ``selective_error``, the
    MAE@50 / R²@50 of the median ranked by predicted width), and ``annotator_spread`` per kind with its
    `contrast` ratio (first kind / second kind) ``annotator_spread_ratio``.

    With `members`, quantile heads refitted E >= 2 times on bootstrap resamples of the training responses
    (``attribute_quantiles`` maps embeddings [n, H] to [E, n, M, K];
    `qrm_hf.training.baselines.fit_bootstrap_members`): ``own_uncertainty`` holds, overall and per kind, the
    mean :func:`median_spread` of the held-out responses, the part of a 90 % width that is the heads' own
    uncertainty rather than the annotators' disagreement (a lower bound). A model with members reports its
    own ``epistemic`` spread instead (`epistemic_report`: the members' std per kind, and their number).
    A NaN or infinite model output is refused (`qrm_hf.scoring.NonFiniteOutputError`), naming the rows.
    """
    attributes = list(attributes or model.config.attribute_names)
    if attributes != list(model.config.attribute_names):
        raise ValueError(
            f"Rating columns {attributes} differ from the model's attributes {model.config.attribute_names}."
        )
    rated = score_rating_rows(model, tokenizer, rows, attributes, label_range, batch_size, max_length)
    predictions = {"qrm": rated.quantiles}
    compared, heads_spread, member_count = _comparison_predictions(
        model, tokenizer, rated, dict(baselines or {}), members, batch_size, max_length
    ) if baselines or members is not None else ({}, None, 0)  # fmt: skip
    predictions.update(compared)
    report = _qrm_measures(rated, attributes, model.config.quantile_levels, group_column, contrast)
    kinds = kinds_of(rated.rows, group_column)
    report.update(_heads_uncertainty(rated, heads_spread, member_count, kinds, attributes, model.config))
    report["models"] = {
        name: _model_report(
            rated.labels, values, model.config.quantile_levels, attributes, kinds, rated.responses, contrast
        )
        for name, values in predictions.items()
    }
    if kinds is not None:
        report.update(_annotator_report(rated.labels, kinds, rated.responses, attributes, contrast))
    return report


def _heads_uncertainty(rated: RatedRows, heads_spread, member_count: int, kinds, attributes, config) -> dict:
    """``own_uncertainty`` of bootstrap refits (`heads_spread` [n, M], or None) and ``epistemic``, the spread of
    the model's own members (when it has some), for `evaluate_ratings`."""
    report = {}
    if heads_spread is not None:
        report["own_uncertainty"] = _own_uncertainty(
            heads_spread, rated.responses, kinds, attributes, member_count
        )
    if rated.epistemic is not None:
        report["epistemic"] = {
            **epistemic_report(rated.epistemic, rated.responses, kinds, attributes),
            "members": config.num_members,
        }
    return report


def _qrm_measures(rated: RatedRows, attributes, levels, group_column, contrast) -> dict:
    """The head of the `evaluate_ratings` report: the model's pinball loss (overall, per attribute and per
    kind), calibration error, the rows left out and the grouping used."""
    labels, quantiles = rated.labels, rated.quantiles
    loss = pinball_loss(labels, quantiles, levels)
    report = {
        "pinball": float(loss.mean()),
        "pinball_per_attribute": dict(zip(attributes, loss.mean(1).tolist(), strict=True)),
        "calibration_error": calibration_error(labels, quantiles, levels),
        "skipped_too_long": rated.too_long,
        "group_column": group_column,
        "contrast": list(contrast) if contrast else None,
    }
    kinds = kinds_of(rated.rows, group_column)
    if kinds is not None:
        report["pinball_by_kind"] = {
            kind: float(pinball_loss(labels[kinds == kind], quantiles[kinds == kind], levels).mean())
            for kind in dict.fromkeys(kinds)
        }
    return report


def epistemic_report(attribute_spread, groups, kinds, attributes) -> dict:
    """The model's own epistemic spread on rating rows: attribute_spread [n, M] (`attribute_epistemic_std` of
    each row's response), groups [n] (the response of each row), kinds [n] or None. Returns
    ``mean_std`` {"all" and each kind: {attribute: mean over the distinct responses}}."""
    first = np.unique(groups, return_index=True)[1]  # one row per distinct response
    selections = {"all": np.ones(len(first), dtype=bool)}
    if kinds is not None:
        selections.update({kind: kinds[first] == kind for kind in dict.fromkeys(kinds)})
    return {
        "mean_std": {
            name: dict(zip(attributes, attribute_spread[first][chosen].mean(0).tolist(), strict=True))
            for name, chosen in selections.items()
        }
    }


def format_epistemic_report(report: dict) -> list[str]:
    """Lines of `epistemic_report` next to the model's 90 % width (empty without members)."""
    if "epistemic" not in report:
        return []
    epistemic, qrm = report["epistemic"], report["models"]["qrm"]
    lines = [
        f"The model's own epistemic spread ({epistemic['members']} members): mean std over the members of each "
        "attribute's expected reward, next to the 90 % width (the annotators' disagreement):",
        f"  {'attribute':<16} {'kind':<14}{'width_90':>12}{'epist_std':>12}",
    ]
    for kind, spreads in epistemic["mean_std"].items():
        for attribute, value in spreads.items():
            width = (qrm["attributes"] if kind == "all" else qrm["by_kind"][kind])[attribute]["width_90"]
            lines.append(f"  {attribute:<16} {kind:<14}{width:>12.4f}{value:>12.4f}")
    return lines


def format_ratings_report(report: dict) -> str:
    """Plain-text tables of `evaluate_ratings`: every model side by side, per attribute and per kind."""
    columns = ("pinball", "crps", "coverage_50", "coverage_80", "coverage_90", "width_90")
    models = report["models"]
    attributes = list(next(iter(models.values()))["attributes"])
    header = f"  {'attribute':<16} {'kind':<14} {'model':<9}" + "".join(f"{c:>12}" for c in columns)
    lines = ["Held-out distribution measures (labels in [0, 1]; lower pinball/CRPS is better, coverage should be"
             " its nominal level):", header]  # fmt: skip
    kinds = ["all", *next(iter(models.values())).get("by_kind", {})]
    for attribute in attributes:
        for kind in kinds:
            for name, model_report in models.items():
                entry = (model_report["attributes"] if kind == "all" else model_report["by_kind"][kind])[
                    attribute
                ]
                lines.append(
                    f"  {attribute:<16} {kind:<14} {name:<9}" + "".join(f"{entry[c]:>12.4f}" for c in columns)
                )
    if "annotator_spread_ratio" in report:
        numerator, denominator = report["contrast"]
        lines.append(
            f"{numerator[:1].upper()}{numerator[1:]} / {denominator} mean 90 % width, next to the annotators' own spread ratio:"
        )
        lines.append(
            f"  {'attribute':<16}" + "".join(f"{name:>12}" for name in models) + f"{'annotators':>12}"
        )
        for attribute in attributes:
            ratios = "".join(f"{models[name]['width_ratio'][attribute]:>12.2f}" for name in models)
            lines.append(f"  {attribute:<16}{ratios}{report['annotator_spread_ratio'][attribute]:>12.2f}")
    lines.append(format_selective_error({name: entry["selective_error"] for name, entry in models.items()}))
    if "own_uncertainty" in report:
        own, qrm = report["own_uncertainty"], models["qrm"]
        lines.append(
            f"The heads' own uncertainty ({own['members']} refits on bootstrap resamples of the training "
            "responses): 90 % spread of the median, next to the 90 % width:"
        )
        lines.append(f"  {'attribute':<16} {'kind':<14}{'width_90':>12}{'median_90':>12}{'share':>8}")
        for attribute in attributes:
            for kind, spreads in own["median_spread_90"].items():
                width = (qrm["attributes"] if kind == "all" else qrm["by_kind"][kind])[attribute]["width_90"]
                lines.append(
                    f"  {attribute:<16} {kind:<14}{width:>12.4f}{spreads[attribute]:>12.4f}"
                    f"{spreads[attribute] / width:>8.2f}"
                )
    lines += format_epistemic_report(report)
    return "\n".join(lines)


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_calibration(report: dict, directory) -> list:
    """Draw `reliability.png` (observed vs nominal quantile level, every model), `pit.png` (PIT
    histograms) and `selective_error.png` (MAE@50 by predicted width against a random half, every model)
    of an `evaluate_ratings` report into `directory` (absent, empty or an earlier plot directory of
    `qrm evaluate`: `qrm_hf.io.claim_directory`); returns the paths."""
    from .io import claim_directory, save_figure

    plt = _pyplot()
    directory = claim_directory(directory, "qrm evaluate")  # refuses a directory of someone else's files
    models = report["models"]
    fig, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], color="grey", linestyle="--", label="calibrated")
    for name, model_report in models.items():
        reliability = model_report["reliability"]
        axis.plot(reliability["levels"], reliability["observed"], marker="o", markersize=3, label=name)
    axis.set(xlabel="nominal level tau", ylabel="fraction of labels <= predicted tau-quantile",
             title="Reliability diagram (held-out ratings)", xlim=(0, 1), ylim=(0, 1))  # fmt: skip
    axis.legend()
    paths = [save_figure(fig, directory / "reliability.png")]
    fig, axis = plt.subplots(figsize=(6, 4))
    edges = np.linspace(0, 1, PIT_BINS + 1)
    for name, model_report in models.items():
        axis.stairs(np.asarray(model_report["pit_histogram"]) * PIT_BINS, edges, label=name, linewidth=1.5)
    axis.axhline(1.0, color="grey", linestyle="--", label="calibrated")
    axis.set(xlabel="PIT value F(label)", ylabel="density", title="PIT histogram (held-out ratings)")
    axis.legend()
    paths.append(save_figure(fig, directory / "pit.png"))
    paths.append(_plot_selective_error(models, directory / "selective_error.png"))
    return paths


def _plot_selective_error(models: dict, path):
    """Bars of MAE@50 (surer half by predicted width, solid) and a random half (hatched) per attribute
    and model."""
    from .io import save_figure

    plt = _pyplot()
    attributes = list(next(iter(models.values()))["selective_error"])
    fig, axis = plt.subplots(figsize=(1.5 + 1.2 * len(attributes) * len(models) / 2, 4))
    bar = 0.8 / (2 * len(models))
    for number, (name, model_report) in enumerate(models.items()):
        entries = [model_report["selective_error"][attribute] for attribute in attributes]
        x = np.arange(len(attributes)) + (2 * number - len(models) + 0.5) * bar
        axis.bar(x, [e.get("mae_surer", np.nan) for e in entries], bar, label=f"{name}: surer half",
                 color=f"C{number}")  # fmt: skip
        axis.bar(x + bar, [e.get("mae_random", np.nan) for e in entries], bar, label=f"{name}: random half",
                 color=f"C{number}", alpha=0.35, hatch="//")  # fmt: skip
    axis.set_xticks(np.arange(len(attributes)), attributes)
    axis.set(ylabel="mean absolute error of the median",
             title="Error on the half with the narrowest intervals (held-out ratings)")  # fmt: skip
    axis.legend(fontsize="small")
    return save_figure(fig, path)


def plot_accuracy_coverage(report: dict, directory, command: str = "qrm evaluate") -> list:
    """Draw `accuracy_coverage.png` of a `pair_ranking_report` into `directory` (absent, empty or an earlier
    plot directory of `command`: `qrm_hf.io.claim_directory`): the accuracy on the surest fraction of the
    pairs against that fraction, one curve per signal, the overall accuracy (a signal that knows nothing)
    dashed; returns the paths."""
    from .io import claim_directory, save_figure

    plt = _pyplot()
    directory = claim_directory(directory, command)
    fig, axis = plt.subplots(figsize=(6, 4))
    for name, curve in report["signals"].items():
        axis.plot(curve["coverage"], curve["accuracy"], marker="o", markersize=3,
                  label=f"{name} (area {curve['area']:.3f})")  # fmt: skip
    axis.axhline(report["accuracy"], color="grey", linestyle="--", label=f"random ({report['accuracy']:.3f})")
    axis.set(xlabel="fraction of the pairs kept (surest first)", ylabel="pairwise accuracy",
             title=f"Accuracy-coverage ({report['pairs']} pairs)", xlim=(0, 1))  # fmt: skip
    axis.legend(fontsize="small")
    return [save_figure(fig, directory / "accuracy_coverage.png")]


def evaluate_pairs(
    model,
    tokenizer,
    rows,
    batch_size: int = 8,
    max_length: int | None = None,
    group_column: str | None = GROUP_COLUMN,
) -> dict:
    """Pairwise accuracy of the expected reward on (prompt, chosen, rejected) rows, overall and by value of
    `group_column` (``accuracy_by_kind``); pairs with a side longer than `max_length` tokens are left out
    and counted in `skipped_too_long`.
    A NaN or infinite model output is refused (`qrm_hf.scoring.NonFiniteOutputError`), naming the rows
    (`qrm_hf.data.row_location`: the file line of rows read by `read_jsonl`).

    `gating` is the `gating_report` of the model's gating network on these pairs (its weights per distinct
    prompt, the accuracy of the fixed mixes of its attribute rewards next to its own), with the mean
    weights by `category` when the rows have one. `ranking` is the `pair_ranking_report`: the
    accuracy-coverage curve and its area for each signal of `pair_ranking_signals`."""
    from .data import row_location
    from .dataset_loading import preference_examples
    from .dataset_preset import DatasetPreset

    preset = DatasetPreset.custom(
        "preference", prompt="prompt", chosen="chosen", rejected="rejected", name="preference rows"
    )
    pairs, pair_rows = preference_examples(rows, preset, with_index=True)
    conversations = [chosen for chosen, _ in pairs] + [rejected for _, rejected in pairs]
    pair_names = [
        f"{row_location(rows, i, 'preference rows')} ({side})"
        for side in ("chosen", "rejected")
        for i in pair_rows
    ]
    outputs, _, index, _, too_long = _score_unique(
        model, tokenizer, conversations, batch_size, max_length, pair_names
    )
    kept = ~(too_long[: len(pairs)] | too_long[len(pairs) :])
    scores = outputs["logits"][:, 0].numpy()[index]
    chosen, rejected = scores[: len(pairs)][kept], scores[len(pairs) :][kept]
    report = {
        "accuracy": pairwise_accuracy(chosen, rejected),
        "pairs": int(kept.sum()),
        "skipped_too_long": int((~kept).sum()),
    }
    kinds = kinds_of([rows[i] for i in pair_rows[kept]], group_column)
    if kinds is not None:
        report["accuracy_by_kind"] = {
            str(kind): pairwise_accuracy(chosen[kinds == kind], rejected[kinds == kind])
            for kind in dict.fromkeys(kinds)
        }
    if kept.any():
        report["gating"] = _pairs_gating_report(
            model, outputs, index, kept, [rows[i] for i in pair_rows[kept]]
        )
        report["ranking"] = _pairs_ranking_report(outputs, index, kept)
    return report


def _pairs_ranking_report(outputs, index, kept) -> dict:
    """`pair_ranking_report` of scored pairs (`index` maps the 2N sides, chosen then rejected, to scored
    rows), with the epistemic signals when the outputs hold the members' ``reward_epistemic_std``."""
    n = len(kept)
    sides = index[:n][kept], index[n:][kept]
    scores = outputs["logits"][:, 0].numpy()
    quantiles = outputs["reward_quantiles"].double().numpy()
    epistemic = outputs.get("reward_epistemic_std")
    epistemic = (
        (None, None) if epistemic is None else tuple(epistemic.double().numpy()[rows] for rows in sides)
    )
    signals = pair_ranking_signals(
        *(scores[rows] for rows in sides), *(quantiles[rows] for rows in sides), *epistemic
    )
    chosen, rejected = (scores[rows] for rows in sides)
    return pair_ranking_report((chosen > rejected) + 0.5 * (chosen == rejected), signals)


def _pairs_gating_report(model, outputs, index, kept, kept_rows) -> dict:
    """`gating_report` of scored pairs: `index` maps the 2N sides (chosen, then rejected) to scored rows."""
    n = len(kept)
    rewards, weights = outputs["rewards"].numpy(), outputs["gating_output"].numpy()
    chosen_rows, rejected_rows = index[:n][kept], index[n:][kept]
    first_pair_of_prompt = {}
    for pair, row in enumerate(kept_rows):
        first_pair_of_prompt.setdefault(row["prompt"], pair)
    prompt_weights = weights[chosen_rows[list(first_pair_of_prompt.values())]]
    names = list(model.config.attribute_names)
    report = gating_report(
        prompt_weights,
        rewards[chosen_rows],
        rewards[rejected_rows],
        names,
        weights[chosen_rows],
        weights[rejected_rows],
    )
    categories = [kept_rows[pair].get("category") for pair in first_pair_of_prompt.values()]
    if any(category is not None for category in categories):
        shares = prompt_weights / prompt_weights.sum(1, keepdims=True)
        categories = np.array(categories, dtype=object)
        report["mean_weights_by_category"] = {
            str(category): dict(zip(names, shares[categories == category].mean(0).tolist(), strict=True))
            for category in dict.fromkeys(categories)
        }
    return report
