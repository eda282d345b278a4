"""Conformal calibration stored in the model (`qrm calibrate`, `qrm_hf.calibration`).

The guarantee is checked by simulation on synthetic data whose distributions are known: a model whose
quantiles are wrong (too narrow, shifted) is calibrated on n responses and measured on fresh draws, over
many splits. Then the grouping of ratings by response, the Mondrian groups, the model's own step (saved,
reloaded with and without qrm-hf) and the command line.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import norm
from test_hub import make_tokenizer

from conftest import make_qrm, run_cli, run_without_qrm_hf
from qrm_hf import QRMConfig, QRMForSequenceClassification
from qrm_hf.calibration import (
    ConformalQuantileCalibrator,
    apply_calibration,
    calibrate_model,
    minimum_responses,
    rating_predictions,
    uncalibrated,
)

LEVELS = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]
LOW, HIGH = LEVELS.index(0.1), LEVELS.index(0.9)  # the central 80 % interval


def wrong_quantiles(scale, shift, count):
    """A model's quantiles [count, 1, K] of N(shift, scale^2), whatever the true distribution."""
    return np.broadcast_to(shift + scale * norm.ppf(LEVELS), (count, 1, len(LEVELS))).copy()


def simulate(trials, responses, draw, width_bins=1, test=400, seed=0):
    """Per trial: calibrate on `responses` draws, measure on `test` fresh ones. `draw(rng, n)` gives
    (predictions [n, 1, K], labels [n, 1], group of the response [n]). Returns, averaged over trials, the
    fraction of test labels <= each calibrated quantile [K], < each [K], and inside the 80 % interval per
    group {group: coverage}."""
    rng = np.random.default_rng(seed)
    at_most, below, inside = [], [], {}
    for _ in range(trials):
        predictions, labels, _ = draw(rng, responses)
        calibrator = ConformalQuantileCalibrator(LEVELS, width_bins).fit(predictions, labels)
        predictions, labels, group = draw(rng, test)
        calibrated = calibrator.predict(predictions)[:, 0]
        y = labels[:, :1]
        at_most.append((y <= calibrated).mean(0))
        below.append((y < calibrated).mean(0))
        covered = (y[:, 0] >= calibrated[:, LOW]) & (y[:, 0] <= calibrated[:, HIGH])
        for g in np.unique(group):
            inside.setdefault(int(g), []).append(covered[group == g].mean())
    return np.mean(at_most, 0), np.mean(below, 0), {g: np.mean(values) for g, values in inside.items()}


def heteroscedastic(rng, n):
    """y ~ N(1, sd^2), sd 0.5 or 1.5 at random; the model says N(0, 0.6^2) for every response."""
    group = rng.integers(0, 2, n)
    labels = rng.normal(1.0, np.where(group == 1, 1.5, 0.5))[:, None]
    return wrong_quantiles(0.6, 0.0, n), labels, group


def test_split_conformal_reaches_every_level_with_its_finite_sample_guarantee():
    # Before: the model's 80 % interval N(0, .6^2) covers N(1, sd^2) far less than 80 %.
    rng = np.random.default_rng(1)
    predictions, labels, _ = heteroscedastic(rng, 20000)
    before = ((labels >= predictions[:, :, LOW]) & (labels <= predictions[:, :, HIGH])).mean()
    assert before < 0.5
    responses, trials = 39, 400
    at_most, below, inside = simulate(trials, responses, heteroscedastic)
    slack = 3 * np.sqrt(0.25 / (trials * 400))  # Monte Carlo error of the averages (3 standard errors)
    for k, level in enumerate(LEVELS):
        if level >= 0.5:  # P(y <= q_tau) >= tau, and at most 1 / (n + 1) above
            assert level - slack <= at_most[k] <= level + 1 / (responses + 1) + slack, (level, at_most[k])
        else:  # P(y < q_tau) <= tau, and at most 1 / (n + 1) below
            assert level - 1 / (responses + 1) - slack <= below[k] <= level + slack, (level, below[k])
    coverage = (inside[0] + inside[1]) / 2  # both groups are equally likely
    assert 0.8 - slack <= coverage <= 0.8 + 2 / (responses + 1) + slack


def test_the_ratings_of_one_response_count_as_one_response():
    rng = np.random.default_rng(2)
    predictions = wrong_quantiles(0.3, 0.0, 25) + rng.normal(0, 0.2, (25, 1, 1))
    labels = rng.normal(0, 1, (25, 1))
    once = ConformalQuantileCalibrator(LEVELS).fit(predictions, labels)
    # Each response rated 4 times with the same rating: the same offsets as one rating each...
    repeated = np.repeat(np.arange(25), 4)
    fourfold = ConformalQuantileCalibrator(LEVELS).fit(predictions[repeated], labels[repeated], repeated)
    np.testing.assert_allclose(fourfold.offsets_, once.offsets_)
    assert fourfold.responses_.tolist() == [[25]] and fourfold.ratings_.tolist() == [[100]]
    # ...whereas counting the 100 rows as independent draws would take another (less conservative) rank.
    rows = ConformalQuantileCalibrator(LEVELS).fit(predictions[repeated], labels[repeated])
    assert not np.allclose(rows.offsets_, once.offsets_)
    # 10 responses rated 5 times are 10 responses, too few for the 0.05 and 0.95 levels (19 needed).
    with pytest.raises(
        ValueError, match=f"10 rated calibration response.*at least {minimum_responses(LEVELS)}"
    ):
        ConformalQuantileCalibrator(LEVELS).fit(predictions[:10].repeat(5, 0), labels[:10].repeat(5, 0),
                                                np.arange(10).repeat(5))  # fmt: skip


def with_annotators(rng, n, ratings=5):
    """n responses, `ratings` ratings each: a response effect (sd 1) plus annotator noise (sd 0.7); the
    model says N(0, 0.5^2). Rows [n * ratings]; `group` is the response (one row measured per response)."""
    effect = rng.normal(0, 1, n)
    labels = (effect[:, None] + rng.normal(0, 0.7, (n, ratings))).reshape(-1, 1)
    response = np.repeat(np.arange(n), ratings)
    return wrong_quantiles(0.5, 0.0, n * ratings), labels, response


def test_grouped_calibration_covers_a_random_rating_of_a_new_response():
    rng = np.random.default_rng(3)
    responses, trials, coverage = 20, 300, []
    for _ in range(trials):
        predictions, labels, response = with_annotators(rng, responses)
        calibrator = ConformalQuantileCalibrator(LEVELS).fit(predictions, labels, response)
        predictions, labels, _ = with_annotators(rng, 200, ratings=1)
        calibrated = calibrator.predict(predictions)[:, 0]
        coverage.append(((labels[:, 0] >= calibrated[:, LOW]) & (labels[:, 0] <= calibrated[:, HIGH])).mean())
    slack = 3 * np.sqrt(0.25 / (trials * 200))
    assert 0.8 - slack <= np.mean(coverage) <= 0.8 + 2 / (responses + 1) + 0.02


def test_mondrian_width_bins_give_the_guarantee_within_each_group():
    def informative(rng, n):  # the model's width tells the groups apart, its scale is wrong in both
        predictions, labels, group = heteroscedastic(rng, n)
        scale = np.where(group == 1, 2.0, 1.0) * rng.uniform(0.9, 1.1, n)
        return predictions * scale[:, None, None], labels, group

    marginal = simulate(200, 80, informative, width_bins=1)[2]
    mondrian = simulate(200, 80, informative, width_bins=2)[2]
    slack = 3 * np.sqrt(0.25 / (200 * 200))
    # one offset for all: the wide group under-covers, the narrow one over-covers
    assert marginal[1] < 0.75 and marginal[0] > 0.85
    for group in (0, 1):  # ~40 responses per group: the finite-sample bounds within each
        assert 0.8 - slack - 0.01 <= mondrian[group] <= 0.8 + 2 / 41 + 0.02, (group, mondrian[group])


def test_inputs_are_checked():
    predictions, labels = wrong_quantiles(1.0, 0.0, 30), np.zeros((30, 1))
    bad = predictions.copy()
    bad[3, 0, 2] = np.nan
    with pytest.raises(ValueError, match=r"predictions are not finite in 1 row\(s\) \(0-based\): \[3\]"):
        ConformalQuantileCalibrator(LEVELS).fit(bad, labels)
    with pytest.raises(ValueError, match="labels are not finite"):
        ConformalQuantileCalibrator(LEVELS).fit(predictions, np.full((30, 1), np.inf))
    widths = predictions * np.linspace(1, 2, 30)[:, None, None]  # 30 responses, 15 per width group < 19
    with pytest.raises(ValueError, match="has 15 rated calibration response.*in width group 1 of 2"):
        ConformalQuantileCalibrator(LEVELS, width_bins=2).fit(widths, labels)
    with pytest.raises(ValueError, match="width_bins"):
        ConformalQuantileCalibrator(LEVELS, width_bins=0).fit(predictions, labels)
    # a NumPy count (e.g. from a grid of settings) is a whole number too
    calibrator = ConformalQuantileCalibrator(LEVELS, width_bins=np.int64(1)).fit(predictions, labels)
    assert calibrator.offsets_.shape[0] == 1


# --- the model's own step -----------------------------------------------------------------------------


def rating_rows(responses=24, ratings=3, seed=0, first=0):
    """Rating rows of the tiny tokenizer's words: `ratings` annotators per response, attributes a, b, c; the
    responses numbered from `first` (numbers apart by less than 45 are distinct conversations)."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(first, first + responses):
        for annotator in range(ratings):
            rows.append({
                "prompt": f"w{10 + r % 9} w{20 + r % 5}", "response": " ".join(f"w{30 + (r * 7 + j) % 30}" for j in range(1 + r % 4)),
                "kind": "controversial" if r % 3 == 0 else "clear", "annotator": annotator,
                **{name: int(rng.integers(0, 5)) for name in "abc"},
            })  # fmt: skip
    return rows


def test_calibrated_model_applies_the_offsets_in_every_output_and_survives_save_and_load(tmp_path):
    model, tokenizer = make_qrm(seed=4, attribute_names=["a", "b", "c"]), make_tokenizer()
    rows = rating_rows()
    raw, labels, response, _ = rating_predictions(model, tokenizer, rows, (0, 4))
    calibrator = calibrate_model(model, tokenizer, rows, (0, 4), width_bins=2)
    assert calibrator.responses_.sum(0).tolist() == [24, 24, 24]
    calibrated = rating_predictions(model, tokenizer, rows, (0, 4))[0]
    np.testing.assert_allclose(calibrated, apply_calibration(raw, model.config.calibration), atol=1e-5)
    assert not np.allclose(calibrated, raw, atol=1e-3)
    with uncalibrated(model):
        np.testing.assert_allclose(rating_predictions(model, tokenizer, rows, (0, 4))[0], raw, atol=1e-6)
    # the expected reward is the gated mean of the calibrated quantiles, so TRL reads calibrated rewards too
    messages = [
        {"role": "user", "content": rows[0]["prompt"]},
        {"role": "assistant", "content": rows[0]["response"]},
    ]
    inputs = tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model(**inputs)
    np.testing.assert_allclose(out.attribute_quantiles[0].numpy(), calibrated[0], atol=1e-5)
    expected = (out.gating_output * out.attribute_quantiles.mean(-1)).sum(-1)
    torch.testing.assert_close(out.logits[:, 0], expected)

    model.save_pretrained(tmp_path / "model")
    reloaded = QRMForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    assert reloaded.config.calibration["offsets"] == model.config.calibration["offsets"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).attribute_quantiles, out.attribute_quantiles)
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    script = f"""
        import torch
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules")
        inputs = torch.load({str(tmp_path / "inputs.pt")!r}, weights_only=True)
        with torch.no_grad():
            print("QUANTILES", model(**inputs).attribute_quantiles[0].tolist())
        """
    result = run_without_qrm_hf(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(
        next(line for line in result.stdout.splitlines() if line.startswith("QUANTILES"))[10:]
    )
    np.testing.assert_allclose(remote, out.attribute_quantiles[0].numpy(), atol=1e-5)


def test_a_checkpoint_saved_before_calibration_existed_loads_unchanged(tmp_path):
    model = make_qrm(seed=6)
    model.save_pretrained(tmp_path / "model")
    config_path = tmp_path / "model" / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("calibration")  # a config.json written before the field existed
    config_path.write_text(json.dumps(config))
    reloaded = QRMForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    assert reloaded.config.calibration is None
    embeddings = torch.randn(3, 32), torch.randn(3, 32)
    torch.testing.assert_close(
        reloaded.score_embeddings(*embeddings).attribute_quantiles,
        model.score_embeddings(*embeddings).attribute_quantiles,
    )


FITTING = {
    "offsets": [[[0.0] * 5] * 3],
    "width_bin_edges": [],
    "width_scales": [1.0] * 3,
    "width_level_indices": [0, 4],
}


@pytest.mark.parametrize(
    "change",
    [
        {"width_level_indices": None},  # missing
        {"offsets": [[[0.0] * 4] * 3]},  # K = 4, the model has 5 levels
        {"offsets": [[[float("nan")] * 5] * 3]},
        {"offsets": [[[0.0] * 5] * 3] * 2},  # two groups need one bin edge
        {"width_scales": [1.0, 0.0, 1.0]},
        {"width_level_indices": [4, 0]},
    ],
)
def test_a_calibration_that_does_not_fit_the_model_is_refused(change):
    config = make_qrm().config.to_dict()
    assert QRMConfig.from_dict(config, calibration=FITTING).calibration == FITTING
    calibration = {name: value for name, value in {**FITTING, **change}.items() if value is not None}
    with pytest.raises(ValueError, match="`calibration`"):
        QRMConfig.from_dict(config, calibration=calibration)


def test_calibrate_cli_end_to_end(tmp_path, capsys):
    from qrm_hf.cli import main
    from qrm_hf.io import MARKER
    from qrm_hf.training.assemble import save_qrm

    model, tokenizer = make_qrm(seed=7, attribute_names=["a", "b", "c"]), make_tokenizer()
    save_qrm(model, tmp_path / "model", tokenizer=tokenizer, training_summary="Tiny.")
    ratings, heldout = tmp_path / "calibration.jsonl", tmp_path / "heldout.jsonl"
    ratings.write_text("".join(json.dumps(row) + "\n" for row in rating_rows(seed=1)))
    heldout.write_text("".join(json.dumps(row) + "\n" for row in rating_rows(responses=12, seed=2, first=24)))
    output = tmp_path / "calibrated"
    main(["calibrate", str(tmp_path / "model"), "--ratings", str(ratings), "--heldout", str(heldout),
          "--output-dir", str(output)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "coverage_80 before" in printed and "controversial" in printed
    assert json.loads((output / MARKER).read_text())["command"] == "qrm calibrate"
    config = json.loads((output / "config.json").read_text())
    assert config["calibration"]["calibration_responses"] == [[24, 24, 24]]
    card = (output / "README.md").read_text()
    assert "## Calibration" in card and "Tiny." in card and "| a | controversial |" in card
    reloaded = QRMForSequenceClassification.from_pretrained(output)
    assert reloaded.config.calibration == config["calibration"]
    # too few calibration responses: one line, exit 2, nothing written
    few = tmp_path / "few.jsonl"
    few.write_text("".join(json.dumps(row) + "\n" for row in rating_rows(responses=5)))
    code, error = run_cli(
        capsys, "calibrate", tmp_path / "model", "--ratings", few, "--output-dir", tmp_path / "x"
    )
    assert code == 2 and "needs at least 9 per group" in error and not (tmp_path / "x").exists()


def test_heldout_rows_that_rate_calibration_responses_are_refused(tmp_path, capsys):
    from qrm_hf.training.assemble import save_qrm

    save_qrm(
        make_qrm(seed=7, attribute_names=["a", "b", "c"]), tmp_path / "model", tokenizer=make_tokenizer()
    )
    ratings, overlapping = tmp_path / "calibration.jsonl", tmp_path / "overlapping.jsonl"
    ratings.write_text("".join(json.dumps(row) + "\n" for row in rating_rows(seed=1)))
    # other annotators of responses 20..31: four of them were calibrated on, so their coverage is not held out
    overlapping.write_text(
        "".join(json.dumps(row) + "\n" for row in rating_rows(responses=12, seed=2, first=20))
    )
    for heldout in (ratings, overlapping):
        code, error = run_cli(
            capsys, "calibrate", tmp_path / "model", "--ratings", ratings, "--heldout", heldout,
            "--output-dir", tmp_path / "calibrated",
        )  # fmt: skip
        assert code == 2 and "rate a calibration response" in error
        assert not (tmp_path / "calibrated").exists()


def test_training_the_quantiles_of_a_calibrated_model_is_refused():
    from conftest import conversation

    model = make_qrm(seed=8, num_members=2)
    model.config.calibration = {**FITTING, "offsets": [[[0.3] * 5] * 3]}
    input_ids, labels = torch.tensor([conversation(3, 4, seed) for seed in range(2)]), torch.rand(2, 3)
    model.train()
    with pytest.raises(ValueError, match="This QRM is calibrated"):
        # the heads (and backbone) trainable: the offsets would go stale
        model(input_ids=input_ids, labels=labels)
    model.model.requires_grad_(False)
    model.regression_layer.requires_grad_(False)
    model.gating.requires_grad_(True)
    # the gating alone leaves the attribute quantiles as they were calibrated
    model(input_ids=input_ids).logits.sum().backward()
    model.gating.requires_grad_(False)
    model.regression_layer.requires_grad_(True)
    model.config.calibration = None  # dropped: the heads' own quantiles train, to be calibrated again
    model(input_ids=input_ids, labels=labels).loss.backward()


def test_the_coverage_report_measures_the_quantiles_the_model_outputs_when_it_does_not_sort_them():
    from qrm_hf.calibration import coverage_report
    from qrm_hf.evaluation import distribution_measures

    model, tokenizer = (
        make_qrm(seed=9, attribute_names=["a", "b", "c"], monotone_quantiles=False),
        make_tokenizer(),
    )
    # offsets that cross (the 0.1 level moves above the 0.9 one): a model without sorting keeps them crossed
    model.config.calibration = {**FITTING, "offsets": [[[3.0, 0.0, 0.0, 0.0, -3.0]] * 3]}
    rows = rating_rows()
    outputs, labels, response, _ = rating_predictions(model, tokenizer, rows, (0, 4))
    report = coverage_report(model, tokenizer, rows, (0, 4))
    measured = distribution_measures(labels, outputs, model.config.quantile_levels, response)
    np.testing.assert_allclose(report["after"]["all"]["coverage_80"], measured["coverage_80"])
    np.testing.assert_allclose(report["after"]["all"]["pinball"], measured["pinball"])
