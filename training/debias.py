"""Stage 3, debias (optional): ArmoRM's verbosity debiasing, as a reward transform matrix T.

Reward models learn that longer answers score higher. ArmoRM removes this per attribute: on the
rewards of a reference set of responses, for every attribute j other than verbosity it picks the
smallest penalty p_j of a fixed grid for which

    spearman(r_j - p_j * r_verbosity, r_verbosity) <= threshold          (threshold 0.03)

Attributes that never get under the threshold keep p_j = 1, and so does the verbosity attribute
itself. The penalties become the M x M matrix

    T = I,  T[v, :] -= p      (v = verbosity)     so that    r' = r @ T,  r'_j = r_j - p_j * r_v,

and, for v itself, r'_v = (1 - 1) * r_v = 0: the verbosity reward is zeroed in the final score,
exactly as in ArmoRM's released model. The model applies T at every quantile level,
Q'[m', k] = sum_m Q[m, k] T[m, m'] (see `QRMForSequenceClassification.score_embeddings`); since T is
linear this shifts each attribute's whole distribution by -p_j times the verbosity distribution,
quantile by quantile, and the expected rewards transform the same way.

Reference: ``find_proper_verbosity_penalties`` in RLHFlow/RLHF-Reward-Modeling, ``armo-rm/stage-2_train.py``
(grid, threshold, the "keep 1" rule and T are taken from it). Differences, both in degenerate cases:
a debiased column that is constant (Spearman undefined: scipy gives NaN) counts as uncorrelated here,
where ArmoRM's ``nan <= threshold`` never accepts it; and ``correlations_`` reports the correlation
with the penalty actually applied (for p = 1 that is corr(r_j - r_v, r_v)), where ArmoRM reports
the minimum seen over the grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.base import BaseEstimator

from .quantile_regression import as_float64

# ArmoRM's grid, verbatim (armo-rm/stage-2_train.py): fine steps near 0, then 0.05 steps up to 0.95.
ARMORM_PENALTY_GRID: tuple[float, ...] = (
    0.0, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15,
    0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95,
)  # fmt: skip


def _spearman_with(columns: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of `columns` [N, J] with `target` [N] (not constant) -> [J].

    Constant columns (undefined correlation) give NaN; callers decide what that means. They are left
    out of the `spearmanr` call, which otherwise returns a single NaN for the whole matrix.
    """
    result = np.full(columns.shape[1], np.nan)
    varying = np.flatnonzero(np.ptp(columns, axis=0) > 0)
    if varying.size:
        statistic = spearmanr(columns[:, varying], target, axis=0).statistic
        # one column gives a scalar, several the [J + 1, J + 1] matrix whose last row is vs. target
        result[varying] = statistic if np.ndim(statistic) == 0 else np.asarray(statistic)[-1, :-1]
    return result


class VerbosityDebiaser(BaseEstimator):
    """ArmoRM's verbosity debiasing, scikit-learn style: `fit(rewards)` chooses one penalty per attribute.

    Parameters
    ----------
    attribute_names : sequence of str
        The M attribute names, in the model's order.
    verbosity_attribute : str, optional
        The name of the verbosity attribute (e.g. ``"helpsteer-verbosity"``). Default: the single
        attribute whose name ends with ``"verbosity"``; required when there is none or several.
    penalties : sequence of float
        The grid of candidate penalties, searched from the smallest. Default: ArmoRM's grid
        ``ARMORM_PENALTY_GRID`` (0, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, ..., 0.95).
    threshold : float
        An attribute is debiased once the Spearman correlation of its debiased reward with the
        verbosity reward is at most this (ArmoRM: 0.03).

    Attributes
    ----------
    attribute_names_ : list of str
    verbosity_index_ : int
        Column v of the verbosity attribute.
    penalty_grid_ : ndarray [P]
        The sorted, de-duplicated grid that was searched.
    grid_correlations_ : ndarray [P, M]
        Spearman corr(r_j - p * r_v, r_v) for grid value p and attribute j, as far as the search
        went: NaN after the attribute's chosen penalty (not computed), for v, and for constant columns.
    penalties_ : ndarray [M], float64
        Chosen penalty per attribute; 1 for the verbosity attribute and for attributes never under
        the threshold.
    transform_ : ndarray [M, M], float64
        T = I with row v minus `penalties_`; rewards transform as ``r @ T`` (see `debiased_rewards`).
        float64 numpy, like every fitted array here; `assemble_qrm(reward_transform=...)` and
        `torch.as_tensor(...).float()` take it as it is.
    correlations_ : ndarray [M]
        Spearman corr(r_j - penalties_[j] * r_v, r_v) with the applied penalty; NaN for the
        verbosity attribute, whose debiased reward is identically 0.
    correlations_before_ : ndarray [M]
        The same without debiasing, corr(r_j, r_v) (1 for v).
    debiased_ : ndarray [M] of bool
        Whether the attribute got under the threshold within the grid (False for v).
    n_samples_fit_ : int
    """

    def __init__(
        self,
        attribute_names: Sequence[str],
        verbosity_attribute: str | None = None,
        penalties: Sequence[float] = ARMORM_PENALTY_GRID,
        threshold: float = 0.03,
    ):
        self.attribute_names = attribute_names
        self.verbosity_attribute = verbosity_attribute
        self.penalties = penalties
        self.threshold = threshold

    # ------------------------------------------------------------------ validation
    def _resolve_names(self) -> tuple[list[str], int]:
        if isinstance(self.attribute_names, str) or self.attribute_names is None:
            raise ValueError(
                "attribute_names must be a sequence of attribute names, e.g. ['helpfulness', ...]."
            )
        names = [str(name) for name in self.attribute_names]
        if len(names) < 2:
            raise ValueError(f"Verbosity debiasing needs at least 2 attributes, got {names}.")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"attribute_names has duplicates: {duplicates}.")
        if self.verbosity_attribute is None:
            candidates = [name for name in names if name.lower().endswith("verbosity")]
            if len(candidates) != 1:
                found = f"several ({candidates})" if candidates else "none"
                raise ValueError(
                    f"Cannot tell the verbosity attribute: {found} of the attributes {names} ends with "
                    "'verbosity'; pass verbosity_attribute=<name>."
                )
            return names, names.index(candidates[0])
        if self.verbosity_attribute not in names:
            raise ValueError(
                f"Unknown verbosity attribute {self.verbosity_attribute!r}; the attributes are {names}."
            )
        return names, names.index(self.verbosity_attribute)

    def _resolve_grid(self) -> np.ndarray:
        grid = np.asarray(self.penalties, dtype=np.float64).reshape(-1)
        if grid.size == 0:
            raise ValueError("The penalty grid is empty.")
        if not np.all(np.isfinite(grid)) or np.any(grid < 0):
            raise ValueError(f"Penalties must be finite and >= 0, got {grid.tolist()}.")
        if not np.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold}.")
        return np.unique(grid)  # sorted: the search takes the smallest passing value, as ArmoRM

    def _check_rewards(self, rewards, num_attributes: int, names: list[str]) -> np.ndarray:
        rewards = as_float64(rewards)
        if rewards.ndim < 2 or rewards.shape[-1] != num_attributes:
            raise ValueError(
                f"rewards must have shape [N, {num_attributes}] or [..., {num_attributes}] (one column per attribute {names}), "
                f"got {list(rewards.shape)}."
            )
        rewards = rewards.reshape(-1, num_attributes)  # preference rewards [N, 2, M]: both responses count
        if rewards.shape[0] < 3:
            raise ValueError(
                f"Verbosity debiasing needs the rewards of at least 3 reference responses, got {rewards.shape[0]}."
            )
        bad = ~np.isfinite(rewards)
        if bad.any():
            columns = [names[j] for j in np.flatnonzero(bad.any(0))]
            raise ValueError(
                f"rewards contain {int(bad.sum())} NaN/inf values (attributes {columns}); debiasing needs the "
                "model's expected rewards on every reference response."
            )
        return rewards

    # ------------------------------------------------------------------ API
    def fit(self, rewards, y=None):
        """rewards [N, M] (or [..., M], flattened): per-attribute expected rewards on reference responses."""
        names, v = self._resolve_names()
        grid = self._resolve_grid()
        rewards = self._check_rewards(rewards, len(names), names)
        verbosity = rewards[:, v]
        if np.ptp(verbosity) == 0:
            raise ValueError(
                f"The verbosity reward {names[v]!r} is constant on the reference responses; nothing to debias."
            )
        others = np.array([j for j in range(len(names)) if j != v])

        # ArmoRM's search: every grid value in increasing order, on the attributes not yet under the threshold.
        grid_correlations = np.full((grid.size, len(names)), np.nan)
        penalties = np.ones(len(names))
        debiased = np.zeros(len(names), dtype=bool)
        pending = others
        for row, penalty in enumerate(grid):
            if pending.size == 0:
                break
            correlations = _spearman_with(rewards[:, pending] - penalty * verbosity[:, None], verbosity)
            grid_correlations[row, pending] = correlations
            # A constant debiased column carries no verbosity ranking: it passes (ArmoRM: NaN never passes).
            passed = np.nan_to_num(correlations, nan=0.0) <= self.threshold
            penalties[pending[passed]] = penalty
            debiased[pending[passed]] = True
            pending = pending[~passed]

        transform = np.eye(len(names))
        transform[v, :] -= penalties

        correlations = np.full(len(names), np.nan)
        correlations[others] = _spearman_with(
            rewards[:, others] - penalties[others] * verbosity[:, None], verbosity
        )
        before = np.ones(len(names))
        before[others] = _spearman_with(rewards[:, others], verbosity)

        self.attribute_names_ = names
        self.verbosity_index_ = v
        self.penalty_grid_ = grid
        self.grid_correlations_ = grid_correlations
        self.penalties_ = penalties
        self.transform_ = transform
        self.correlations_ = correlations
        self.correlations_before_ = before
        self.debiased_ = debiased
        self.n_samples_fit_ = rewards.shape[0]
        return self

    def transform(self, rewards):
        """Debiased rewards ``rewards @ transform_`` ([..., M]; numpy or torch, like the input)."""
        if not hasattr(self, "transform_"):
            raise RuntimeError("This VerbosityDebiaser is not fitted yet; call fit(rewards) first.")
        return debiased_rewards(rewards, self.transform_)

    def fit_transform(self, rewards, y=None):
        return self.fit(rewards).transform(rewards)

    def report(self) -> str:
        """A table of the fitted penalties and correlations, one attribute a line."""
        if not hasattr(self, "transform_"):
            raise RuntimeError("This VerbosityDebiaser is not fitted yet; call fit(rewards) first.")
        width = max(len(name) for name in self.attribute_names_)
        lines = [
            f"verbosity attribute: {self.attribute_names_[self.verbosity_index_]} "
            f"(threshold {self.threshold}, {self.n_samples_fit_} reference responses)",
            f"{'attribute':<{width}}  penalty  spearman before  after",
        ]
        for j, name in enumerate(self.attribute_names_):
            if j == self.verbosity_index_:
                note = "  (verbosity: zeroed)"
            elif not self.debiased_[j]:
                note = "  (never under the threshold in the grid)"
            else:
                note = ""
            lines.append(
                f"{name:<{width}}  {self.penalties_[j]:7.3f}  {self.correlations_before_[j]:15.3f}  "
                f"{self.correlations_[j]:5.3f}{note}"
            )
        return "\n".join(lines)


def _check_transform(transform, width: int) -> None:
    if transform.ndim != 2 or transform.shape[0] != transform.shape[1]:
        raise ValueError(f"transform must be a square [M, M] matrix, got {list(transform.shape)}.")
    if transform.shape[0] != width:
        raise ValueError(
            f"The rewards have {width} attributes, the transform is for {transform.shape[0]} "
            f"({list(transform.shape)})."
        )


def debiased_rewards(rewards, transform):
    """``rewards @ transform``: rewards [..., M], transform [M, M] -> [..., M].

    r'_j = sum_m r_m T[m, j]; with a `VerbosityDebiaser` transform, r'_j = r_j - p_j * r_verbosity.
    Torch rewards give a torch result in their dtype and device; anything else gives float64 numpy.
    """
    if isinstance(rewards, torch.Tensor):
        transform = torch.as_tensor(transform).to(device=rewards.device, dtype=rewards.dtype)
        if rewards.ndim == 0:
            raise ValueError("rewards must have shape [..., M], got a scalar.")
        _check_transform(transform, rewards.shape[-1])
        return rewards @ transform
    rewards = as_float64(rewards)
    transform = as_float64(transform)
    if rewards.ndim == 0:
        raise ValueError("rewards must have shape [..., M], got a scalar.")
    _check_transform(transform, rewards.shape[-1])
    return rewards @ transform
