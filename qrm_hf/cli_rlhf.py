"""`qrm sft`, `qrm rloo` and `qrm grpo`: the paper's risk-aware RLHF pipeline (§4.3) on the command line.

`add_rlhf_commands(subparsers)` adds the commands to the `qrm` parser with qrm-hf's own options (the model
paths, data, batch size, precision, LoRA adapter, output). Every other option is a field of the command's
trainer config (TRL's config, `TrainingArguments`, the risk fields), handed by `qrm_hf.cli.parse_arguments`
to the handler, which parses it with TRL's `TrlParser` (`qrm_hf.training.trainer_options`), as TRL's own
scripts do, with `--config FILE.yaml`. So `qrm --help` imports nothing heavy; TRL, PEFT and datasets load
when a command runs, or when its `--help` lists the trainer's options.
"""

from __future__ import annotations

import argparse
import os

from .training.paper_rlhf import (  # the paper's values (§4.3) of the qrm options
    BATCH_SIZE,
    DATA,
    LORA_ALPHA,
    LORA_DROPOUT,
    LORA_R,
    LORA_TARGETS,
    MAX_PROMPT_LENGTH,
    PRECISIONS,
    SAVE_DTYPES,
)

SFT_DESCRIPTION = """\
Supervised fine-tuning of a base model on the chosen responses of preference data (Anthropic HH-RLHF by
default) with a LoRA adapter, as in the paper (§4.3): examples longer than --max-length tokens are dropped,
one epoch, AdamW with a cosine learning rate schedule. At the end the adapter is merged into the base
weights: OUTPUT_DIR holds a plain model and its tokenizer, the starting policy of `qrm rloo` (the adapter
stays in OUTPUT_DIR/adapter, the logs in OUTPUT_DIR/trainer_state.json).

Data: rows with `chosen` / `rejected` HH-RLHF transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ...") or
message lists. The model learns the last assistant turn of each chosen conversation, given the turns before.
Every default is the paper's value; see the examples for a quick run. Besides the options below, every
field of TRL's SFTConfig is an option (--learning_rate, --max_length, --logging_steps, ...; listed by
--help), and --config FILE.yaml sets fields from a file.
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
Every default is the paper's value; see the examples for a quick run. Besides the options below, every
field of TRL's RLOOConfig and of the risk measure is an option (--risk_measure, --risk_lambda, --beta,
--num_generations, --logging_steps, ...; listed by --help), and --config FILE.yaml sets fields from a file.
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
rewards/<QRM>/q0.05 ... q0.25. <QRM> is the name of the QRM directory. Besides the options below, every
field of TRL's GRPOConfig and of the risk measure is an option (listed by --help), and --config FILE.yaml
sets fields from a file.
"""

GRPO_EXAMPLES = """examples:
  quick run on a CPU:
    qrm grpo outputs/sft outputs/qrm --data hh.jsonl --limit 64 --batch-size 8 --per-device-batch-size 8 \\
        --num-generations 4 --max-completion-length 32 --max-steps 4 --output-dir outputs/grpo
  risk-aware on 8 GPUs, the reward being the mean of the worst 10 % of the QRM's distribution:
    accelerate launch --config_file training/configs/accelerate_multi_gpu.yaml -m qrm_hf grpo \\
        outputs/sft outputs/qrm --risk-measure cvar:0.1 --output-dir outputs/grpo-cvar
"""


COMMANDS = {  # name: (help, description, examples)
    "sft": (
        "LoRA SFT on the chosen responses of preference data (paper §4.3, step 1)",
        SFT_DESCRIPTION,
        SFT_EXAMPLES,
    ),
    "rloo": (
        "risk-aware RLOO of the SFT model with a QRM as reward model (paper §4.3, step 2)",
        RLOO_DESCRIPTION,
        RLOO_EXAMPLES,
    ),
    "grpo": (
        "risk-aware GRPO of the SFT model with a QRM as reward model (paper §4.3, step 2)",
        GRPO_DESCRIPTION,
        GRPO_EXAMPLES,
    ),
}


def trainer_config_class(command: str):
    """The trainer config class whose fields are the TRL options of `qrm COMMAND` (imports TRL)."""
    if command == "sft":
        from .training.sft import PaperSFTConfig

        return PaperSFTConfig
    from .training.rlhf_pipeline import PaperGRPOConfig, PaperRLOOConfig

    return PaperGRPOConfig if command == "grpo" else PaperRLOOConfig


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Description and examples kept as written; each option's default shown when it has one."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return action.help
        return f"{action.help} (default: %(default)s)"


class _TrainerHelp(argparse.Action):
    """`-h/--help`: the qrm options, then the fields of the trainer config (this part imports TRL)."""

    def __init__(self, option_strings, command: str, dest=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)
        self.command = command

    def __call__(self, parser, namespace, values, option_string=None):
        from .training.trainer_options import trainer_options_help

        config_cls = trainer_config_class(self.command)
        parser.print_help()
        print(
            f"\ntrainer options: the fields of {config_cls.__name__} (TRL's config, TrainingArguments), also "
            "the keys of a --config YAML file"
        )
        print(trainer_options_help(config_cls))
        parser.exit()


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


def _add_training_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """The qrm options of every command: output, the fields they decide in the trainer config, the adapter."""
    group = parser.add_argument_group("training")
    group.add_argument(
        "--output-dir",
        "--output_dir",
        help=f"where the merged model, adapter and logs go (default: outputs/{command})",
    )
    group.add_argument("--config", help="YAML file of trainer config fields (TRL's --config)")
    group.add_argument(
        "--batch-size",
        type=int,
        default=BATCH_SIZE,
        help="examples per optimizer step over all GPUs/processes: sets gradient_accumulation_steps; must be "
        "a multiple of --per-device-batch-size x processes",
    )
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="mixed precision, unless --bf16 / --fp16 are given; auto = bf16 on a GPU that supports it, else fp32",
    )
    group.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint in --output-dir"
    )
    group.add_argument(
        "--save-dtype",
        choices=SAVE_DTYPES,
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
    for name, (help_text, description, examples) in COMMANDS.items():
        command = subparsers.add_parser(
            name,
            help=help_text,
            description=description,
            epilog=examples,
            formatter_class=_HelpFormatter,
            add_help=False,
            allow_abbrev=False,  # an abbreviation of a trainer option must not match a qrm option
        )
        command.add_argument(
            "-h", "--help", action=_TrainerHelp, command=name, help="show this help message and exit"
        )
        if name == "sft":
            _add_sft_arguments(command)
        else:
            _add_policy_optimization_arguments(command)
        _add_training_arguments(command, name)
        # the options of the trainer config, for the handler (qrm_hf.cli.parse_arguments)
        command.set_defaults(handler=_sft if name == "sft" else _rlhf, trainer_argv=[])


def _add_sft_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="base model: a Hub id or a local directory with its tokenizer")
    parser.add_argument(
        "--chat-template",
        help="Jinja file with a chat template, for a base model that has none (e.g. the template of its "
        "instruct version); it is saved with the merged model",
    )
    _add_data_arguments(parser, "preference pairs")


def _add_policy_optimization_arguments(parser: argparse.ArgumentParser) -> None:
    """The qrm options of `qrm rloo` and `qrm grpo`."""
    parser.add_argument("policy", help="the SFT model directory (output of `qrm sft`), or a Hub id")
    parser.add_argument("reward_model", metavar="qrm", help="the QRM: a directory or Hub id")
    parser.add_argument(
        "--trust-remote-code",
        "--trust_remote_code",
        action="store_true",
        help="run the Python code that comes with the QRM (never needed for a qrm-hf QRM; read it first). "
        "The policy's code runs only if the YAML of --config sets trust_remote_code (TRL's field)",
    )
    parser.add_argument(
        "--max-prompt-length",
        type=int,
        default=MAX_PROMPT_LENGTH,
        help="drop prompts with more tokens (paper: fewer than 348)",
    )
    _add_data_arguments(parser, "prompts or preference pairs")


def trainer_config(args: argparse.Namespace):
    """The trainer config of parsed `qrm sft|rloo|grpo` arguments: their TRL options (`args.trainer_argv`,
    and the file of `--config`) parsed by `TrlParser`, with the output directory, batch size and precision of
    the qrm options."""
    from .training.trainer_options import parse_trainer_config

    argv = list(args.trainer_argv)
    if args.config:
        argv = ["--config", args.config, *argv]
    if args.output_dir is not None:  # given on the command line: it wins over the --config file
        argv += ["--output_dir", args.output_dir]
    return parse_trainer_config(
        trainer_config_class(args.command),
        argv,
        batch_size=args.batch_size,
        precision=args.precision,
        output_dir=f"outputs/{args.command}",
        prog=f"qrm {args.command}",
    )


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
    from .training.sft import run_sft

    config = trainer_config(args)
    try:
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
        f"{config.max_length} tokens); train loss {result.metrics.get('train_loss', float('nan')):.4f}.\n"
        f"Merged model: {result.output_dir} (adapter: {result.adapter_dir})"
    )


def _rlhf(args) -> None:
    """`qrm rloo` / `qrm grpo`: the trainer follows the command."""
    from .training.rlhf_pipeline import run_rlhf

    config = trainer_config(args)
    try:
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
        f"{args.max_prompt_length} tokens); {config.risk_measure} reward: {trend}.\n"
        f"Merged policy: {result.output_dir} (adapter: {result.adapter_dir}; logs, with {key}, in "
        f"{result.output_dir / 'trainer_state.json'})"
    )


__all__ = ["COMMANDS", "add_rlhf_commands", "trainer_config", "trainer_config_class"]
