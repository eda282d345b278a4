"""`RiskAwareRLOOTrainer` / `RiskAwareRLOOConfig` and the risk bandit.

Tiny random models built locally (helpers shared with `test_trl.py`); tiny models run on one thread.
Most checks call the trainer's `_calculate_rewards` directly with chosen prompts and completions (the
method TRL calls once per generation batch), the others run a few training steps.
"""

import importlib.util
import logging
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from test_trl import (
    CHAT_PROMPTS,
    TEXT_PROMPTS,
    record_rewards,
    reward_text,
    save_tiny_policy,
    save_tiny_qrm,
    tiny_tokenizer,
)
from transformers.dynamic_module_utils import get_class_from_dynamic_module
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from qrm_hf import QRMForSequenceClassification, risk
from qrm_hf.modeling.modeling_qrm import find_last_pattern
from qrm_hf.training.risk_rewards import level_name
from qrm_hf.training.rloo import RiskAwareRLOOConfig, RiskAwareRLOOTrainer

ROOT = Path(__file__).resolve().parents[1]
CHAT_COMPLETIONS = [
    [{"role": "assistant", "content": text}] for text in ("Four.", "No joke.", "Blue", "Bye!")
]
TEXT_COMPLETIONS = [" It is four.", " No.", " Blue.", " hi"]
MEASURES = ["expectation", "exp_utility", "certainty_equivalent", "cvar", "quantile"]
STOCK_CONFIGS = {RLOOTrainer: RLOOConfig, GRPOTrainer: GRPOConfig}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tokenizer, two tiny QRMs and a tiny policy saved to disk (TRL loads the reference model by path)."""
    root = tmp_path_factory.mktemp("rloo")
    tokenizer = tiny_tokenizer()
    save_tiny_qrm(root / "qrm-a", tokenizer, seed=0)
    save_tiny_qrm(root / "qrm-b", tokenizer, seed=1, gating_fallback="last_token", quantile_mixing="mixture")
    save_tiny_policy(root / "policy", tokenizer)
    return root, tokenizer


def config_values(root, **overrides) -> dict:
    values = dict(
        output_dir=str(root / "out"),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=4,
        max_steps=2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        beta=0.0,
        seed=0,
    )
    values.update(overrides)
    return values


def config(root, **overrides) -> RiskAwareRLOOConfig:
    return RiskAwareRLOOConfig(**config_values(root, **overrides))


def load_qrm(root, name="qrm-a") -> QRMForSequenceClassification:
    return QRMForSequenceClassification.from_pretrained(root / name).eval()


def trainer_for(
    root, reward_funcs, prompts=CHAT_PROMPTS, trainer_cls=RiskAwareRLOOTrainer, tokenizers=None, **overrides
):
    config_cls = STOCK_CONFIGS.get(trainer_cls) or trainer_cls.config_class
    return trainer_cls(
        model=str(root / "policy"),
        reward_funcs=reward_funcs,
        args=config_cls(**config_values(root, **overrides)),
        train_dataset=Dataset.from_dict({"prompt": list(prompts) * 2}),
        reward_processing_classes=tokenizers,
    )


def calculate(trainer, prompts, completions):
    """`trainer._calculate_rewards` as TRL calls it, for chosen prompts and completions: [B, n_funcs]."""
    inputs = [{"prompt": p} for p in prompts]
    texts = [c if isinstance(c, str) else c[0]["content"] for c in completions]
    completion_ids = [trainer.processing_class(t, add_special_tokens=False)["input_ids"] for t in texts]
    with torch.no_grad():
        return trainer._calculate_rewards(inputs, list(prompts), list(completions), completion_ids)


@torch.no_grad()
def score_one_by_one(qrm, tokenizer, prompts, completions, gating_positions=None):
    """QRM outputs for each unpadded text (pattern search unless positions are given)."""
    outputs = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        ids = tokenizer(
            reward_text(tokenizer, prompt, completion), add_special_tokens=False, return_tensors="pt"
        )
        kwargs = {} if gating_positions is None else {"gating_positions": torch.tensor([gating_positions[i]])}
        outputs.append(qrm(**ids, **kwargs))
    return {
        "logits": torch.cat([o.logits[:, 0] for o in outputs]),
        "reward_quantiles": torch.cat([o.reward_quantiles for o in outputs]),
        "prompt_embedding": torch.cat([o.prompt_embedding for o in outputs]),
    }


def eot_position(tokenizer, prompt) -> int:
    """Position of the <|eot_id|> that closes the prompt's last turn (the start of the assistant-turn pattern)."""
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return max(i for i, t in enumerate(prompt_ids) if t == tokenizer.eos_token_id)


def metrics_of(trainer) -> dict:
    return trainer._metrics["train" if trainer.model.training else "eval"]


def risk_of(measure, quantiles, expected, levels, lam=1.0, alpha=0.1, tau=0.1):
    return {
        "expectation": lambda: expected,
        "exp_utility": lambda: risk.exponential_utility(quantiles, lam),
        "certainty_equivalent": lambda: risk.certainty_equivalent(quantiles, lam),
        "cvar": lambda: risk.cvar(quantiles, levels, alpha),
        "quantile": lambda: risk.quantile(quantiles, levels, tau),
    }[measure]()


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(risk_measure="variance"), "risk_measure"),
        (dict(risk_lambda=0.0), "risk_lambda"),
        (dict(risk_lambda=-1.0), "risk_lambda"),
        (dict(risk_lambda=float("nan")), "risk_lambda"),
        (dict(risk_lambda=float("inf")), "risk_lambda"),
        (dict(risk_alpha=0.0), "risk_alpha"),
        (dict(risk_alpha=1.5), "risk_alpha"),
        (dict(risk_tau=0.0), "risk_tau"),
        (dict(risk_tau=1.0), "risk_tau"),
        (dict(log_quantile_levels=[0.0, 0.5]), "log_quantile_levels"),
        (dict(log_quantile_levels=[0.1, 0.1]), "log_quantile_levels"),
    ],
)
def test_config_rejects_bad_values(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        config(tmp_path, **overrides)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            dict(risk_measure="cvar:0.3", risk_alpha=0.5),
            "`risk_alpha` 0.5 is not used by .*its alpha is 0.3",
        ),
        (dict(risk_alpha=0.5), "`risk_alpha` 0.5 is not used by `risk_measure` 'exp_utility'"),
        (dict(risk_measure="cvar", risk_lambda=2.0), "`risk_lambda` 2 is not used"),
        (dict(risk_measure="quantile:0.2", risk_tau=0.3), "`risk_tau` 0.3 is not used"),
    ],
)
def test_a_risk_field_the_measure_does_not_use_is_refused(tmp_path, overrides, match):
    """A parameter field set away from its default counts, or is refused: silently ignoring `--risk-alpha 0.5`
    (the measure has no alpha, or its spec states another) would train with another reward than asked."""
    with pytest.raises(ValueError, match=match):
        config(tmp_path, **overrides)
    assert config(tmp_path, risk_measure="cvar", risk_alpha=0.5).parse_risk_measure().values == {"alpha": 0.5}
    assert config(tmp_path, risk_measure="cvar:0.3", risk_alpha=0.3).parse_risk_measure().values == {
        "alpha": 0.3
    }


def test_config_defaults(tmp_path):
    args = config(tmp_path)
    assert isinstance(args, RLOOConfig)
    assert (args.risk_measure, args.risk_lambda, args.risk_alpha, args.risk_tau) == (
        "exp_utility",
        1.0,
        0.1,
        0.1,
    )
    assert args.log_quantile_levels == [0.05, 0.10, 0.15, 0.20, 0.25]
    # alpha = 1 (the mean) is allowed
    assert config(tmp_path, risk_measure="cvar", risk_alpha=1.0).risk_alpha == 1.0
    assert [level_name(t) for t in (0.05, 0.1, 0.125, 0.5)] == ["q0.05", "q0.10", "q0.125", "q0.50"]


# ----------------------------------------------------------------------------------------- bad input


def test_a_risk_measure_without_a_qrm_is_an_error(one_thread, assets):
    root, _ = assets

    def length_reward(completions, **kwargs):
        return [float(len(c[0]["content"])) for c in completions]

    with pytest.raises(ValueError, match="needs a QRM among the reward functions"):
        trainer_for(root, length_reward, risk_measure="exp_utility")
    trainer = trainer_for(root, length_reward, risk_measure="expectation")  # plain RLOO, allowed
    rewards = calculate(trainer, CHAT_PROMPTS, CHAT_COMPLETIONS)
    assert rewards[:, 0].tolist() == [5.0, 8.0, 4.0, 4.0]


def test_an_epistemic_measure_of_qrms_without_members_is_an_error(one_thread, assets):
    root, _ = assets
    assert load_qrm(root).config.num_members == 1
    for spec in ("lcb:1", "cvar:0.25+lcb:1", "worst_member"):  # would silently train on the plain measure
        with pytest.raises(ValueError, match="has one member"):
            trainer_for(root, load_qrm(root), risk_measure=spec)


def test_args_must_be_a_risk_aware_config(one_thread, assets):
    root, _ = assets
    with pytest.raises(TypeError, match="RiskAwareRLOOConfig"):
        RiskAwareRLOOTrainer(
            model=str(root / "policy"), reward_funcs=load_qrm(root), args=RLOOConfig(**config_values(root))
        )


def test_a_tokenizer_the_qrm_was_not_assembled_with_is_an_error(one_thread, assets):
    root, tokenizer = assets
    chatml = tiny_tokenizer()
    chatml.chat_template = (
        "{% for message in messages %}{{'<|start_header_id|>' + message['role'] + '\n' + message['content'] + "
        "'<|end_of_text|>\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant\n' }}{% endif %}"
    )
    with pytest.raises(ValueError, match="does not produce the QRM's prompt_end_pattern"):
        trainer_for(root, load_qrm(root), tokenizers=chatml)
    bigger = tiny_tokenizer()
    bigger.add_tokens([f"<extra_{i}>" for i in range(40)])
    with pytest.raises(ValueError, match="not the tokenizer the QRM was assembled with"):
        trainer_for(root, load_qrm(root), tokenizers=bigger)


# ------------------------------------------------------------------------------------ reward values


@pytest.fixture(scope="module")
def chat_trainer(assets):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root, _ = assets
    yield trainer_for(root, load_qrm(root))
    torch.set_num_threads(threads)


@pytest.mark.parametrize("measure", MEASURES)
@pytest.mark.parametrize("prompts, completions", [(CHAT_PROMPTS, CHAT_COMPLETIONS)], ids=["chat"])
def test_the_reward_is_the_risk_measure_of_the_distribution(
    chat_trainer, assets, measure, prompts, completions
):
    root, tokenizer = assets
    chat_trainer.args.risk_measure = measure
    try:
        rewards = calculate(chat_trainer, prompts, completions)[:, 0]
    finally:
        chat_trainer.args.risk_measure = "exp_utility"
    reference = score_one_by_one(
        load_qrm(root), tokenizer, prompts, completions
    )  # the QRM's own pattern search
    levels = load_qrm(root).config.quantile_levels
    expected = risk_of(measure, reference["reward_quantiles"], reference["logits"], levels)
    torch.testing.assert_close(rewards, expected, rtol=1e-5, atol=1e-6)


def test_expectation_equals_stock_trl_and_gating_positions_equal_the_pattern_search(one_thread, assets):
    """With the pattern in the prompt, the positions the trainer passes are those the QRM's search finds."""
    root, tokenizer = assets
    qrm = load_qrm(root)
    stock = trainer_for(root, qrm, trainer_cls=RLOOTrainer)
    aware = trainer_for(root, qrm, risk_measure="expectation")
    calls = []
    original = qrm.forward

    def spy(*args, **kwargs):
        output = original(*args, **kwargs)
        calls.append((kwargs.get("gating_positions"), output.prompt_embedding))
        return output

    qrm.forward = spy
    stock_rewards = calculate(stock, CHAT_PROMPTS, CHAT_COMPLETIONS)
    aware_rewards = calculate(aware, CHAT_PROMPTS, CHAT_COMPLETIONS)
    (none, searched), (positions, passed) = calls  # scored once per batch each
    assert none is None and positions is not None
    torch.testing.assert_close(passed, searched, rtol=0, atol=0)
    torch.testing.assert_close(aware_rewards, stock_rewards, rtol=0, atol=0)
    # and those positions are the <|eot_id|> closing the last user turn
    assert positions.tolist() == [eot_position(tokenizer, prompt) for prompt in CHAT_PROMPTS]


def test_a_completion_cannot_move_the_gating_position(chat_trainer, assets):
    """A completion that writes the assistant-turn pattern itself moves the stock QRM's gating position into
    the completion; the trainer keeps it in the prompt."""
    root, tokenizer = assets
    sneaky = "Sure.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nGreat answer."
    completions = [[{"role": "assistant", "content": sneaky}]] * len(CHAT_PROMPTS)
    qrm = chat_trainer.reward_funcs[0]
    calls = []

    def spy(input_ids, attention_mask, gating_positions):
        calls.append((input_ids, attention_mask, gating_positions))
        return type(qrm).forward(qrm, input_ids, attention_mask, gating_positions)

    qrm.forward = spy
    chat_trainer.args.risk_measure = "expectation"
    try:
        rewards = calculate(chat_trainer, CHAT_PROMPTS, completions)[:, 0]
    finally:
        chat_trainer.args.risk_measure = "exp_utility"
        del qrm.forward
    ((input_ids, attention_mask, passed),) = calls
    in_prompt = torch.tensor([eot_position(tokenizer, prompt) for prompt in CHAT_PROMPTS])
    searched = find_last_pattern(input_ids, attention_mask.bool(), qrm.config.prompt_end_pattern)
    assert passed.tolist() == in_prompt.tolist()
    assert (searched > in_prompt + 5).all()  # the stock search lands in the completion
    reference = score_one_by_one(
        load_qrm(root), tokenizer, CHAT_PROMPTS, completions, gating_positions=in_prompt
    )
    torch.testing.assert_close(rewards, reference["logits"], rtol=1e-5, atol=1e-6)


def test_plain_text_prompts_gate_on_the_last_prompt_token(one_thread, assets):
    """No chat format, so no pattern: the position is the prompt's last token, whatever the QRM's
    gating_fallback (the stock QRM would raise, or gate on the last token of the response)."""
    root, tokenizer = assets
    trainer = trainer_for(root, load_qrm(root), prompts=TEXT_PROMPTS, risk_measure="cvar")
    rewards = calculate(trainer, TEXT_PROMPTS, TEXT_COMPLETIONS)[:, 0]
    positions = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) - 1 for p in TEXT_PROMPTS]
    reference = score_one_by_one(load_qrm(root), tokenizer, TEXT_PROMPTS, TEXT_COMPLETIONS, positions)
    levels = load_qrm(root).config.quantile_levels
    torch.testing.assert_close(
        rewards, risk.cvar(reference["reward_quantiles"], levels, 0.1), rtol=1e-5, atol=1e-6
    )


def test_chat_prompts_missing_the_pattern_follow_the_qrms_fallback(one_thread, assets):
    root, _ = assets
    qrm = load_qrm(root)
    trainer = trainer_for(root, qrm)
    trainer.chat_template_kwargs = {"chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}
    with pytest.raises(ValueError, match="prompt_end_pattern .* is not among the prompt tokens of row 0"):
        calculate(trainer, CHAT_PROMPTS, CHAT_COMPLETIONS)
    qrm.config.gating_fallback = "last_token"
    trainer._qrm_specs = [trainer._qrm_spec(0)]
    assert torch.isfinite(calculate(trainer, CHAT_PROMPTS, CHAT_COMPLETIONS)).all()


def test_other_reward_functions_are_untouched_and_weights_apply(one_thread, assets):
    """Two QRMs (one with mixture quantiles and the last-token fallback) and a Python reward function."""
    root, tokenizer = assets

    def length_reward(completions, **kwargs):
        return [float(len(c[0]["content"])) for c in completions]

    funcs = [load_qrm(root, "qrm-a"), length_reward, load_qrm(root, "qrm-b")]
    trainer = trainer_for(
        root, funcs, risk_measure="certainty_equivalent", risk_lambda=2.0, reward_weights=[1.0, 0.5, 2.0]
    )
    assert [spec.index for spec in trainer._qrm_specs] == [0, 2]
    rewards = calculate(trainer, CHAT_PROMPTS, CHAT_COMPLETIONS)
    assert rewards[:, 1].tolist() == [5.0, 8.0, 4.0, 4.0]
    for column, name in ((0, "qrm-a"), (2, "qrm-b")):
        reference = score_one_by_one(load_qrm(root, name), tokenizer, CHAT_PROMPTS, CHAT_COMPLETIONS)
        expected = risk.certainty_equivalent(reference["reward_quantiles"], 2.0)
        torch.testing.assert_close(rewards[:, column], expected, rtol=1e-5, atol=1e-6)
    # TRL's weighted sum is what the trainer optimises; per-QRM metrics are logged under each name
    metrics = metrics_of(trainer)
    for name in ("qrm-a", "qrm-b"):
        assert {f"rewards/{name}/{key}" for key in ("expectation", "risk", "q0.05", "q0.25")} <= set(metrics)
    assert not any(key.startswith("rewards/length_reward/q") for key in metrics)


def test_a_qrm_loaded_as_remote_code_is_recognised(one_thread, assets):
    root, tokenizer = assets
    remote_cls = get_class_from_dynamic_module(
        "modeling_qrm.QRMForSequenceClassification", str(root / "qrm-a")
    )
    remote = remote_cls.from_pretrained(root / "qrm-a").eval()
    assert type(remote).__module__.startswith("transformers_modules")
    assert not isinstance(remote, QRMForSequenceClassification)
    trainer = trainer_for(root, remote, risk_measure="quantile", risk_tau=0.3)
    assert [spec.index for spec in trainer._qrm_specs] == [0]
    rewards = calculate(trainer, CHAT_PROMPTS, CHAT_COMPLETIONS)[:, 0]
    reference = score_one_by_one(load_qrm(root), tokenizer, CHAT_PROMPTS, CHAT_COMPLETIONS)
    levels = load_qrm(root).config.quantile_levels
    torch.testing.assert_close(
        rewards, risk.quantile(reference["reward_quantiles"], levels, 0.3), rtol=1e-5, atol=1e-6
    )


# ------------------------------------------------------------------------------------ training, logs


def test_training_logs_the_distribution(one_thread, assets):
    root, tokenizer = assets
    trainer = trainer_for(root, load_qrm(root), beta=0.05, max_steps=3)
    records = record_rewards(trainer)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/qrm-a/risk" in h]
    assert len(logs) == len(records) == 3
    qrm, levels = load_qrm(root), [0.05, 0.10, 0.15, 0.20, 0.25]
    for log, record in zip(logs, records, strict=True):
        reference = score_one_by_one(qrm, tokenizer, record["prompts"], record["completions"])
        utility = risk.exponential_utility(reference["reward_quantiles"], 1.0)
        torch.testing.assert_close(record["rewards"][:, 0], utility, rtol=1e-5, atol=1e-6)
        assert log["rewards/qrm-a/risk"] == pytest.approx(utility.mean().item(), abs=1e-5)
        assert log["rewards/qrm-a/mean"] == pytest.approx(utility.mean().item(), abs=1e-5)  # TRL's own
        assert log["rewards/qrm-a/expectation"] == pytest.approx(reference["logits"].mean().item(), abs=1e-5)
        for tau in levels:
            value = (
                risk.quantile(reference["reward_quantiles"], qrm.config.quantile_levels, tau).mean().item()
            )
            assert log[f"rewards/qrm-a/{level_name(tau)}"] == pytest.approx(value, abs=1e-5)


def test_nan_rewards_are_reported_and_count_as_missing(one_thread, assets, caplog):
    """NaN from the QRM: reported; TRL then treats the reward as missing (None). When no reward function
    can score a batch, every advantage is 0 and the step leaves the policy unchanged."""
    root, tokenizer = assets
    qrm = load_qrm(root)
    poison = tokenizer.get_vocab()["Blu"]  # a token of the third completion only
    with torch.no_grad():
        qrm.model.embed_tokens.weight[poison] = float("nan")
    trainer = trainer_for(root, qrm)
    with caplog.at_level(logging.WARNING, logger="qrm_hf.training.rloo"):
        rewards = calculate(trainer, CHAT_PROMPTS, CHAT_COMPLETIONS)[:, 0]
    assert torch.isnan(rewards).tolist() == [False, False, True, False]
    assert "non-finite exp_utility rewards for 1 of 4 completions" in caplog.text
    assert math.isfinite(metrics_of(trainer)["rewards/qrm-a/q0.05"][-1])  # NaN rows left out of the logs

    # every prompt contains the poisoned token: nothing can be scored, the step changes nothing
    prompts = [[{"role": "user", "content": "Blue"}]] * 2
    trainer = trainer_for(root, qrm, prompts=prompts, max_steps=1)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="qrm_hf.training.rloo"):
        trainer.train()
    assert "non-finite exp_utility rewards for 4 of 4 completions" in caplog.text
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert trainer.state.log_history[0]["rewards/qrm-a/risk"] is None


def test_exp_utility_overflow_is_reported(chat_trainer, assets, caplog):
    """-exp(-lambda q) overflows float32 to -inf for q < -88 / lambda: reported, with the way out."""
    root, tokenizer = assets
    quantiles = score_one_by_one(load_qrm(root), tokenizer, CHAT_PROMPTS, CHAT_COMPLETIONS)[
        "reward_quantiles"
    ]
    # the smallest lambda at which the utility (computed in float64, returned in float32) overflows in some
    # rows but not all: mean_k exp(-lambda q_k) passes float32's largest value near lambda |q_min| = 88 + log K
    for exponent in range(88, 140):
        lam = exponent / quantiles.amin(-1).abs().max().item()
        overflow = torch.isinf(risk.exponential_utility(quantiles, lam))
        if overflow.any():
            break
    assert overflow.any() and not overflow.all()
    chat_trainer.args.risk_lambda = lam
    try:
        with caplog.at_level(logging.WARNING, logger="qrm_hf.training.rloo"):
            rewards = calculate(chat_trainer, CHAT_PROMPTS, CHAT_COMPLETIONS)[:, 0]
    finally:
        chat_trainer.args.risk_lambda = 1.0
    assert torch.isnan(rewards).tolist() == overflow.tolist()
    assert "use risk_measure='certainty_equivalent'" in caplog.text


# ------------------------------------------------------------------------------------------ bandit


def load_bandit():
    spec = importlib.util.spec_from_file_location("risk_bandit", ROOT / "benchmarks" / "risk_bandit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_risk_bandit(one_thread, tmp_path):
    """Risk-neutral RLOO moves the policy toward A (higher mean, heavy left tail), exp_utility toward B
    (slightly lower mean, tight); the logged left-tail quantiles end higher for the risk-aware run."""
    bandit = load_bandit()
    results = bandit.run_bandit(tmp_path, stock=True)
    neutral, aware, stock = results["expectation"], results["exp_utility"], results["stock TRL (expectation)"]
    assert (
        stock["p_a_after"] == neutral["p_a_after"]
    )  # risk_measure="expectation" is stock TRL, step for step
    assert [h["reward"] for h in stock["history"]] == [h["reward"] for h in neutral["history"]]
    assert neutral["p_a_before"] == pytest.approx(0.5, abs=1e-6) and aware["p_a_before"] == pytest.approx(
        0.5, abs=1e-6
    )
    assert neutral["p_a_after"] > 0.8
    assert aware["p_a_after"] < 0.2
    for tau in ("q0.05", "q0.10"):
        assert aware["final"][tau] > neutral["final"][tau] + 1.0
    assert neutral["final"]["expectation"] > aware["final"]["expectation"]
