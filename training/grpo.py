"""Risk-aware GRPO: TRL's `GRPOTrainer` with the reward of a Quantile Reward Model taken as a risk
measure of its reward distribution (the paper's risk-aware RLHF, §3.5, with GRPO in place of RLOO).

    from qrm_hf.training.grpo import RiskAwareGRPOConfig, RiskAwareGRPOTrainer

    args = RiskAwareGRPOConfig(output_dir="grpo", risk_measure="exp_utility", risk_lambda=1.0)
    trainer = RiskAwareGRPOTrainer(model=policy, reward_funcs=qrm, args=args, train_dataset=prompts)

Everything risk-aware lives in `qrm_hf.training.risk_rewards` (`RiskAwareRewardsMixin`, shared with
`RiskAwareRLOOTrainer`); see its docstring for what changes compared with `GRPOTrainer`. GRPO then
normalises the risk rewards within each group of completions (`scale_rewards`), as it does any reward.
"""

from __future__ import annotations

from dataclasses import dataclass

from trl import GRPOConfig, GRPOTrainer

from .risk_rewards import RiskAwareRewardsArguments, RiskAwareRewardsMixin


@dataclass
class RiskAwareGRPOConfig(RiskAwareRewardsArguments, GRPOConfig):
    r"""[`~trl.GRPOConfig`] with the risk measure applied to the reward distribution of every QRM: the fields
    of [`~qrm_hf.training.risk_rewards.RiskAwareRewardsArguments`] (`risk_measure`, `risk_lambda`,
    `risk_alpha`, `risk_tau`, `log_quantile_levels`)."""


class RiskAwareGRPOTrainer(RiskAwareRewardsMixin, GRPOTrainer):
    """[`~trl.GRPOTrainer`] whose QRM rewards are a risk measure of the QRM's reward distribution.

    Takes the arguments of `GRPOTrainer`, with `args` a [`RiskAwareGRPOConfig`]; see
    [`~qrm_hf.training.risk_rewards.RiskAwareRewardsMixin`].
    """

    config_class = RiskAwareGRPOConfig
    _tag_names = ["trl", "grpo", "qrm-hf", "risk-aware"]


__all__ = ["RiskAwareGRPOConfig", "RiskAwareGRPOTrainer"]
