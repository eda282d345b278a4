"""A saved QRM as a drop-in reward model of the installed TRL's trainers.

The QRM is loaded with `AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)`
in a fresh interpreter where `qrm_hf` cannot be imported, and passed as `reward_funcs` to every installed
TRL trainer that scores completions with a sequence-classification model (TRL tokenizes the texts
itself, pads on the right and reads `logits[:, 0]`): `RLOOTrainer`, `GRPOTrainer` and the experimental
`GMPOTrainer` (a `GRPOTrainer`), `OnlineDPOTrainer` and `SDPOTrainer`. Each runs a few steps with a tiny
random policy; the rewards TRL computed are recorded there and checked here against the QRM's expected
reward for the same texts, scored one at a time with qrm-hf's own class (no padding).

Everything is built locally: a byte-level BPE tokenizer with Llama-3's chat template, a tiny random
Llama policy and a tiny random QRM. The helpers are shared with `test_rloo.py`.
"""

import json
import textwrap

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import LLAMA3_TEMPLATE, bpe_tokenizer, make_qrm, run_without_qrm_hf, tiny_backbone_config
from qrm_hf import QRMForSequenceClassification
from qrm_hf.chat import derive_prompt_end_pattern

SPECIALS = [
    "<|pad|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
CORPUS = [
    "user assistant system",
    "What is two plus two? It is four.",
    "Tell me a joke.",
    "Name a color. Blue.",
]
CHAT_PROMPTS = [
    [{"role": "user", "content": "What is two plus two?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a joke."}],
    [{"role": "user", "content": "Name a color."}],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ],
]
TEXT_PROMPTS = ["What is two plus two?", "Tell me a joke.", "Name a color.", "Say hi."]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (300 tokens) trained on a few strings, Llama-3 special tokens and chat template."""
    tokenizer = bpe_tokenizer(
        CORPUS * 10, SPECIALS, 300, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|pad|>"
    )
    tokenizer.chat_template = LLAMA3_TEMPLATE
    return tokenizer


def token_ids(tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def save_tiny_qrm(path, tokenizer, seed: int = 0, **overrides) -> QRMForSequenceClassification:
    """A tiny random QRM for `tokenizer` (pattern derived from its chat template), saved with it."""
    values = dict(
        backbone_config=tiny_backbone_config(**token_ids(tokenizer)),
        prompt_end_pattern=derive_prompt_end_pattern(tokenizer),
    )
    values.update(overrides)
    model = make_qrm(seed=seed, **values)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def save_tiny_policy(path, tokenizer, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = tiny_backbone_config(
        max_position_embeddings=2048,  # above `qrm sft`'s default --max-length (1024), which may not exceed it
        **token_ids(tokenizer),
    )
    policy = LlamaForCausalLM(config)
    policy.generation_config.eos_token_id = tokenizer.eos_token_id
    policy.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return policy


def reward_text(tokenizer, prompt, completion) -> str:
    """The text TRL scores: the chat template over prompt + completion messages, or the concatenation."""
    if isinstance(prompt, str):
        return prompt + completion
    return tokenizer.apply_chat_template(prompt + completion, tokenize=False)


@torch.no_grad()
def expected_rewards(qrm, tokenizer, prompts, completions) -> torch.Tensor:
    """The QRM's expected reward for each (prompt, completion), one unpadded text at a time."""
    rewards = []
    for prompt, completion in zip(prompts, completions, strict=True):
        ids = tokenizer(
            reward_text(tokenizer, prompt, completion), add_special_tokens=False, return_tensors="pt"
        )
        rewards.append(qrm(**ids).logits[0, 0])
    return torch.stack(rewards)


def record_rewards(trainer) -> list[dict]:
    """Record prompts, completions and rewards per function of every `_calculate_rewards` call."""
    records, original = [], trainer._calculate_rewards

    def recording(inputs, prompts, completions, completion_ids_list):
        rewards = original(inputs, prompts, completions, completion_ids_list)
        records.append(dict(prompts=prompts, completions=completions, rewards=rewards.clone()))
        return rewards

    trainer._calculate_rewards = recording
    return records


# Runs in a fresh interpreter where qrm_hf cannot be imported. Writes the recorded rewards as JSON.
DROP_IN_SCRIPT = """
import inspect, json, traceback
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer
from trl.experimental.gmpo import GMPOConfig, GMPOTrainer
from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

torch.set_num_threads(1)
QRM, POLICY, OUT, RESULT = {qrm!r}, {policy!r}, {out!r}, {result!r}
CHAT, TEXT = {chat!r}, {text!r}
qrm_tokenizer = AutoTokenizer.from_pretrained(QRM)
# plain-text prompts already in the QRM's chat format (generation prompt included)
TEMPLATED = [qrm_tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in CHAT]
TRAINERS = dict(rloo=(RLOOTrainer, RLOOConfig), grpo=(GRPOTrainer, GRPOConfig), gmpo=(GMPOTrainer, GMPOConfig),
                online_dpo=(OnlineDPOTrainer, OnlineDPOConfig), sdpo=(SDPOTrainer, SDPOConfig))


def load_qrm(fallback):
    model = AutoModelForSequenceClassification.from_pretrained(QRM, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    model.config.gating_fallback = fallback
    return model


def run(trainer_name, prompts, fallback="error"):
    trainer_cls, config_cls = TRAINERS[trainer_name]
    args = dict(output_dir=OUT, per_device_train_batch_size=4, num_generations=2, max_completion_length=4,
                max_steps=2, logging_steps=1, report_to="none", save_strategy="no", seed=0, use_cpu=True, bf16=False)
    if trainer_name == "online_dpo":
        args = dict(output_dir=OUT, per_device_train_batch_size=2, max_new_tokens=4, max_steps=2, logging_steps=1,
                    report_to="none", save_strategy="no", seed=0, use_cpu=True, bf16=False)
    trainer = trainer_cls(model=POLICY, reward_funcs=load_qrm(fallback), args=config_cls(**args),
                          train_dataset=Dataset.from_dict({{"prompt": prompts * 2}}),
                          processing_class=AutoTokenizer.from_pretrained(POLICY, padding_side="left"))
    method = "_calculate_rewards_from_functions" if trainer_name == "online_dpo" else "_calculate_rewards"
    records, original = [], getattr(trainer, method)

    def recording(*args, **kwargs):  # (inputs, prompts, completions, ...) or, OnlineDPO, (prompts, completions, ...)
        rewards = original(*args, **kwargs)
        bound = inspect.signature(original).bind(*args, **kwargs).arguments
        records.append(dict(prompts=bound["prompts"], completions=bound["completions"], rewards=rewards.tolist()))
        return rewards

    setattr(trainer, method, recording)
    trainer.train()
    name = QRM.rstrip("/").split("/")[-1]
    logged = [h[f"rewards/{{name}}/mean"] for h in trainer.state.log_history if f"rewards/{{name}}/mean" in h]
    return dict(records=records, logged=logged)


CASES = dict(
    rloo_chat=("rloo", CHAT), rloo_text_templated=("rloo", TEMPLATED), rloo_text_last_token=("rloo", TEXT, "last_token"),
    rloo_text_error=("rloo", TEXT), grpo_chat=("grpo", CHAT), grpo_text_templated=("grpo", TEMPLATED),
    grpo_text_last_token=("grpo", TEXT, "last_token"), gmpo_chat=("gmpo", CHAT), online_dpo_chat=("online_dpo", CHAT),
    sdpo_chat=("sdpo", CHAT),
)
results = {{}}
for case, spec in CASES.items():
    try:
        results[case] = run(*spec)
    except Exception as error:
        results[case] = dict(error=f"{{type(error).__name__}}: {{error}}", traceback=traceback.format_exc())
json.dump(results, open(RESULT, "w"))
"""


@pytest.fixture(scope="module")
def drop_in(tmp_path_factory):
    """Run every case once in a process without qrm_hf; return (qrm, tokenizer, results by case)."""
    root = tmp_path_factory.mktemp("drop_in")
    tokenizer = tiny_tokenizer()
    qrm = save_tiny_qrm(root / "tiny-qrm", tokenizer, num_members=3)  # a QRM with members is a drop-in too
    save_tiny_policy(root / "policy", tokenizer)
    script = DROP_IN_SCRIPT.format(
        qrm=str(root / "tiny-qrm"),
        policy=str(root / "policy"),
        out=str(root / "out"),
        result=str(root / "result.json"),
        chat=CHAT_PROMPTS,
        text=TEXT_PROMPTS,
    )
    result = run_without_qrm_hf(textwrap.dedent(script), root, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    return qrm, tokenizer, json.loads((root / "result.json").read_text())


DROP_IN_CASES = [
    "rloo_chat",
    "rloo_text_templated",
    "rloo_text_last_token",
    "grpo_chat",
    "grpo_text_templated",
    "grpo_text_last_token",
    "gmpo_chat",
    "online_dpo_chat",
    "sdpo_chat",
]


@pytest.mark.parametrize("case", DROP_IN_CASES)
def test_trl_rewards_are_the_expected_reward(drop_in, case):
    qrm, tokenizer, results = drop_in
    result = results[case]
    assert "error" not in result, result.get("traceback")
    assert len(result["records"]) >= 2  # one scoring per step
    if case.endswith("last_token"):
        qrm.config.gating_fallback = "last_token"
    try:
        for record in result["records"]:
            rewards = torch.tensor(record["rewards"])
            if rewards.dim() == 2:  # rewards per function [B, 1]
                rewards = rewards[:, 0]
            expected = expected_rewards(qrm, tokenizer, record["prompts"], record["completions"])
            torch.testing.assert_close(rewards, expected, rtol=1e-5, atol=1e-5)
    finally:
        qrm.config.gating_fallback = "error"
    if result["logged"]:  # OnlineDPO logs no per-function reward
        logged = torch.tensor(result["logged"])
        means = torch.tensor([torch.tensor(r["rewards"]).mean().item() for r in result["records"]])
        torch.testing.assert_close(logged, means, rtol=1e-5, atol=1e-5)


def test_the_drop_in_qrm_carries_members(drop_in):
    """The drop-in QRM above has 3 members: TRL reads their mean expected reward, through remote code."""
    qrm, _, _ = drop_in
    config = qrm.config
    assert config.num_members == 3
    assert qrm.regression_layer.weight.shape[0] == 3 * config.num_attributes * config.num_quantiles


def test_plain_text_prompts_need_the_chat_format_or_a_fallback(drop_in):
    """Plain-text prompts without the assistant-turn pattern: the QRM's default gating_fallback="error" stops
    training with a message that names the pattern and the ways out."""
    _, _, results = drop_in
    error = results["rloo_text_error"].get("error", "")
    assert error.startswith("ValueError") and "prompt_end_pattern" in error, error
    assert "gating_fallback" in error and "gating_positions" in error


def test_gating_position_under_trls_chat_call(one_thread, tmp_path):
    """TRL's exact call for chat prompts (chat template over prompt + completion, right padding, no special
    tokens added) puts the gating position on the <|eot_id|> that closes the last user turn."""
    from trl.data_utils import apply_chat_template

    tokenizer = tiny_tokenizer()
    qrm = save_tiny_qrm(tmp_path, tokenizer)
    completions = [
        [{"role": "assistant", "content": text}] for text in ("Four.", " It is four. ", "Blue", "x")
    ]
    texts = [
        apply_chat_template({"messages": p + c}, tokenizer)["text"]
        for p, c in zip(CHAT_PROMPTS, completions, strict=True)
    ]
    inputs = tokenizer(
        text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False
    )
    positions = []
    for row, (prompt, ids) in enumerate(zip(CHAT_PROMPTS, inputs["input_ids"], strict=True)):
        prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt_ids)].tolist() == list(prompt_ids), row  # the prompt is a prefix of the text
        eot = [i for i, t in enumerate(prompt_ids) if t == tokenizer.eos_token_id][-1]
        positions.append(eot)
    positions = torch.tensor(positions)
    with torch.no_grad():
        searched = qrm(**inputs)
        explicit = qrm(**inputs, gating_positions=positions)
    torch.testing.assert_close(searched.prompt_embedding, explicit.prompt_embedding, rtol=0, atol=0)
    torch.testing.assert_close(searched.logits, explicit.logits, rtol=0, atol=0)
