"""Risk-aware rewards for TRL's online trainers: a QRM's reward is a risk measure of its reward distribution
(paper §3.5, §4.3). `RiskAwareRLOOTrainer` (`qrm_hf.training.rloo`) and `RiskAwareGRPOTrainer`
(`qrm_hf.training.grpo`) are this mixin on TRL's `RLOOTrainer` / `GRPOTrainer`, with their config dataclass
(`RiskAwareRewardsArguments` on TRL's config).

What changes compared with the TRL trainer (only `_calculate_rewards` is overridden):

* Every QRM among `reward_funcs` (a model whose config carries `quantile_levels`, or `num_quantiles`
  for the released format, whichever class it is: installed or `trust_remote_code`) is still called once
  per batch by TRL on exactly the inputs TRL builds (same texts, tokenizer, right padding), but its reward
  is `risk_measure` of its `reward_quantiles` instead of `logits[:, 0]`; `"expectation"` keeps the expected
  reward `logits[:, 0]`, i.e. stock TRL. Other reward functions and models are untouched; `reward_weights`,
  the group baseline / normalisation, KL and logging stay TRL's. The QRM is reached through a forward
  pre-hook and a forward hook registered for the duration of the call (`self.reward_funcs` is never
  replaced): the pre-hook adds `gating_positions`, the hook swaps `logits` for the risk reward.
* The trainer knows where each prompt ends, so it passes `gating_positions` (when the model's forward
  takes them): the first token of the last occurrence of `config.prompt_end_pattern` among the
  prompt's tokens. With the pattern in the prompt (chat prompts rendered with the QRM's chat template)
  this is the very position the QRM's own search finds, so rewards equal stock TRL's; but a completion
  that writes the pattern itself cannot move the gating position into the completion. A prompt without
  the pattern (plain-text prompts) gets its last token: the hidden state at the end of the prompt,
  which is what the gating network reads in chat format (the end-of-turn token closing the prompt).
* Logged each step, per QRM `<name>`, in the trainer's normal metrics (and so in TensorBoard / W&B):
  `rewards/<name>/expectation`, `rewards/<name>/risk` (the reward optimised, also TRL's
  `rewards/<name>/mean`) and `rewards/<name>/q0.05`, ... for each level of `log_quantile_levels`
  (batch means of the per-completion quantiles: the curves of the paper's Figure 3), and the two spreads
  apart: `rewards/<name>/aleatoric_std` (std of each completion's reward distribution, the annotators'
  disagreement) and `rewards/<name>/epistemic_std` (`reward_epistemic_std`, the members' disagreement;
  0 for a QRM with one member).

Non-finite risk rewards (NaN quantiles, or `exp_utility` overflowing to -inf for very low rewards) are
reported with a warning and count as missing for that reward function, exactly as TRL treats a reward
function returning None: a completion no function can score is left out of the group baseline.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn
from trl.data_utils import apply_chat_template, is_conversational

from .. import risk
from ..chat import PROBE_CONVERSATION
from ..modeling.modeling_qrm import find_last_pattern

# Config field -> the registry parameter whose value it gives when the `risk_measure` spec leaves it out.
_PARAMETER_FIELDS = {"risk_lambda": "lam", "risk_alpha": "alpha", "risk_tau": "tau"}


@dataclass
class RiskAwareRewardsArguments:
    r"""The risk measure applied to the reward distribution of every QRM; mixed into a TRL trainer config
    (`RiskAwareRLOOConfig`, `RiskAwareGRPOConfig`).

    Parameters:
        risk_measure (`str`, *optional*, defaults to `"exp_utility"`):
            Reward taken from each QRM's quantiles [B, K], a name of `qrm_hf.risk.RISK_MEASURES` or a spec
            with its parameter (`"quantile:0.05"`, `"cvar:0.1"`): `"expectation"` (the expected reward, as
            stock TRL), `"exp_utility"` (paper eq. 4: mean_k -exp(-risk_lambda q_k)), `"certainty_equivalent"`
            (same ranking as the utility, in reward units, never overflows), `"cvar"` (mean of the lower
            `risk_alpha` tail) or `"quantile"` (the `risk_tau`-quantile). For a QRM with members
            (`num_members` > 1), measures of its epistemic spread too (`qrm_hf.risk.parse_output`): `"lcb:k"`
            (expected reward minus k times `reward_epistemic_std`), `"<measure>+lcb:k"` (e.g.
            `"cvar:0.25+lcb:1"`) and `"worst_member"` (the lowest member's expected reward).
        risk_lambda (`float`, *optional*, defaults to `1.0`):
            Risk aversion of `exp_utility` and `certainty_equivalent`, > 0.
        risk_alpha (`float`, *optional*, defaults to `0.1`):
            Tail mass of `cvar`, in (0, 1] (1 gives the expectation).
        risk_tau (`float`, *optional*, defaults to `0.1`):
            Level of `quantile`, in (0, 1).
        log_quantile_levels (`list[float]`, *optional*, defaults to `[0.05, 0.10, 0.15, 0.20, 0.25]`):
            Quantile levels logged each step for every QRM (`rewards/<name>/q0.05`, ...), in (0, 1).
    """

    risk_measure: str = field(
        default="exp_utility",
        metadata={
            "help": "Reward taken from each QRM's reward distribution: "
            + ", ".join(risk.RISK_MEASURES)
            + " (a spec such as quantile:0.05 sets the measure's parameter); with members also lcb:k, "
            "<measure>+lcb:k and worst_member."
        },
    )
    risk_lambda: float = field(
        default=risk.RISK_PARAMETERS["lam"].default,
        metadata={"help": "Risk aversion of exp_utility and certainty_equivalent (> 0)."},
    )
    risk_alpha: float = field(
        default=risk.RISK_PARAMETERS["alpha"].default, metadata={"help": "Tail mass of cvar, in (0, 1]."}
    )
    risk_tau: float = field(
        default=risk.RISK_PARAMETERS["tau"].default,
        metadata={"help": "Level of the quantile risk measure, in (0, 1)."},
    )
    log_quantile_levels: list[float] = field(
        default_factory=lambda: [0.05, 0.10, 0.15, 0.20, 0.25],
        metadata={"help": "Quantile levels logged each step for every QRM, in (0, 1)."},
    )

    def __post_init__(self):
        super().__post_init__()  # the TRL config this is mixed into
        for field_name, parameter_name in _PARAMETER_FIELDS.items():
            setattr(
                self,
                field_name,
                risk.RISK_PARAMETERS[parameter_name].check(getattr(self, field_name), field_name),
            )
        try:
            measure = self.parse_risk_measure()
        except (ValueError, TypeError) as error:
            raise ValueError(f"`risk_measure`: {error}") from None
        self._check_parameter_fields_are_used(measure)
        levels = list(self.log_quantile_levels or [])
        if any(not _is_number(t) or not 0 < t < 1 for t in levels) or len(set(levels)) != len(levels):
            raise ValueError(f"`log_quantile_levels` must be distinct numbers in (0, 1), got {levels!r}.")
        self.log_quantile_levels = [float(t) for t in levels]

    def _check_parameter_fields_are_used(self, measure: risk.OutputRiskMeasure) -> None:
        """Refuse a parameter field set away from its default that the measure does not use: the measure has
        no such parameter (`exp_utility` with `risk_alpha`), or its spec states another value (`cvar:0.3`
        with `risk_alpha` 0.5); either would be silently ignored."""
        for field_name, parameter_name in _PARAMETER_FIELDS.items():
            value = getattr(self, field_name)
            if (
                value != risk.RISK_PARAMETERS[parameter_name].default
                and measure.values.get(parameter_name) != value
            ):
                raise ValueError(
                    f"`{field_name}` {value:g} is not used by `risk_measure` {self.risk_measure!r} ("
                    + (
                        f"its {parameter_name} is {measure.values[parameter_name]:g}"
                        if parameter_name in measure.values
                        else f"which has no parameter {parameter_name}"
                    )
                    + ")."
                )

    def parse_risk_measure(self) -> risk.OutputRiskMeasure:
        """The measure of `risk_measure` with its parameter values (the spec's, else the fields')."""
        defaults = {name: getattr(self, field_name) for field_name, name in _PARAMETER_FIELDS.items()}
        return risk.parse_output(self.risk_measure, **defaults)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def quantile_levels_of(model: nn.Module) -> list[float] | None:
    """The reward quantile levels of a QRM (qrm-hf `quantile_levels`, or the released format's
    `num_quantiles` K at linspace(0, 1, K + 2)[1:-1]); None for any other model."""
    config = getattr(model, "config", None)
    levels = getattr(config, "quantile_levels", None)
    if levels is not None:
        return [float(t) for t in levels]
    num_quantiles = getattr(config, "num_quantiles", None)
    if isinstance(num_quantiles, int) and num_quantiles > 0:
        return torch.linspace(0, 1, num_quantiles + 2)[1:-1].tolist()
    return None


def level_name(level: float) -> str:
    """`q0.05`, `q0.10`, `q0.125`: two decimals at least, more when the level needs them."""
    text = f"{level:.2f}"
    return f"q{text}" if float(text) == level else f"q{level:g}"


@dataclass
class _QRMSpec:
    """What the trainer knows about one QRM among the reward functions."""

    index: int
    name: str
    levels: list[float]
    pattern: list[int] | None
    takes_gating_positions: bool
    error_without_pattern: bool
    members: int


@dataclass
class _ScoredBatch:
    """One QRM's view of one `_calculate_rewards` call, kept for the logs. [B] and [B, K]"""

    expected: torch.Tensor
    reward: torch.Tensor
    quantiles: torch.Tensor
    epistemic_std: torch.Tensor


class RiskAwareRewardsMixin:
    """Mixin for a TRL trainer with `_calculate_rewards` (`RLOOTrainer`, `GRPOTrainer`): each QRM's reward
    is a risk measure of its reward distribution. Put it first among the bases and set `config_class`:

        class RiskAwareGRPOTrainer(RiskAwareRewardsMixin, GRPOTrainer):
            config_class = RiskAwareGRPOConfig

    Each QRM's tokenizer (`reward_processing_classes`, loaded from the QRM's directory when not given) must
    be the one the QRM was assembled with: its chat template has to render `config.prompt_end_pattern` and
    its vocabulary has to fit the embedding. Raises `ValueError` at construction when it does not, or when a
    risk measure other than `"expectation"` is asked for with no QRM among `reward_funcs`.
    """

    config_class: type[RiskAwareRewardsArguments]

    def __init__(self, model, reward_funcs, args: RiskAwareRewardsArguments | None = None, *pos, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            trainer = type(self).__name__.removesuffix("Trainer")
            args = self.config_class(f"{str(name).rstrip('/').split('/')[-1]}-{trainer}")
        elif not isinstance(args, self.config_class):
            raise TypeError(f"`args` must be a {self.config_class.__name__}, got {type(args).__name__}.")
        super().__init__(model, reward_funcs, args, *pos, **kwargs)
        self._qrm_specs = [spec for i in range(len(self.reward_funcs)) if (spec := self._qrm_spec(i))]
        measure = args.parse_risk_measure()
        if not self._qrm_specs and (measure.aleatoric.name != "expectation" or measure.reads_members):
            raise ValueError(
                f"risk_measure={args.risk_measure!r} needs a QRM among the reward functions (a model whose config "
                f"has `quantile_levels` and whose output has `reward_quantiles`), but none of "
                f"{self.reward_func_names} is one."
            )
        if measure.reads_members and all(spec.members == 1 for spec in self._qrm_specs):
            # One member has no epistemic spread: the run would silently be the plain measure's.
            raise ValueError(
                f"risk_measure={args.risk_measure!r} reads the spread of a QRM's members, but every QRM among the "
                f"reward functions ({', '.join(spec.name for spec in self._qrm_specs)}) has one member "
                "(num_members=1), whose epistemic std is 0. Use a QRM with members (`qrm fit-quantiles "
                "--num-members 10`), or a measure of the quantiles alone."
            )

    @property
    def _risk_logger(self) -> logging.Logger:
        return logging.getLogger(type(self).__module__)  # e.g. qrm_hf.training.rloo

    def _qrm_spec(self, index: int) -> _QRMSpec | None:
        reward_func = self.reward_funcs[index]
        if not isinstance(reward_func, nn.Module):
            return None
        model = self.accelerator.unwrap_model(reward_func)
        levels = quantile_levels_of(model)
        if levels is None:
            return None
        config = model.config
        pattern = getattr(config, "prompt_end_pattern", None)
        spec = _QRMSpec(
            index=index,
            name=self.reward_func_names[index],
            levels=levels,
            pattern=list(pattern) if pattern else None,
            takes_gating_positions="gating_positions" in inspect.signature(model.forward).parameters,
            error_without_pattern=getattr(config, "gating_fallback", "error") == "error",
            members=getattr(config, "num_members", 1),
        )
        self._check_reward_tokenizer(spec, model, self.reward_processing_classes[index])
        return spec

    @staticmethod
    def _check_reward_tokenizer(spec: _QRMSpec, model: nn.Module, tokenizer) -> None:
        """The QRM's own tokenizer: its vocabulary fits the embedding and its template renders the pattern."""
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        num_embeddings = getattr(embedding, "num_embeddings", None)
        if num_embeddings is not None and len(tokenizer) > num_embeddings:
            raise ValueError(
                f"The reward processing class of QRM {spec.name!r} has {len(tokenizer)} tokens but the QRM embeds "
                f"only {num_embeddings}: it is not the tokenizer the QRM was assembled with. Pass the QRM's own "
                "tokenizer (AutoTokenizer.from_pretrained(<QRM directory>)) in `reward_processing_classes`, or "
                "leave it None."
            )
        if spec.pattern and getattr(tokenizer, "chat_template", None):
            try:
                text = tokenizer.apply_chat_template(PROBE_CONVERSATION, tokenize=False)
            except Exception:  # a template that refuses this probe conversation: nothing to check here
                return
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
            if find_last_pattern(ids, torch.ones_like(ids, dtype=torch.bool), spec.pattern)[0] < 0:
                raise ValueError(
                    f"The chat template of the reward processing class of QRM {spec.name!r} does not produce the "
                    f"QRM's prompt_end_pattern {spec.pattern} (tokens "
                    f"{tokenizer.convert_ids_to_tokens(spec.pattern)}): it is not the tokenizer the QRM was "
                    "assembled with. Pass the QRM's own tokenizer (AutoTokenizer.from_pretrained(<QRM "
                    "directory>)) in `reward_processing_classes`, or leave it None."
                )

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        if not self._qrm_specs:
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        measure = self.args.parse_risk_measure()
        scored: dict[int, _ScoredBatch] = {}
        handles = []
        try:  # TRL builds the texts and inputs, calls every reward function, weighs and gathers
            for spec in self._qrm_specs:
                qrm = self.reward_funcs[spec.index]
                if spec.takes_gating_positions:
                    pre_hook = partial(self._pass_gating_positions, spec, prompts)
                    handles.append(qrm.register_forward_pre_hook(pre_hook, with_kwargs=True))
                hook = partial(self._take_risk_reward, spec, measure, scored)
                handles.append(qrm.register_forward_hook(hook, with_kwargs=True))
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        finally:
            for handle in handles:
                handle.remove()
        for spec in self._qrm_specs:
            if spec.index in scored:  # not called when there are no rows
                self._log_distribution(spec, scored[spec.index])
        return rewards_per_func

    def _pass_gating_positions(self, spec: _QRMSpec, prompts: list, module, args: tuple, kwargs: dict):
        """Forward pre-hook of a QRM: adds `gating_positions` [B] computed from the batch's prompts."""
        input_ids = kwargs["input_ids"]
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = self._gating_positions(spec, input_ids, attention_mask, prompts)
        return args, {**kwargs, "gating_positions": positions}

    def _take_risk_reward(
        self,
        spec: _QRMSpec,
        measure: risk.OutputRiskMeasure,
        scored: dict,
        module,
        args,
        kwargs,
        output,
    ):
        """Forward hook of a QRM: its output with `logits` [B, 1] replaced by the risk reward."""
        batch_size = kwargs["input_ids"].shape[0]
        quantiles = getattr(output, "reward_quantiles", None)
        if quantiles is None or quantiles.shape != (batch_size, len(spec.levels)):
            raise TypeError(
                f"Reward model {spec.name!r} looks like a QRM (its config has quantile levels) but its output "
                f"has no `reward_quantiles` of shape [batch, {len(spec.levels)}]."
            )
        quantiles, expected = quantiles.float(), output.logits[:, 0].float()
        reward = self._risk_reward(spec, measure, output)
        spread = getattr(output, "reward_epistemic_std", None)
        spread = torch.zeros_like(expected) if spread is None else spread.float()
        scored[spec.index] = _ScoredBatch(expected, reward, quantiles, spread)
        return dataclasses.replace(output, logits=reward.unsqueeze(-1))

    def _risk_reward(self, spec: _QRMSpec, measure: risk.OutputRiskMeasure, output) -> torch.Tensor:
        """The reward of each completion [B] from the QRM's output (NaN where not finite, with a warning)."""
        quantiles = output.reward_quantiles.float()
        reward = measure(output, spec.levels)
        bad = ~torch.isfinite(reward) | ~torch.isfinite(quantiles).all(-1)
        if bad.any():
            rows = bad.nonzero().flatten().tolist()
            hint = (
                " exp_utility overflows for very low rewards: use risk_measure='certainty_equivalent' (same "
                "ranking, in reward units) or a smaller risk_lambda."
                if measure.aleatoric.name == "exp_utility" and torch.isfinite(quantiles[bad]).all()
                else ""
            )
            self._risk_logger.warning(
                f"QRM {spec.name!r} gave non-finite {self.args.risk_measure} rewards for {len(rows)} of "
                f"{len(reward)} completions (rows {rows[:8]}); they count as missing for this reward function, as "
                f"TRL does for None rewards.{hint}"
            )
            reward = reward.masked_fill(bad, float("nan"))
        return reward

    def _gating_positions(self, spec: _QRMSpec, input_ids, attention_mask, prompts) -> torch.LongTensor:
        """First token of the last occurrence of the pattern among each row's prompt tokens; else the
        prompt's last token (plain-text prompts). [B]"""
        tokenizer = self.reward_processing_classes[spec.index]
        if is_conversational({"prompt": prompts[0]}):
            texts = [
                apply_chat_template({"prompt": p}, tokenizer, **self.chat_template_kwargs)["prompt"]
                for p in prompts
            ]
        else:
            texts = list(prompts)
        unique = list(dict.fromkeys(texts))  # each prompt comes num_generations times
        encoded = dict(zip(unique, tokenizer(unique, add_special_tokens=False)["input_ids"], strict=True))
        # Prompt tokens: the common prefix of the prompt's tokens and the row (TRL tokenizes prompt + completion).
        length = input_ids.shape[1]
        prompt_ids = torch.full_like(input_ids, -1)
        for row, text in enumerate(texts):
            ids = encoded[text][:length]
            prompt_ids[row, : len(ids)] = torch.tensor(ids, dtype=input_ids.dtype)
        real = attention_mask.bool()
        prompt_lengths = ((prompt_ids == input_ids) & real).long().cumprod(-1).sum(-1)  # [B]
        in_prompt = torch.arange(length, device=input_ids.device) < prompt_lengths.unsqueeze(-1)
        last_prompt_token = (prompt_lengths - 1).clamp(min=0)
        if not spec.pattern:
            return last_prompt_token
        found = find_last_pattern(input_ids, real & in_prompt, spec.pattern)
        missing = found < 0
        if missing.any() and spec.error_without_pattern and is_conversational({"prompt": prompts[0]}):
            row = missing.nonzero()[0].item()
            raise ValueError(
                f"QRM {spec.name!r}: its prompt_end_pattern {spec.pattern} is not among the prompt tokens of row "
                f"{row} rendered with the reward processing class's chat template:\n{texts[row]!r}\nUse the QRM's "
                'own tokenizer, or set `config.gating_fallback = "last_token"` to gate on the last prompt token.'
            )
        return torch.where(missing, last_prompt_token, found)

    def _log_distribution(self, spec: _QRMSpec, batch: _ScoredBatch) -> None:
        """Per-QRM metrics of the batch (gathered over processes; NaN rows left out)."""
        mode = "train" if self.model.training else "eval"
        log_levels = self.args.log_quantile_levels
        columns = [batch.expected, batch.reward, risk.variance(batch.quantiles).sqrt(), batch.epistemic_std]
        if log_levels:
            taus = torch.tensor(log_levels, dtype=torch.float64).unsqueeze(-1)  # [L, 1]
            columns += list(risk.quantile(batch.quantiles, spec.levels, taus))  # L x [B]
        stats = self.accelerator.gather(torch.stack(columns, -1).detach())  # [B_total, 4 + L]
        means = torch.nanmean(stats, 0).tolist()
        names = ["expectation", "risk", "aleatoric_std", "epistemic_std", *map(level_name, log_levels)]
        for name, value in zip(names, means, strict=True):
            self._metrics[mode][f"rewards/{spec.name}/{name}"].append(value)


__all__ = ["RiskAwareRewardsArguments", "RiskAwareRewardsMixin", "level_name", "quantile_levels_of"]
