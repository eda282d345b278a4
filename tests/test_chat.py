"""Chat formatting and the derivation of `prompt_end_pattern` from chat templates.

The tokenizers are built locally (byte-level BPE trained on a few strings, plus the special tokens of
each chat format), so no Hub access is needed. The slow test uses the real SmolLM2 tokenizer.
"""

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from conftest import LLAMA3_TEMPLATE, bpe_tokenizer
from qrm_hf.chat import (
    conversation_messages,
    derive_prompt_end_pattern,
    encode_conversation,
    format_conversation,
)
from qrm_hf.modeling.modeling_qrm import find_last_pattern

# The pre-tokenizer split of Llama-3's tokenizer.json (newline runs are their own pre-tokens).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CORPUS = [
    "system\n\nYou are a helpful assistant.\n\n",
    "user\n\nWhat is the capital of France?\n\n",
    "assistant\n\nThe capital of France is Paris.\n\n",
    "model\nuser\nassistant\nsystem\n",
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",
] * 20

# Llama-3.1's template without the tool-calling branches (system header with the knowledge dates).
LLAMA31_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# HuggingFaceH4/zephyr-7b-beta's template, verbatim.
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] "
    "+ eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + "
    "eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n"
    "{% endif %}\n{% endfor %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'assistant') %}"
    "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
# Mistral-style: no generation prompt, the assistant content follows [/INST] directly.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
CONCAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def make_tokenizer(specials, template, llama3_split=True, **special_tokens) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on CORPUS, with `specials` as special tokens."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not llama3_split)
    if llama3_split:
        byte_level = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"), byte_level]
        )
    tokenizer = bpe_tokenizer(CORPUS, specials, 500, byte_level, **special_tokens)
    tokenizer.chat_template = template
    return tokenizer


def llama3_tokenizer(template=LLAMA3_TEMPLATE, llama3_split=True):
    specials = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ]
    return make_tokenizer(
        specials, template, llama3_split, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
    )


def llama3_tokenizer_with_real_ids() -> PreTrainedTokenizerFast:
    """Llama-3's ids for the tokens that matter: 'assistant' 78191, '\\n\\n' 271, specials 128000-128009."""
    merges = [("a", "s"), ("as", "s"), ("i", "s"), ("is", "t"), ("a", "n"), ("an", "t"), ("ist", "ant")]
    merges += [("ass", "istant"), ("Ċ", "Ċ")]
    vocab = {char: i for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({"ĊĊ": 271, "assistant": 78191})
    vocab.update(
        {token: 300 + i for i, token in enumerate(["as", "ass", "is", "ist", "an", "ant", "istant"])}
    )
    taken = set(vocab.values())
    vocab.update({f"<filler_{i}>": i for i in range(128000) if i not in taken})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [
        "<|begin_of_text|>",  # 128000
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>",
        "<|reserved_special_token_2|>",
        "<|start_header_id|>",  # 128006
        "<|end_header_id|>",  # 128007
        "<|eom_id|>",
        "<|eot_id|>",  # 128009
    ]
    tok.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
    )
    tokenizer.chat_template = LLAMA31_TEMPLATE
    return tokenizer


def chatml_tokenizer():
    return make_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], CHATML_TEMPLATE, eos_token="<|im_end|>"
    )


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def gating_position(ids, pattern) -> int:
    ids = torch.tensor([ids])
    return find_last_pattern(ids, torch.ones_like(ids, dtype=torch.bool), pattern).item()


def check_in_conversation(tokenizer, pattern, expected_gating_token):
    """The pattern occurs once in an encoded conversation, at the end of the user turn, before the response."""
    prompt, response = "What is the capital of France?", "The capital of France is Paris."
    ids = encode_conversation(tokenizer, prompt, response)
    starts = [i for i in range(len(ids)) if ids[i : i + len(pattern)] == pattern]
    assert len(starts) == 1, (starts, tokenizer.convert_ids_to_tokens(ids))
    position = gating_position(ids, pattern)
    assert position == starts[0]
    assert tokenizer.convert_ids_to_tokens(ids[position]) == expected_gating_token
    text = format_conversation(tokenizer, prompt, response)
    prompt_tokens = len(encode(tokenizer, text[: text.index(prompt) + len(prompt)]))
    response_tokens = len(encode(tokenizer, text[: text.index(response)]))
    assert prompt_tokens <= position and position + len(pattern) <= response_tokens
    return position


@pytest.mark.parametrize("template", [LLAMA3_TEMPLATE, LLAMA31_TEMPLATE], ids=["llama3", "llama3.1"])
def test_llama3_pattern(template):
    tokenizer = llama3_tokenizer(template)
    pattern = derive_prompt_end_pattern(tokenizer)
    assert pattern == encode(tokenizer, "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tokenizer.convert_ids_to_tokens(pattern)[:2] == ["<|eot_id|>", "<|start_header_id|>"]
    check_in_conversation(tokenizer, pattern, "<|eot_id|>")


def test_llama3_real_ids_give_the_released_pattern():
    tokenizer = llama3_tokenizer_with_real_ids()
    assert encode(tokenizer, "assistant\n\n") == [78191, 271]
    assert derive_prompt_end_pattern(tokenizer) == [128009, 128006, 78191, 128007, 271]
    check_in_conversation(tokenizer, [128009, 128006, 78191, 128007, 271], "<|eot_id|>")


def test_trailing_whitespace_that_merges_differently_in_context_is_dropped():
    # With GPT-2's pre-tokenizer, "\n\n" at the end of the generation prompt is one token, but two when the
    # response follows: the pattern keeps only what survives in context, and the gating position is unchanged.
    tokenizer = llama3_tokenizer(LLAMA3_TEMPLATE, llama3_split=False)
    assert len(encode(tokenizer, "<|end_header_id|>\n\n")) == 2  # "\n\n" merged at the end of a string
    pattern = derive_prompt_end_pattern(tokenizer)
    assert pattern[:4] == encode(tokenizer, "<|eot_id|><|start_header_id|>assistant<|end_header_id|>")
    check_in_conversation(tokenizer, pattern, "<|eot_id|>")


def test_chatml_pattern():
    tokenizer = chatml_tokenizer()
    pattern = derive_prompt_end_pattern(tokenizer)
    assert pattern == encode(tokenizer, "<|im_end|>\n<|im_start|>assistant\n")
    # The default system message says "assistant", which must not match.
    assert "assistant" in format_conversation(tokenizer, "Hi")
    check_in_conversation(tokenizer, pattern, "<|im_end|>")


def test_zephyr_pattern():
    tokenizer = make_tokenizer(
        ["</s>", "<|user|>", "<|assistant|>", "<|system|>"], ZEPHYR_TEMPLATE, eos_token="</s>"
    )
    pattern = derive_prompt_end_pattern(tokenizer)
    assert pattern == encode(tokenizer, "</s>\n<|assistant|>\n")
    check_in_conversation(tokenizer, pattern, "</s>")


def test_gemma_pattern():
    tokenizer = make_tokenizer(
        ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"],
        GEMMA_TEMPLATE,
        bos_token="<bos>",
        eos_token="<eos>",
    )
    pattern = derive_prompt_end_pattern(tokenizer)
    assert pattern == encode(tokenizer, "<end_of_turn>\n<start_of_turn>model\n")
    check_in_conversation(tokenizer, pattern, "<end_of_turn>")


def test_template_without_generation_prompt_falls_back_to_the_turn_separator():
    tokenizer = make_tokenizer(
        ["<s>", "</s>", "[INST]", "[/INST]"], MISTRAL_TEMPLATE, bos_token="<s>", eos_token="</s>"
    )
    text = format_conversation(tokenizer, "Hi")
    assert text == format_conversation(tokenizer, messages=[{"role": "user", "content": "Hi"}])
    pattern = derive_prompt_end_pattern(tokenizer)
    assert pattern == encode(tokenizer, " [/INST]")
    check_in_conversation(tokenizer, pattern, "Ġ")


def test_template_without_any_turn_marker_raises():
    tokenizer = make_tokenizer(["<s>"], CONCAT_TEMPLATE)
    with pytest.raises(ValueError, match="prompt_end_pattern"):
        derive_prompt_end_pattern(tokenizer)


def test_no_chat_template_raises():
    tokenizer = chatml_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        derive_prompt_end_pattern(tokenizer)
    with pytest.raises(ValueError, match="no chat template"):
        encode_conversation(tokenizer, "Hi", "Hello")


def test_format_conversation_variants():
    tokenizer = chatml_tokenizer()
    pair = format_conversation(tokenizer, "Hi", "Hello")
    assert pair == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n"
    )
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert format_conversation(tokenizer, messages=messages) == pair
    assert format_conversation(tokenizer, messages[:1], "Hello") == pair  # prompt as a message list
    assert format_conversation(tokenizer, "Hi", messages[1:]) == pair  # response as a message list
    assert encode_conversation(tokenizer, "Hi", "Hello") == encode(tokenizer, pair)
    # A custom system message replaces the template's default one.
    with_system = format_conversation(tokenizer, "Hi", "Hello", system="Be brief.")
    assert (
        with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and "helpful" not in with_system
    )
    assert with_system == format_conversation(
        tokenizer, messages=[{"role": "system", "content": "Be brief."}, *messages]
    )
    # A prompt alone gets the generation prompt, so the pattern (and gating position) is there.
    prompt_only = encode_conversation(tokenizer, "Hi")
    pattern = derive_prompt_end_pattern(tokenizer)
    assert prompt_only[-len(pattern) :] == pattern
    with pytest.raises(ValueError, match="not both"):
        format_conversation(tokenizer, "Hi", messages=messages)
    with pytest.raises(ValueError):
        format_conversation(tokenizer)
    with pytest.raises(ValueError, match="system"):
        conversation_messages(messages=[{"role": "system", "content": "a"}], system="b")


def test_multi_turn_gating_position_is_the_last_assistant_turn():
    tokenizer = llama3_tokenizer()
    pattern = derive_prompt_end_pattern(tokenizer)
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ]
    ids = encode_conversation(tokenizer, messages=messages)
    position = gating_position(ids, pattern)
    text = format_conversation(tokenizer, messages=messages)
    assert position == len(
        encode(tokenizer, text[: text.index("Capital of France?") + len("Capital of France?")])
    )
    assert ids[position:] == pattern + encode(tokenizer, "Paris.<|eot_id|>")


@pytest.mark.slow
def test_smollm2_pattern():
    from transformers import AutoTokenizer

    from qrm_hf.backbones import smollm2_backbone_dir

    tokenizer = AutoTokenizer.from_pretrained(smollm2_backbone_dir())
    pattern = derive_prompt_end_pattern(tokenizer)
    assert pattern == encode(tokenizer, "<|im_end|>\n<|im_start|>assistant\n")
    assert pattern == [2, 198, 1, 520, 9531, 198]
    assert tokenizer.convert_ids_to_tokens(pattern) == [
        "<|im_end|>",
        "Ċ",
        "<|im_start|>",
        "ass",
        "istant",
        "Ċ",
    ]
    position = check_in_conversation(tokenizer, pattern, "<|im_end|>")
    # The default system turn comes first; the gating position closes the user turn.
    ids = encode_conversation(tokenizer, "What is the capital of France?", "The capital of France is Paris.")
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.decode(ids[position + len(pattern) :]) == "The capital of France is Paris.<|im_end|>\n"
