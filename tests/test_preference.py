"""Preference strength and noisy preference labels: `qrm_hf.preference`, `sample_weight` of the
quantile heads, bootstrap ensembles, the gating stage's remedies and `qrm preference-strength`."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from test_pipeline import config_values, pairs_spec, save_backbone, write_config, write_data

from conftest import make_qrm
from qrm_hf.cli import main
from qrm_hf.preference import AMBIGUOUS_WITHIN, flag_pairs, preference_probability, preference_strength
from qrm_hf.training.bootstrap import HeadEnsemble, PairFeatures, fit_bootstrap_heads
from qrm_hf.training.gating import BradleyTerryGating, gating_sizes
from qrm_hf.training.pipeline import TrainConfig, build_plan
from qrm_hf.training.quantile_regression import MultiQuantileRegressor, quantile_objective
from qrm_hf.training.settings import GatingSettings
from qrm_hf.training.stages import fit_gating, pair_strength

# ------------------------------------------------------------------------------ preference_probability


def _monte_carlo(chosen_draws, rejected_draws) -> float:
    return float(np.mean(chosen_draws > rejected_draws) + 0.5 * np.mean(chosen_draws == rejected_draws))


def test_probability_of_quantile_atoms_matches_monte_carlo_sampling_of_the_atoms():
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.normal(0.3, 1.0, size=(4, 19)), -1)
    rejected = np.sort(rng.normal(0.0, 0.5, size=(4, 19)), -1)
    rejected[1] = chosen[1]  # identical distributions: every atom tied with its twin
    rejected[2, :5] = chosen[2, :5]  # partial ties
    probability = preference_probability(chosen, rejected)
    n = 400_000
    for b in range(4):
        draws = _monte_carlo(chosen[b, rng.integers(0, 19, n)], rejected[b, rng.integers(0, 19, n)])
        assert abs(probability[b] - draws) < 4 * 0.5 / np.sqrt(n)
    assert probability[1] == 0.5


def test_probability_matches_monte_carlo_on_two_humped_and_tied_distributions():
    rng = np.random.default_rng(1)
    n, K = 400_000, 999
    levels = (np.arange(K) + 0.5) / K

    # Two-humped: an even mixture of N(-1, 0.3) and N(1.2, 0.3) against N(0.2, 0.5).
    grid = np.linspace(-4, 5, 200_001)
    mixture_cdf = 0.5 * stats.norm.cdf(grid, -1, 0.3) + 0.5 * stats.norm.cdf(grid, 1.2, 0.3)
    humps = np.interp(levels, mixture_cdf, grid)
    single = stats.norm.ppf(levels, 0.2, 0.5)
    draws_humps = np.where(rng.random(n) < 0.5, rng.normal(-1, 0.3, n), rng.normal(1.2, 0.3, n))
    expected = _monte_carlo(draws_humps, rng.normal(0.2, 0.5, n))
    assert preference_probability(humps, single) == pytest.approx(expected, abs=0.005)

    # Ties: ratings 0-4 with probabilities in multiples of 1/100, their quantiles at the mid levels of 100.
    p_chosen, p_rejected = [0.05, 0.10, 0.25, 0.40, 0.20], [0.10, 0.30, 0.30, 0.20, 0.10]
    atoms = lambda p: np.repeat(np.arange(5.0), (np.array(p) * 100).round().astype(int))  # noqa: E731
    expected = _monte_carlo(rng.choice(5, n, p=p_chosen), rng.choice(5, n, p=p_rejected))
    exact = sum(  # by hand: P(X > Y) + P(X = Y) / 2
        p_chosen[i] * p_rejected[j] * (1.0 if i > j else 0.5 if i == j else 0.0)
        for i in range(5)
        for j in range(5)
    )
    assert preference_probability(atoms(p_chosen), atoms(p_rejected)) == pytest.approx(exact, abs=1e-12)
    assert exact == pytest.approx(expected, abs=4 * 0.5 / np.sqrt(n))


def test_probability_types_shapes_and_bad_input():
    chosen = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]], dtype=torch.float32)
    rejected = torch.tensor([[0.0, 1.0, 2.0], [0.0, 2.0, 3.0]], dtype=torch.float32)
    probability = preference_probability(chosen, rejected)
    assert isinstance(probability, torch.Tensor) and probability.dtype == torch.float32
    torch.testing.assert_close(probability, torch.tensor([0.5, 3 / 9]))  # second row: 1 beats only the 0
    as_array = preference_probability(chosen.numpy(), rejected.numpy()[:, ::-1])  # atom order does not matter
    assert isinstance(as_array, np.ndarray) and np.allclose(as_array, [0.5, 3 / 9])
    assert preference_probability([0.0, 1.0], [[0.5], [2.0]]).tolist() == [0.5, 0.0]  # broadcast, K_c != K_r
    with pytest.raises(ValueError, match="NaN"):
        preference_probability([0.0, np.nan], [0.0, 1.0])


def test_strength_by_hand_and_a_flipped_pair_gets_its_strength_reversed():
    chosen, rejected = np.array([[1.0, 2.0, 3.0]]), np.array([[0.0, 0.0, 3.0]])
    strength = preference_strength(chosen, rejected)
    pooled = np.sqrt((np.var([1, 2, 3]) + np.var([0, 0, 3])) / 2)
    assert strength.margin[0] == pytest.approx(1.0)
    assert strength.effect_size[0] == pytest.approx(1.0 / pooled)
    assert strength.probability[0] == pytest.approx(
        (2 + 2 + 2.5) / 9
    )  # 1 and 2 beat both 0s; 3 too, and ties the 3
    flipped = preference_strength(rejected, chosen)
    assert flipped.margin[0] == -strength.margin[0] and flipped.effect_size[0] == -strength.effect_size[0]
    assert flipped.probability[0] == 1 - strength.probability[0]
    point = preference_strength(np.array([[1.0, 1.0]]), np.array([[1.0, 1.0]]))
    assert (point.margin[0], point.effect_size[0], point.probability[0]) == (0.0, 0.0, 0.5)


# ------------------------------------------------------------------------------ sample_weight


def _weighted_problem(seed=0):
    rng = np.random.default_rng(seed)
    n, d = 50, 4
    X = rng.normal(size=(n, d))
    Y = np.stack([X @ rng.normal(size=d) + rng.standard_t(3, size=n), X[:, 0] + rng.normal(size=n)], 1)
    Y[3, 1] = np.nan
    weights = rng.integers(0, 4, size=n).astype(float)
    return X, Y, weights


@pytest.mark.parametrize("solver", ["fast", "sklearn"])
@pytest.mark.parametrize("fit_intercept", [False, True])
def test_integer_sample_weights_equal_repeated_rows(solver, fit_intercept):
    X, Y, weights = _weighted_problem()
    levels = [0.1, 0.5, 0.9]
    repeated = np.repeat(np.arange(len(X)), weights.astype(int))
    settings = dict(alpha=0.01, solver=solver, fit_intercept=fit_intercept)
    weighted = MultiQuantileRegressor(levels, **settings).fit(X, Y, sample_weight=weights)
    plain = MultiQuantileRegressor(levels, **settings).fit(X[repeated], Y[repeated])
    atol = 1e-3 if solver == "fast" else 1e-7  # the interior point stops at a certified 1e-6 relative gap
    np.testing.assert_allclose(weighted.coef_, plain.coef_, atol=atol)
    np.testing.assert_allclose(weighted.intercept_, plain.intercept_, atol=atol)
    for m in range(2):
        rows = repeated[~np.isnan(Y[repeated, m])]
        objectives = [
            quantile_objective(X[rows], Y[rows, m], model.coef_[m], model.intercept_[m], levels, 0.01)
            for model in (weighted, plain)
        ]
        np.testing.assert_allclose(*objectives, rtol=1e-5)
    assert list(weighted.n_samples_) == [
        int((weights > 0).sum()),
        int(((weights > 0) & ~np.isnan(Y[:, 1])).sum()),
    ]


def test_sample_weights_of_zero_drop_rows_and_bad_weights_are_refused():
    X, Y, weights = _weighted_problem(1)
    kept = weights > 0
    levels = [0.25, 0.75]
    dropped = MultiQuantileRegressor(levels, solver="sklearn").fit(X, Y, sample_weight=kept.astype(float))
    subset = MultiQuantileRegressor(levels, solver="sklearn").fit(X[kept], Y[kept])
    np.testing.assert_allclose(dropped.coef_, subset.coef_, atol=1e-8)
    model = MultiQuantileRegressor(levels)
    with pytest.raises(ValueError, match="non-negative"):
        model.fit(X, Y, sample_weight=np.where(kept, 1.0, -1.0))
    with pytest.raises(ValueError, match="zero for every row"):
        model.fit(X, Y, sample_weight=np.zeros(len(X)))
    with pytest.raises(ValueError, match="shape"):
        model.fit(X, Y, sample_weight=np.ones(len(X) - 1))
    only_unlabelled = np.isnan(Y[:, 1]).astype(float)  # attribute 1 keeps no labelled row
    with pytest.raises(ValueError, match="column 1 has no labelled row with a positive"):
        model.fit(X, Y, sample_weight=only_unlabelled)


# ------------------------------------------------------------------------------ ensembles


@pytest.mark.parametrize("mixing", ["average", "mixture"])
def test_an_ensemble_member_scores_embeddings_exactly_as_the_model(mixing):
    model = make_qrm(quantile_mixing=mixing, regression_bias=True)
    M, K, H = model.config.num_attributes, model.config.num_quantiles, model.config.hidden_size
    with torch.no_grad():
        model.regression_layer.bias.normal_()
    member = HeadEnsemble(
        model.regression_layer.weight.detach().view(M, K, H)[None],
        model.regression_layer.bias.detach().view(M, K)[None],
        model.reward_transform_matrix.detach(),
        [model.gating],
        model.config.quantile_levels,
        quantile_mixing=mixing,
    )
    response, prompt = torch.randn(6, H), torch.randn(6, H)
    expected, quantiles = member.score(response, prompt)
    with torch.no_grad():
        output = model.score_embeddings(response, prompt)
    torch.testing.assert_close(expected[0], output.logits[:, 0])
    torch.testing.assert_close(quantiles[0], output.reward_quantiles)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`qrm train` on the tiny backbone without debiasing; (values, data, backbone)."""
    root = tmp_path_factory.mktemp("preference")
    backbone = save_backbone(root / "backbone")
    data = write_data(root / "data")
    values = config_values(backbone, data, root / "run", debias=False)
    main(["train", str(write_config(root / "config.yaml", values))])
    return values, data, backbone


def _dirs(values):
    out = Path(values["output_dir"])
    return out / "features" / "attribute" / "ratings", out / "features" / "preference" / "pairs"


def test_bootstrap_ensemble_members_differ_and_a_flipped_pair_reverses_the_ensemble_strength(trained):
    values, _, _ = trained
    ratings, pairs_dir = _dirs(values)
    levels = values["quantile_heads"]["quantile_levels"]
    settings = GatingSettings(hidden_dim=16, n_hidden=2, batch_size=8, epochs=2, learning_rate=1e-3)
    ensemble = fit_bootstrap_heads(
        ratings, 3, seed=1, estimator=MultiQuantileRegressor(levels, alpha=0.001, solver="sklearn"), pair_features=pairs_dir,
        gating_settings=settings,
    )  # fmt: skip
    assert ensemble.coef.shape[:2] == (3, 3) and len(ensemble.gating) == 3
    assert not torch.allclose(ensemble.coef[0], ensemble.coef[1])  # different resamples
    pairs = PairFeatures.from_dirs(pairs_dir)
    strength = ensemble.strength(pairs)
    margins = ensemble.margins(pairs).double().numpy()
    np.testing.assert_allclose(strength.mean, margins.mean(0), rtol=1e-6)
    np.testing.assert_allclose(strength.std, margins.std(0, ddof=1), rtol=1e-6)
    flip = np.zeros(len(pairs), dtype=bool)
    flip[[0, 5]] = True
    flipped = ensemble.strength(pairs.flipped(flip))
    np.testing.assert_allclose(flipped.mean[flip], -strength.mean[flip], rtol=1e-6)
    np.testing.assert_allclose(flipped.std[flip], strength.std[flip], rtol=1e-6)
    np.testing.assert_allclose(flipped.probability[flip], 1 - strength.probability[flip], atol=1e-6)
    np.testing.assert_array_equal(flipped.mean[~flip], strength.mean[~flip])
    again = fit_bootstrap_heads(
        ratings, 3, seed=1, estimator=MultiQuantileRegressor(levels, alpha=0.001, solver="sklearn"), pair_features=pairs_dir,
        gating_settings=settings,
    )  # fmt: skip
    torch.testing.assert_close(again.coef, ensemble.coef)  # seeded


# ------------------------------------------------------------------------------ gating remedies


def _gating_problem(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randn(n, 32, generator=g)
    chosen, rejected = torch.rand(n, 3, generator=g) + 0.3, torch.rand(n, 3, generator=g)
    return prompts, chosen, rejected


def _bradley_terry(**remedies):
    settings = GatingSettings(hidden_dim=16, n_hidden=2, batch_size=8, epochs=3, learning_rate=1e-3)
    return BradleyTerryGating(
        gating_sizes(["a", "b", "c"], 32, settings), batch_size=8, epochs=3, learning_rate=1e-3,
        validation_fraction=0.0, **remedies,
    )  # fmt: skip


def test_flipping_below_a_threshold_equals_training_on_swapped_labels():
    prompts, chosen, rejected = _gating_problem()
    strength = torch.linspace(0, 1, len(prompts))
    flip = strength < 0.3
    remedied = _bradley_terry(flip_below=0.3).fit(prompts, chosen, rejected, strength=strength)
    swapped = _bradley_terry().fit(
        prompts, torch.where(flip[:, None], rejected, chosen), torch.where(flip[:, None], chosen, rejected)
    )
    assert remedied.flipped_ == int(flip.sum()) and remedied.dropped_ == 0
    for name, value in swapped.network_.state_dict().items():
        torch.testing.assert_close(remedied.network_.state_dict()[name], value)


def test_remedies_change_the_fit_only_when_set_and_check_their_input():
    prompts, chosen, rejected = _gating_problem()
    strength = torch.linspace(0, 1, len(prompts))
    plain = _bradley_terry().fit(prompts, chosen, rejected)
    # Off: no strength needed, and passing one changes nothing.
    unchanged = _bradley_terry().fit(prompts, chosen, rejected, strength=strength)
    first = lambda fit: next(iter(fit.network_.state_dict().values()))  # noqa: E731
    assert torch.equal(first(plain), first(unchanged))
    for remedy in ({"label_smoothing": 0.1}, {"adaptive_margin": 1.0}, {"drop_below": 0.2}):
        fitted = _bradley_terry(**remedy).fit(prompts, chosen, rejected, strength=strength)
        assert not torch.equal(first(plain), first(fitted)), remedy
    dropped = _bradley_terry(drop_below=0.2, flip_below=0.1).fit(prompts, chosen, rejected, strength=strength)
    assert (dropped.flipped_, dropped.dropped_) == (
        int((strength < 0.1).sum()),
        int(((strength >= 0.1) & (strength < 0.2)).sum()),
    )
    with pytest.raises(ValueError, match="need the strength"):
        _bradley_terry(flip_below=0.3).fit(prompts, chosen, rejected)
    with pytest.raises(ValueError, match="label_smoothing"):
        _bradley_terry(label_smoothing=0.5).fit(prompts, chosen, rejected)
    with pytest.raises(ValueError, match="leaves no training pair"):
        _bradley_terry(drop_below=1.0).fit(prompts, chosen, rejected, strength=torch.zeros(len(prompts)))


def test_noisy_label_settings_change_the_gating_fingerprint(trained, tmp_path):
    values, _, _ = trained

    def gating_fingerprint(gating):
        config = TrainConfig.from_dict(
            {**values, "gating": {**values["gating"], **gating}}, output_dir=tmp_path
        )
        return next(stage for stage in build_plan(config) if stage.name == "fit-gating").fingerprint()

    base = gating_fingerprint({})
    assert (
        len({base, gating_fingerprint({"flip_below": 0.2}), gating_fingerprint({"label_smoothing": 0.1})})
        == 3
    )
    assert gating_fingerprint({"strength": "probability"}) == base  # the default, spelled out


def test_fit_gating_flips_the_pairs_the_measured_strength_puts_below_the_threshold(trained, tmp_path):
    values, _, _ = trained
    out = Path(values["output_dir"])
    _, pairs_dir = _dirs(values)
    settings = GatingSettings(**{**values["gating"], "flip_below": 0.5, "adaptive_margin": 0.5})
    strength = pair_strength(out / "heads", [pairs_dir], torch.eye(3), settings)
    assert strength.shape == (40,) and ((0 <= strength) & (strength <= 1)).all()
    fit_gating(out / "heads", [pairs_dir], tmp_path / "gating", settings=settings)
    info = json.loads((tmp_path / "gating" / "gating.json").read_text())
    train = torch.randperm(40, generator=torch.Generator().manual_seed(0))[
        4:
    ]  # the split BradleyTerryGating makes
    assert info["noisy_labels"]["flipped"] == int((strength[train.numpy()] < 0.5).sum())
    assert info["noisy_labels"]["flip_below"] == 0.5 and info["settings"]["adaptive_margin"] == 0.5


def test_flag_pairs_marks_reversed_pairs_mislabelled_and_close_ones_ambiguous():
    """Without an ensemble: a negative margin is likely mislabelled, P within AMBIGUOUS_WITHIN of 0.5
    ambiguous; with one, |mean| < std is; an identical pair is ambiguous and never mislabelled."""
    margin = np.array([0.5, -0.4, 0.01, 0.0, -0.02])
    probability = np.array([0.9, 0.1, 0.5 + AMBIGUOUS_WITHIN / 2, 0.5, 0.5 - 1.5 * AMBIGUOUS_WITHIN])
    identical = np.array([False, False, False, True, False])
    flags = flag_pairs(margin, probability, identical)
    assert flags.likely_mislabelled.tolist() == [False, True, False, False, True]
    assert flags.ambiguous.tolist() == [False, False, True, True, False]
    assert flag_pairs(margin, probability, identical, ambiguous_within=2 * AMBIGUOUS_WITHIN).ambiguous[4]
    mean, std = np.array([0.5, -0.4, 0.3, 0.0, -0.02]), np.array([0.1, 0.1, 0.5, 0.0, 0.01])
    flags = flag_pairs(margin, probability, identical, ensemble_mean=mean, ensemble_std=std)
    assert flags.score.tolist() == mean.tolist() and flags.ambiguous_within is None
    assert flags.likely_mislabelled.tolist() == [False, True, False, False, True]
    assert flags.ambiguous.tolist() == [False, False, True, True, False]


# ------------------------------------------------------------------------------ qrm preference-strength


def test_preference_strength_command_rows_flipped_and_identical_pairs(trained, tmp_path, capsys):
    values, data, _ = trained
    model_dir = Path(values["output_dir"]) / "model"
    rows = [json.loads(line) for line in data["pairs"].read_text().splitlines()][:6]
    rows = [{"id": f"p{i}", **row} for i, row in enumerate(rows)]
    rows.append(
        {
            "id": "p0-flipped",
            "prompt": rows[0]["prompt"],
            "chosen": rows[0]["rejected"],
            "rejected": rows[0]["chosen"],
        }
    )
    rows.append(
        {
            "id": "same",
            "prompt": rows[1]["prompt"],
            "chosen": rows[1]["chosen"],
            "rejected": rows[1]["chosen"],
        }
    )
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    ratings, pairs_dir = _dirs(values)
    main([
        "preference-strength", str(model_dir), "--pairs", str(pairs), "--features", str(ratings), str(pairs_dir),
        "--ensemble", "3", "--solver", "sklearn", "--gating-epochs", "2", "--gating-batch-size", "8",
        "--output", str(tmp_path / "strength.jsonl"), "--plot", str(tmp_path / "strength.png"),
    ])  # fmt: skip
    printed = capsys.readouterr().out
    result = {
        row["id"]: row for row in map(json.loads, (tmp_path / "strength.jsonl").read_text().splitlines())
    }
    assert list(result) == [row["id"] for row in rows]
    original, flipped = result["p0"], result["p0-flipped"]
    assert flipped["margin"] == pytest.approx(-original["margin"], abs=1e-6)
    assert flipped["probability"] == pytest.approx(1 - original["probability"], abs=1e-9)
    assert flipped["ensemble_mean"] == pytest.approx(-original["ensemble_mean"], abs=1e-6)
    assert flipped["ensemble_std"] == pytest.approx(original["ensemble_std"], rel=1e-5)
    assert original["likely_mislabelled"] != flipped["likely_mislabelled"]
    same = result["same"]
    assert (same["probability"], same["margin"], same["ensemble_mean"]) == (0.5, 0.0, 0.0)
    assert same["identical"] and same["ambiguous"] and not same["likely_mislabelled"]
    assert "1 pair(s) have the same chosen and rejected conversation" in printed and "'same'" in printed
    assert (tmp_path / "strength.png").stat().st_size > 1000
    # The model's own numbers: P from its reward quantiles of the two conversations, computed here by hand.
    from transformers import AutoTokenizer

    from qrm_hf import QRMForSequenceClassification
    from qrm_hf.chat import encode_conversation

    model = QRMForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        q = [
            model(
                torch.tensor(
                    [encode_conversation(tokenizer, prompt=rows[0]["prompt"], response=rows[0][side])]
                )
            )
            .reward_quantiles[0]
            .double()
            .numpy()
            for side in ("chosen", "rejected")
        ]
    brute = np.mean((q[0][:, None] > q[1][None]) + 0.5 * (q[0][:, None] == q[1][None]))
    assert original["probability"] == pytest.approx(brute, abs=1e-6)
    assert original["margin"] == pytest.approx(q[0].mean() - q[1].mean(), abs=1e-5)


def test_preference_strength_refuses_bad_pairs_files_and_features_of_another_backbone(trained, tmp_path):
    values, data, _ = trained
    model_dir = str(Path(values["output_dir"]) / "model")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Hi", "chosen": "Hello"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl line 1: missing column\(s\) \['rejected'\]"):
        main(["preference-strength", model_dir, "--pairs", str(bad), "--debug"])
    # Features of another backbone with the same hidden size and chat template: the manifests agree on
    # everything but the backbone's path, so the model's heads are what notices.
    other = save_backbone(tmp_path / "other-backbone", seed=1)
    other_values = config_values(other, data, tmp_path / "other-run", debias=False)
    other_values["preference_datasets"] = [pairs_spec(data["pairs"])]
    main(["train", str(write_config(tmp_path / "other.yaml", other_values))])
    other_ratings = tmp_path / "other-run" / "features" / "attribute" / "ratings"
    with pytest.raises(ValueError, match="not extracted with the model's backbone"):
        main(["preference-strength", model_dir, "--pairs", str(data["pairs"]), "--features", str(other_ratings),
              "--debug"])  # fmt: skip
    wide = save_backbone(tmp_path / "wide-backbone", hidden_size=48)
    wide_values = config_values(wide, data, tmp_path / "wide-run", debias=False)
    main(["train", str(write_config(tmp_path / "wide.yaml", wide_values))])
    with pytest.raises(ValueError, match="hidden size 48"):
        main([
            "preference-strength", model_dir, "--pairs", str(data["pairs"]),
            "--features", str(tmp_path / "wide-run" / "features" / "attribute" / "ratings"), "--debug",
        ])  # fmt: skip
