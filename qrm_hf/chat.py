"""Chat formatting for QRMs: render conversations with the backbone's chat template and find where
the assistant's turn begins.

A QRM reads the prompt embedding at the *gating position*: the first token of the last occurrence
of `config.prompt_end_pattern` among the real tokens. :func:`derive_prompt_end_pattern` derives that
pattern from any tokenizer with a chat template; :func:`format_conversation` and
:func:`encode_conversation` render and tokenize (prompt, response) pairs or message lists the way the
pattern expects. Only transformers is needed (no torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# Placeholder turns used to probe a chat template. Plain words, no whitespace at either end.
_PROBE_USER = "What is two plus two?"
_PROBE_RESPONSES = ("Two plus two equals four.", "4, of course.")
# A whole probe conversation, e.g. to check that a tokenizer renders a QRM's prompt-end pattern.
PROBE_CONVERSATION = [
    {"role": "user", "content": _PROBE_USER},
    {"role": "assistant", "content": _PROBE_RESPONSES[0]},
]
_MAX_SEPARATOR_TOKENS = 2  # whitespace tokens allowed between an end-of-turn token and the next header


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected str.")
    return text


def _encode(tokenizer, text: str) -> list[int]:
    # The template writes BOS and every other special token itself: never let the tokenizer add any.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for index, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(token, "special", False):
            ids.add(int(index))
    return ids


def _find_all(ids: Sequence[int], pattern: Sequence[int]) -> list[int]:
    width = len(pattern)
    return [i for i in range(len(ids) - width + 1) if list(ids[i : i + width]) == list(pattern)]


def _require_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{type(tokenizer).__name__} has no chat template: a QRM needs one to find where the assistant's "
            "turn begins. Set `tokenizer.chat_template` (or use an instruct/chat backbone's tokenizer), or "
            "pass `prompt_end_pattern` explicitly."
        )


def _turn_boundaries(tokenizer, response: str) -> tuple[list[int], int, int, int]:
    """Encode [user, assistant] without generation prompt.

    Returns (ids, u0, u1, a0): the token indices where the user content starts, where it ends and
    where the assistant content starts (tokens before each index are exactly those of the text
    before the matching character offset, whatever BPE does across the boundary).
    """
    messages = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": response}]
    text = _render(tokenizer, messages, add_generation_prompt=False)
    user_start = text.find(_PROBE_USER)
    assistant_start = text.find(response, user_start + len(_PROBE_USER)) if user_start >= 0 else -1
    if assistant_start < 0:
        raise ValueError(
            "Could not locate the user and assistant contents in the rendered chat template "
            f"(does the template rewrite message contents?):\n{text!r}"
        )
    ids = _encode(tokenizer, text)

    def index(char_offset: int) -> int:
        return _common_prefix(_encode(tokenizer, text[:char_offset]), ids)

    return ids, index(user_start), index(user_start + len(_PROBE_USER)), index(assistant_start)


def derive_prompt_end_pattern(tokenizer) -> list[int]:
    """Token ids that open the assistant's turn, derived from the tokenizer's chat template.

    The pattern is the *generation prompt* (the tokens that `add_generation_prompt=True` appends to a
    rendered [user] conversation, e.g. ``<|start_header_id|>assistant<|end_header_id|>\\n\\n``),
    preceded by the special token that closes the user's turn when one stands right before it (possibly
    separated by whitespace tokens), e.g. ``<|eot_id|>`` or ``<|im_end|>\\n``. Including that
    end-of-turn token makes the pattern more specific (the word "assistant" inside a message can never
    match) and puts the gating position, the pattern's first token, on the token that closes the
    prompt. For Llama-3 templates this gives exactly the released QRM pattern
    ``[128009, 128006, 78191, 128007, 271]``; for ChatML (SmolLM2, Qwen)
    ``<|im_end|>\\n<|im_start|>assistant\\n``.

    If the template adds no generation prompt, the pattern is the tokens between the end of the user's
    content and the start of the assistant's content in a rendered [user, assistant] conversation
    (e.g. `` [/INST]`` for Mistral-style templates).

    All ids come from tokenizing complete rendered strings (``add_special_tokens=False``) and diffing the
    id lists, never from tokenizing a snippet alone, so BPE merges across a boundary are accounted for.
    Finally the pattern is checked against rendered [user, assistant] conversations: trailing tokens
    that do not survive there (typically trailing whitespace that merges with the response's first
    characters under some pre-tokenizers) are dropped; this never moves the gating position.

    Note: a response starting with whitespace that merges with the pattern's last token (e.g. a leading
    newline after ChatML's ``assistant\\n``) hides the pattern; strip responses or pass
    `gating_positions`.

    Raises `ValueError` if the tokenizer has no chat template or no pattern can be derived.
    """
    _require_template(tokenizer)
    pattern = _generation_prompt_pattern(tokenizer) or _separator_pattern(tokenizer)
    return _head_marking_the_assistant_turn(tokenizer, pattern)


def _generation_prompt_pattern(tokenizer) -> list[int]:
    """The generation prompt of a rendered [user] conversation, extended backwards over whitespace tokens
    to the special token that closes the user's turn when there is one; [] if the template adds none."""
    user = [{"role": "user", "content": _PROBE_USER}]
    without = _encode(tokenizer, _render(tokenizer, user, add_generation_prompt=False))
    with_prompt = _encode(tokenizer, _render(tokenizer, user, add_generation_prompt=True))
    start = _common_prefix(without, with_prompt)
    if start == len(with_prompt):
        return []
    special = _special_ids(tokenizer)
    k = start - 1
    while k >= 0 and start - 1 - k < _MAX_SEPARATOR_TOKENS and with_prompt[k] not in special:
        if tokenizer.decode([with_prompt[k]]).strip():
            break
        k -= 1
    if k >= 0 and with_prompt[k] in special:
        start = k
    return with_prompt[start:]


def _separator_pattern(tokenizer) -> list[int]:
    """For a template without a generation prompt: the tokens between the user's and the assistant's
    contents of a rendered [user, assistant] conversation."""
    ids, _, user_end, assistant_start = _turn_boundaries(tokenizer, _PROBE_RESPONSES[0])
    pattern = ids[user_end:assistant_start]
    if not pattern:
        raise ValueError(
            "The chat template adds no generation prompt and nothing separates the user's turn from "
            "the assistant's: cannot derive a prompt_end_pattern. Pass `prompt_end_pattern` explicitly."
        )
    return pattern


def _head_marking_the_assistant_turn(tokenizer, pattern: list[int]) -> list[int]:
    """The longest head of `pattern` found between the user's and the assistant's contents of every probe
    conversation (trailing tokens that merge with a response's first characters are dropped)."""
    width = len(pattern)
    for response in _PROBE_RESPONSES:
        ids, user_start, _, assistant_start = _turn_boundaries(tokenizer, response)
        while width > 0:
            hits = [
                i for i in _find_all(ids, pattern[:width]) if i >= user_start and i + width <= assistant_start
            ]
            if hits:
                break
            width -= 1
    if width == 0:
        raise ValueError(
            f"The derived prompt_end_pattern {pattern} (tokens {tokenizer.convert_ids_to_tokens(pattern)}) does "
            "not occur between the user and the assistant turn of a conversation rendered with the chat "
            "template. Pass `prompt_end_pattern` explicitly."
        )
    return list(pattern[:width])


def split_by_length(lengths: Sequence[int], max_length: int | None) -> tuple[list[int], list[int]]:
    """(kept, too_long): the positions of `lengths` at most `max_length` tokens (None: no limit), and the others.

    The one rule for over-long conversations, shared by feature extraction (which skips and counts them)
    and scoring (which refuses them, or skips and counts them in evaluation): never truncate, since that
    would cut the response whose last token the reward is read at.
    """
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be a positive number of tokens, got {max_length}.")
    kept, too_long = [], []
    for position, length in enumerate(lengths):
        (kept if max_length is None or length <= max_length else too_long).append(position)
    return kept, too_long


def backbone_positions(config) -> int | None:
    """The most tokens a model reads: ``max_position_embeddings`` of its config (of the backbone's config
    for a QRM), None when the config does not say."""
    backbone = getattr(config, "backbone_config", None) or config
    length = getattr(backbone, "max_position_embeddings", None)
    return int(length) if isinstance(length, int) and length > 0 else None


def check_max_length(max_length: int | None, config) -> None:
    """The one check of a maximum conversation length (``--max-length`` of every command): a positive
    number of tokens, and not more than the positions of the model of `config`, which could not read such
    a conversation (its positions would run past those it was trained on, or out of its table).
    None (no limit of one's own) passes."""
    if max_length is None:
        return
    if max_length < 1:
        raise ValueError(f"max_length (--max-length) must be a positive number of tokens, got {max_length}.")
    positions = backbone_positions(config)
    if positions is not None and max_length > positions:
        raise ValueError(
            f"max_length (--max-length) {max_length} is more than the {positions} positions of the model "
            f"(max_position_embeddings): it cannot read conversations that long. Use at most {positions}."
        )


def check_token_ids(sequences: Sequence, config) -> None:
    """The one check that token sequences (lists of ids, or tuples of them for pairs) fit the embedding table
    of the model of `config` (``vocab_size``, of the backbone's config for a QRM): a tokenizer of another
    model gives larger ids, which torch would meet as an IndexError deep inside the forward pass."""
    backbone = getattr(config, "backbone_config", None) or config
    vocabulary = getattr(backbone, "vocab_size", None)
    if not isinstance(vocabulary, int):
        return
    parts = (part for entry in sequences for part in (entry if isinstance(entry, tuple) else (entry,)))
    largest = max((max(part) for part in parts if len(part)), default=-1)
    if largest >= vocabulary:
        raise ValueError(
            f"The tokenizer gives token id {largest}, but the model's embedding table has {vocabulary} rows "
            "(vocab_size): the tokenizer is not this model's. Save the model's own tokenizer next to it."
        )


def _as_messages(value: Any, role: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, dict):
        return [value]
    return list(value)


def conversation_messages(prompt=None, response=None, messages=None, system: str | None = None) -> list[dict]:
    """The message list for (`prompt`, `response`) or `messages` (see :func:`format_conversation`)."""
    if messages is not None:
        if prompt is not None or response is not None:
            raise ValueError("Pass either `messages` or `prompt` (+ `response`), not both.")
        result = list(messages)
    else:
        if prompt is None:
            raise ValueError("Pass `prompt` (a string or a list of messages) or `messages`.")
        result = _as_messages(prompt, "user")
        if response is not None:
            result += _as_messages(response, "assistant")
    if system is not None:
        if result and result[0].get("role") == "system":
            raise ValueError("`system` given but the messages already start with a system message.")
        result = [{"role": "system", "content": system}, *result]
    if not result:
        raise ValueError("The conversation is empty.")
    return result


def format_conversation(
    tokenizer, prompt=None, response=None, messages=None, system: str | None = None
) -> str:
    """Render a conversation with the tokenizer's chat template.

    Either `prompt` (a user message string, or a list of message dicts) with an optional `response`
    (an assistant message string, or a list of message dicts appended), or `messages` (a full list of
    ``{"role", "content"}`` dicts, optionally starting with a system message). `system` prepends a
    system message. A conversation ending with an assistant turn is rendered as is; one ending with
    any other turn (e.g. a prompt alone) gets the generation prompt, so that the assistant-turn
    pattern (and the gating position) is present.
    """
    _require_template(tokenizer)
    conversation = conversation_messages(prompt, response, messages, system)
    return _render(tokenizer, conversation, add_generation_prompt=conversation[-1].get("role") != "assistant")


def encode_conversation(
    tokenizer, prompt=None, response=None, messages=None, system: str | None = None
) -> list[int]:
    """Token ids of :func:`format_conversation` (tokenized with ``add_special_tokens=False``: the chat
    template writes BOS and the other special tokens itself)."""
    return _encode(tokenizer, format_conversation(tokenizer, prompt, response, messages, system))


__all__ = [
    "backbone_positions",
    "check_max_length",
    "check_token_ids",
    "conversation_messages",
    "derive_prompt_end_pattern",
    "encode_conversation",
    "format_conversation",
    "split_by_length",
]
