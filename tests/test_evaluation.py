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


def test_heteroscedastic_gaussian_recovers_a_varying_spread():
    from qrm_hf.training.quantile_regression import HeteroscedasticGaussian

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 4))
    std = np.exp(0.6 * X[:, 1] - 1.0)
    Y = np.stack([1.0 + 2.0 * X[:, 0] + std * rng.normal(size=3000), rng.normal(size=3000)], axis=1)
    Y[::7, 1] = np.nan  # missing labels are ignored
    levels = [0.1, 0.5, 0.9]
    model = HeteroscedasticGaussian(levels, alphas=(1e-4, 10.0)).fit(X, Y)
    assert model.alpha_[0] == 1e-4  # the weak penalty wins on a real signal
    X_test = rng.normal(size=(4000, 4))
    mean, predicted_std = model.predict_mean_std(X_test)
    true_std = np.exp(0.6 * X_test[:, 1] - 1.0)
    np.testing.assert_allclose(mean[:, 0], 1.0 + 2.0 * X_test[:, 0], atol=0.05)
    np.testing.assert_allclose(np.log(predicted_std[:, 0]), np.log(true_std), atol=0.1)
    np.testing.assert_allclose(predicted_std[:, 1], 1.0, atol=0.08)  # pure noise: a constant spread
    labels = np.stack([1.0 + 2.0 * X_test[:, 0] + true_std * rng.normal(size=4000), rng.normal(size=4000)], 1)
    np.testing.assert_allclose(
        interval_coverage(labels, model.predict(X_test), levels, 0.8), [0.8, 0.8], atol=0.03
    )


def test_heteroscedastic_gaussian_gradient_matches_finite_differences():
    from scipy.optimize import check_grad

    from qrm_hf.training.quantile_regression import HeteroscedasticGaussian

    rng = np.random.default_rng(1)
    X, count = rng.normal(size=(50, 3)), rng.integers(1, 6, size=50).astype(float)
    mean, variance = rng.normal(size=50), rng.uniform(0, 0.5, size=50)
    theta = rng.normal(size=8) * 0.3

    def objective(t):
        return HeteroscedasticGaussian._objective(t, X, count, mean, variance, 0.3)

    assert check_grad(lambda t: objective(t)[0], lambda t: objective(t)[1], theta) < 1e-5
    # grouped form = the mean NLL of the individual labels (groups of two: mean +- std)
    std = np.sqrt(variance)
    labels = np.concatenate([mean - std, mean + std])
    rows = np.concatenate([X, X])
    mu, log_sigma = rows @ theta[:3] + theta[3], rows @ theta[4:7] + theta[7]
    direct = np.mean(log_sigma + 0.5 * (labels - mu) ** 2 * np.exp(-2 * log_sigma)) + 0.5 * np.log(2 * np.pi)
    pair_count = np.full(50, 2.0)
    assert HeteroscedasticGaussian._objective(theta, X, pair_count, mean, variance, 0.0)[0] == pytest.approx(
        direct
    )


# ------------------------------------------------------------------------------------ qrm evaluate


def rating_rows():
    """Two clear responses (labels 3, 3, 3, 4 -> normalised std .108) and two controversial ones (0, 0, 4, 4 ->
    std .5), per attribute, four annotators each; `b` has one missing label."""
    rows = []
    for r, (kind, values) in enumerate(
        [
            ("clear", [3, 3, 3, 4]),
            ("clear", [4, 3, 3, 3]),
            ("controversial", [0, 4, 0, 4]),
            ("controversial", [4, 4, 0, 0]),
        ]
    ):
        for annotator, value in enumerate(values):
            rows.append(
                {"conversation_id": f"c{r}", "prompt": f"w1{r} w2{r}", "response": " ".join(f"w{30 + r + j}" for j in range(r + 1)),
                 "kind": kind, "annotator": annotator, "a": value, "b": None if (r, annotator) == (0, 0) else 4 - value,
                 "c": 2}
            )  # fmt: skip
    return rows


def test_evaluate_ratings_measures_against_unbatched_model_outputs():
    from test_hub import make_tokenizer

    from conftest import make_qrm
    from qrm_hf.evaluation import evaluate_ratings

    model, tokenizer = make_qrm(seed=5, attribute_names=["a", "b", "c"]), make_tokenizer()
    rows = rating_rows()
    report = evaluate_ratings(model, tokenizer, rows, (0.0, 4.0), batch_size=3)
    levels = model.config.quantile_levels
    predictions = []
    for row in rows:  # each row alone through the model: an independent path
        messages = [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["response"]},
        ]
        inputs = tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            predictions.append(model(**inputs).attribute_quantiles[0].double().numpy())
    predictions = np.stack(predictions)
    labels = (
        np.array([[row[name] if row[name] is not None else np.nan for name in "abc"] for row in rows]) / 4
    )
    qrm = report["models"]["qrm"]
    np.testing.assert_allclose(
        [qrm["attributes"][name]["crps"] for name in "abc"], crps(labels, predictions, levels), atol=1e-5
    )
    coverage = interval_coverage(labels, predictions, levels, 0.8)
    np.testing.assert_allclose([qrm["attributes"][name]["coverage_80"] for name in "abc"], coverage)
    kinds = np.array([row["kind"] for row in rows])
    widths = interval_width(predictions, levels, 0.9)  # rows of one response share a width
    for m, name in enumerate("abc"):
        ratio = widths[kinds == "controversial", m].mean() / widths[kinds == "clear", m].mean()
        assert qrm["width_ratio"][name] == pytest.approx(ratio, rel=1e-5)
        clear = labels[kinds == "clear", m]
        assert qrm["by_kind"]["clear"][name]["crps"] == pytest.approx(
            float(crps(clear[:, None], predictions[kinds == "clear", m][:, None], levels)[0]), abs=1e-5
        )
    # the annotators' own spread, by hand: clear std of (3, 3, 3, 4) / 4 = .108253; controversial .5;
    # b of the first response has labels (1, 1, 0) / 4 -> std .117851; c never varies
    clear_std, b_first = np.std([3, 3, 3, 4]) / 4, np.std([1, 1, 0]) / 4
    assert report["annotator_spread"]["clear"]["a"] == pytest.approx(clear_std)
    assert report["annotator_spread"]["clear"]["b"] == pytest.approx((b_first + clear_std) / 2)
    assert report["annotator_spread_ratio"]["a"] == pytest.approx(0.5 / clear_std)
    assert report["annotator_spread"]["clear"]["c"] == 0.0
    observed = qrm["reliability"]["observed"]
    below = (labels[..., None] <= np.sort(predictions, -1))[~np.isnan(labels)].mean(0)
    np.testing.assert_allclose(observed, below)
    assert sum(qrm["pit_histogram"]) == pytest.approx(1.0)


def test_probability_integral_transform_by_hand():
    from qrm_hf.evaluation import probability_integral_transform

    levels = [0.1, 0.5, 0.9]
    predictions = np.array(
        [[[0.0, 1.0, 2.0]], [[0.0, 1.0, 2.0]], [[0.0, 1.0, 2.0]], [[0.0, 1.0, 2.0]], [[1.0, 1.0, 3.0]]]
    )
    labels = np.array([[0.5], [-1.0], [5.0], [np.nan], [1.0]])
    # .5 is halfway between q.1 = 0 and q.5 = 1 -> .3; below q.1 -> .05; above q.9 -> .95; missing: left out;
    # 1.0 equals q.1 and q.5 (a flat stretch) -> the middle of .1 and .5 = .3
    np.testing.assert_allclose(
        probability_integral_transform(labels, predictions, levels), [0.3, 0.05, 0.95, 0.3]
    )


def test_evaluate_cli_with_baselines_plots_and_json(tmp_path, capsys):
    import json

    from test_hub import make_tokenizer

    from conftest import PAD, PATTERN, make_qrm
    from qrm_hf.chat import encode_conversation
    from qrm_hf.cli import main
    from qrm_hf.scoring import BackboneEncoder
    from qrm_hf.training.assemble import save_qrm
    from qrm_hf.training.features import extract_to_shards

    model, tokenizer = make_qrm(seed=2, attribute_names=["a", "b", "c"]), make_tokenizer()
    model_dir = save_qrm(model, tmp_path / "model", tokenizer=tokenizer)
    rng = np.random.default_rng(0)
    train_rows = [
        {
            "prompt": f"w{10 + i % 7}",
            "response": " ".join(f"w{20 + (i * 3 + j) % 40}" for j in range(1 + i % 5)),
        }
        for i in range(40)
    ]
    sequences = [encode_conversation(tokenizer, row["prompt"], row["response"]) for row in train_rows]
    labels = torch.tensor(rng.integers(0, 5, size=(40, 3)) / 4.0)
    features = tmp_path / "features"
    manifest = {
        "attributes": ["a", "b", "c"],
        "label_ranges": {name: [0, 4] for name in "abc"},
        "hidden_size": 32,
        "prompt_end_pattern": PATTERN,
    }
    extract_to_shards(
        BackboneEncoder(model.model, PATTERN, PAD, batch_size=16),
        sequences,
        features,
        manifest,
        labels=labels,
    )
    ratings = tmp_path / "ratings.jsonl"
    ratings.write_text("".join(json.dumps(row) + "\n" for row in rating_rows()))
    output = tmp_path / "eval" / "report.json"
    main(["evaluate", str(model_dir), "--ratings", str(ratings), "--baselines", str(features),
          "--plots", str(tmp_path / "plots"), "--output", str(output), "--bootstrap", "3"])  # fmt: skip
    report = json.loads(output.read_text())["ratings"]
    assert set(report["models"]) == {"qrm", "ridge", "gaussian"}
    own = report["own_uncertainty"]
    assert own["members"] == 3 and set(own["median_spread_90"]) == {"all", "clear", "controversial"}
    assert all(value > 0 for spreads in own["median_spread_90"].values() for value in spreads.values())
    assert "median_90" in capsys.readouterr().out
    # ridge + residual quantiles: one spread for every response, so its width ratio is exactly 1
    assert report["models"]["ridge"]["width_ratio"] == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0})
    assert (tmp_path / "plots" / "reliability.png").stat().st_size > 0
    assert (tmp_path / "plots" / "pit.png").stat().st_size > 0
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(model_dir), "--ratings", str(ratings), "--baselines", str(features),
              "--label-range", "0", "10"])  # fmt: skip
    assert exit_info.value.code == 2 and "label ranges" in capsys.readouterr().err
    manifest_path = features / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["settings"]["prompt_end_pattern"] = [5, 6]  # the model's is [7, 8, 9]: another chat template
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(model_dir), "--ratings", str(ratings), "--baselines", str(features)])
    assert exit_info.value.code == 2 and "another backbone" in capsys.readouterr().err
    for bad in (["--bootstrap", "1", "--baselines", str(features)], ["--bootstrap", "3"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["evaluate", str(model_dir), "--ratings", str(ratings), *bad])
        assert exit_info.value.code == 2 and "--bootstrap needs" in capsys.readouterr().err


def test_median_spread_by_hand():
    from qrm_hf.evaluation import median_spread

    levels = [0.25, 0.5, 0.75]
    base = np.array([0.1, 0.4, 0.9])
    # two members whose quantiles differ by a shift of +-d: medians 0.4 +- d, population std d
    members = np.stack([base + 0.05, base - 0.05])[:, None, None, :]  # [E=2, n=1, M=1, K=3]
    np.testing.assert_allclose(median_spread(members, levels), [[2 * 1.6448536 * 0.05]], rtol=1e-6)
    # an unsorted member is read sorted, as the model reads its quantiles
    np.testing.assert_allclose(median_spread(members[..., ::-1], levels), median_spread(members, levels))
    with pytest.raises(ValueError, match="E >= 2"):
        median_spread(members[:1], levels)


def test_the_bootstrap_draws_whole_responses():
    from qrm_hf.training.bootstrap import _bootstrap_counts
    from qrm_hf.training.quantile_regression import identical_row_groups

    rng = np.random.default_rng(0)
    responses = rng.normal(size=(30, 4))
    X = np.repeat(responses, 5, axis=0)[rng.permutation(150)]  # 5 ratings per response, shuffled
    groups = identical_row_groups(X)
    assert groups.max() + 1 == 30 and all((X[groups == g] == X[groups == g][0]).all() for g in range(30))
    for seed in range(5):
        weights = _bootstrap_counts(groups, np.random.default_rng(seed))
        per_group = [np.unique(weights[groups == g]) for g in range(30)]
        assert all(len(values) == 1 for values in per_group)  # the ratings of a response weigh alike
        assert sum(values[0] for values in per_group) == 30  # 30 responses drawn with replacement


def test_heteroscedastic_gaussian_in_the_span_of_the_responses_is_the_full_fit():
    """Fewer distinct responses (12, each rated 3 times) than features (30): the fit in the SVD basis
    of the responses gives the same model as the fit on all 30 features."""
    from qrm_hf.training.quantile_regression import HeteroscedasticGaussian

    rng = np.random.default_rng(2)
    responses = rng.normal(size=(12, 30))
    X = np.repeat(responses, 3, axis=0)
    y = rng.integers(0, 5, size=36) / 4.0
    model = HeteroscedasticGaussian([0.25, 0.5, 0.75], alphas=(3.0,), max_iter=5000).fit(X, y)
    Z = (responses - model.feature_mean_) / model.feature_scale_
    groups = y.reshape(12, 3)
    w, b, v, c = model._fit_one(Z, np.full(12, 3.0), groups.mean(1), groups.var(1), 3.0)
    X_test = rng.normal(size=(5, 30))
    Z_test = (X_test - model.feature_mean_) / model.feature_scale_
    mean, std = model.predict_mean_std(X_test)
    np.testing.assert_allclose(mean[:, 0], Z_test @ w + b, atol=1e-4)
    np.testing.assert_allclose(std[:, 0], np.exp(Z_test @ v + c), rtol=1e-3)
