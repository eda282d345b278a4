"""The policy stage of the paper's RLHF experiment (§4.3), after SFT: risk-aware RLOO (or GRPO in place
of RLOO) with a QRM as reward model.

    from qrm_hf.training.rlhf_pipeline import PaperRLOOConfig, run_rlhf

    result = run_rlhf("outputs/sft", "outputs/qrm", "Anthropic/hh-rlhf", PaperRLOOConfig("outputs/rloo"))

The trainer follows the config: `RiskAwareRLOOTrainer` for a `RiskAwareRLOOConfig` (`PaperRLOOConfig`),
`RiskAwareGRPOTrainer` for a `RiskAwareGRPOConfig` (`PaperGRPOConfig`, the same paper values).

The policy gets a fresh LoRA adapter (rank 32, alpha 64) on the SFT model; TRL's `RLOOTrainer` then takes
the adapter-disabled model, i.e. the SFT model itself, as the reference of the KL penalty, so policy and
reference both start from the SFT model as in the paper. The reward of each completion is the risk measure
of the QRM's reward distribution (`RiskAwareRLOOTrainer`). Paper values, the defaults here: k = 2
completions per prompt, AdamW with a constant learning rate of 1e-4, batch size 1024, prompts of fewer
than 348 tokens, completions of at most 512 tokens. At the end the adapter is merged into the SFT weights
and the policy saved as a plain model directory, with the logs (`rewards/<QRM name>/risk`, the
expectation and the left-tail quantiles of Figure 3) in ``trainer_state.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import AutoConfig, AutoTokenizer
from trl import RLOOConfig

from ..chat import backbone_positions
from ..dataset_loading import load_rows
from ..dataset_preset import DatasetPreset
from ..hub import reading_model_files, refusing_model_code
from ..io import check_output_directory, claim_directory
from . import paper_rlhf as paper
from .grpo import RiskAwareGRPOConfig, RiskAwareGRPOTrainer
from .risk_rewards import RiskAwareRewardsArguments, quantile_levels_of
from .rlhf_data import filter_prompts_by_length, rloo_prompts
from .rloo import RiskAwareRLOOConfig, RiskAwareRLOOTrainer
from .sft import SAVE_DTYPES, finish_lora_training, last_checkpoint, paper_lora_config, with_option_names

logger = logging.getLogger(__name__)

PAPER_MAX_PROMPT_LENGTH = paper.MAX_PROMPT_LENGTH  # "prompts with fewer than 348 tokens"
TRAINERS = {RiskAwareRLOOConfig: RiskAwareRLOOTrainer, RiskAwareGRPOConfig: RiskAwareGRPOTrainer}


@dataclass
class _PaperRLValues:
    r"""The paper's RLOO values, as defaults of a risk-aware trainer config.

    Parameters:
        learning_rate (`float`, *optional*, defaults to `1e-4`): paper value (TRL: 1e-6).
        lr_scheduler_type (`str`, *optional*, defaults to `"constant"`): paper value ("a fixed learning rate").
        num_generations (`int`, *optional*, defaults to `2`): k of RLOO, paper value.
        max_completion_length (`int`, *optional*, defaults to `512`): paper value.
        num_train_epochs (`float`, *optional*, defaults to `1.0`): one pass over the prompts (TRL: 3).
        beta (`float`, *optional*, defaults to `0.05`): TRL's RLOO default, for GRPO too (TRL's GRPO: 0).
    """

    learning_rate: float = field(
        default=paper.RLOO_LEARNING_RATE, metadata={"help": "The learning rate of AdamW."}
    )
    lr_scheduler_type: str = field(
        default=paper.RLOO_LR_SCHEDULER, metadata={"help": "The learning rate schedule."}
    )
    num_generations: int | None = field(
        default=paper.NUM_GENERATIONS, metadata={"help": "Completions per prompt (k of RLOO)."}
    )
    max_completion_length: int | None = field(
        default=paper.MAX_COMPLETION_LENGTH, metadata={"help": "Longest completion, in tokens."}
    )
    num_train_epochs: float = with_option_names(
        RLOOConfig, "num_train_epochs", "--epochs", default=paper.RLOO_EPOCHS, help="Passes over the prompts."
    )
    per_device_train_batch_size: int = with_option_names(
        RLOOConfig, "per_device_train_batch_size", "--per-device-batch-size"
    )
    beta: float = with_option_names(
        RLOOConfig,
        "beta",
        help="KL penalty coefficient: TRL's RLOO default for GRPO too (the paper gives none).",
    )


@dataclass
class PaperRLOOConfig(_PaperRLValues, RiskAwareRLOOConfig):
    r"""[`RiskAwareRLOOConfig`] with the paper's RLOO values as defaults: learning rate 1e-4 (constant),
    k = 2 completions per prompt, completions of at most 512 tokens."""


@dataclass
class PaperGRPOConfig(_PaperRLValues, RiskAwareGRPOConfig):
    r"""[`RiskAwareGRPOConfig`] with the paper's RLOO values as defaults (the paper trains no GRPO policy):
    learning rate 1e-4 (constant), k = 2 completions per prompt, completions of at most 512 tokens."""


@dataclass
class RLHFResult:
    """What :func:`run_rlhf` produced."""

    output_dir: Path  # the merged policy and its tokenizer: a plain `AutoModelForCausalLM` directory
    adapter_dir: Path  # the trained LoRA adapter (on the SFT model)
    num_prompts: int  # prompts trained on
    num_dropped: int  # prompts left out for being longer than `max_prompt_length` tokens
    reward_name: str  # the QRM's name in the logs: `rewards/<reward_name>/risk`, ...
    log_history: list[dict]  # the trainer's logs, also in <output_dir>/trainer_state.json


def _reward_dtype(args: RiskAwareRewardsArguments) -> torch.dtype:
    """The QRM runs in the training precision (its heads and gating compute in float32 anyway)."""
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


def load_reward_model(
    reward_model: str | Path, dtype: torch.dtype | None = None, trust_remote_code: bool = False
):
    """A QRM and its tokenizer (`qrm_hf.hub.load_qrm`, code of the model run only with `trust_remote_code`);
    ValueError when the model is not a QRM."""
    from ..hub import load_qrm

    model, tokenizer = load_qrm(reward_model, dtype=dtype, trust_remote_code=trust_remote_code)
    if quantile_levels_of(model) is None:
        raise ValueError(
            f"{reward_model} is not a Quantile Reward Model: its config has no `quantile_levels` (nor the "
            f"released format's `num_quantiles`), so it gives no reward distribution to take a risk measure of. "
            "Use a QRM directory or Hub id (a released checkpoint converted with `qrm convert`)."
        )
    return model, tokenizer


def run_rlhf(
    policy: str | Path,
    reward_model: str | Path,
    data: str | Path,
    args: RiskAwareRLOOConfig | RiskAwareGRPOConfig,
    *,
    split: str = "train",
    limit: int | None = None,
    preset: str | DatasetPreset | None = None,
    max_prompt_length: int | None = PAPER_MAX_PROMPT_LENGTH,
    lora_config: LoraConfig | None = None,
    save_dtype: str = "auto",
    resume: bool = False,
    trust_remote_code: bool = False,
) -> RLHFResult:
    """Risk-aware RLOO (or GRPO, with a `RiskAwareGRPOConfig`) of `policy` (the SFT model) with the QRM
    `reward_model`, then the adapter merged.

    Args:
        policy: the SFT model directory (or Hub id); initial policy and KL reference, with its tokenizer.
        reward_model: a QRM directory or Hub id, loaded with its own tokenizer.
        data: a Hub dataset id or a local json/jsonl/parquet file or directory: preference data (the
            conversation before the last assistant turn is the prompt) or a ``prompt`` column.
        args: the trainer configuration, which picks the trainer: a `RiskAwareRLOOConfig` (e.g.
            :class:`PaperRLOOConfig`) or a `RiskAwareGRPOConfig` (:class:`PaperGRPOConfig`); `args.output_dir`
            receives the merged policy (absent, empty or an earlier output: `qrm_hf.io.claim_directory`).
        split, limit, preset: the split read, its first `limit` rows only, a preset for other columns.
        max_prompt_length: longer prompts (through the policy's chat template) are left out; None keeps all.
        lora_config: the policy's adapter, by default `paper_lora_config()`.
        save_dtype: dtype of the merged policy, ``"auto"`` keeps the SFT checkpoint's.
        resume: continue from the last checkpoint in `args.output_dir`, when there is one.
        trust_remote_code: run the code files of a `reward_model` of another type than ``"qrm"``. The
            policy's code runs only with ``args.trust_remote_code`` (TRL's field, False by default).

    Returns an :class:`RLHFResult`. Raises ValueError for a reward model that is not a QRM, data without
    prompts, a chat prompt and a policy tokenizer without chat template, or no prompt left after the filter.
    """
    trainer_cls = _trainer_class(args)
    if save_dtype not in SAVE_DTYPES:
        raise ValueError(f"save_dtype must be one of {SAVE_DTYPES}, got {save_dtype!r}.")
    _claim_output(args, policy, max_prompt_length)
    qrm, qrm_tokenizer = load_reward_model(reward_model, _reward_dtype(args), trust_remote_code)
    rows = load_rows(data, split=split, limit=limit)
    tokenizer, prompts, num_dropped = _policy_prompts(policy, rows, preset, max_prompt_length, args)
    with refusing_model_code(policy, "policy"):  # the trainer loads the policy's config and weights
        trainer = trainer_cls(
            model=str(policy),
            reward_funcs=qrm,
            args=args,
            train_dataset=prompts,
            processing_class=tokenizer,
            reward_processing_classes=qrm_tokenizer,
            peft_config=lora_config if lora_config is not None else paper_lora_config(),
        )
    trainer.train(resume_from_checkpoint=last_checkpoint(args.output_dir) if resume else None)
    output_dir, adapter_dir = finish_lora_training(trainer, policy, tokenizer, save_dtype)
    name, logs = trainer.reward_func_names[0], list(trainer.state.log_history)
    return RLHFResult(output_dir, adapter_dir, len(prompts), num_dropped, name, logs)


def _claim_output(args, policy, max_prompt_length: int | None) -> None:
    """Before any work: refuse a directory of someone else's files, then an episode longer than the policy's
    positions, then claim `args.output_dir` (the trainer writes checkpoints and the merged policy there)."""
    command = "qrm grpo" if isinstance(args, RiskAwareGRPOConfig) else "qrm rloo"
    check_output_directory(args.output_dir, command)
    check_episode_fits_policy(policy, max_prompt_length, args)
    claim_directory(args.output_dir, command)


def _trainer_class(args):
    """The trainer of a config: RLOO for a `RiskAwareRLOOConfig`, GRPO for a `RiskAwareGRPOConfig`."""
    trainer_cls = next((trainer for config, trainer in TRAINERS.items() if isinstance(args, config)), None)
    if trainer_cls is None:
        raise TypeError(
            "`args` must be a RiskAwareRLOOConfig or RiskAwareGRPOConfig (e.g. PaperRLOOConfig), got "
            f"{type(args).__name__}."
        )
    return trainer_cls


def check_episode_fits_policy(policy, max_prompt_length: int | None, args) -> None:
    """ValueError when a prompt and its completion (`max_prompt_length` + `args.max_completion_length`
    tokens) can run past the positions of the policy that writes them: it would generate at positions it
    has no embedding for (`qrm sft --max-length` is refused the same way). No check without a prompt limit."""
    if max_prompt_length is None or args.max_completion_length is None:
        return
    with refusing_model_code(policy, "policy"), reading_model_files(policy, "policy"):
        config = AutoConfig.from_pretrained(str(policy), trust_remote_code=args.trust_remote_code)
    positions, longest = backbone_positions(config), max_prompt_length + args.max_completion_length
    if positions is not None and longest > positions:
        raise ValueError(
            f"max_prompt_length ({max_prompt_length}) + max_completion_length ({args.max_completion_length}) "
            f"= {longest} tokens is more than the {positions} positions of the policy {policy} "
            "(max_position_embeddings): lower --max-completion-length or --max-prompt-length."
        )


def _policy_prompts(policy, rows, preset, max_prompt_length: int | None, args):
    """(the policy's tokenizer, the prompts of `rows` of at most `max_prompt_length` tokens through it, how
    many were dropped). ValueError for chat prompts without a chat template, or too few prompts left for one
    generation batch."""
    prompts = rloo_prompts(rows, preset)
    # The policy's code runs with the trainer's own consent (TRL's `args.trust_remote_code`, False by default),
    # which the trainer applies to its loads of the policy too; `trust_remote_code` of run_rlhf is the QRM's.
    with refusing_model_code(policy, "policy"), reading_model_files(policy, "policy"):
        tokenizer = AutoTokenizer.from_pretrained(
            str(policy), padding_side="left", truncation_side="left", trust_remote_code=args.trust_remote_code
        )
    if not isinstance(prompts[0]["prompt"], str) and not tokenizer.chat_template:
        raise ValueError(
            f"The prompts are chat messages but the tokenizer of {policy} has no chat template (a model trained "
            "with `qrm sft` saves the one it was trained with)."
        )
    total = len(prompts)
    prompts, num_dropped = filter_prompts_by_length(
        prompts, tokenizer, max_prompt_length, **(args.chat_template_kwargs or {})
    )
    if len(prompts) == 0:
        raise ValueError(f"No prompt has at most {max_prompt_length} tokens (all {total} are longer).")
    per_step = args.generation_batch_size // args.num_generations
    if len(prompts) < per_step:
        raise ValueError(
            f"Each generation batch takes {per_step} distinct prompts ({args.generation_batch_size} completions, "
            f"{args.num_generations} per prompt) but only {len(prompts)} are left: lower the batch size or use "
            "more data."
        )
    if num_dropped:
        logger.info(f"Dropped {num_dropped} of {total} prompts longer than {max_prompt_length} tokens.")
    return tokenizer, prompts, num_dropped


__all__ = [
    "PAPER_MAX_PROMPT_LENGTH",
    "PaperGRPOConfig",
    "PaperRLOOConfig",
    "RLHFResult",
    "load_reward_model",
    "run_rlhf",
]
