"""Behaviour of the risk measures in `qrm_hf.risk` (docs/design.md §1), checked against independent computations.

The K quantile estimates are a discrete distribution with K atoms of mass 1/K each; `quantile` alone
uses the levels as positions and interpolates linearly between them (clamping outside them).
"""

import math

import numpy as np
import pytest
import torch

from qrm_hf import risk

LEVELS = [0.05 * k for k in range(1, 20)]  # the paper's 19 levels
K = len(LEVELS)


def random_quantiles(*shape, seed=0, dtype=torch.float64, sort=False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*shape, generator=g, dtype=dtype) * 2 + 1
    return q.sort(-1).values if sort else q


# --- expectation, exponential utility, variance -------------------------------------------------------


def test_expectation_is_the_mean_of_the_estimates():
    q = random_quantiles(6, K)
    torch.testing.assert_close(risk.expectation(q), torch.from_numpy(q.numpy().mean(-1)))
    assert risk.expectation(q).shape == (6,)


def test_lists_and_integer_tensors_become_default_float():
    assert risk.expectation([1, 2, 6]).dtype == torch.get_default_dtype()
    assert risk.expectation([1, 2, 6]).item() == 3.0
    assert risk.variance(torch.tensor([[1, 3]])).tolist() == [1.0]


def test_exponential_utility_matches_independent_computation():
    q = random_quantiles(5, K)
    for lam in (0.01, 0.5, 1.0, 3.0):
        expected = np.mean(-np.exp(-lam * q.numpy()), axis=-1)
        np.testing.assert_allclose(risk.exponential_utility(q, lam).numpy(), expected, rtol=1e-12)


def test_exponential_utility_prefers_less_spread_at_equal_mean():
    narrow = torch.tensor([0.9, 1.0, 1.1], dtype=torch.float64)
    wide = torch.tensor([-1.0, 1.0, 3.0], dtype=torch.float64)  # same mean, heavier left tail
    assert risk.expectation(narrow) == risk.expectation(wide)
    assert risk.exponential_utility(narrow, 1.0) > risk.exponential_utility(wide, 1.0)
    assert risk.certainty_equivalent(narrow, 1.0) > risk.certainty_equivalent(wide, 1.0)


def test_lam_accepts_one_element_tensor():
    q = random_quantiles(3, K)
    torch.testing.assert_close(
        risk.exponential_utility(q, torch.tensor(0.7)), risk.exponential_utility(q, 0.7)
    )
    torch.testing.assert_close(
        risk.certainty_equivalent(q, torch.tensor([0.7])), risk.certainty_equivalent(q, 0.7)
    )


def test_variance_matches_numpy_population_variance():
    q = random_quantiles(4, 3, K)
    np.testing.assert_allclose(risk.variance(q).numpy(), np.var(q.numpy(), axis=-1), rtol=1e-12)
    assert risk.variance(torch.full((2, K), 3.7)).abs().max() == 0
    assert risk.variance(torch.tensor([[5.0], [-1.0]])).tolist() == [0.0, 0.0]  # K = 1


# --- certainty equivalent ------------------------------------------------------------------------------


def test_certainty_equivalent_is_the_sure_reward_with_the_same_utility():
    q = random_quantiles(8, K)
    for lam in (0.1, 1.0, 2.5):
        utility = risk.exponential_utility(q, lam)
        ce = risk.certainty_equivalent(q, lam)
        torch.testing.assert_close(-torch.exp(-lam * ce), utility, rtol=1e-12, atol=0)
        # and solved for c independently: -exp(-lam c) = U  <=>  c = -log(-U) / lam
        np.testing.assert_allclose(ce.numpy(), -np.log(-utility.numpy()) / lam, rtol=1e-12, atol=1e-12)


def test_certainty_equivalent_ranks_like_the_utility():
    q = random_quantiles(40, K, seed=1)
    for lam in (0.2, 1.0, 4.0):
        utility = risk.exponential_utility(q, lam)
        ce = risk.certainty_equivalent(q, lam)
        assert torch.equal(utility.argsort(), ce.argsort())
        pairwise_u = torch.sign(utility[:, None] - utility[None, :])
        pairwise_ce = torch.sign(ce[:, None] - ce[None, :])
        assert torch.equal(pairwise_u, pairwise_ce)


def test_certainty_equivalent_lies_between_min_and_mean_and_has_the_right_limits():
    q = random_quantiles(6, K, seed=2)
    mean, smallest = q.mean(-1), q.amin(-1)
    for lam in (1e-3, 0.3, 1.0, 30.0):
        ce = risk.certainty_equivalent(q, lam)
        assert (ce >= smallest - 1e-12).all() and (ce <= mean + 1e-12).all()
    # lam -> 0+: CE = mean - lam/2 var + O(lam^2), computed without cancellation
    torch.testing.assert_close(risk.certainty_equivalent(q, 1e-10), mean, rtol=0, atol=1e-9)
    torch.testing.assert_close(risk.certainty_equivalent(q, 1e-14), mean, rtol=0, atol=1e-12)
    # lam -> inf: CE = min + log(K) / lam for a unique minimum
    torch.testing.assert_close(risk.certainty_equivalent(q, 1e6), smallest, rtol=0, atol=1e-5)
    gap = risk.certainty_equivalent(q, 1e3) - smallest  # in [0, log(K) / lam], the bound reached for one atom
    assert (gap >= 0).all() and (gap <= math.log(K) / 1e3 + 1e-12).all()
    # monotone: more risk aversion never raises the certainty equivalent
    values = torch.stack([risk.certainty_equivalent(q, lam) for lam in (0.01, 0.1, 1.0, 10.0, 100.0)])
    assert (values[1:] <= values[:-1] + 1e-12).all()


def test_certainty_equivalent_is_translation_equivariant():
    q = random_quantiles(5, K, seed=3)
    for lam in (0.5, 2.0):
        for shift in (-100.0, 3.25, 1e3):
            torch.testing.assert_close(
                risk.certainty_equivalent(q + shift, lam), risk.certainty_equivalent(q, lam) + shift
            )
    # and positively homogeneous: CE_lam(s q) = s CE_{s lam}(q)
    torch.testing.assert_close(risk.certainty_equivalent(3 * q, 0.5), 3 * risk.certainty_equivalent(q, 1.5))


def test_certainty_equivalent_does_not_overflow_where_the_utility_does():
    q = torch.tensor([[-1000.0, 0.0, 1000.0], [7.0, 7.0, 7.0]])  # float32
    ce = risk.certainty_equivalent(q, 1.0)
    assert torch.isfinite(ce).all()
    torch.testing.assert_close(ce, torch.tensor([-1000.0 + math.log(3.0), 7.0]))
    assert risk.exponential_utility(q, 1.0)[0] == -math.inf  # documented overflow of the raw utility
    # equal atoms: the certainty equivalent is that value for any risk aversion
    for lam in (1e-8, 1.0, 1e4):
        assert risk.certainty_equivalent(torch.full((K,), -2.5, dtype=torch.float64), lam).item() == -2.5


# --- CVaR ----------------------------------------------------------------------------------------------


def cvar_by_integration(q: np.ndarray, alpha: float, cells: int) -> float:
    """(1/alpha) * integral_0^alpha F^{-1}(u) du, F^{-1} the step quantile function of K atoms of 1/K,
    by the midpoint rule on `cells` cells (exact when cells is a multiple of K and alpha * cells an integer)."""
    atoms = np.sort(q)
    u = (np.arange(cells) + 0.5) / cells
    inside = u < alpha
    return float(atoms[np.floor(u[inside] * len(atoms)).astype(int)].mean())


def test_cvar_with_alpha_one_is_the_expectation():
    q = random_quantiles(4, K)
    torch.testing.assert_close(risk.cvar(q, LEVELS, 1.0), risk.expectation(q))


def test_cvar_with_alpha_one_over_k_is_the_smallest_estimate_even_if_estimates_cross():
    q = random_quantiles(4, K)  # unsorted: the estimates cross
    torch.testing.assert_close(risk.cvar(q, LEVELS, 1 / K), q.amin(-1))
    torch.testing.assert_close(risk.cvar(q, LEVELS, 1e-6), q.amin(-1))  # alpha -> 0+


def test_cvar_whole_atoms_are_the_mean_of_the_smallest_ones():
    q = torch.arange(10.0, 0.0, -1.0, dtype=torch.float64)  # 10 .. 1, reversed
    levels = [(k + 0.5) / 10 for k in range(10)]
    assert risk.cvar(q, levels, 0.3).item() == 2.0  # 0.3 * 10 = 3.0000000000000004: exactly 3 atoms
    assert risk.cvar(q, levels, 0.5).item() == 3.0
    assert risk.cvar(q, levels, 0.25).item() == pytest.approx((1 + 2 + 0.5 * 3) / 2.5, abs=1e-15)


@pytest.mark.parametrize("alpha", [0.0875, 0.25, 0.3, 0.5, 0.6125, 0.8, 0.9875])
def test_cvar_fractional_alpha_mixes_atoms_by_their_mass(alpha):
    q = random_quantiles(3, K, seed=4)
    cells = K * 8000  # alpha * cells is an integer for every alpha above
    expected = [cvar_by_integration(row, alpha, cells) for row in q.numpy()]
    np.testing.assert_allclose(risk.cvar(q, LEVELS, alpha).numpy(), expected, rtol=1e-10, atol=1e-10)


def test_cvar_is_monotone_in_alpha_and_bounded_by_min_and_mean():
    q = random_quantiles(5, K, seed=5)
    alphas = np.linspace(0.01, 1.0, 60)
    values = torch.stack([risk.cvar(q, LEVELS, float(alpha)) for alpha in alphas])  # [A, 5]
    assert (values[1:] >= values[:-1] - 1e-12).all()
    assert (values >= q.amin(-1) - 1e-12).all() and (values <= q.mean(-1) + 1e-12).all()


def test_cvar_weights_do_not_depend_on_the_levels():
    q = random_quantiles(3, 4)
    torch.testing.assert_close(
        risk.cvar(q, [0.2, 0.4, 0.6, 0.8], 0.4), risk.cvar(q, torch.tensor([0.1, 0.5, 0.7, 0.99]), 0.4)
    )


# --- quantile ------------------------------------------------------------------------------------------


def test_quantile_hits_the_estimates_at_the_levels():
    q = random_quantiles(4, K, sort=True)
    for k, level in enumerate(LEVELS):
        torch.testing.assert_close(risk.quantile(q, LEVELS, level), q[:, k], rtol=0, atol=1e-12)


def test_quantile_interpolates_linearly_between_levels():
    q = random_quantiles(3, K, seed=6, sort=True)
    taus = np.linspace(LEVELS[0], LEVELS[-1], 101)
    for row in range(3):
        expected = np.interp(taus, LEVELS, q[row].numpy())
        got = [risk.quantile(q[row], LEVELS, float(tau)).item() for tau in taus]
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    # a hand-checked value: a quarter of the way from level 0.25 to level 0.5
    assert risk.quantile(torch.tensor([0.0, 4.0, 8.0]), [0.0, 0.25, 0.5], 0.3125).item() == pytest.approx(5.0)


def test_quantile_clamps_outside_the_levels():
    q = random_quantiles(2, K, sort=True)
    for tau in (0.0, 0.01, LEVELS[0] - 1e-9):
        torch.testing.assert_close(risk.quantile(q, LEVELS, tau), q[:, 0])
    for tau in (1.0, 0.99, LEVELS[-1] + 1e-9):
        torch.testing.assert_close(risk.quantile(q, LEVELS, tau), q[:, -1])


def test_quantile_sorts_crossing_estimates_first():
    q = torch.tensor([3.0, 1.0, 2.0])
    assert risk.quantile(q, [0.25, 0.5, 0.75], 0.25).item() == 1.0
    assert risk.quantile(q, [0.25, 0.5, 0.75], 0.625).item() == 2.5
    assert q.tolist() == [3.0, 1.0, 2.0]  # input untouched


def test_quantile_tau_tensor_broadcasts_with_the_batch():
    q = random_quantiles(4, K, seed=7, sort=True)
    per_row = torch.tensor([0.1, 0.33, 0.5, 0.9], dtype=torch.float64)
    got = risk.quantile(q, LEVELS, per_row)
    assert got.shape == (4,)
    for row in range(4):
        assert got[row].item() == pytest.approx(
            np.interp(per_row[row].item(), LEVELS, q[row].numpy()), abs=1e-12
        )
    grid = torch.tensor([[0.1], [0.5], [0.77]])  # L levels of every row -> [L, B]
    got = risk.quantile(q, LEVELS, grid)
    assert got.shape == (3, 4)
    torch.testing.assert_close(got[1], q[:, LEVELS.index(0.5)], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="does not broadcast"):
        risk.quantile(q, LEVELS, torch.full((3,), 0.5))


def test_quantile_keeps_full_precision_of_python_float_levels_and_tau():
    # Python floats must not pass through float32 on their way to a float64 computation
    q = torch.tensor([0.0, 1e8], dtype=torch.float64)
    assert risk.quantile(q, [0.1, 0.9], 0.3).item() == pytest.approx(2.5e7, rel=1e-14)


def test_quantile_in_bfloat16_with_levels_closer_than_its_resolution():
    q = torch.tensor([1.0, 2.0, 4.0], dtype=torch.bfloat16)
    levels = [0.5, 0.501, 0.502]  # one bfloat16 value: the interpolation must not divide by zero
    got = risk.quantile(q, levels, 0.5015)
    assert got.dtype == torch.bfloat16 and got.item() == 3.0
    with pytest.raises(ValueError, match=r"`tau` must lie in \[0, 1\]"):
        risk.quantile(q, levels, 1.001)  # rounds to 1.0 in bfloat16, still rejected


def test_quantile_with_one_level_is_constant():
    q = torch.tensor([[2.0], [-1.0]])
    assert risk.quantile(q, [0.5], 0.1).tolist() == [2.0, -1.0]
    assert risk.quantile(q, [0.5], 0.9).tolist() == [2.0, -1.0]


# --- batching, gradients, dtypes -----------------------------------------------------------------------

FUNCTIONS = {
    "expectation": lambda q: risk.expectation(q),
    "exponential_utility": lambda q: risk.exponential_utility(q, 0.8),
    "certainty_equivalent": lambda q: risk.certainty_equivalent(q, 0.8),
    "cvar": lambda q: risk.cvar(q, LEVELS, 0.3),
    "cvar_fractional": lambda q: risk.cvar(q, LEVELS, 0.137),
    "quantile": lambda q: risk.quantile(q, LEVELS, 0.42),
    "variance": lambda q: risk.variance(q),
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_batched_equals_looping(name):
    fn = FUNCTIONS[name]
    q = random_quantiles(3, 4, K, seed=8)  # [B, M, K]
    batched = fn(q)
    assert batched.shape == (3, 4) and batched.dtype == q.dtype
    looped = torch.stack([torch.stack([fn(q[b, m]) for m in range(4)]) for b in range(3)])
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_gradients_are_correct(name):
    q = random_quantiles(3, K, seed=9).requires_grad_()  # distinct values: sort is differentiable here
    assert torch.autograd.gradcheck(FUNCTIONS[name], (q,))


def test_quantile_gradient_with_respect_to_tau():
    q = random_quantiles(3, K, seed=10, sort=True)
    tau = torch.tensor([0.12, 0.5 + 0.013, 0.81], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: risk.quantile(q, LEVELS, t), (tau,))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_low_precision_input_keeps_its_dtype(name, dtype):
    q = random_quantiles(2, 3, K, seed=11, dtype=torch.float32)
    low = q.to(dtype)
    got = FUNCTIONS[name](low)
    assert got.dtype == dtype and got.shape == (2, 3)
    reference = FUNCTIONS[name](low.float())  # the same estimates, computed in float32
    tolerance = {torch.bfloat16: 0.05, torch.float16: 5e-3, torch.float32: 1e-6}[dtype]
    torch.testing.assert_close(got.float(), reference, rtol=tolerance, atol=tolerance)


# --- bad inputs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0, -1.0, math.nan, math.inf, -math.inf])
def test_bad_lam_raises(lam):
    q = random_quantiles(2, K)
    with pytest.raises(ValueError, match="`lam` must be a finite number > 0"):
        risk.exponential_utility(q, lam)
    with pytest.raises(ValueError, match="`lam` must be a finite number > 0"):
        risk.certainty_equivalent(q, lam)


def test_lam_must_be_a_single_number():
    q = random_quantiles(2, K)
    with pytest.raises(ValueError, match="single number"):
        risk.certainty_equivalent(q, torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match="`lam` must be a number"):
        risk.exponential_utility(q, "high")


@pytest.mark.parametrize("alpha", [0, -0.1, 1.0001, 2, math.nan])
def test_bad_alpha_raises(alpha):
    with pytest.raises(ValueError, match=r"`alpha` must lie in \(0, 1\]"):
        risk.cvar(random_quantiles(2, K), LEVELS, alpha)


def test_alpha_must_be_a_number():
    with pytest.raises(TypeError, match="`alpha` must be a number"):
        risk.cvar(random_quantiles(2, K), LEVELS, "0.5")
    with pytest.raises(TypeError, match="`alpha` must be a number"):
        risk.cvar(random_quantiles(2, K), LEVELS, True)


@pytest.mark.parametrize(
    "levels, message",
    [
        (LEVELS[:-1], "has 18 entries but the quantile estimates have K = 19"),
        ([*LEVELS, 0.99], "has 20 entries"),
        ([[0.1] * K], "must be 1-D"),
        (LEVELS[::-1], "strictly increasing"),
        ([*LEVELS[:5], LEVELS[4], *LEVELS[6:]], "strictly increasing"),
        ([*LEVELS[:-1], 1.5], r"must lie in \[0, 1\]"),
        ([-0.1, *LEVELS[1:]], r"must lie in \[0, 1\]"),
        ([*LEVELS[:-1], math.nan], r"must lie in \[0, 1\]"),
    ],
)
def test_bad_levels_raise(levels, message):
    q = random_quantiles(2, K)
    with pytest.raises(ValueError, match=message):
        risk.cvar(q, levels, 0.5)
    with pytest.raises(ValueError, match=message):
        risk.quantile(q, levels, 0.5)


@pytest.mark.parametrize("tau", [-0.01, 1.01, math.nan, [0.5, 1.2]])
def test_tau_outside_unit_interval_raises(tau):
    with pytest.raises(ValueError, match=r"`tau` must lie in \[0, 1\]"):
        risk.quantile(random_quantiles(2, K), LEVELS, tau)


def test_bad_quantile_tensors_raise():
    with pytest.raises(ValueError, match="got a scalar"):
        risk.expectation(torch.tensor(1.0))
    with pytest.raises(ValueError, match="at least one level"):
        risk.variance(torch.zeros(3, 0))
    with pytest.raises(TypeError, match="must be real"):
        risk.expectation(torch.zeros(3, dtype=torch.complex64))


# --- registry: measures by name ----------------------------------------------------------


@pytest.mark.parametrize(
    "spec, direct",
    [
        ("expectation", lambda q: q.mean(-1)),
        ("exp_utility", lambda q: -torch.exp(-q).mean(-1)),
        ("exp_utility:2", lambda q: -torch.exp(-2 * q).mean(-1)),
        (" certainty_equivalent : 0.5 ", lambda q: -2 * torch.log(torch.exp(-0.5 * q).mean(-1))),
        ("cvar", None),  # alpha 0.1: 0.1 * 19 = 1.9 atoms, below
        ("cvar:0.2", None),  # 0.2 * 19 = 3.8 atoms, below
        ("quantile", lambda q: q.sort(-1).values[..., 1]),  # tau 0.1 is the second level
        ("quantile:0.125", lambda q: q.sort(-1).values[..., 1:3].mean(-1)),  # half way from 0.10 to 0.15
    ],
)
def test_resolve_gives_the_measure_of_a_spec(spec, direct):
    q = random_quantiles(5, K)
    sorted_q = q.sort(-1).values
    if spec == "cvar":  # one whole atom and 0.9 of the second
        expected = (sorted_q[..., 0] + 0.9 * sorted_q[..., 1]) / 1.9
    elif spec == "cvar:0.2":  # three whole atoms and 0.8 of the fourth
        expected = (sorted_q[..., :3].sum(-1) + 0.8 * sorted_q[..., 3]) / 3.8
    else:
        expected = direct(q)
    torch.testing.assert_close(risk.resolve(spec, LEVELS)(q), expected)


def test_spec_values_win_over_defaults_and_unused_defaults_are_ignored():
    q = random_quantiles(3, K)
    quantile = risk.resolve("quantile", LEVELS, tau=0.5, lam=3.0)  # lam: not a parameter of quantile
    torch.testing.assert_close(quantile(q), q.sort(-1).values[..., 9])  # 0.5 is the tenth level
    torch.testing.assert_close(risk.resolve("quantile:0.05", LEVELS, tau=0.5)(q), q.amin(-1))
    measure, values = risk.parse("cvar", alpha=1.0)
    assert measure is risk.RISK_MEASURES["cvar"] and values == {"alpha": 1.0}
    assert risk.parse("exp_utility")[1] == {"lam": risk.RISK_PARAMETERS["lam"].default}


@pytest.mark.parametrize(
    "spec, error, message",
    [
        ("variance", ValueError, "Unknown risk measure 'variance'.*known: expectation, exp_utility"),
        ("quantile:0.1,0.2", ValueError, "takes 1 parameter"),
        ("expectation:1", ValueError, "takes 0 parameter"),
        ("quantile:1", ValueError, r"`tau` must lie in \(0, 1\), got 1.0"),
        ("cvar:0", ValueError, r"`alpha` must lie in \(0, 1\], got 0.0"),
        ("exp_utility:-1", ValueError, "`lam` must be a finite number > 0, got -1.0"),
        ("exp_utility:inf", ValueError, "`lam` must be"),
        ("cvar:nan", ValueError, "`alpha` must lie"),
        ("quantile:low", ValueError, "must be a number, got 'low'"),
        (0.1, TypeError, "must be a string"),
    ],
)
def test_bad_specs_raise(spec, error, message):
    with pytest.raises(error, match=message):
        risk.parse(spec)


def test_measures_on_levels_need_the_levels():
    q = random_quantiles(2, K)
    with pytest.raises(ValueError, match="'cvar'.*needs the quantile levels"):
        risk.resolve("cvar")
    with pytest.raises(ValueError, match="K = 19"):  # levels of the wrong length: the function's own check
        risk.resolve("quantile", LEVELS[:-1])(q)
    torch.testing.assert_close(risk.resolve("exp_utility")(q), risk.exponential_utility(q, 1.0))
    with pytest.raises(TypeError, match="no parameter.*'alpha'"):
        risk.RISK_MEASURES["quantile"](q, LEVELS, alpha=0.1)


def test_a_new_measure_is_one_function_and_one_registry_line(monkeypatch, tmp_path):
    """Registered once, a measure reaches specs, the trainer configs and the RLHF commands' --risk-measure."""
    import argparse

    from qrm_hf.cli import parse_arguments
    from qrm_hf.cli_rlhf import add_rlhf_commands, trainer_config
    from qrm_hf.training.rloo import RiskAwareRLOOConfig

    def mean_minus_std(q, k):
        return q.mean(-1) - k * q.std(-1, unbiased=False)

    k = risk.RiskParameter("k", 1.0, 0.0)
    monkeypatch.setitem(
        risk.RISK_MEASURES, "mean_minus_std", risk.RiskMeasure("mean_minus_std", mean_minus_std, (k,))
    )
    q = random_quantiles(4, K)
    expected = q.mean(-1) - 2 * (risk.variance(q) ** 0.5)
    torch.testing.assert_close(risk.resolve("mean_minus_std:2")(q), expected)
    config = RiskAwareRLOOConfig(str(tmp_path), risk_measure="mean_minus_std:2", use_cpu=True, bf16=False)
    assert config.parse_risk_measure().values == {"k": 2.0}
    parser = argparse.ArgumentParser()
    add_rlhf_commands(parser.add_subparsers(dest="command"))
    args = parse_arguments(parser, ["grpo", "sft", "qrm", "--risk-measure", "mean_minus_std:2"])
    config = trainer_config(args)
    assert type(config).__name__ == "PaperGRPOConfig" and config.parse_risk_measure().values == {"k": 2.0}
