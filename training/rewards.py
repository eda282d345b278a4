"""Rewards of the fitted quantile heads on stored embeddings: one definition for the stages that need
them without a model (verbosity debiasing, the gating fit, pair strength, bootstrap ensembles). The heads
are computed by the model's own `member_quantiles`."""

from __future__ import annotations

import torch

from ..modeling.modeling_qrm import QRMRewardTransform, member_quantiles


def reward_transform_module(transform: torch.Tensor) -> QRMRewardTransform:
    """The model's reward transform module holding the matrix T [M, M]."""
    module = QRMRewardTransform(transform.shape[0])
    module.weight.data.copy_(torch.as_tensor(transform, dtype=torch.float32))
    return module


def expected_rewards(
    head_weight: torch.Tensor,
    transform: torch.Tensor,
    embeddings: torch.Tensor,
    head_intercept: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-attribute expected rewards after the transform: mean_k Q[m, k] with Q = heads(x), Q^T . T.

    head_weight [M, K, H], head_intercept [M, K] (None: heads without bias), transform [M, M],
    embeddings [..., H] -> [..., M]. The heads averaged over their K levels are heads of one level with
    the same mean (the mean of a linear map is linear, and the transform and sorting keep it): K times less
    work than the K levels, through the same `member_quantiles` as the model.
    """
    flat = embeddings.float().reshape(-1, embeddings.shape[-1])
    mean_raw = flat @ head_weight.float().mean(1).T  # [N, M]
    if head_intercept is not None:
        mean_raw = mean_raw + head_intercept.float().mean(1)
    num_attributes = head_weight.shape[0]
    quantiles = member_quantiles(mean_raw, 1, num_attributes, reward_transform_module(transform), False)
    return quantiles[:, 0, :, 0].reshape(*embeddings.shape[:-1], num_attributes)
