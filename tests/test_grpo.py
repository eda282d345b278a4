"""`RiskAwareGRPOTrainer` / `RiskAwareGRPOConfig`: the risk-aware rewards mixin of
`RiskAwareRLOOTrainer` on TRL's `GRPOTrainer`.

The reward mechanics are tested once, in `test_rloo.py`; here: the GRPO config, the rewards GRPO gets
(against QRM outputs computed one text at a time), that the QRM is reached through hooks that leave
`reward_funcs` alone, per-QRM logs while training, and the risk bandit with GRPO. The helpers and
fixtures are those of `test_rloo.py` / `test_trl.py`; stock `GRPOTrainer` with a QRM is in `test_trl.py`.
"""

import pytest
import torch
from test_rloo import (
    CHAT_COMPLETIONS,
    assets,  # noqa: F401  (fixture)
    calculate,
    config_values,
    load_bandit,
    load_qrm,
    risk_of,
    score_one_by_one,
    trainer_for,
)
from test_trl import CHAT_PROMPTS, record_rewards
from trl import GRPOConfig, GRPOTrainer

from qrm_hf import risk
from qrm_hf.training.grpo import RiskAwareGRPOConfig, RiskAwareGRPOTrainer
from qrm_hf.training.rloo import RiskAwareRLOOConfig

RISK_FIELDS = ("risk_measure", "risk_lambda", "risk_alpha", "risk_tau", "log_quantile_levels")


def grpo_trainer(root, reward_funcs, **overrides):
    return trainer_for(root, reward_funcs, trainer_cls=RiskAwareGRPOTrainer, **overrides)


def test_config_is_grpos_with_the_risk_fields_of_rloo(tmp_path):
    grpo = RiskAwareGRPOConfig(**config_values(tmp_path))
    rloo = RiskAwareRLOOConfig(**config_values(tmp_path))
    assert isinstance(grpo, GRPOConfig) and not isinstance(grpo, RiskAwareRLOOConfig)
    assert [getattr(grpo, f) for f in RISK_FIELDS] == [getattr(rloo, f) for f in RISK_FIELDS]
    assert grpo.loss_type == GRPOConfig(**config_values(tmp_path)).loss_type  # GRPO's own fields untouched
    for overrides, match in (
        (dict(risk_measure="variance"), "risk_measure"),
        (dict(risk_measure="quantile:1.5"), "risk_measure"),
        (dict(risk_alpha=0.0), "risk_alpha"),
    ):
        with pytest.raises(ValueError, match=match):
            RiskAwareGRPOConfig(**config_values(tmp_path, **overrides))
    measure = RiskAwareGRPOConfig(**config_values(tmp_path, risk_measure="quantile:0.3")).parse_risk_measure()
    assert (measure.aleatoric.name, measure.values) == (
        "quantile",
        {"tau": 0.3},
    )  # the spec's value wins over risk_tau


def test_args_must_be_a_risk_aware_grpo_config(one_thread, assets):  # noqa: F811
    root, _ = assets
    with pytest.raises(TypeError, match="RiskAwareGRPOConfig"):
        RiskAwareGRPOTrainer(
            model=str(root / "policy"),
            reward_funcs=load_qrm(root),
            args=RiskAwareRLOOConfig(**config_values(root)),
        )


@pytest.mark.parametrize(
    "spec, measure, parameters",
    [
        ("exp_utility", "exp_utility", {}),
        ("cvar:0.5", "cvar", dict(alpha=0.5)),
        ("quantile", "quantile", dict(tau=0.3)),  # from risk_tau
        ("expectation", "expectation", {}),
    ],
)
def test_grpo_rewards_are_the_risk_measure(one_thread, assets, spec, measure, parameters):  # noqa: F811
    root, tokenizer = assets
    tau = {"risk_tau": 0.3} if measure == "quantile" else {}  # a field the measure does not use is refused
    trainer = grpo_trainer(root, load_qrm(root), risk_measure=spec, **tau)
    rewards = calculate(trainer, CHAT_PROMPTS, CHAT_COMPLETIONS)[:, 0]
    reference = score_one_by_one(load_qrm(root), tokenizer, CHAT_PROMPTS, CHAT_COMPLETIONS)
    levels = load_qrm(root).config.quantile_levels
    expected = risk_of(measure, reference["reward_quantiles"], reference["logits"], levels, **parameters)
    torch.testing.assert_close(rewards, expected, rtol=1e-5, atol=1e-6)


def test_the_qrm_is_left_as_it_was(one_thread, assets):  # noqa: F811
    """`reward_funcs` keeps the QRM itself; the hooks live for one call only, also when the call fails."""
    root, tokenizer = assets
    qrm = load_qrm(root)
    trainer = grpo_trainer(root, qrm, risk_measure="cvar")
    calculate(trainer, CHAT_PROMPTS, CHAT_COMPLETIONS)
    assert trainer.reward_funcs == [qrm]
    assert not qrm._forward_hooks and not qrm._forward_pre_hooks
    trainer.chat_template_kwargs = {"chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}
    with pytest.raises(ValueError, match="is not among the prompt tokens"):
        calculate(trainer, CHAT_PROMPTS, CHAT_COMPLETIONS)
    assert not qrm._forward_hooks and not qrm._forward_pre_hooks
    text = tokenizer.apply_chat_template(CHAT_PROMPTS[0] + CHAT_COMPLETIONS[0], tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():  # called directly, the QRM gives its expected reward again
        output = qrm(**ids)
    torch.testing.assert_close(output.logits[:, 0], output.reward_quantiles.mean(-1), rtol=1e-5, atol=1e-6)


def test_training_logs_each_qrm(one_thread, assets):  # noqa: F811
    """Two QRMs and a Python reward function, two GRPO steps: TRL got the risk rewards, and each QRM's
    expectation, risk and left-tail quantiles are logged under its own name."""
    root, tokenizer = assets

    def length_reward(completions, **kwargs):
        return [float(len(c[0]["content"])) for c in completions]

    funcs = [load_qrm(root, "qrm-a"), length_reward, load_qrm(root, "qrm-b")]
    trainer = grpo_trainer(root, funcs, risk_measure="certainty_equivalent", risk_lambda=2.0, beta=0.05)
    records = record_rewards(trainer)
    trainer.train()
    assert len(records) == 2
    for column, name in ((0, "qrm-a"), (2, "qrm-b")):
        qrm = load_qrm(root, name)
        logs = [h for h in trainer.state.log_history if f"rewards/{name}/risk" in h]
        assert len(logs) == 2
        for log, record in zip(logs, records, strict=True):
            reference = score_one_by_one(qrm, tokenizer, record["prompts"], record["completions"])
            quantiles = reference["reward_quantiles"]
            reward = risk.certainty_equivalent(quantiles, 2.0)
            torch.testing.assert_close(record["rewards"][:, column], reward, rtol=1e-5, atol=1e-6)
            assert log[f"rewards/{name}/risk"] == pytest.approx(reward.mean().item(), abs=1e-5)
            assert log[f"rewards/{name}/mean"] == pytest.approx(reward.mean().item(), abs=1e-5)  # TRL's own
            assert log[f"rewards/{name}/expectation"] == pytest.approx(
                reference["logits"].mean().item(), abs=1e-5
            )
            low_tail = risk.quantile(quantiles, qrm.config.quantile_levels, 0.05).mean().item()
            assert log[f"rewards/{name}/q0.05"] == pytest.approx(low_tail, abs=1e-5)
    assert not any(
        key.startswith("rewards/length_reward/q") for log in trainer.state.log_history for key in log
    )


def test_risk_bandit_with_grpo(one_thread, tmp_path):  # noqa: F811
    """The mechanism of the RLOO bandit under GRPO: risk-neutral GRPO moves the policy toward A (higher
    mean, heavy left tail) and its logged left tail falls; exp_utility moves it toward B and its left tail
    rises; stock GRPOTrainer follows the risk-neutral run step for step."""
    bandit = load_bandit()
    results = bandit.run_bandit(tmp_path, stock=True, algorithm="grpo")
    neutral, aware, stock = results["expectation"], results["exp_utility"], results["stock TRL (expectation)"]
    assert [h["reward"] for h in stock["history"]] == [h["reward"] for h in neutral["history"]]
    assert stock["p_a_after"] == neutral["p_a_after"]
    assert neutral["p_a_before"] == pytest.approx(0.5, abs=1e-6) == aware["p_a_before"]
    assert neutral["p_a_after"] > 0.8 and aware["p_a_after"] < 0.2
    for tau in ("q0.05", "q0.10"):
        assert neutral["final"][tau] < neutral["first"][tau]  # the expectation-maximiser's left tail falls
        assert aware["final"][tau] > aware["first"][tau]  # the risk-aware one's rises
        assert aware["final"][tau] > neutral["final"][tau] + 1.0
    assert neutral["final"]["expectation"] > aware["final"]["expectation"]


def test_stock_grpo_is_the_expectation(one_thread, assets):  # noqa: F811
    """risk_measure="expectation" gives exactly stock GRPOTrainer's rewards with the same QRM."""
    root, _ = assets
    qrm = load_qrm(root)
    stock = calculate(trainer_for(root, qrm, trainer_cls=GRPOTrainer), CHAT_PROMPTS, CHAT_COMPLETIONS)
    aware = calculate(grpo_trainer(root, qrm, risk_measure="expectation"), CHAT_PROMPTS, CHAT_COMPLETIONS)
    torch.testing.assert_close(aware, stock, rtol=0, atol=0)
