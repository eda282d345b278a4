"""Stage 5, assemble: backbone + quantile heads + reward transform + gating -> a saved QRM directory.

The directory is a normal transformers model: safetensors weights, ``config.json`` with ``auto_map``,
the two ``modeling/`` files (so that ``trust_remote_code=True`` works without qrm-hf), the tokenizer
and a model card (``README.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer
from transformers.utils import logging

from ..model_cards import render_model_card
from ..modeling.configuration_qrm import QRMConfig
from ..modeling.modeling_qrm import QRMForSequenceClassification, QRMGatingNetwork


def assemble_qrm(
    backbone: str | Path,
    attribute_names: Sequence[str],
    quantile_levels: Sequence[float],
    head_coef: np.ndarray | torch.Tensor,
    gating_network: QRMGatingNetwork,
    prompt_end_pattern: Sequence[int],
    head_intercept: np.ndarray | torch.Tensor | None = None,
    reward_transform: np.ndarray | torch.Tensor | None = None,
    **config_kwargs,
) -> QRMForSequenceClassification:
    """Build a `QRMForSequenceClassification` from a backbone checkpoint and fitted parts.

    Args:
        backbone: directory (or Hub id) of the decoder; its weights are loaded once, in place.
        head_coef: quantile-head weights [M, K, H] (`MultiQuantileRegressor.coef_`).
        gating_network: the fitted gating network (`BradleyTerryGating.network_`), built from a config
            with the same gating settings as `config_kwargs`.
        head_intercept: [M, K] biases, or None for heads without bias (the paper's choice).
        reward_transform: the M x M matrix T (identity when None).
        config_kwargs: further `QRMConfig` fields (gating sizes, `quantile_mixing`, ...).
    """
    head_coef = torch.as_tensor(np.asarray(head_coef), dtype=torch.float32)
    num_attributes, num_levels = len(attribute_names), len(quantile_levels)
    backbone_config = AutoConfig.from_pretrained(backbone, trust_remote_code=False)
    if head_coef.shape != (num_attributes, num_levels, backbone_config.hidden_size):
        raise ValueError(
            f"Quantile heads have shape {tuple(head_coef.shape)}, expected [M={num_attributes}, K={num_levels}, "
            f"H={backbone_config.hidden_size}] for these attributes, levels and backbone."
        )
    config = QRMConfig(
        backbone_config=backbone_config,
        attribute_names=list(attribute_names),
        quantile_levels=list(quantile_levels),
        prompt_end_pattern=list(prompt_end_pattern),
        regression_bias=head_intercept is not None,
        **config_kwargs,
    )
    # The backbone checkpoint has no heads: silence transformers' "newly initialized" report, they are set below.
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        model = QRMForSequenceClassification.from_pretrained(backbone, config=config, trust_remote_code=False)
    finally:
        logging.set_verbosity(verbosity)
    with torch.no_grad():
        model.regression_layer.weight.copy_(head_coef.reshape(num_attributes * num_levels, -1))
        if head_intercept is not None:
            model.regression_layer.bias.copy_(torch.as_tensor(np.asarray(head_intercept)).reshape(-1))
        if reward_transform is not None:
            model.reward_transform_matrix.copy_(torch.as_tensor(np.asarray(reward_transform)))
    model.gating.load_state_dict(gating_network.state_dict())
    return model.eval()


def save_qrm(
    model: QRMForSequenceClassification,
    output_dir: str | Path,
    tokenizer=None,
    backbone_name: str | None = None,
    datasets: Sequence[str] = (),
    training_summary: str = "",
    evaluation: list[dict] | None = None,
    *,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    max_shard_size: int | str | None = None,
    homepage: str | None = None,
) -> Path:
    """`save_pretrained` (sharded past `max_shard_size` when given) with the tokenizer and a model card
    rendered from `model_cards/` (for `repo_id` when given, linking `homepage` when given); also what
    `qrm_hf.hub.push_qrm` uploads."""
    output_dir = Path(output_dir)
    model.save_pretrained(
        output_dir, **({} if max_shard_size is None else {"max_shard_size": max_shard_size})
    )
    if tokenizer is not None:
        tokenizer = (
            AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=False)
            if isinstance(tokenizer, (str, Path))
            else tokenizer
        )
        tokenizer.save_pretrained(output_dir)
    card = render_model_card(
        model.config,
        base_model=backbone_name,
        repo_id=repo_id,
        datasets=list(datasets),
        license=license,
        training_summary=training_summary,
        evaluation=evaluation,
        homepage=homepage,
    )
    card.save(output_dir / "README.md")
    return output_dir
