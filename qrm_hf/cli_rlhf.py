"""`qrm sft`, `qrm rloo` and `qrm grpo`: the paper's risk-aware RLHF pipeline (§4.3) on the command line.

`add_rlhf_commands(subparsers)` adds the commands to the `qrm` parser. Nothing heavy is imported here:
TRL, PEFT and datasets load inside the handlers, when a command runs.
"""

from __future__ import annotations

import argparse
import os

from . import risk
from .arguments import risk_spec
from .training.paper_rlhf import (  # the paper's values (§4.3), also the defaults of the trainer configs
    BATCH_SIZE,
    DATA,
    LORA_ALPHA,
    LORA_DROPOUT,
    LORA_R,
    LORA_TARGETS,
    MAX_COMPLETION_LENGTH,
    MAX_PROMPT_LENGTH,
    NUM_GENERATIONS,
    RLOO_LEARNING_RATE,
    SFT_LEARNING_RATE,
    SFT_MAX_LENGTH,
)

SFT_DESCRIPTION = """\
Supervised fine-tuning of a base model on the chosen responses of preference data (Anthropic HH-RLHF by
default) with a LoRA adapter, as in the paper (§4.3): examples longer than --max-length tokens are dropped,
one epoch, AdamW with a cosine learning rate schedule. At the end the adapter is merged into the base
weights: OUTPUT_DIR holds a plain model and its tokenizer, the starting policy of `qrm rloo` (the adapter
stays in OUTPUT_DIR/adapter, the logs in OUTPUT_DIR/trainer_state.json).

Data: rows with `chosen` / `rejected` HH-RLHF transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...") or
message lists. The model learns the last assistant turn of each chosen conversation, given the turns before.
Every default is the paper's value; see the examples for a quick run.
"""

RLOO_DESCRIPTION = """\
Reinforcement learning with RLOO (TRL's RLOOTrainer) where the reward of a completion is a risk measure of
the QRM's reward distribution, by default the paper's exponential utility (eq. 4), which penalises the left
tail: responses that some raters would find very poor. The policy and the KL reference both start from the
SFT model; the policy trains a LoRA adapter, merged at the end into a plain model in OUTPUT_DIR.

Logged each step (OUTPUT_DIR/trainer_state.json, and wherever --report-to sends logs):
rewards/<QRM>/risk (the reward optimised), rewards/<QRM>/expectation and the left-tail quantiles
rewards/<QRM>/q0.05 ... q0.25 (the curves of the paper's Figure 3). <QRM> is the name of the QRM directory.

Prompts: the conversation before the last assistant turn of preference data (HH-RLHF transcripts or
chosen/rejected conversations), or a `prompt` column (a string or a list of chat messages).
Every default is the paper's value; see the examples for a quick run.
"""

SFT_EXAMPLES = """examples:
  quick run on a CPU (a few steps on 64 pairs):
    qrm sft path/to/small-model --data hh.jsonl --limit 64 --batch-size 8 --per-device-batch-size 8 \\
        --max-steps 4 --output-dir outputs/sft
  the paper's run on 8 GPUs:
    accelerate launch --config_file training/configs/accelerate_multi_gpu.yaml -m qrm_hf sft \\
        meta-llama/Meta-Llama-3-8B --chat-template llama3.jinja --output-dir outputs/sft
"""

RLOO_EXAMPLES = """examples:
  quick run on a CPU:
    qrm rloo outputs/sft outputs/qrm --data hh.jsonl --limit 64 --batch-size 8 --per-device-batch-size 8 \\
        --max-completion-length 32 --max-steps 4 --output-dir outputs/rloo
  the paper's two policies on 8 GPUs (risk-aware, and risk-neutral for comparison):
    accelerate launch --config_file training/configs/accelerate_multi_gpu.yaml -m qrm_hf rloo \\
        outputs/sft outputs/qrm --risk-measure exp_utility --output-dir outputs/rloo-risk-aware
    accelerate launch --config_file training/configs/accelerate_multi_gpu.yaml -m qrm_hf rloo \\
        outputs/sft outputs/qrm --risk-measure expectation --output-dir outputs/rloo-neutral
"""

GRPO_DESCRIPTION = """\
Reinforcement learning with GRPO (TRL's GRPOTrainer) where the reward of a completion is a risk measure of
the QRM's reward distribution, exactly as in `qrm rloo` (same options and defaults, the paper's RLOO values);
GRPO then normalises the rewards within each group of completions of a prompt. The policy and the KL
reference both start from the SFT model; the policy trains a LoRA adapter, merged at the end into a plain
model in OUTPUT_DIR.

Logged each step (OUTPUT_DIR/trainer_state.json, and wherever --report-to sends logs):
rewards/<QRM>/risk (the reward optimised), rewards/<QRM>/expectation and the left-tail quantiles
rewards/<QRM>/q0.05 ... q0.25. <QRM> is the name of the QRM directory.
"""

GRPO_EXAMPLES = """examples:
  quick run on a CPU:
    qrm grpo outputs/sft outputs/qrm --data hh.jsonl --limit 64 --batch-size 8 --per-device-batch-size 8 \\
        --num-generations 4 --max-completion-length 32 --max-steps 4 --output-dir outputs/grpo
  risk-aware on 8 GPUs, the reward being the mean of the worst 10 % of the QRM's distribution:
    accelerate launch --config_file training/configs/accelerate_multi_gpu.yaml -m qrm_hf grpo \\
        outputs/sft outputs/qrm --risk-measure cvar:0.1 --output-dir outputs/grpo-cvar
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Description and examples kept as written; each option's default shown when it has one."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return action.help
        return f"{action.help} (default: %(default)s)"


def _add_data_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        default=DATA,
        help=f"{what}: a Hub dataset id or a local .json/.jsonl/.parquet file or directory",
    )
    group.add_argument("--split", default="train", help="dataset split to read")
    group.add_argument("--limit", type=int, help="read only the first LIMIT rows (quick runs)")
    group.add_argument(
        "--preset",
        help="qrm-hf dataset preset naming the columns; detected when not given (`hh-rlhf` for HH transcripts)",
    )


def _add_training_arguments(parser: argparse.ArgumentParser, learning_rate: float, output_dir: str) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--output-dir", default=output_dir, help="where the merged model, adapter and logs go")
    group.add_argument("--learning-rate", type=float, default=learning_rate, help="AdamW learning rate")
    group.add_argument(
        "--batch-size",
        type=int,
        default=BATCH_SIZE,
        help="examples per optimizer step over all GPUs/processes (gradient accumulation makes up the rest); "
        "must be a multiple of --per-device-batch-size x processes",
    )
    group.add_argument("--per-device-batch-size", type=int, default=8, help="examples per forward pass")
    group.add_argument("--epochs", type=float, default=1.0, help="passes over the data")
    group.add_argument(
        "--max-steps", type=int, help="stop after this many optimizer steps (overrides --epochs)"
    )
    group.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp16", "fp32"),
        default="auto",
        help="mixed precision; auto = bf16 on a GPU that supports it, else fp32",
    )
    group.add_argument(
        "--gradient-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="recompute activations in the backward pass (less memory, slower)",
    )
    group.add_argument("--logging-steps", type=int, default=10, help="log every N steps")
    group.add_argument("--save-steps", type=int, default=500, help="write a checkpoint every N steps")
    group.add_argument(
        "--report-to", default="none", help="where logs go too: tensorboard, wandb, ... or none"
    )
    group.add_argument(
        "--seed", type=int, default=42, help="random seed (data order, adapter init, sampling)"
    )
    group.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in --output-dir"
    )
    group.add_argument(
        "--save-dtype",
        choices=("auto", "bfloat16", "float16", "float32"),
        default="auto",
        help="dtype of the saved merged model; auto keeps the dtype of the starting checkpoint",
    )
    lora = parser.add_argument_group("LoRA adapter (merged into the weights at the end)")
    lora.add_argument("--lora-r", type=int, default=LORA_R, help="rank")
    lora.add_argument("--lora-alpha", type=int, default=LORA_ALPHA, help="scaling alpha")
    lora.add_argument("--lora-dropout", type=float, default=LORA_DROPOUT, help="dropout on the adapter input")
    lora.add_argument(
        "--lora-target-modules",
        nargs="+",
        default=LORA_TARGETS,
        metavar="MODULE",
        help="modules that get an adapter (all-linear: every linear layer but the output head)",
    )


def add_rlhf_commands(subparsers) -> None:
    """Add the `sft`, `rloo` and `grpo` commands to the `qrm` sub-command parsers."""
    sft = subparsers.add_parser(
        "sft",
        help="LoRA SFT on the chosen responses of preference data (paper §4.3, step 1)",
        description=SFT_DESCRIPTION,
        epilog=SFT_EXAMPLES,
        formatter_class=_HelpFormatter,
    )
    sft.add_argument("model", help="base model: a Hub id or a local directory with its tokenizer")
    sft.add_argument(
        "--chat-template",
        help="Jinja file with a chat template, for a base model that has none (e.g. the template of its "
        "instruct version); it is saved with the merged model",
    )
    sft.add_argument(
        "--max-length", type=int, default=SFT_MAX_LENGTH, help="drop examples with more tokens than this"
    )
    _add_data_arguments(sft, "preference pairs")
    _add_training_arguments(sft, SFT_LEARNING_RATE, "outputs/sft")
    sft.set_defaults(handler=_sft)

    for name, help_text, description, examples in (
        ("rloo", "risk-aware RLOO", RLOO_DESCRIPTION, RLOO_EXAMPLES),
        ("grpo", "risk-aware GRPO", GRPO_DESCRIPTION, GRPO_EXAMPLES),
    ):
        command = subparsers.add_parser(
            name,
            help=f"{help_text} of the SFT model with a QRM as reward model (paper §4.3, step 2)",
            description=description,
            epilog=examples,
            formatter_class=_HelpFormatter,
        )
        _add_policy_optimization_arguments(command, name)
        command.set_defaults(handler=_rlhf, algorithm=name)


def _add_policy_optimization_arguments(parser: argparse.ArgumentParser, algorithm: str) -> None:
    """The options of `qrm rloo` and `qrm grpo`."""
    parser.add_argument("policy", help="the SFT model directory (output of `qrm sft`), or a Hub id")
    parser.add_argument("reward_model", metavar="qrm", help="the QRM: a directory or Hub id")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run the Python code that comes with the QRM (never needed for a qrm-hf QRM; read it first)",
    )
    group = parser.add_argument_group("risk")
    group.add_argument(
        "--risk-measure",
        type=risk_spec,
        default="exp_utility",
        metavar="{" + ",".join(risk.RISK_MEASURES) + "}[:VALUE]",
        help="reward taken from the QRM's distribution (qrm_hf.risk.RISK_MEASURES): "
        + "; ".join(f"{name} = {measure.help}" for name, measure in risk.RISK_MEASURES.items())
        + ". The parameters come from --risk-lambda (lam), --risk-alpha (alpha), --risk-tau (tau), or from "
        "the spec: NAME:VALUE (e.g. quantile:0.05, cvar:0.1)",
    )
    parameters = risk.RISK_PARAMETERS
    group.add_argument(
        "--risk-lambda", type=float, default=parameters["lam"].default, help="risk aversion lambda (> 0)"
    )
    group.add_argument(
        "--risk-alpha", type=float, default=parameters["alpha"].default, help="tail mass of cvar, in (0, 1]"
    )
    group.add_argument(
        "--risk-tau",
        type=float,
        default=parameters["tau"].default,
        help="level of the quantile measure, in (0, 1)",
    )
    rl = parser.add_argument_group(algorithm.upper())
    rl.add_argument(
        "--num-generations", type=int, default=NUM_GENERATIONS, help="completions per prompt (k of RLOO)"
    )
    rl.add_argument(
        "--max-prompt-length",
        type=int,
        default=MAX_PROMPT_LENGTH,
        help="drop prompts with more tokens (paper: fewer than 348)",
    )
    rl.add_argument(
        "--max-completion-length",
        type=int,
        default=MAX_COMPLETION_LENGTH,
        help="longest completion, in tokens",
    )
    rl.add_argument(
        "--beta",
        type=float,
        default=0.05,
        help="KL penalty coefficient beta (TRL's RLOO default; the paper does not give its value)",
    )
    rl.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    _add_data_arguments(parser, "prompts or preference pairs")
    _add_training_arguments(parser, RLOO_LEARNING_RATE, f"outputs/{algorithm}")


def _precision(name: str) -> dict:
    import torch

    if name == "auto":
        name = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return {"bf16": name == "bf16", "fp16": name == "fp16"}


def _training_values(args) -> dict:
    """The TrainingArguments fields both commands set from their options."""
    from .training.sft import gradient_accumulation_for

    values = dict(
        output_dir=args.output_dir,
        learning_rate=args.learning_rate,
        per_device_train_batch_size=args.per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation_for(args.batch_size, args.per_device_batch_size),
        num_train_epochs=args.epochs,
        gradient_checkpointing=args.gradient_checkpointing,
        logging_steps=args.logging_steps,
        save_steps=args.save_steps,
        report_to=args.report_to,
        seed=args.seed,
        **_precision(args.precision),
    )
    if args.max_steps is not None:
        values["max_steps"] = args.max_steps
    return values


def _lora(args):
    from .training.sft import paper_lora_config

    targets = args.lora_target_modules
    return paper_lora_config(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        # PEFT knows the shorthand only as a plain string
        target_modules="all-linear" if targets in ("all-linear", ["all-linear"]) else targets,
    )


def _report(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # once, not once per process under accelerate launch
        print(message)


def _sft(args) -> None:
    from .training.sft import PaperSFTConfig, run_sft

    try:
        config = PaperSFTConfig(max_length=args.max_length, **_training_values(args))
        result = run_sft(
            args.model,
            args.data,
            config,
            split=args.split,
            limit=args.limit,
            preset=args.preset,
            lora_config=_lora(args),
            chat_template=args.chat_template,
            save_dtype=args.save_dtype,
            resume=args.resume,
        )
    except TypeError as error:  # a bad value in the trainer config: a user error, one line from `qrm` main
        raise ValueError(str(error)) from error
    _report(
        f"Trained on {result.num_examples} examples ({result.num_dropped} dropped for having more than "
        f"{args.max_length} tokens); train loss {result.metrics.get('train_loss', float('nan')):.4f}.\n"
        f"Merged model: {result.output_dir} (adapter: {result.adapter_dir})"
    )


def _rlhf(args) -> None:
    """`qrm rloo` / `qrm grpo`: the trainer follows the command."""
    from .training.rlhf_pipeline import PaperGRPOConfig, PaperRLOOConfig, run_rlhf

    try:
        config_cls = PaperGRPOConfig if args.algorithm == "grpo" else PaperRLOOConfig
        config = config_cls(
            risk_measure=args.risk_measure,
            risk_lambda=args.risk_lambda,
            risk_alpha=args.risk_alpha,
            risk_tau=args.risk_tau,
            num_generations=args.num_generations,
            max_completion_length=args.max_completion_length,
            beta=args.beta,
            temperature=args.temperature,
            **_training_values(args),
        )
        result = run_rlhf(
            args.policy,
            args.reward_model,
            args.data,
            config,
            split=args.split,
            limit=args.limit,
            preset=args.preset,
            max_prompt_length=args.max_prompt_length,
            lora_config=_lora(args),
            save_dtype=args.save_dtype,
            resume=args.resume,
            trust_remote_code=args.trust_remote_code,
        )
    except TypeError as error:  # a bad value in the trainer config: a user error, one line from `qrm` main
        raise ValueError(str(error)) from error
    key = f"rewards/{result.reward_name}/risk"
    risk_values = [log[key] for log in result.log_history if log.get(key) is not None]
    trend = (
        f"{risk_values[0]:.4f} at the first logged step, {risk_values[-1]:.4f} at the last"
        if risk_values
        else "not logged"
    )
    _report(
        f"Trained on {result.num_prompts} prompts ({result.num_dropped} dropped for having more than "
        f"{args.max_prompt_length} tokens); {args.risk_measure} reward: {trend}.\n"
        f"Merged policy: {result.output_dir} (adapter: {result.adapter_dir}; logs, with {key}, in "
        f"{result.output_dir / 'trainer_state.json'})"
    )


__all__ = ["add_rlhf_commands"]
