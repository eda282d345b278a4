"""Quantile Reward Model (QRM): a frozen decoder, linear quantile heads per attribute and a gating network.

This file travels with every saved QRM (``trust_remote_code=True``). It depends on torch and
transformers only, reads no file and opens no connection: it defines the model, nothing else.

Shapes: B batch, T tokens, H hidden size, E members, M attributes, K quantile levels.

    hidden = backbone(conversation)                       # [B, T, H]
    response_embedding = hidden[last real token]          # [B, H]
    prompt_embedding   = hidden[start of the assistant turn (gating position)]
    Q_e = regression_layer(response_embedding)            # [B, E, M, K]  each member's quantiles
    Q_e = reward_transform(Q_e) = Q_e^T . T per level, sorted
    Q = mean_e Q_e                                        # [B, M, K]  level by level (see `combine_members`)
    Q = Q + conformal offsets (config.calibration)        # [B, M, K]  identity when uncalibrated
    g = softmax(gating(prompt_embedding) / temp) * scale  # [B, M]
    member_rewards = sum_m g_m mean_k Q_e,m               # [B, E]; their std: reward_epistemic_std [B]
    reward_quantiles = sum_m g_m Q_m                      # [B, K]   (paper eq. 3)
    logits = score = sum_m g_m mean_k Q_m                 # [B, 1]   expected reward
    loss = mean pinball loss of Q against labels          # labels [B, M], NaN = missing

Heads, transform and gating are always *called* as modules (never read by their weights), so that
accelerate's offloading hooks, PEFT wrappers and quantised linears see them; they run in float32.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers import AutoModel, PreTrainedModel
from transformers.utils import ModelOutput, logging

from .configuration_qrm import GATING_DEFAULTS, QRMConfig

logger = logging.get_logger(__name__)

try:  # transformers >= 5: these initialisers leave weights that were loaded from a checkpoint alone
    from transformers import initialization as init
except ImportError:  # pragma: no cover - transformers 4.x
    from torch.nn import init

try:  # transformers >= 5: the transform is the module `reward_transform`, stored as `reward_transform_matrix`
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping
    from transformers.core_model_loading import WeightRenaming

    register_checkpoint_conversion_mapping(
        "QRMForSequenceClassification",
        [WeightRenaming("reward_transform_matrix", "reward_transform.weight")],
        overwrite=True,
    )
except ImportError:  # pragma: no cover - transformers 4.x
    pass

CHAT_TEMPLATE_HINT = (
    "A QRM reads a conversation formatted with the chat template it was assembled with: "
    "`text = tokenizer.apply_chat_template([{'role': 'user', 'content': prompt}, "
    "{'role': 'assistant', 'content': response}], tokenize=False)`, then tokenize or score `text`."
)


@dataclass
class QRMOutput(ModelOutput):
    """Output of [`QRMForSequenceClassification`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): mean pinball loss of `attribute_quantiles`
            against `labels`, when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, 1)`): expected reward, what TRL reads.
        score (`torch.FloatTensor` of shape `(batch_size, 1)`): same values as `logits` (released QRM name).
        reward_quantiles (`torch.FloatTensor` of shape `(batch_size, K)`): mixed reward quantiles at
            `config.quantile_levels`.
        attribute_quantiles (`torch.FloatTensor` of shape `(batch_size, M, K)`): per-attribute quantiles
            after the reward transform, the members combined (`combine_members`) and the conformal offsets
            of `config.calibration`, when set.
        rewards (`torch.FloatTensor` of shape `(batch_size, M)`): per-attribute expectations.
        gating_output (`torch.FloatTensor` of shape `(batch_size, M)`): gating weights (times `logit_scale`).
        prompt_embedding (`torch.FloatTensor` of shape `(batch_size, H)`): input of the gating network.
        member_rewards (`torch.FloatTensor` of shape `(batch_size, E)`): each member's expected reward
            (E = `config.num_members`).
        reward_epistemic_std (`torch.FloatTensor` of shape `(batch_size,)`): standard deviation of
            `member_rewards` over the members (the model not knowing; 0 for one member).
        attribute_epistemic_std (`torch.FloatTensor` of shape `(batch_size, M)`): standard deviation over
            the members of each attribute's expected reward.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): the backbone's hidden states.
        attentions (`tuple(torch.FloatTensor)`, *optional*): the backbone's attention weights.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    score: torch.FloatTensor | None = None
    reward_quantiles: torch.FloatTensor | None = None
    attribute_quantiles: torch.FloatTensor | None = None
    rewards: torch.FloatTensor | None = None
    gating_output: torch.FloatTensor | None = None
    prompt_embedding: torch.FloatTensor | None = None
    member_rewards: torch.FloatTensor | None = None
    reward_epistemic_std: torch.FloatTensor | None = None
    attribute_epistemic_std: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def pinball_loss(quantiles: torch.Tensor, labels: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Mean pinball loss rho_tau(y - q) over the observed (row, attribute) pairs and all levels.

    quantiles [B, M, K], labels [B, M] (NaN = missing), levels [K] -> scalar (0 if no label is observed).
    """
    labels = labels.to(device=quantiles.device, dtype=quantiles.dtype)
    observed = ~labels.isnan()  # [B, M]
    residual = labels.nan_to_num().unsqueeze(-1) - quantiles  # [B, M, K]
    loss = torch.maximum(levels * residual, (levels - 1) * residual)
    return (loss * observed.unsqueeze(-1)).sum() / (observed.sum() * quantiles.shape[-1]).clamp(min=1)


def find_last_pattern(
    input_ids: torch.LongTensor, real_tokens: torch.BoolTensor, pattern
) -> torch.LongTensor:
    """Start of the last occurrence of `pattern` made of real tokens in each row, -1 where absent. [B]"""
    batch_size, length = input_ids.shape
    width = len(pattern)
    if width == 0 or length < width:
        return input_ids.new_full((batch_size,), -1)
    pattern = torch.as_tensor(pattern, dtype=input_ids.dtype, device=input_ids.device)
    hits = (input_ids.unfold(1, width, 1) == pattern).all(-1)  # [B, T - width + 1]
    hits &= real_tokens.unfold(1, width, 1).all(-1)
    starts = torch.arange(hits.shape[1], device=input_ids.device)
    return torch.where(hits, starts, -1).amax(-1)


def mixture_quantiles(quantiles: torch.Tensor, weights: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Quantiles at `levels` of the mixture sum_m w_m F_m, with w = weights / weights.sum().

    Each F_m is the distribution whose CDF passes through (quantiles[m, k], levels[k]), linear in
    between, with mass levels[0] at its first and 1 - levels[-1] at its last quantile. The result is
    scaled by weights.sum() so that it matches the "average" mixing when all attributes agree.
    quantiles [B, M, K] sorted along K, weights [B, M], levels [K] -> [B, K].
    """
    batch_size, num_attributes, num_levels = quantiles.shape
    quantiles = quantiles.contiguous()
    total = weights.sum(-1, keepdim=True)  # [B, 1]
    weights = weights / total
    atoms = quantiles.reshape(batch_size, 1, -1).sort(-1).values  # [B, 1, P]: where the mixture CDF bends
    at_atoms = atoms.expand(batch_size, num_attributes, -1).contiguous()  # [B, M, P]
    tiny = torch.finfo(quantiles.dtype).tiny

    def mixture_cdf(right: bool) -> torch.Tensor:  # F(x) (right) or F(x-) (left) at every atom, [B, P]
        count = torch.searchsorted(quantiles, at_atoms, right=right)  # [B, M, P] in 0..K
        low, high = (count - 1).clamp(0, num_levels - 1), count.clamp(max=num_levels - 1)
        q_low, q_high = quantiles.gather(-1, low), quantiles.gather(-1, high)
        fraction = ((at_atoms - q_low) / (q_high - q_low).clamp_min(tiny)).clamp(0, 1)
        inside = levels[low] + fraction * (levels[high] - levels[low])
        cdf = torch.where(count == 0, 0.0, torch.where(count == num_levels, 1.0, inside))
        return (weights.unsqueeze(-1) * cdf).sum(1)

    cdf_right, cdf_left = mixture_cdf(right=True), mixture_cdf(right=False)
    atoms = atoms.squeeze(1)
    target = levels.expand(batch_size, num_levels).contiguous()  # [B, K]
    first = torch.searchsorted(cdf_right, target).clamp(max=atoms.shape[-1] - 1)  # first atom with F >= tau
    before = (first - 1).clamp(min=0)
    x_before, x_first = atoms.gather(-1, before), atoms.gather(-1, first)
    cdf_before, cdf_first_left = cdf_right.gather(-1, before), cdf_left.gather(-1, first)
    fraction = ((target - cdf_before) / (cdf_first_left - cdf_before).clamp_min(tiny)).clamp(0, 1)
    on_segment = (first > 0) & (target < cdf_first_left)  # tau is reached between two atoms, not by a jump
    result = torch.where(on_segment, x_before + fraction * (x_first - x_before), x_first)
    return result * total


def member_quantiles(
    raw: torch.Tensor, num_members: int, num_attributes: int, reward_transform, monotone: bool
) -> torch.Tensor:
    """Each member's attribute quantiles [B, E, M, K] from the raw heads output [B, E*M*K].

    Row e*M*K + m*K + k of the heads is member e, attribute m, level k (E = 1 is the single-member
    format). `reward_transform` (a `QRMRewardTransform`, called as a module) mixes the attributes of
    every member; `monotone` sorts each member's K quantiles. The one definition of the heads: the
    model, the ensemble fitting and the reward computations of qrm-hf all call it.
    """
    quantiles = raw.float().view(raw.shape[0], num_members, num_attributes, -1)
    quantiles = reward_transform(quantiles).float()
    return quantiles.sort(-1).values if monotone else quantiles


def combine_members(quantiles: torch.Tensor) -> torch.Tensor:
    """The aleatoric distribution of E members [B, E, M, K] -> [B, M, K]: their quantiles averaged level by
    level (Vincentization). Unlike the members' mixture it does not widen where members disagree, so the
    width stays the annotators' disagreement and the members' disagreement is reported apart; its mean is
    the mean of the members' means, and it stays sorted when each member is."""
    return quantiles.mean(1)


def member_spread(values: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Standard deviation over the members (population: 0 for one member) along `dim`."""
    return values.std(dim, correction=0)


def calibrate_quantiles(quantiles: torch.Tensor, calibration: dict) -> torch.Tensor:
    """Attribute quantiles [B, M, K] plus the conformal offsets of `config.calibration` (`qrm calibrate`).

    Each row falls in the group of its predicted spread: the mean over attributes of the interval width
    q[:, m, high] - q[:, m, low] (`width_level_indices`) divided by that attribute's typical width
    (`width_scales` [M]), placed among `width_bin_edges` [G - 1] (no edges: one group). It moves by that
    group's offsets [M, K] (`offsets` [G, M, K]): what split conformal calibration fitted on held-out ratings.
    """
    offsets = quantiles.new_tensor(calibration["offsets"])  # [G, M, K]
    edges = quantiles.new_tensor(calibration["width_bin_edges"])  # [G - 1]
    low, high = calibration["width_level_indices"]
    width = quantiles[..., high] - quantiles[..., low]  # [B, M]
    spread = (width / quantiles.new_tensor(calibration["width_scales"])).mean(-1)  # [B]
    return quantiles + offsets[torch.searchsorted(edges, spread.contiguous(), right=True)]


# The tensors of a QRM that a backbone checkpoint lacks: a checkpoint without any of them gives fresh heads.
HEAD_PREFIXES = ("regression_layer.", "reward_transform.", "gating.")


def _names(names, limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _incomplete_message(where, missing, unexpected, fresh_heads) -> str:
    """One line naming what a checkpoint lacks or has in excess."""
    if fresh_heads:  # a backbone checkpoint: its new heads are expected, name what the backbone lacks
        missing = [name for name in missing if not name.startswith(HEAD_PREFIXES)]
    problems = []
    if missing:
        problems.append(f"missing {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {_names(unexpected)}")
    message = f"The weights of {where} do not fit QRMForSequenceClassification: {'; '.join(problems)}"
    if fresh_heads and unexpected:  # a backbone checkpoint whose decoder is not under `model.`
        message += (
            ". A fresh QRM is built from a backbone checkpoint only when its decoder is stored under `model.` "
            "(Llama, Mistral, Qwen2, ...); for other decoders (GPT-2 `transformer.`, GPT-NeoX `gpt_neox.`, ...) "
            "load the decoder with AutoModel.from_pretrained and pass its tensors, prefixed `model.`, with the "
            "heads as `state_dict=` (what qrm-hf's `qrm assemble` does)"
        )
    elif not fresh_heads:
        message += (
            " (a QRM checkpoint must hold every tensor of the model: save it again or download it again)"
        )
    return message + "."


def _mismatch_message(where, mismatched) -> str:
    """One line naming the tensors whose shape differs from the config's, with the config field to fix."""
    shapes = "; ".join(
        f"{name} is {list(ckpt)} in the checkpoint, {list(model)} for the config"
        for name, ckpt, model in sorted(mismatched)
    )
    names = " ".join(name for name, _, _ in mismatched)
    hints = []
    if "regression_layer" in names:
        hints.append("regression_layer has num_members * len(attribute_names) * len(quantile_levels) rows")
    if "reward_transform" in names or "gating.layers" in names:
        hints.append(
            "the reward transform and the gating output have one entry per attribute in attribute_names"
        )
    if "embed" in names:
        hints.append(
            "the embeddings have backbone_config.vocab_size rows (save a model resized with "
            "resize_token_embeddings with its resized config)"
        )
    return (
        f"The weights of {where} do not fit its config: {shapes}"
        + (f" ({'; '.join(hints)})" if hints else "")
        + "."
    )


class QRMRewardTransform(nn.Module):
    """The M x M reward transform T, mixing attributes at every level (identity unless debiased).

    Stored in checkpoints as `reward_transform_matrix` (the released QRM name).
    """

    def __init__(self, num_attributes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(num_attributes), requires_grad=False)

    def forward(self, quantiles: torch.Tensor) -> torch.Tensor:  # [..., M, K] -> [..., M, K]
        # Q'[m', k] = sum_m Q[m, k] T[m, m'], as one matmul over all rows: the result of a row does not depend
        # on the batch it comes in (an einsum's kernel choice would)
        return (quantiles.transpose(-1, -2) @ self.weight.to(quantiles.dtype)).transpose(-1, -2)


@dataclass
class QRMGatingSizes:
    """The six `QRMConfig` fields a `QRMGatingNetwork` is built from: build one without a backbone config
    (e.g. to fit it on stored prompt embeddings) with the same layers and state-dict keys."""

    hidden_size: int
    num_attributes: int
    gating_hidden_dim: int = GATING_DEFAULTS["gating_hidden_dim"]
    gating_n_hidden: int = GATING_DEFAULTS["gating_n_hidden"]
    gating_temperature: float = GATING_DEFAULTS["gating_temperature"]
    gating_batch_norm: bool = GATING_DEFAULTS["gating_batch_norm"]


class QRMGatingNetwork(nn.Module):
    """MLP on the prompt embedding -> mixing weights over the M attributes, summing to `logit_scale`."""

    def __init__(self, config: QRMConfig | QRMGatingSizes):
        super().__init__()
        blocks, width = [], config.hidden_size
        for _ in range(config.gating_n_hidden):
            if config.gating_batch_norm:  # released QRM format: layers.{3i} Linear, layers.{3i+2} BatchNorm1d
                blocks += [nn.Linear(width, config.gating_hidden_dim, bias=False), nn.ReLU()]
                blocks.append(nn.BatchNorm1d(config.gating_hidden_dim))
            else:
                blocks += [nn.Linear(width, config.gating_hidden_dim), nn.ReLU()]
            width = config.gating_hidden_dim
        blocks.append(nn.Linear(width, config.num_attributes))
        self.layers = nn.Sequential(*blocks)
        self.logit_scale = nn.Parameter(torch.ones(1))
        self.temperature = config.gating_temperature
        self.batch_norm = config.gating_batch_norm and config.gating_n_hidden > 0

    def forward(self, prompt_embedding: torch.Tensor) -> torch.Tensor:  # [B, H] -> [B, M]
        if self.batch_norm and self.training and prompt_embedding.shape[0] == 1:
            raise ValueError(
                "The gating network has BatchNorm1d layers (gating_batch_norm=True, the released QRM format), "
                "which cannot train on a batch of one. To score, call `model.eval()` (or keep the gating "
                "frozen with `model.gating.eval()` while training the rest); to train the gating, use "
                "batches of at least 2."
            )
        logits = self.layers(prompt_embedding.to(self.logit_scale.dtype))
        return torch.softmax(logits / self.temperature, dim=-1) * self.logit_scale


def _backbone_supports(config: QRMConfig, feature: str) -> bool:
    """Whether the backbone's model class declares `feature` (e.g. `_supports_sdpa`)."""
    try:
        return bool(getattr(AutoModel._model_mapping[type(config.backbone_config)], feature, False))
    except (KeyError, AttributeError):  # a backbone that transformers does not know
        return False


class QRMForSequenceClassification(PreTrainedModel):
    """Quantile Reward Model: scores a conversation with a distribution over rewards.

    `logits` (and `score`) hold the expected reward, so the model is a drop-in sequence-classification
    reward model; `reward_quantiles` hold the reward distribution at `config.quantile_levels`. Given
    `labels` [B, M] (attribute ratings, NaN where missing), `loss` is the mean pinball loss of
    `attribute_quantiles`, so `transformers.Trainer` fine-tunes the distribution directly.
    """

    config_class = QRMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _supports_attention_backend = True
    # Heads, transform and gating stay in float32 whatever dtype the backbone is loaded in.
    _keep_in_fp32_modules_strict = ["regression_layer", "reward_transform", "gating"]
    # The attention implementations are the backbone's.
    _supports_sdpa = property(lambda self: _backbone_supports(self.config, "_supports_sdpa"))
    _supports_flash_attn = property(lambda self: _backbone_supports(self.config, "_supports_flash_attn"))
    _supports_flex_attn = property(lambda self: _backbone_supports(self.config, "_supports_flex_attn"))

    def __init__(self, config: QRMConfig):
        super().__init__(config)
        self.model = AutoModel.from_config(config.backbone_config)
        self._no_split_modules = list(getattr(self.model, "_no_split_modules", None) or [])
        num_attributes, num_levels = config.num_attributes, config.num_quantiles
        self.regression_layer = nn.Linear(  # all members in one matmul: row e*M*K + m*K + k
            config.hidden_size, config.num_members * num_attributes * num_levels, bias=config.regression_bias
        )
        self.reward_transform = QRMRewardTransform(num_attributes)
        self.gating = QRMGatingNetwork(config)
        self.post_init()
        self._freeze_gating_and_transform()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, QRMRewardTransform):
            init.eye_(module.weight)
        elif isinstance(module, QRMGatingNetwork):
            init.ones_(module.logit_scale)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained` from safetensors only, refusing weights that do not fit the model.

        The checkpoint is either a QRM, which must hold every tensor of the model and nothing else, or a
        backbone (e.g. a plain Llama directory: the heads, transform and gating are all absent), which gives
        a fresh QRM: every backbone tensor must be there under `model.`; the new heads are logged and listed
        in `missing_keys` (`output_loading_info=True`), tensors of other heads (e.g. `lm_head`) in
        `unexpected_keys`. Anything else is a `ValueError` naming the tensors, instead of transformers'
        load report and random values. Shape mismatches are a one-line `ValueError` unless
        `ignore_mismatched_sizes=True`.
        """
        kwargs.setdefault("use_safetensors", True)  # never unpickle weights
        return_loading_info = kwargs.pop("output_loading_info", False)
        allow_mismatched_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        where = pretrained_model_name_or_path or "the given state_dict"
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # the errors below replace transformers' multi-line load report
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path,
                *model_args,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                **kwargs,
            )
        finally:
            logging.set_verbosity(verbosity)
        if info["mismatched_keys"] and not allow_mismatched_sizes:
            raise ValueError(_mismatch_message(where, info["mismatched_keys"]))
        missing, unexpected = sorted(info["missing_keys"]), sorted(info["unexpected_keys"])
        head_tensors = [name for name in model.state_dict() if name.startswith(HEAD_PREFIXES)]
        fresh_heads = set(head_tensors) <= set(missing)
        backbone_missing = [name for name in missing if not name.startswith(HEAD_PREFIXES)]
        if backbone_missing or (missing or unexpected) and not fresh_heads:
            raise ValueError(_incomplete_message(where, missing, unexpected, fresh_heads))
        if missing:
            logger.warning(
                f"A fresh QRM on the backbone of {where}: {', '.join(missing)} are new (initialised, not loaded)."
            )
        model._freeze_gating_and_transform()  # loading replaces the parameters, with requires_grad=True
        return (model, info) if return_loading_info else model

    def _freeze_gating_and_transform(self) -> None:
        # The transform is fitted apart (debiasing). The labels loss (pinball on attribute quantiles) never
        # reaches the gating, which learns from preferences: frozen unless asked, so that no trainable
        # parameter goes without a gradient (DDP) and `Trainer` with labels trains heads (and backbone) only.
        self.reward_transform.requires_grad_(False)
        self.gating.requires_grad_(False)

    @property
    def dtype(self) -> torch.dtype:
        # The backbone's dtype (what save_pretrained records), not that of the float32 heads.
        return self.model.dtype

    @property
    def reward_transform_matrix(self) -> torch.Tensor:
        """The reward transform T [M, M] (checkpoint key `reward_transform_matrix`)."""
        return self.reward_transform.weight

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def score_embeddings(self, response_embedding: torch.Tensor, prompt_embedding: torch.Tensor) -> QRMOutput:
        """Heads, transform, members, gating and mixing on precomputed embeddings ([B, H] each), in float32."""
        heads_dtype = self.gating.logit_scale.dtype  # float32 (`_keep_in_fp32_modules_strict`)
        response_embedding, prompt_embedding = response_embedding.float(), prompt_embedding.float()
        raw = self.regression_layer(response_embedding.to(heads_dtype))  # [B, E*M*K]
        config = self.config
        members = member_quantiles(
            raw, config.num_members, config.num_attributes, self.reward_transform, config.monotone_quantiles
        )  # [B, E, M, K]
        attribute_quantiles = combine_members(members)
        if config.calibration is not None:  # before every output below reads the quantiles
            calibrated = calibrate_quantiles(attribute_quantiles, config.calibration)
            if config.monotone_quantiles:  # offsets of neighbouring levels may cross
                calibrated = calibrated.sort(-1).values
            # Every member moves with the combined quantiles: their mean stays the calibrated one, their spread
            # is unchanged (a calibration moves where the distribution lies, not how sure the heads are).
            members = members + (calibrated - attribute_quantiles).unsqueeze(1)
            attribute_quantiles = calibrated
        rewards = attribute_quantiles.mean(-1)  # [B, M]
        gating_output = self.gating(prompt_embedding).float()  # [B, M]
        member_attribute_rewards = members.mean(-1)  # [B, E, M]
        member_rewards = torch.einsum("bm,bem->be", gating_output, member_attribute_rewards)
        if self.config.quantile_mixing == "mixture":
            levels = attribute_quantiles.new_tensor(self.config.quantile_levels)  # [K]
            reward_quantiles = mixture_quantiles(attribute_quantiles.sort(-1).values, gating_output, levels)
        else:
            reward_quantiles = torch.einsum("bm,bmk->bk", gating_output, attribute_quantiles)
        score = (gating_output * rewards).sum(-1, keepdim=True)  # [B, 1]
        return QRMOutput(
            logits=score,
            score=score,
            reward_quantiles=reward_quantiles,
            attribute_quantiles=attribute_quantiles,
            rewards=rewards,
            gating_output=gating_output,
            prompt_embedding=prompt_embedding,
            member_rewards=member_rewards,
            reward_epistemic_std=member_spread(member_rewards),
            attribute_epistemic_std=member_spread(member_attribute_rewards),
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        gating_positions: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        labels: torch.FloatTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> QRMOutput | tuple:
        r"""
        gating_positions (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Position of the prompt embedding in each row. Overrides the search for `config.prompt_end_pattern`.
        labels (`torch.FloatTensor` of shape `(batch_size, num_attributes)`, *optional*):
            Attribute ratings (NaN where missing). `loss` is then the mean pinball loss of `attribute_quantiles`
            over the observed ratings and all levels (the quantile-regression objective, without its L1 term).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` and `inputs_embeds`.")
        self._check_heads_can_train(labels)
        batch_size, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        real_tokens = self._real_tokens(input_ids, attention_mask, batch_size, length)  # [B, T]
        if not torch.compiler.is_compiling():  # a data-dependent check: eager mode only
            empty_rows = (~real_tokens.any(-1)).nonzero().flatten().tolist()
            if empty_rows:
                raise ValueError(f"Row(s) {empty_rows} have no real token (attention mask all zeros).")
        positions = torch.arange(length, device=real_tokens.device)
        response_positions = torch.where(real_tokens, positions, -1).amax(-1)  # [B]
        prompt_positions = self._gating_positions(
            input_ids, real_tokens, gating_positions, response_positions
        )
        if position_ids is None and attention_mask is not None:
            # Count positions over real tokens only, so left padding does not shift them.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if output_attentions is None:
            output_attentions = self.config.output_attentions
        kwargs.setdefault("use_cache", False)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
        )
        hidden = outputs.last_hidden_state  # [B, T, H]
        rows = torch.arange(batch_size, device=hidden.device)
        scored = self.score_embeddings(hidden[rows, response_positions], hidden[rows, prompt_positions])
        loss = None
        if labels is not None:
            if labels.shape != (batch_size, self.config.num_attributes):
                raise ValueError(
                    f"`labels` must have shape (batch_size, num_attributes) = {(batch_size, self.config.num_attributes)} "
                    f"(one rating per attribute, NaN where missing), got {tuple(labels.shape)}."
                )
            levels = scored.attribute_quantiles.new_tensor(self.config.quantile_levels)  # [K]
            loss = pinball_loss(scored.attribute_quantiles, labels, levels)
        output = QRMOutput(
            loss=loss,
            **scored,
            hidden_states=outputs.hidden_states,
            attentions=getattr(outputs, "attentions", None),
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    def _check_heads_can_train(self, labels) -> None:
        """Refuse training that would not move what the user expects, before the first step does it silently.

        The backbone alone (PEFT `task_type="SEQ_CLS"` leaves the heads frozen), a trainable gating with
        `labels` (their loss gives the gating no gradient: DDP stops, and the gating would not learn), or the
        heads or backbone of a calibrated model (the offsets were fitted on the quantiles training moves).
        """
        if not self.training or not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return
        gating_trains = any(p.requires_grad for p in self.gating.parameters())
        if labels is not None and gating_trains:
            raise ValueError(
                "The labels loss (pinball loss of the attribute quantiles) gives the gating network no gradient, "
                "but the gating is trainable: freeze it with model.gating.requires_grad_(False) (with PEFT, "
                "leave 'gating' out of modules_to_save). The gating learns from preferences: train it with a "
                "loss on `logits` (TRL RewardTrainer on chosen/rejected pairs), without labels."
            )
        quantile_heads_train = any(p.requires_grad for p in self.regression_layer.parameters())
        backbone_trains = any(p.requires_grad for p in self.model.parameters())
        if self.config.calibration is not None and (quantile_heads_train or backbone_trains):
            raise ValueError(
                "This QRM is calibrated (config.calibration, `qrm calibrate`): training its quantile heads or "
                "backbone moves the quantiles its conformal offsets were fitted on, so the stored calibration "
                "would no longer hold. Train the uncalibrated model (model.config.calibration = None), then "
                "calibrate it again on held-out ratings."
            )
        if not (gating_trains or quantile_heads_train) and backbone_trains:
            raise ValueError(
                "Only the backbone is trainable: the quantile heads (regression_layer) and the gating network "
                "are frozen, so training would not move the rewards the way you expect. With PEFT, "
                "task_type='SEQ_CLS' only trains modules named 'classifier' or 'score', which a QRM does not "
                "have: add modules_to_save=['regression_layer'] to the LoraConfig (with 'gating' too when "
                "training on preference pairs, a loss on `logits`; the labels loss does not reach the gating)."
            )

    def _real_tokens(self, input_ids, attention_mask, batch_size, length) -> torch.BoolTensor:
        """Which tokens are real: the attention mask; without one, all up to the last non-pad token."""
        device = input_ids.device if input_ids is not None else self.device
        if attention_mask is not None:
            if attention_mask.shape != (batch_size, length):
                raise ValueError(
                    f"`attention_mask` has shape {tuple(attention_mask.shape)}, expected {(batch_size, length)}."
                )
            return attention_mask.bool()
        if input_ids is None or self.config.pad_token_id is None:
            return torch.ones(batch_size, length, dtype=torch.bool, device=device)
        positions = torch.arange(length, device=device).expand(batch_size, length)
        last_real = torch.where(input_ids != self.config.pad_token_id, positions, -1).amax(-1, keepdim=True)
        return positions <= last_real

    def _gating_positions(
        self, input_ids, real_tokens, gating_positions, response_positions
    ) -> torch.LongTensor:
        batch_size, length = real_tokens.shape
        if gating_positions is not None:
            gating_positions = torch.as_tensor(gating_positions, device=real_tokens.device)
            if gating_positions.shape != (batch_size,) or gating_positions.is_floating_point():
                raise ValueError(
                    f"`gating_positions` must be an integer tensor of shape ({batch_size},), "
                    f"got {gating_positions.dtype} of shape {tuple(gating_positions.shape)}."
                )
            if (
                not torch.compiler.is_compiling()
                and ((gating_positions < 0) | (gating_positions >= length)).any()
            ):
                raise ValueError(
                    f"`gating_positions` must lie in [0, {length}), got {gating_positions.tolist()}."
                )
            return gating_positions.long()
        pattern = self.config.prompt_end_pattern
        fallback = self.config.gating_fallback == "last_token"
        if input_ids is None and not fallback:
            raise ValueError(
                "`inputs_embeds` without `gating_positions`: the gating position (the start of the assistant "
                f"turn, prompt_end_pattern {pattern}) cannot be searched in embeddings. Pass `gating_positions` "
                "(the index of that token in each row), or pass `input_ids` instead. " + CHAT_TEMPLATE_HINT
            )
        if input_ids is None or not pattern:
            found = torch.full_like(response_positions, -1)
        else:
            found = find_last_pattern(input_ids, real_tokens, pattern)
        missing = found < 0
        if fallback:
            return torch.where(missing, response_positions, found)
        if torch.compiler.is_compiling():
            # torch.export / torch.compile trace no data-dependent `if`: the check is an op of the graph.
            torch._assert_async(~missing.any(), f"prompt_end_pattern {pattern} not found in a row")
        elif missing.any():
            row = missing.nonzero()[0].item()
            raise ValueError(
                f"prompt_end_pattern {pattern} not found among the real tokens of row {row} "
                f"(rows missing it: {missing.nonzero().flatten().tolist()}): the text has no assistant turn, "
                "as plain text (e.g. a string given to pipeline('text-classification')) does not. "
                + CHAT_TEMPLATE_HINT
                + ' Otherwise pass `gating_positions`, or set `config.gating_fallback = "last_token"` to gate on '
                "the last token (not what the model was trained on)."
            )
        return found


__all__ = [
    "QRMForSequenceClassification",
    "QRMGatingNetwork",
    "QRMGatingSizes",
    "QRMOutput",
    "QRMRewardTransform",
    "combine_members",
    "calibrate_quantiles",
    "find_last_pattern",
    "member_quantiles",
    "member_spread",
    "mixture_quantiles",
    "pinball_loss",
]
