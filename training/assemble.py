"""Stage 5, assemble: backbone + quantile heads + reward transform + gating -> a saved QRM directory.

The directory is a normal transformers model: safetensors weights, ``config.json`` with ``auto_map``,
the two ``modeling/`` files (so that ``trust_remote_code=True`` works without qrm-hf), the tokenizer
and a model card (``README.md``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

from ..hub import push_model_dir
from ..model_cards import render_model_card
from ..modeling.configuration_qrm import QRMConfig
from ..modeling.modeling_qrm import QRMForSequenceClassification, QRMGatingNetwork

# What `qrm assemble` embeds twice, through feature extraction and through the assembled model.
PROBE_CONVERSATION = [
    {"role": "user", "content": "Which is heavier, a kilogram of iron or a kilogram of feathers?"},
    {"role": "assistant", "content": "Neither: both weigh one kilogram."},
]


def assemble_qrm(
    backbone: str | Path | PreTrainedModel,
    attribute_names: Sequence[str],
    quantile_levels: Sequence[float],
    head_coef: np.ndarray | torch.Tensor,
    gating_network: QRMGatingNetwork,
    prompt_end_pattern: Sequence[int],
    head_intercept: np.ndarray | torch.Tensor | None = None,
    reward_transform: np.ndarray | torch.Tensor | None = None,
    *,
    revision: str | None = None,
    **config_kwargs,
) -> QRMForSequenceClassification:
    """Build a `QRMForSequenceClassification` from a backbone and fitted parts.

    The decoder is loaded as feature extraction loads it (`AutoModel.from_pretrained`, which knows every
    architecture's checkpoint prefix: Llama's `model.`, GPT-2's `transformer.`, GPT-NeoX's `gpt_neox.`, ...);
    its tensors, under the QRM's `model.`, and the fitted parts go through one
    `QRMForSequenceClassification.from_pretrained(state_dict=...)`, which refuses a missing or unexpected
    tensor: no part of the result is left at random.

    Args:
        backbone: directory (or Hub id) of the decoder, or the decoder itself (an `AutoModel`).
        head_coef: quantile-head weights [M, K, H] (`MultiQuantileRegressor.coef_`), or [E, M, K, H] for a
            QRM of E members (`num_members`).
        gating_network: the fitted gating network (`BradleyTerryGating.network_`), built from a config
            with the same gating settings as `config_kwargs`.
        head_intercept: [M, K] ([E, M, K]) biases, or None for heads without bias (the paper's choice).
        reward_transform: the M x M matrix T (identity when None).
        revision: the backbone's revision, when `backbone` is a Hub id.
        config_kwargs: further `QRMConfig` fields (gating sizes, `quantile_mixing`, ...).
    """
    decoder = backbone if isinstance(backbone, PreTrainedModel) else AutoModel.from_pretrained(
        backbone, revision=revision, dtype=torch.float32, trust_remote_code=False
    )  # fmt: skip
    head_coef = torch.as_tensor(np.asarray(head_coef), dtype=torch.float32)
    num_attributes, num_levels = len(attribute_names), len(quantile_levels)
    hidden_size = decoder.config.hidden_size
    num_members = head_coef.shape[0] if head_coef.dim() == 4 else 1
    if head_coef.shape[-3:] != (num_attributes, num_levels, hidden_size) or head_coef.dim() not in (3, 4):
        raise ValueError(
            f"Quantile heads have shape {tuple(head_coef.shape)}, expected [M={num_attributes}, K={num_levels}, "
            f"H={hidden_size}] (or [E, M, K, H] for E members) for these attributes, levels and backbone."
        )
    config = QRMConfig(
        backbone_config=decoder.config,  # (copied by QRMConfig: the decoder's own config stays as it is)
        attribute_names=list(attribute_names),
        quantile_levels=list(quantile_levels),
        prompt_end_pattern=list(prompt_end_pattern),
        regression_bias=head_intercept is not None,
        num_members=num_members,
        **config_kwargs,
    )
    state = _qrm_state_dict(decoder, head_coef, head_intercept, reward_transform, gating_network)
    model = QRMForSequenceClassification.from_pretrained(
        None, config=config, state_dict=state, dtype=decoder.dtype, trust_remote_code=False
    )
    return model.to(decoder.device).eval()  # where the decoder is (the heads' tensors start on the CPU)


def _qrm_state_dict(decoder, head_coef, head_intercept, reward_transform, gating_network) -> dict:
    """Every tensor of the QRM by its name: the decoder's under ``model.``, the heads [E * M * K, H] (and bias),
    T (identity when None) and the gating network's."""
    num_attributes = head_coef.shape[-3]
    state = {f"model.{name}": tensor for name, tensor in decoder.state_dict().items()}
    state["regression_layer.weight"] = head_coef.reshape(-1, head_coef.shape[-1])  # row e*M*K + m*K + k
    if head_intercept is not None:
        state["regression_layer.bias"] = torch.as_tensor(
            np.asarray(head_intercept), dtype=torch.float32
        ).reshape(-1)
    transform = torch.eye(num_attributes) if reward_transform is None else np.asarray(reward_transform)
    state["reward_transform_matrix"] = torch.as_tensor(transform, dtype=torch.float32)
    state.update({f"gating.{name}": tensor for name, tensor in gating_network.state_dict().items()})
    return state


def check_reproduces_extraction(
    model: QRMForSequenceClassification,
    probe_ids: Sequence[int],
    response_embedding: torch.Tensor,
    prompt_embedding: torch.Tensor,
    tolerance: float = 1e-4,
) -> None:
    """Fail unless the assembled `model` reproduces the extraction's embeddings of a probe conversation.

    `response_embedding` and `prompt_embedding` ([H] each) are what feature extraction computed for the token
    ids `probe_ids`. The model must find the same embeddings (its backbone at the last token, its forward's
    prompt embedding) and score the probe as its heads score those embeddings: otherwise its backbone is not
    the one the heads were fitted on (e.g. weights left at random), and a `ValueError` says so.
    """
    device = next(model.parameters()).device
    ids = torch.tensor([list(probe_ids)], device=device)
    mask = torch.ones_like(ids)
    expected_response = response_embedding.float().reshape(1, -1).to(device)
    expected_prompt = prompt_embedding.float().reshape(1, -1).to(device)
    with torch.no_grad():
        output = model(input_ids=ids, attention_mask=mask)
        response = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1].float()
        expected = model.score_embeddings(expected_response, expected_prompt)
    pairs = {
        "response embedding": (response, expected_response),
        "prompt embedding": (output.prompt_embedding, expected_prompt),
        "attribute quantiles": (output.attribute_quantiles, expected.attribute_quantiles),
        "gating weights": (output.gating_output, expected.gating_output),
    }
    for what, (got, want) in pairs.items():
        error = ((got - want).abs().max() / want.abs().max().clamp(min=1.0)).item()
        if not error <= tolerance:  # also refuses NaN
            raise ValueError(
                f"The assembled QRM does not reproduce the feature extraction on a probe conversation: its {what} "
                f"differs by {error:.3g} (relative, tolerance {tolerance}). Its backbone is not the one the heads "
                "were fitted on; nothing was saved."
            )


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
    `push_qrm` uploads."""
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


def push_qrm(
    model,
    repo_id: str,
    tokenizer,
    *,
    base_model: str | None = None,
    datasets: Sequence[str] = (),
    training_summary: str = "",
    evaluation: list[dict] | None = None,
    license: str = "apache-2.0",
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    max_shard_size: int | str = "5GB",
    token: str | None = None,
    homepage: str | None = None,
):
    """Save `model` (a `QRMForSequenceClassification`), its tokenizer and a model card, and push them.

    Weights are sharded past `max_shard_size`; the card is rendered for `repo_id` (see `render_model_card`
    for `base_model`, `datasets`, `training_summary`, `evaluation`, `homepage`). Returns the `CommitInfo`.
    """
    if tokenizer is None:
        raise ValueError("push_qrm needs the tokenizer: a QRM on the Hub is loaded with its own tokenizer.")
    with tempfile.TemporaryDirectory(prefix="qrm-push-") as tmp:
        save_qrm(
            model,
            tmp,
            tokenizer=tokenizer,
            backbone_name=base_model,
            datasets=datasets,
            training_summary=training_summary,
            evaluation=evaluation,
            repo_id=repo_id,
            license=license,
            max_shard_size=max_shard_size,
            homepage=homepage,
        )
        return push_model_dir(
            tmp, repo_id, private=private, revision=revision, commit_message=commit_message, token=token
        )
