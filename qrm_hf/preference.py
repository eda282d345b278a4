"""How strongly a reward model prefers one response of a pair, from its reward distributions.

A QRM gives each response K reward quantiles. Read as a distribution (each quantile an atom of mass
1/K), two responses give the probability that the chosen one's reward beats the rejected one's,

    P(R_c > R_r) = (1 / K_c K_r) * sum_ij ( [c_i > r_j] + 1/2 [c_i == r_j] ),

for independent rewards, ties counting one half (so a pair of identical responses gets exactly 0.5).
Together with the expected-reward margin and the margin in units of the pooled spread this is the
*preference strength* of the pair: low (under 0.5) when the model disagrees with the label, near 0.5
when the pair is ambiguous (Secrets of RLHF II, Wang et al. 2024, measure the same with an ensemble
of ten reward models; `qrm_hf.training.bootstrap` builds such an ensemble from one QRM's features).

Functions take torch tensors or numpy arrays and return the same kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def _as_float64(values, name: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        tensor = values.detach().to(torch.float64)
    else:  # any array-like, including views with negative strides
        tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
    if tensor.ndim == 0 or tensor.shape[-1] == 0:
        raise ValueError(
            f"{name} must have the quantiles along a last, non-empty axis, got shape {tuple(tensor.shape)}."
        )
    if torch.isnan(tensor).any():
        raise ValueError(f"{name} contains NaN.")
    return tensor


def _like(result: torch.Tensor, *inputs) -> Any:
    """`result` as a numpy array unless an input was a tensor (then in that tensor's float dtype and device)."""
    tensors = [value for value in inputs if isinstance(value, torch.Tensor)]
    if not tensors:
        return result.numpy()
    dtype = tensors[0].dtype if tensors[0].is_floating_point() else torch.get_default_dtype()
    return result.to(dtype=dtype, device=tensors[0].device)


def preference_probability(chosen_quantiles, rejected_quantiles):
    """P(R_chosen > R_rejected) for independent rewards given by their quantiles; ties count one half.

    chosen_quantiles [..., K_c], rejected_quantiles [..., K_r] (leading axes broadcast; usually [B, K]
    both) -> [...]. Each quantile is an atom of mass 1/K of its distribution, in any order. Exact: the
    count of (i, j) with c_i > r_j (plus half the ties) over K_c * K_r, computed by binary search in
    O(K log K) per pair. Tensors or arrays in, the same kind out.
    """
    chosen = _as_float64(chosen_quantiles, "chosen_quantiles")
    rejected = _as_float64(rejected_quantiles, "rejected_quantiles")
    batch = torch.broadcast_shapes(chosen.shape[:-1], rejected.shape[:-1])
    chosen = chosen.expand(*batch, chosen.shape[-1]).contiguous()
    rejected = rejected.expand(*batch, rejected.shape[-1]).sort(-1).values.contiguous()
    # For each c_i: #{r_j < c_i} (left insertion point) and #{r_j <= c_i} (right); their mean counts ties 1/2.
    below = torch.searchsorted(rejected, chosen, right=False)
    at_or_below = torch.searchsorted(rejected, chosen, right=True)
    wins = (below + at_or_below).sum(-1).to(torch.float64) / 2
    probability = wins / (chosen.shape[-1] * rejected.shape[-1])
    return _like(probability, chosen_quantiles, rejected_quantiles)


@dataclass
class PreferenceStrength:
    """Preference strength of pairs (all fields [...] like the pairs; arrays or tensors like the input).

    margin: expected reward of chosen minus rejected (the Bradley-Terry logit of a scalar RM).
    effect_size: margin / pooled spread, sqrt((Var R_c + Var R_r) / 2) (Cohen's d; 0 for a zero margin,
        +-inf for a non-zero margin between two point masses).
    probability: P(R_chosen > R_rejected), `preference_probability`.
    """

    margin: Any
    effect_size: Any
    probability: Any


def preference_strength(chosen_quantiles, rejected_quantiles) -> PreferenceStrength:
    """Margin, effect size and probability of chosen over rejected from their reward quantiles [..., K]."""
    chosen = _as_float64(chosen_quantiles, "chosen_quantiles")
    rejected = _as_float64(rejected_quantiles, "rejected_quantiles")
    margin = chosen.mean(-1) - rejected.mean(-1)
    variance = lambda q: (q - q.mean(-1, keepdim=True)).square().mean(-1)  # noqa: E731  atoms of mass 1/K
    spread = ((variance(chosen) + variance(rejected)) / 2).sqrt()
    effect_size = torch.where(margin == 0, torch.zeros_like(margin), margin / spread)
    inputs = (chosen_quantiles, rejected_quantiles)
    return PreferenceStrength(
        margin=_like(margin, *inputs),
        effect_size=_like(effect_size, *inputs),
        probability=preference_probability(chosen_quantiles, rejected_quantiles),
    )


# Without an ensemble, a pair is ambiguous when its P(chosen > rejected) is this close to 0.5.
AMBIGUOUS_WITHIN = 0.05


@dataclass
class PairFlags:
    """Pairs flagged for review (boolean arrays [N]) and the score that ranks them.

    score: the expected-reward margin, or the ensemble's mean margin when there is an ensemble.
    likely_mislabelled: a negative score (the model, or the ensemble on average, prefers the rejected side).
    ambiguous: a score small against its uncertainty; pairs whose two sides are identical always are.
    ambiguous_within: the threshold on |P - 0.5| without an ensemble (None with one).
    """

    score: np.ndarray
    likely_mislabelled: np.ndarray
    ambiguous: np.ndarray
    ambiguous_within: float | None


def flag_pairs(
    margin,
    probability,
    identical,
    ensemble_mean=None,
    ensemble_std=None,
    ambiguous_within: float | None = None,
) -> PairFlags:
    """Flag likely mislabelled and ambiguous pairs (Secrets of RLHF II) from their strength (arrays [N]).

    With an ensemble (`ensemble_mean`, `ensemble_std` of the margins over bootstrap refits) a pair is
    ambiguous when |mean| < std; without one, when |P(chosen > rejected) - 0.5| < `ambiguous_within`.
    A pair whose chosen and rejected conversations are `identical` is ambiguous, never mislabelled.
    """
    identical = np.asarray(identical, dtype=bool)
    score = np.asarray(ensemble_mean if ensemble_mean is not None else margin, dtype=float)
    if ensemble_mean is not None:
        ambiguous_within = None
        uncertain = np.abs(score) < np.asarray(ensemble_std, dtype=float)
    else:
        ambiguous_within = AMBIGUOUS_WITHIN if ambiguous_within is None else ambiguous_within
        uncertain = np.abs(np.asarray(probability, dtype=float) - 0.5) < ambiguous_within
    return PairFlags(score, (score < 0) & ~identical, uncertain | identical, ambiguous_within)


__all__ = [
    "AMBIGUOUS_WITHIN",
    "PairFlags",
    "PreferenceStrength",
    "flag_pairs",
    "preference_probability",
    "preference_strength",
]
