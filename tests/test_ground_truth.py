"""The ground-truth study (benchmarks/ground_truth.py): its truth, its measures, and its mechanism at a
small size on synthetic features (the real run, on SmolLM2 features, is `make bench`)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import expon, norm, wasserstein_distance

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("ground_truth", ROOT / "benchmarks" / "ground_truth.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_true_quantiles_match_draws_from_the_truth(study):
    shapes = np.array(["narrow", "wide", "two-humped", "two-humped"])
    scores = np.array([0.2, 0.7, 0.0, 0.9])
    labels = study.draw_labels(np.random.default_rng(0), shapes, scores, 200_000)
    empirical = np.quantile(labels, study.LEVELS, axis=1).T  # [4, K]
    truth = study.true_quantiles(shapes, scores)
    # Between the humps the quantile function is steep: compare where the density is not tiny.
    steep = np.abs(study.LEVELS - 0.5) < 0.06
    np.testing.assert_allclose(truth[:, ~steep], empirical[:, ~steep], atol=3e-3)
    assert (truth[2:, study.LEVELS < 0.5] < 0.4).all() and (truth[2:, study.LEVELS > 0.5] > 0.6).all()


def test_wasserstein_of_quantiles_equals_scipys_between_the_atoms(study):
    rng = np.random.default_rng(1)
    predictions, truth = rng.normal(size=(3, 19)), rng.normal(size=(3, 19))
    expected = [wasserstein_distance(p, t) for p, t in zip(predictions, truth, strict=True)]
    np.testing.assert_allclose(study.wasserstein(predictions, np.sort(truth, axis=-1)), expected)


def test_a_dip_shows_for_two_humps_and_never_for_one(study):
    levels = study.LEVELS
    two_humps = study.true_quantiles(np.array(["two-humped"] * 3), np.array([0.0, 0.5, 1.0]))
    one_hump = np.stack(
        [norm.ppf(levels), 0.1 * norm.ppf(levels) + 3, expon.ppf(levels), -expon.ppf(levels), np.sqrt(levels)]
    )
    assert study.has_dip(two_humps).all()
    assert not study.has_dip(one_hump).any()
    assert not study.has_dip(study.true_quantiles(np.array(["narrow", "wide"]), np.array([0.3, 0.6]))).any()


def test_qrm_recovers_two_humps_that_point_and_gaussian_baselines_cannot(study):
    """Features that carry the shape and the length score linearly: the quantile heads can represent the
    truth, a Gaussian or a fixed residual spread cannot represent two humps."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 2)  # 60 prompts, 2 responses each
    shapes = np.array(study.SHAPES)[groups % 3]
    scores = rng.uniform(0, 1, len(groups))
    one_hot = (shapes[:, None] == np.array(study.SHAPES)).astype(float)
    X = np.column_stack([one_hot, one_hot * scores[:, None], 0.01 * rng.normal(size=(len(groups), 2))])
    results = study.run_study(X, shapes, scores, groups, repetitions=1, annotators=8)
    qrm, ridge, gaussian = (
        results[name]["two-humped"]
        for name in ("QRM (alpha 0.003)", "ridge + residual quantiles", "heteroscedastic Gaussian")
    )
    assert qrm["w1"] <= 0.75 * min(ridge["w1"], gaussian["w1"])
    assert qrm["dip"] >= 0.8 and gaussian["dip"] == 0
    assert abs(qrm["coverage80"] - 0.8) < 0.1
    ratio, met = study.verdict(results)
    assert met and ratio == pytest.approx(qrm["w1"] / min(ridge["w1"], gaussian["w1"]))


def test_epistemic_spread_finds_uncovered_responses_and_aleatoric_width_two_humps(study):
    """Features that carry the shape and length linearly plus small nuisance directions; the uncovered
    responses (a fifth of the prompts, every shape) lie further out along the nuisance directions, where
    training never reached. The members (bootstrap refits) disagree there; their combined width tells two
    humps, not novelty. Divided by the width, the spread loses what label noise adds to it."""
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(90), 2)  # 90 prompts, 2 responses each
    shapes = np.array(study.SHAPES)[groups % 3]
    scores = rng.uniform(0, 1, len(groups))
    one_hot = (shapes[:, None] == np.array(study.SHAPES)).astype(float)
    uncovered = groups >= 72
    nuisance = rng.normal(size=(len(groups), 10)) * np.where(uncovered, 1.5, 0.3)[:, None]
    X = np.column_stack([one_hot, one_hot * scores[:, None], nuisance])
    aurocs = study.run_epistemic_study(
        X, shapes, scores, groups, members=8, annotators=10, uncovered=uncovered
    )
    epistemic, relative, aleatoric = (
        aurocs[name] for name in ("epistemic spread", "relative epistemic spread", "aleatoric width")
    )
    assert epistemic["uncovered"] >= 0.8 and aleatoric["two-humped"] >= 0.8
    assert epistemic["two-humped"] <= 0.65 and aleatoric["uncovered"] <= 0.65
    assert relative["uncovered"] >= 0.8 and relative["two-humped"] <= 0.5
    assert study.epistemic_verdict(aurocs)
