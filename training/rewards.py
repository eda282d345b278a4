"""Rewards of the fitted quantile heads on stored embeddings: one definition for the stages that need
them without a model (verbosity debiasing, the gating fit, pair strength, bootstrap ensembles)."""

from __future__ import annotations

import torch


def expected_rewards(
    head_weight: torch.Tensor,
    transform: torch.Tensor,
    embeddings: torch.Tensor,
    head_intercept: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-attribute expected rewards after the transform: mean_k Q[m, k] with Q = heads(x), Q^T . T.

    head_weight [M, K, H], head_intercept [M, K] (None: heads without bias), transform [M, M],
    embeddings [..., H] -> [..., M].
    """
    mean_reward = embeddings.float() @ head_weight.mean(1).T  # the mean over levels of a linear map is linear
    if head_intercept is not None:
        mean_reward = mean_reward + head_intercept.mean(1)
    return mean_reward @ transform
