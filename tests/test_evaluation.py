"""Distribution measures of qrm_hf.evaluation, against hand-computed values and independent formulas."""

import math

import numpy as np
import pytest
import torch

from qrm_hf import risk
from qrm_hf.evaluation import crps, interval_coverage, interval_width


def test_crps_is_twice_the_mean_pinball_over_labelled_rows():
    levels = [0.1, 0.5, 0.9]
    labels = np.array([[0.0, 0.5, np.nan], [1.0, np.nan, np.nan], [np.nan, 0.5, np.nan]])
    predictions = np.zeros((3, 3, 3))
    predictions[0, 0] = predictions[1, 0] = [0.2, 0.5, 0.8]
    predictions[0, 1] = [0.5, 0.5, 0.5]
    predictions[2, 0] = 9.0  # its label is missing: must not count
    # attribute 0, y = 0: (1 - tau) * q = .9 * .2, .5 * .5, .1 * .8 = .18, .25, .08 -> mean .17, times 2 = .34;
    #   y = 1 is the mirror image -> .34.  Attribute 1: row 0 is exact (0); row 2, y = .5 above q = 0:
    #   tau * .5 = .05, .25, .45 -> mean .25, times 2 = .5; mean of (0, .5) = .25.  Attribute 2: no label.
    result = crps(labels, predictions, levels)  # no warning for the attribute without labels
    np.testing.assert_allclose(result[:2], [0.34, 0.25])
    assert math.isnan(result[2])


def test_crps_approaches_the_closed_form_for_a_gaussian():
    """CRPS(N(0, 1), y) = y (2 Phi(y) - 1) + 2 phi(y) - 1 / sqrt(pi) (Gneiting & Raftery 2007)."""
    from scipy.stats import norm

    levels = (np.arange(999) + 0.5) / 999
    quantiles = norm.ppf(levels)
    labels = np.array([[0.0], [1.3], [-0.7]])
    predictions = np.broadcast_to(quantiles, (3, 1, levels.size))
    y = labels[:, 0]
    closed_form = y * (2 * norm.cdf(y) - 1) + 2 * norm.pdf(y) - 1 / np.sqrt(np.pi)
    np.testing.assert_allclose(crps(labels, predictions, levels), closed_form.mean(), rtol=1e-3)


def test_interval_ends_are_interpolated_and_clamped_like_risk_quantile():
    levels = [0.1, 0.5, 0.9]
    predictions = np.array([[[2.0, 0.0, 1.0]]])  # unsorted on purpose: read as 0, 1, 2
    # width .4 -> levels .3 and .7: halfway between 0 and 1, and between 1 and 2 -> [.5, 1.5]
    np.testing.assert_allclose(interval_width(predictions, levels, 0.4), [[1.0]])
    np.testing.assert_allclose(interval_width(predictions, levels, 0.8), [[2.0]])  # [.1, .9] exactly
    # .95 asks for levels .025 and .975, outside the estimated range: clamped, not extrapolated
    np.testing.assert_allclose(interval_width(predictions, levels, 0.95), [[2.0]])
    labels = np.array([[0.5], [1.6], [np.nan], [1.0]])  # on the lower end (inside), outside, missing, inside
    repeated = np.repeat(predictions, 4, axis=0)
    np.testing.assert_allclose(interval_coverage(labels, repeated, levels, 0.4), [2 / 3])
    np.testing.assert_allclose(interval_coverage(labels, repeated, levels, 0.8), [1.0])


@pytest.mark.parametrize("width", [0.5, 0.8, 0.9, 0.97])
def test_interval_width_matches_risk_quantile(width):
    rng = np.random.default_rng(0)
    levels = [0.05, 0.2, 0.3, 0.5, 0.9, 0.95]
    predictions = rng.normal(size=(7, 3, len(levels)))
    q = torch.as_tensor(predictions, dtype=torch.float64)
    expected = risk.quantile(q, levels, (1 + width) / 2) - risk.quantile(q, levels, (1 - width) / 2)
    np.testing.assert_allclose(interval_width(predictions, levels, width), expected.numpy(), rtol=1e-12)


def test_coverage_of_a_calibrated_model_is_its_nominal_width():
    rng = np.random.default_rng(1)
    levels = np.linspace(0.05, 0.95, 19)
    from scipy.stats import norm

    scale = rng.uniform(0.5, 2.0, size=(20000, 2))
    predictions = norm.ppf(levels) * scale[:, :, None]
    labels = rng.normal(size=(20000, 2)) * scale
    np.testing.assert_allclose(interval_coverage(labels, predictions, levels, 0.8), [0.8, 0.8], atol=0.01)
    np.testing.assert_allclose(interval_coverage(labels, predictions, levels, 0.5), [0.5, 0.5], atol=0.01)


def test_distribution_measures_reject_bad_input():
    with pytest.raises(ValueError, match="width"):
        interval_width(np.zeros((2, 1, 3)), [0.1, 0.5, 0.9], 1.0)
    with pytest.raises(ValueError, match="levels"):
        interval_width(np.zeros((2, 1, 3)), [0.1, 0.9], 0.5)
    with pytest.raises(ValueError, match="labels"):
        crps(np.zeros((2, 2)), np.zeros((2, 1, 3)), [0.1, 0.5, 0.9])
