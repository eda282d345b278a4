"""Risk-aware RLOO: TRL's `RLOOTrainer` with the reward of a Quantile Reward Model taken as a risk
measure of its reward distribution (paper §3.5, §4.3).

    from qrm_hf.training.rloo import RiskAwareRLOOConfig, RiskAwareRLOOTrainer

    args = RiskAwareRLOOConfig(output_dir="rloo", risk_measure="exp_utility", risk_lambda=1.0)
    trainer = RiskAwareRLOOTrainer(model=policy, reward_funcs=qrm, args=args, train_dataset=prompts)

Everything risk-aware lives in `qrm_hf.training.risk_rewards` (`RiskAwareRewardsMixin`, shared with
`RiskAwareGRPOTrainer`); see its docstring for what changes compared with `RLOOTrainer`. A completion
no reward function can score is left out of the leave-one-out baseline and gets advantage 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from trl import RLOOConfig, RLOOTrainer

from .risk_rewards import RiskAwareRewardsArguments, RiskAwareRewardsMixin


@dataclass
class RiskAwareRLOOConfig(RiskAwareRewardsArguments, RLOOConfig):
    r"""[`~trl.RLOOConfig`] with the risk measure applied to the reward distribution of every QRM: the fields
    of [`~qrm_hf.training.risk_rewards.RiskAwareRewardsArguments`] (`risk_measure`, `risk_lambda`,
    `risk_alpha`, `risk_tau`, `log_quantile_levels`)."""


class RiskAwareRLOOTrainer(RiskAwareRewardsMixin, RLOOTrainer):
    """[`~trl.RLOOTrainer`] whose QRM rewards are a risk measure of the QRM's reward distribution.

    Takes the arguments of `RLOOTrainer`, with `args` a [`RiskAwareRLOOConfig`]; see
    [`~qrm_hf.training.risk_rewards.RiskAwareRewardsMixin`].
    """

    config_class = RiskAwareRLOOConfig
    _tag_names = ["trl", "rloo", "qrm-hf", "risk-aware"]


__all__ = ["RiskAwareRLOOConfig", "RiskAwareRLOOTrainer"]
