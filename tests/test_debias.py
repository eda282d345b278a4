"""Verbosity debiasing (ArmoRM's, training/debias.py): the penalty chosen per attribute, the transform T it
builds, and a model that applies T at every quantile level."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from conftest import make_qrm
from qrm_hf.training.debias import (
    ARMORM_PENALTY_GRID,
    VerbosityDebiaser,
    debiased_rewards,
)
from qrm_hf.training.rewards import expected_rewards

NAMES = ["helpfulness", "correctness", "independent", "concise", "length-lover", "helpsteer-verbosity"]
SLOPES = {"helpfulness": 0.5, "correctness": 0.2, "independent": 0.0, "concise": -0.4, "length-lover": 3.0}


def synthetic_rewards(n: int = 4000, seed: int = 0) -> np.ndarray:
    """r_j = a_j * r_verbosity + noise (noise 0.1 for the length lover, 1 otherwise), r_verbosity last."""
    rng = np.random.default_rng(seed)
    verbosity = rng.normal(size=n)
    columns = [
        SLOPES[name] * verbosity + (0.1 if name == "length-lover" else 1.0) * rng.normal(size=n)
        for name in NAMES[:-1]
    ]
    return np.stack([*columns, verbosity], axis=1)


def spearman(a, b) -> float:
    return float(spearmanr(a, b).statistic)


@pytest.fixture(scope="module")
def fitted():
    rewards = synthetic_rewards()
    return VerbosityDebiaser(NAMES).fit(rewards), rewards


def test_default_grid_is_armorm_and_verbosity_found_by_name(fitted):
    debiaser, _ = fitted
    # armo-rm/stage-2_train.py: 0, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, then 0.05 steps to 0.95
    expected = [0, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125] + [round(0.15 + 0.05 * i, 3) for i in range(17)]
    np.testing.assert_allclose(ARMORM_PENALTY_GRID, expected)
    assert len(ARMORM_PENALTY_GRID) == 24
    np.testing.assert_array_equal(debiaser.penalty_grid_, ARMORM_PENALTY_GRID)
    assert debiaser.threshold == 0.03
    assert debiaser.verbosity_index_ == len(NAMES) - 1


def test_chosen_penalty_is_the_smallest_grid_value_under_the_threshold(fitted):
    debiaser, rewards = fitted
    grid, v = debiaser.penalty_grid_, debiaser.verbosity_index_
    for name in ("helpfulness", "correctness"):
        j = NAMES.index(name)
        p = debiaser.penalties_[j]
        assert debiaser.debiased_[j]
        assert SLOPES[name] - 0.1 <= p <= SLOPES[name] + 0.05  # the grid's answer is near the true slope
        assert spearman(rewards[:, j] - p * rewards[:, v], rewards[:, v]) <= 0.03
        for smaller in grid[grid < p]:  # no smaller grid value would do
            assert spearman(rewards[:, j] - smaller * rewards[:, v], rewards[:, v]) > 0.03
        column = debiaser.grid_correlations_[:, j]  # the search's trace: above, at most, not computed
        assert np.all(column[grid < p] > 0.03) and column[grid == p][0] <= 0.03
        assert np.all(np.isnan(column[grid > p]))
        assert debiaser.correlations_[j] == pytest.approx(
            spearman(rewards[:, j] - p * rewards[:, v], rewards[:, v])
        )
        assert debiaser.correlations_before_[j] == pytest.approx(spearman(rewards[:, j], rewards[:, v]))


def test_uncorrelated_and_anticorrelated_attributes_get_no_penalty(fitted):
    debiaser, _ = fitted
    for name in ("independent", "concise"):
        j = NAMES.index(name)
        assert debiaser.penalties_[j] == 0.0
        assert debiaser.correlations_[j] <= 0.03
    assert debiaser.correlations_[NAMES.index("concise")] < -0.3


def test_attribute_never_under_the_threshold_keeps_one(fitted):
    debiaser, rewards = fitted
    j, v = NAMES.index("length-lover"), debiaser.verbosity_index_
    assert not debiaser.debiased_[j]
    assert debiaser.penalties_[j] == 1.0
    assert np.all(debiaser.grid_correlations_[:, j] > 0.03)
    # the reported correlation is the one of the applied penalty, r_j - 1 * r_v
    assert debiaser.correlations_[j] == pytest.approx(spearman(rewards[:, j] - rewards[:, v], rewards[:, v]))


def test_verbosity_keeps_one_and_is_zeroed(fitted):
    debiaser, rewards = fitted
    v = debiaser.verbosity_index_
    assert debiaser.penalties_[v] == 1.0
    assert not debiaser.debiased_[v]
    assert np.isnan(debiaser.correlations_[v])
    expected = np.eye(len(NAMES))
    expected[v] -= debiaser.penalties_
    np.testing.assert_array_equal(debiaser.transform_, expected)
    assert debiaser.transform_.dtype == np.float64
    assert debiaser.transform_[v, v] == 0.0
    np.testing.assert_array_equal(debiaser.transform(rewards)[:, v], 0.0)


def test_transform_of_rewards_is_r_minus_p_rv(fitted):
    debiaser, rewards = fitted
    v = debiaser.verbosity_index_
    expected = rewards - debiaser.penalties_ * rewards[:, [v]]
    np.testing.assert_allclose(debiased_rewards(rewards, debiaser.transform_), expected, atol=1e-12)
    np.testing.assert_allclose(debiaser.fit_transform(rewards), expected, atol=1e-12)
    as_torch = debiased_rewards(torch.from_numpy(rewards).float(), debiaser.transform_)
    assert as_torch.dtype == torch.float32
    np.testing.assert_allclose(as_torch.numpy(), expected, atol=1e-5)


def test_transform_applies_at_every_quantile_level(fitted):
    debiaser, _ = fitted
    p, v, t = debiaser.penalties_, debiaser.verbosity_index_, debiaser.transform_
    q = np.random.default_rng(1).normal(size=(50, len(NAMES), 7)).cumsum(-1)  # [N, M, K]
    moved = np.einsum("nmk,mj->njk", q, t)  # T at every level, as the model applies it
    assert moved.shape == q.shape
    for k in range(q.shape[-1]):
        np.testing.assert_allclose(moved[:, :, k], q[:, :, k] - p * q[:, [v], k], atol=1e-12)
        np.testing.assert_allclose(moved[:, :, k], q[:, :, k] @ t, atol=1e-12)  # Q^T . T per level
    # the mean over levels (the expected reward) moves the same way
    np.testing.assert_allclose(moved.mean(-1), debiased_rewards(q.mean(-1), t), atol=1e-12)


def test_model_with_the_fitted_transform_debiases_every_level():
    names = ["helpfulness", "correctness", "helpsteer-verbosity"]
    qrm = make_qrm(attribute_names=names, monotone_quantiles=False)
    m, k, h = qrm.config.num_attributes, qrm.config.num_quantiles, qrm.config.hidden_size
    weight = qrm.regression_layer.weight.view(m, k, h).detach()
    x = torch.randn(400, h, generator=torch.Generator().manual_seed(0))
    raw = torch.einsum("nh,mkh->nmk", x, weight)  # [N, M, K], identity transform
    rewards = expected_rewards(weight, torch.eye(m), x)
    debiaser = VerbosityDebiaser(names).fit(rewards)
    with torch.no_grad():
        qrm.reward_transform_matrix.copy_(torch.as_tensor(debiaser.transform_))
        out = qrm.score_embeddings(x, x)
    p = torch.as_tensor(debiaser.penalties_, dtype=torch.float32)
    expected = raw - p[None, :, None] * raw[:, 2:3, :]
    torch.testing.assert_close(out.attribute_quantiles, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        out.rewards, expected_rewards(weight, qrm.reward_transform_matrix, x), atol=1e-5, rtol=1e-5
    )
    assert torch.all(out.attribute_quantiles[:, 2] == 0)


def test_explicit_verbosity_attribute_custom_grid_and_pairs():
    rewards = synthetic_rewards(n=600)
    names = ["a", "b", "c", "d", "e", "length"]
    debiaser = VerbosityDebiaser(names, verbosity_attribute="length", penalties=[0.6, 0.0, 0.3, 0.3]).fit(
        rewards.reshape(300, 2, 6)  # preference pairs [N, 2, M]: both responses are reference responses
    )
    assert debiaser.n_samples_fit_ == 600
    np.testing.assert_array_equal(debiaser.penalty_grid_, [0.0, 0.3, 0.6])
    assert set(debiaser.penalties_) <= {0.0, 0.3, 0.6, 1.0}
    assert debiaser.penalties_[5] == 1.0 and debiaser.penalties_[4] == 1.0
    assert "length" in debiaser.report() and "zeroed" in debiaser.report()
    # torch input gives the same fit
    again = VerbosityDebiaser(names, verbosity_attribute="length", penalties=[0.6, 0.0, 0.3]).fit(
        torch.from_numpy(rewards)
    )
    np.testing.assert_array_equal(again.penalties_, debiaser.penalties_)


def test_constant_debiased_column_counts_as_uncorrelated():
    rng = np.random.default_rng(0)
    verbosity = rng.normal(size=100)
    rewards = np.stack([0.25 * verbosity + 2.0, np.full(100, 0.5), verbosity], axis=1)
    debiaser = VerbosityDebiaser(["exact", "flat", "verbosity"], penalties=[0, 0.25, 0.5]).fit(rewards)
    assert debiaser.penalties_.tolist() == [0.25, 0.0, 1.0]


@pytest.mark.parametrize(
    ("kwargs", "rewards", "message"),
    [
        (dict(verbosity_attribute="length"), np.zeros((5, 3)), "Unknown verbosity attribute 'length'"),
        (
            dict(attribute_names=["a", "b", "c"]),
            np.zeros((5, 3)),
            "Cannot tell the verbosity attribute: none",
        ),
        (dict(attribute_names=["verbosity", "x-verbosity"]), np.zeros((5, 2)), "several"),
        (dict(attribute_names=["a", "a", "verbosity"]), np.zeros((5, 3)), "duplicates"),
        (dict(), np.zeros((5, 4)), r"shape \[N, 3\]"),
        (dict(), np.zeros(3), r"shape \[N, 3\]"),
        (dict(), np.arange(6.0).reshape(2, 3), "at least 3 reference responses"),
        (
            dict(),
            np.array([[0, 1, 2], [np.nan, 1, 3], [0, 2, 1.0]]),
            r"NaN/inf values \(attributes \['a'\]\)",
        ),
        (dict(), np.array([[0, 1, 2], [1, 1, 2], [0, 2, 2.0]]), "is constant"),
        (dict(penalties=[]), np.zeros((5, 3)), "grid is empty"),
        (dict(penalties=[0, -0.1]), np.zeros((5, 3)), "finite and >= 0"),
    ],
)
def test_clear_errors(kwargs, rewards, message):
    params = dict(attribute_names=["a", "b", "verbosity"])
    params.update(kwargs)
    with pytest.raises(ValueError, match=message):
        VerbosityDebiaser(**params).fit(rewards)


def test_transform_shape_errors_and_unfitted():
    with pytest.raises(ValueError, match="3 attributes, the transform is for 2"):
        debiased_rewards(np.zeros((4, 3)), np.eye(2))
    with pytest.raises(ValueError, match="square"):
        debiased_rewards(torch.zeros(4, 3), torch.zeros(3, 2))
    with pytest.raises(RuntimeError, match="not fitted"):
        VerbosityDebiaser(["a", "verbosity"]).transform(np.zeros((3, 2)))
