"""Supervised fine-tuning on the chosen responses of preference data: the first stage of the paper's
risk-aware RLHF experiment (§4.3), with TRL's `SFTTrainer` and a PEFT LoRA adapter.

    from qrm_hf.training.sft import PaperSFTConfig, run_sft

    result = run_sft("meta-llama/Meta-Llama-3-8B", "Anthropic/hh-rlhf", PaperSFTConfig("outputs/sft"))

Paper values, the defaults here: LoRA rank 32 and alpha 64, examples of at most 1024 tokens (longer ones
are dropped, not truncated), one epoch, AdamW with learning rate 3e-4 and a cosine schedule, batch size
1024 (see :func:`gradient_accumulation_for`); at the end the adapter is merged into the base weights and
the result saved as a plain model directory, the initial policy and reference of `qrm rloo`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from peft import LoraConfig
from transformers import AutoConfig, AutoTokenizer
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, SFTTrainer

from ..chat import check_max_length
from ..dataset_loading import load_rows
from ..dataset_preset import DatasetPreset
from ..hub import reading_model_files, refusing_model_code
from ..io import check_output_directory, claim_directory, files_into
from . import paper_rlhf as paper
from .paper_rlhf import SAVE_DTYPES
from .rlhf_data import chosen_completions

logger = logging.getLogger(__name__)


def paper_lora_config(**overrides) -> LoraConfig:
    """The paper's LoRA adapter (rank 32, alpha 64) for a causal LM, on every linear layer but the output
    head (the paper does not name the modules; dropout 0.05 is TRL's default). `overrides` go to
    `peft.LoraConfig`."""
    values = dict(
        r=paper.LORA_R,
        lora_alpha=paper.LORA_ALPHA,
        lora_dropout=paper.LORA_DROPOUT,
        target_modules=paper.LORA_TARGETS,
        task_type="CAUSAL_LM",
    )
    values.update(overrides)
    return LoraConfig(**values)


def gradient_accumulation_for(
    batch_size: int, per_device_batch_size: int, num_processes: int | None = None
) -> int:
    """Gradient accumulation steps that make `batch_size` examples per optimizer step over all processes.

    `num_processes` defaults to the ``WORLD_SIZE`` that `accelerate launch` / `torchrun` set (1 otherwise).
    Raises ValueError when `batch_size` is not a multiple of `per_device_batch_size` × `num_processes`.
    """
    num_processes = num_processes or int(os.environ.get("WORLD_SIZE", "1"))
    per_step = per_device_batch_size * num_processes
    if batch_size <= 0 or per_device_batch_size <= 0 or batch_size % per_step:
        raise ValueError(
            f"The batch size ({batch_size}) must be a positive multiple of the per-device batch size "
            f"({per_device_batch_size}) times the number of processes ({num_processes})."
        )
    return batch_size // per_step


def with_option_names(config_cls, name: str, *option_names: str, **changes) -> Any:
    """The field `name` of the dataclass `config_cls` (its default and help, or `changes` to them) with
    other option names for the command line (`TrlParser` reads them from `metadata["aliases"]`), so that
    the names `qrm sft` / `qrm rloo` had before their options were TRL's keep working."""
    inherited = config_cls.__dataclass_fields__[name]
    metadata = {**inherited.metadata, "aliases": list(option_names)}
    if "help" in changes:
        metadata["help"] = changes.pop("help")
    return field(default=changes.pop("default", inherited.default), metadata=metadata)


@dataclass
class PaperSFTConfig(SFTConfig):
    r"""[`~trl.SFTConfig`] with the paper's SFT values as defaults, and over-long examples dropped.

    Parameters:
        learning_rate (`float`, *optional*, defaults to `3e-4`): paper value.
        lr_scheduler_type (`str`, *optional*, defaults to `"cosine"`): paper value.
        num_train_epochs (`float`, *optional*, defaults to `1.0`): paper value.
        max_length (`int` or `None`, *optional*, defaults to `1024`):
            Longest tokenized example (prompt and completion through the chat template). With
            `drop_long_examples` longer examples are left out (paper: "filtering for examples with at most 1024
            tokens"); without it TRL truncates them.
        drop_long_examples (`bool`, *optional*, defaults to `True`):
            Drop the examples longer than `max_length` instead of truncating them (not with `packing`).
    """

    learning_rate: float = field(
        default=paper.SFT_LEARNING_RATE, metadata={"help": "The initial learning rate for AdamW."}
    )
    lr_scheduler_type: str = field(
        default=paper.SFT_LR_SCHEDULER, metadata={"help": "The learning rate schedule."}
    )
    num_train_epochs: float = with_option_names(
        SFTConfig, "num_train_epochs", "--epochs", default=paper.SFT_EPOCHS, help="Passes over the data."
    )
    per_device_train_batch_size: int = with_option_names(
        SFTConfig, "per_device_train_batch_size", "--per-device-batch-size"
    )
    max_length: int | None = field(
        default=paper.SFT_MAX_LENGTH, metadata={"help": "Longest tokenized example, in tokens."}
    )
    drop_long_examples: bool = field(
        default=True,
        metadata={"help": "Drop the examples longer than `max_length` instead of truncating them."},
    )


class PaperSFTTrainer(SFTTrainer):
    """[`~trl.SFTTrainer`] that drops the examples longer than `args.max_length` (with a
    [`PaperSFTConfig`] whose `drop_long_examples` is set) instead of truncating them.

    `num_dropped_examples` maps each prepared dataset's name (``"train"``, ``"eval"``) to the number of
    examples left out (None for an `IterableDataset`, whose length is unknown).
    """

    _tag_names = ["trl", "sft", "qrm-hf"]

    def __init__(self, *args, **kwargs):
        self.num_dropped_examples: dict[str, int | None] = {}  # filled while SFTTrainer prepares the datasets
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        limit = args.max_length
        if not getattr(args, "drop_long_examples", False) or limit is None or packing:
            return super()._prepare_dataset(
                dataset, processing_class, args, packing, formatting_func, dataset_name
            )
        # Tokenize without truncation (a shallow copy: the trainer's own args keep max_length), then filter.
        untruncated = copy.copy(args)
        untruncated.max_length = None
        dataset = super()._prepare_dataset(
            dataset, processing_class, untruncated, packing, formatting_func, dataset_name
        )
        num_proc = {"num_proc": args.dataset_num_proc} if isinstance(dataset, Dataset) else {}
        kept = dataset.filter(lambda example: len(example["input_ids"]) <= limit, **num_proc)
        dropped = len(dataset) - len(kept) if isinstance(dataset, Dataset) else None
        self.num_dropped_examples[dataset_name] = dropped
        if dropped:
            logger.info(
                f"Dropped {dropped} of {len(dataset)} {dataset_name} examples longer than {limit} tokens."
            )
        return kept


@dataclass
class SFTResult:
    """What :func:`run_sft` produced."""

    output_dir: Path  # the merged model and its tokenizer: a plain `AutoModelForCausalLM` directory
    adapter_dir: Path  # the trained LoRA adapter
    num_examples: int  # examples trained on
    num_dropped: int  # examples left out for being longer than `max_length` tokens
    metrics: dict  # `trainer.train()` metrics (train_loss, train_runtime, ...)


@contextlib.contextmanager
def _without_zero3_init():
    """Load full, unpartitioned weights even after a DeepSpeed ZeRO-3 trainer was set up: the merge runs on
    the main process alone, and ZeRO-3's partitioned loading would wait forever for the other processes."""
    from transformers.integrations import deepspeed as hf_deepspeed

    reference = hf_deepspeed._hf_deepspeed_config_weak_ref  # no public getter for the config object
    active = reference() if reference is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if active is not None:
            hf_deepspeed.set_hf_deepspeed_config(active)


def merge_adapter(
    base_model: str | Path,
    adapter_dir: str | Path,
    output_dir: str | Path,
    tokenizer,
    dtype="auto",
    trust_remote_code: bool = False,
):
    """Merge a LoRA adapter into its base model and save a plain model directory (and `tokenizer`).

    The base is reloaded from `base_model` in `dtype` (``"auto"``: the dtype of its checkpoint), so the
    merge works whatever sharded the weights during training (DDP, DeepSpeed ZeRO-2/3); its own code runs
    only with `trust_remote_code`. Returns the output directory.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if dtype not in SAVE_DTYPES:
        raise ValueError(f"dtype must be one of {SAVE_DTYPES}, got {dtype!r}.")
    with _without_zero3_init():
        base = AutoModelForCausalLM.from_pretrained(
            str(base_model), dtype=dtype, trust_remote_code=trust_remote_code
        )
        # an adapter is LoRA weights and a PEFT config: no model code, whatever the base needs
        adapter = PeftModel.from_pretrained(base, str(adapter_dir), trust_remote_code=False)
        merged = adapter.merge_and_unload()
    with files_into(output_dir) as directory:  # a kill never leaves a truncated model.safetensors
        merged.save_pretrained(str(directory))
        tokenizer.save_pretrained(str(directory))
    return Path(output_dir)


def finish_lora_training(
    trainer, base_model: str | Path, tokenizer, save_dtype: str = "auto"
) -> tuple[Path, Path]:
    """Save the trained adapter to ``<output_dir>/adapter``, the trainer state (log history) to
    ``<output_dir>/trainer_state.json`` and the merged model to ``<output_dir>``. Returns (output dir,
    adapter dir). Call it on every process: saving gathers sharded weights. The base model's code runs only
    with the trainer's ``args.trust_remote_code``, as in the trainer's own loads."""
    output_dir = Path(trainer.args.output_dir)
    adapter_dir = output_dir / "adapter"
    trainer.save_model(str(adapter_dir))
    trainer.save_state()
    if trainer.accelerator.is_main_process:
        merge_adapter(
            base_model,
            adapter_dir,
            output_dir,
            tokenizer,
            save_dtype,
            trust_remote_code=trainer.args.trust_remote_code,
        )
    trainer.accelerator.wait_for_everyone()
    return output_dir, adapter_dir


def last_checkpoint(output_dir: str | Path) -> str | None:
    """The latest ``checkpoint-*`` directory in `output_dir` (to resume from), None when there is none."""
    return get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None


def _base_tokenizer(model: str | Path, args: PaperSFTConfig, chat_template: str | Path | None):
    """The tokenizer of the base model, with the chat template of the file `chat_template` when given.
    ValueError without a chat template, or for an `args.max_length` beyond the model's positions."""
    # The same consent as the trainer's own loads of `model` (TRL's `trust_remote_code`, False by default).
    with refusing_model_code(model, "base model"), reading_model_files(model, "base model"):
        tokenizer = AutoTokenizer.from_pretrained(str(model), trust_remote_code=args.trust_remote_code)
        config = AutoConfig.from_pretrained(str(model), trust_remote_code=args.trust_remote_code)
    if chat_template is not None:
        tokenizer.chat_template = Path(chat_template).read_text()
    # --max-length above the model's positions would train on positions it has no embedding for
    check_max_length(args.max_length, config)
    if not tokenizer.chat_template:
        raise ValueError(
            f"The tokenizer of {model} has no chat template: pass one (a Jinja file, e.g. the template of the "
            "model's instruct version) with --chat-template."
        )
    return tokenizer


def run_sft(
    model: str | Path,
    data: str | Path,
    args: PaperSFTConfig,
    *,
    split: str = "train",
    limit: int | None = None,
    preset: str | DatasetPreset | None = None,
    lora_config: LoraConfig | None = None,
    chat_template: str | Path | None = None,
    save_dtype: str = "auto",
    resume: bool = False,
) -> SFTResult:
    """LoRA SFT of `model` on the chosen responses of the preference data `data`, then the adapter merged.

    Args:
        model: base model (Hub id or directory) with its tokenizer.
        data: a Hub dataset id or a local json/jsonl/parquet file or directory (see `qrm_hf.dataset_loading.load_rows`)
            of preference pairs: HH-RLHF transcripts, or ``chosen`` / ``rejected`` message lists (see
            `qrm_hf.training.rlhf_data.preference_preset`); `preset` names another column mapping.
        args: the trainer configuration; `args.output_dir` receives the merged model: absent, empty or an
            earlier output of `qrm sft` (`qrm_hf.io.claim_directory`; anything else is refused).
        split, limit: the split read, and the first `limit` rows only (quick runs).
        lora_config: the adapter, by default :func:`paper_lora_config`.
        chat_template: a Jinja file with the chat template to train with, for a base model without one (it
            is saved with the merged model, so the RLOO policy and the QRM can render the same format).
        save_dtype: dtype of the merged model, ``"auto"`` keeps the base checkpoint's.
        resume: continue from the last checkpoint in `args.output_dir`, when there is one.

    The code files of `model` (an ``auto_map`` in its config or tokenizer) run only with
    ``args.trust_remote_code=True``; by default such a model is refused (ValueError), never asked about.

    Returns an :class:`SFTResult`. Raises ValueError for data without chosen/rejected columns, a
    tokenizer without a chat template, or no example left after the length filter.
    """
    if save_dtype not in SAVE_DTYPES:
        raise ValueError(f"save_dtype must be one of {SAVE_DTYPES}, got {save_dtype!r}.")
    # Before any work: the trainer writes checkpoints and the merged model into the directory.
    check_output_directory(args.output_dir, "qrm sft")
    tokenizer = _base_tokenizer(model, args, chat_template)
    examples = chosen_completions(load_rows(data, split=split, limit=limit), preset)
    claim_directory(args.output_dir, "qrm sft")
    trainer = PaperSFTTrainer(
        model=str(model),
        args=args,
        train_dataset=examples,
        processing_class=tokenizer,
        peft_config=lora_config if lora_config is not None else paper_lora_config(),
    )
    num_dropped = trainer.num_dropped_examples.get("train") or 0
    num_examples = len(trainer.train_dataset)
    if num_examples == 0:
        raise ValueError(f"No example has at most {args.max_length} tokens (all {num_dropped} were dropped).")
    output = trainer.train(resume_from_checkpoint=last_checkpoint(args.output_dir) if resume else None)
    output_dir, adapter_dir = finish_lora_training(trainer, model, tokenizer, save_dtype)
    return SFTResult(output_dir, adapter_dir, num_examples, num_dropped, dict(output.metrics))


__all__ = [
    "PaperSFTConfig",
    "PaperSFTTrainer",
    "SFTResult",
    "finish_lora_training",
    "gradient_accumulation_for",
    "last_checkpoint",
    "merge_adapter",
    "paper_lora_config",
    "run_sft",
    "with_option_names",
]
