"""The data of the paper's RLHF pipeline (§4.3): SFT examples from the chosen responses of preference data,
RLOO prompts, and the prompt length filter.

Preference data is read with the dataset presets of `qrm_hf.presets`: Anthropic HH-RLHF transcripts
(``chosen`` / ``rejected`` strings "\\n\\nHuman: ...\\n\\nAssistant: ...", preset ``"hh-rlhf"``), message
lists (``chosen`` / ``rejected`` conversations), or ``prompt`` + ``chosen`` + ``rejected``. Every example is
conversational (a list of ``{"role", "content"}`` messages), so the model's chat template renders it the
same way in SFT, in RLOO generation and in the QRM.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset

from ..data import row_location
from ..dataset_loading import get_preset, preference_examples
from ..dataset_preset import DatasetPreset


def preference_preset(rows: Dataset, preset: str | DatasetPreset | None = None) -> DatasetPreset:
    """The preset that reads `rows`: `preset` when given, else ``"hh-rlhf"`` for transcript strings and a
    ``chosen`` / ``rejected`` (+ ``prompt``) mapping for message lists. Raises ValueError when `rows` has no
    ``chosen`` and ``rejected`` columns."""
    if preset is not None:
        return get_preset(preset)
    columns = list(rows.column_names)
    if "chosen" not in columns or "rejected" not in columns:
        raise ValueError(
            f"Expected preference data with `chosen` and `rejected` columns (e.g. Anthropic/hh-rlhf), but the "
            f"dataset has columns {columns}. Name a preset that maps your columns with --preset."
        )
    if len(rows) and isinstance(rows[0]["chosen"], str) and "prompt" not in columns:
        return get_preset("hh-rlhf")
    return DatasetPreset.custom(
        "preference", prompt="prompt" if "prompt" in columns else None, chosen="chosen", rejected="rejected"
    )


def chosen_completions(rows: Dataset, preset: str | DatasetPreset | None = None) -> Dataset:
    """Conversational prompt-completion examples of the chosen responses (the paper's SFT data).

    For every pair the completion is the chosen side's final assistant turn and the prompt the conversation
    before it, so TRL's `SFTTrainer` trains on the chosen response only (``completion_only_loss``).
    """
    pairs = preference_examples(rows, preference_preset(rows, preset))
    return Dataset.from_dict(
        {"prompt": [chosen[:-1] for chosen, _ in pairs], "completion": [chosen[-1:] for chosen, _ in pairs]}
    )


def rloo_prompts(rows: Dataset, preset: str | DatasetPreset | None = None) -> Dataset:
    """A dataset with one ``prompt`` column for RLOO.

    Preference data (``chosen`` / ``rejected`` columns, or a named `preset`) gives each pair's conversation up
    to its last assistant turn (the HH-RLHF prompt, as chat messages); any other dataset must have a
    ``prompt`` column (a string or a list of messages), taken as is. Raises ValueError otherwise.
    """
    columns = list(rows.column_names)
    if len(rows) == 0:
        raise ValueError("The prompt dataset is empty.")
    if preset is not None or {"chosen", "rejected"} <= set(columns):
        pairs = preference_examples(rows, preference_preset(rows, preset))
        return Dataset.from_dict({"prompt": [chosen[:-1] for chosen, _ in pairs]})
    if "prompt" not in columns:
        raise ValueError(
            f"Expected a `prompt` column, or preference data with `chosen` and `rejected` columns (e.g. "
            f"Anthropic/hh-rlhf), but the dataset has columns {columns}."
        )
    for index, prompt in enumerate(rows["prompt"]):
        if not prompt:
            raise ValueError(f"{row_location(rows, index, 'The prompt dataset')}: the prompt is empty.")
    return rows.select_columns(["prompt"])


def prompt_length(tokenizer, prompt: Any, **chat_template_kwargs) -> int:
    """Number of tokens of `prompt` as TRL's RLOO trainer feeds it to the policy: chat prompts through the
    chat template with the generation prompt, plain strings through the tokenizer."""
    if isinstance(prompt, str):
        return len(tokenizer(text=prompt)["input_ids"])
    ids = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, tokenize=True, return_dict=True, **chat_template_kwargs
    )["input_ids"]
    return len(ids)


def filter_prompts_by_length(
    prompts: Dataset, tokenizer, max_length: int | None, **chat_template_kwargs
) -> tuple[Dataset, int]:
    """`prompts` without those of more than `max_length` tokens (see :func:`prompt_length`), and how many
    were dropped. ``max_length=None`` keeps every prompt."""
    if max_length is None:
        return prompts, 0
    keep = [
        index
        for index, prompt in enumerate(prompts["prompt"])
        if prompt_length(tokenizer, prompt, **chat_template_kwargs) <= max_length
    ]
    return prompts.select(keep), len(prompts) - len(keep)


__all__ = [
    "chosen_completions",
    "filter_prompts_by_length",
    "preference_preset",
    "prompt_length",
    "rloo_prompts",
]
