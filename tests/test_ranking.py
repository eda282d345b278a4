"""Uncertainty that ranks the model's mistakes: accuracy-coverage curves of pairs, MAE@50 / R²@50 of ratings.

Every expected number is computed by hand in the test (or by an independent path), never by the code under test.
"""

import json

import numpy as np
import pytest
from test_evaluation import rating_rows
from test_hub import make_tokenizer
from test_rewardbench import V1_ROWS, V2_ROWS, ReadScore

from conftest import make_qrm, run_cli
from qrm_hf import evaluation
from qrm_hf.evaluation import (
    accuracy_coverage,
    pair_ranking_report,
    pair_ranking_signals,
    rating_selective_error,
    selective_error,
)
from qrm_hf.rewardbench import evaluate_rewardbench


def test_accuracy_coverage_by_hand():
    # surest first: right, wrong, right, right, wrong -> accuracy of the k surest 1, 1/2, 2/3, 3/4, 3/5
    curve = accuracy_coverage([1, 0, 1, 1, 0], [5, 4, 3, 2, 1], coverages=[0.2, 0.4, 0.5, 0.6, 1.0])
    assert curve["accuracy"] == pytest.approx(
        [1, 1 / 2, 2 / 3, 2 / 3, 3 / 5]
    )  # 50 % of 5 keeps ceil(2.5) = 3
    assert curve["area"] == pytest.approx((1 + 1 / 2 + 2 / 3 + 3 / 4 + 3 / 5) / 5)
    assert curve["random"] == pytest.approx(3 / 5) and curve["n"] == 5 and curve["left_out"] == 0
    shuffled = [3, 0, 4, 1, 2]  # the order of the rows does not matter
    again = accuracy_coverage(np.array([1, 0, 1, 1, 0])[shuffled], np.array([5, 4, 3, 2, 1])[shuffled])
    assert again["area"] == pytest.approx(curve["area"])


def test_tied_certainties_give_the_expectation_over_their_orders():
    # certainty 2 (right), then a tie at 1 (one right, one wrong), then 0 (wrong). The two orders of the tie
    # give the 2 surest an accuracy of 1 or 1/2: expected 3/4. The 3 surest: 2/3 either way.
    curve = accuracy_coverage([1, 1, 0, 0], [2, 1, 1, 0], coverages=[0.25, 0.5, 0.75, 1.0])
    assert curve["accuracy"] == pytest.approx([1, 3 / 4, 2 / 3, 1 / 2])
    assert curve["area"] == pytest.approx((1 + 3 / 4 + 2 / 3 + 1 / 2) / 4)
    flat = accuracy_coverage([1, 0, 1, 1], [0.3] * 4)  # a signal that ties everything knows nothing
    assert flat["accuracy"] == pytest.approx([3 / 4] * 10) and flat["area"] == pytest.approx(3 / 4)


def test_nan_answers_are_left_out_and_counted_nan_signals_refused():
    curve = accuracy_coverage([1, np.nan, 0], [2, 5, 1])
    assert curve["n"] == 2 and curve["left_out"] == 1
    assert curve["area"] == pytest.approx((1 + 1 / 2) / 2)
    assert accuracy_coverage([0, 1], [np.inf, 1])["accuracy"][0] == 0  # +inf is the surest, not an error
    with pytest.raises(ValueError, match=r"NaN or -inf in 1 row\(s\) \(0-based\): \[1\]"):
        accuracy_coverage([1, 0], [1, np.nan])
    with pytest.raises(ValueError, match="every one is NaN"):
        accuracy_coverage([np.nan], [1])


def test_a_signal_that_ranks_the_mistakes_beats_a_random_one():
    rng = np.random.default_rng(0)
    correct = (rng.random(200) < 0.7).astype(float)
    right = int(correct.sum())
    perfect = accuracy_coverage(correct, correct + 0.01 * rng.random(200))  # every mistake last
    # by hand: the `right` surest are all right, then the k surest hold `right` right answers
    expected = (right + sum(right / k for k in range(right + 1, 201))) / 200
    assert perfect["area"] == pytest.approx(expected)
    random = accuracy_coverage(correct, rng.random(200))
    backwards = accuracy_coverage(correct, -correct)  # every mistake first
    assert perfect["area"] > random["area"] > backwards["area"]
    assert abs(random["area"] - correct.mean()) < 0.1  # random: about the overall accuracy


def test_selective_error_by_hand():
    labels = [0.0, 1.0, 0.5, 0.5, np.nan]
    predictions = [0.0, 0.75, 0.5, 0.0, 0.3]
    report = selective_error(labels, predictions, uncertainty=[0.1, 0.2, 0.3, 0.4, 0.0])
    # the missing label is left out; the surer half is rows 0 and 1: errors 0 and .25
    assert report["n"] == 4 and report["left_out"] == 1 and report["kept"] == 2
    assert report["mae_surer"] == pytest.approx(0.125)
    assert report["mae_random"] == pytest.approx((0 + 0.25 + 0 + 0.5) / 4)  # exact expectation
    # R²@50 on rows 0, 1 around their own mean .5: SS_tot = .5, SS_res = .0625
    assert report["r2_surer"] == pytest.approx(1 - 0.0625 / 0.5)


def test_selective_error_shares_the_cut_among_tied_rows():
    # rows 1 and 2 tie at the cut (the ratings of one response share its width): each counts one half
    report = selective_error([0.0, 1.0, 0.5, 0.5], [0.0, 0.75, 0.5, 0.0], uncertainty=[0.1, 0.2, 0.2, 0.4])
    assert report["mae_surer"] == pytest.approx((0 + 0.5 * 0.25 + 0.5 * 0) / 2)
    mean = (0 * 1 + 1 * 0.5 + 0.5 * 0.5) / 2  # weights 1, 1/2, 1/2
    total = 1 * mean**2 + 0.5 * (1 - mean) ** 2 + 0.5 * (0.5 - mean) ** 2
    assert report["r2_surer"] == pytest.approx(1 - 0.5 * 0.25**2 / total)


def test_r2_of_a_random_half_is_the_mean_over_halves(monkeypatch):
    from itertools import combinations

    labels = np.array([0.0, 0.2, 0.9, 0.4, 1.0, 0.6])
    predictions = np.array([0.1, 0.3, 0.7, 0.5, 0.8, 0.2])

    def r2(rows):
        y, p = labels[list(rows)], predictions[list(rows)]
        return 1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2)

    exact = np.mean([r2(rows) for rows in combinations(range(6), 3)])
    monkeypatch.setattr(evaluation, "RANDOM_DRAWS", 20000)
    report = selective_error(labels, predictions, uncertainty=np.arange(6.0))
    assert report["r2_random"] == pytest.approx(exact, abs=0.02)
    assert report == selective_error(labels, predictions, uncertainty=np.arange(6.0))  # seeded


def test_rating_selective_error_ranks_by_width_and_a_constant_width_is_a_random_half():
    levels = [0.1, 0.5, 0.9]
    # one attribute; medians .5; widths .1, .2, .6, .8; labels .5, .6, 0, 1 -> errors 0, .1, .5, .5
    predictions = np.array([[[0.45, 0.5, 0.55]], [[0.4, 0.5, 0.6]], [[0.2, 0.5, 0.8]], [[0.1, 0.5, 0.9]]])
    labels = np.array([[0.5], [0.6], [0.0], [1.0]])
    report = rating_selective_error(labels, predictions, levels, ["a"])["a"]
    assert report["mae_surer"] == pytest.approx(0.05) and report["mae_random"] == pytest.approx(0.275)
    assert report["interval"] == 0.8
    constant = predictions[:, :, [1]] + np.array([-0.2, 0.0, 0.2])  # every width .4: nothing to rank by
    flat = rating_selective_error(labels, constant, levels, ["a"])["a"]
    assert flat["mae_surer"] == pytest.approx(flat["mae_random"])


def test_pair_signals_by_hand_with_and_without_members():
    chosen_q = np.array([[0.0, 1.0], [0.5, 0.5]])
    rejected_q = np.array([[0.0, 0.5], [0.5, 0.5]])
    signals = pair_ranking_signals([0.5, 0.6], [0.25, 0.2], chosen_q, rejected_q)
    assert set(signals) == {"margin", "probability", "effect_size"}  # no members: no epistemic signal
    np.testing.assert_allclose(signals["margin"], [0.25, 0.4])
    # pair 0: chosen atoms {0, 1}, rejected {0, .5}: wins 1 > 0, 1 > .5, ties 0 = 0 -> (2 + 1/2) / 4
    np.testing.assert_allclose(signals["probability"], [2.5 / 4 - 0.5, 0.0])
    # pair 0: variances .25 and .0625 -> pooled sqrt(.15625); pair 1: margin .6 - .2 of point masses
    assert signals["effect_size"][0] == pytest.approx(0.25 / np.sqrt(0.15625))
    with_members = pair_ranking_signals(
        [0.5, 0.6],
        [0.2, 0.6],
        chosen_q,
        rejected_q,
        chosen_epistemic=[0.3, 0.0],
        rejected_epistemic=[0.4, 0.0],
    )
    np.testing.assert_allclose(with_members["epistemic"], [-0.5, 0.0])  # sqrt(.3² + .4²)
    np.testing.assert_allclose(with_members["margin_over_epistemic"], [0.3 / 0.5, 0.0])  # a zero margin: 0


def test_pair_ranking_report_counts_ties_as_given():
    report = pair_ranking_report([1, 0.5, 0], {"margin": np.array([3.0, 2.0, 1.0])})
    assert report["pairs"] == 3 and report["accuracy"] == pytest.approx(0.5)
    assert report["signals"]["margin"]["area"] == pytest.approx((1 + 0.75 + 0.5) / 3)


def test_evaluate_pairs_adds_the_epistemic_signals_when_the_model_has_members():
    from qrm_hf.evaluation import evaluate_pairs
    from qrm_hf.scoring import score_conversations

    tokenizer = make_tokenizer()
    rows = [{"prompt": f"w1{i}", "chosen": f"w2{i} w30", "rejected": f"w3{i}"} for i in range(6)]
    plain = evaluate_pairs(make_qrm(seed=4), tokenizer, rows)["ranking"]
    assert set(plain["signals"]) == {"margin", "probability", "effect_size"}
    model = make_qrm(seed=4, num_members=3)
    ranking = evaluate_pairs(model, tokenizer, rows)["ranking"]
    assert {"epistemic", "margin_over_epistemic"} <= set(ranking["signals"])
    # the epistemic signal is minus the members' spread of the pair, from the model's own outputs
    sides = [[{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row[side]}]
             for row in rows for side in ("chosen", "rejected")]  # fmt: skip
    scored = score_conversations(model, tokenizer, sides)
    spread = scored["reward_epistemic_std"].double().view(-1, 2)
    assert spread.min() > 0
    chosen, rejected = scored["logits"].double().view(-1, 2).unbind(-1)
    correct = ((chosen > rejected).double() + 0.5 * (chosen == rejected).double()).numpy()
    certainty = -(spread**2).sum(-1).sqrt()
    assert ranking["signals"]["epistemic"]["area"] == pytest.approx(
        accuracy_coverage(correct, certainty.numpy())["area"]
    )


def test_evaluate_cli_reports_ranking_and_selective_error(tmp_path, capsys):
    from qrm_hf.training.assemble import save_qrm

    model_dir = save_qrm(
        make_qrm(seed=2, attribute_names=["a", "b", "c"]), tmp_path / "model", tokenizer=make_tokenizer()
    )
    ratings, pairs = tmp_path / "ratings.jsonl", tmp_path / "pairs.jsonl"
    ratings.write_text("".join(json.dumps(row) + "\n" for row in rating_rows()))
    pair_rows = [
        {"prompt": f"w1{i % 3}", "chosen": f"w2{i} w3{i}", "rejected": f"w4{i}", "kind": ["x", "y"][i % 2]}
        for i in range(8)
    ]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in pair_rows))
    output, plots = tmp_path / "report.json", tmp_path / "plots"
    code, err = run_cli(
        capsys,
        "evaluate",
        model_dir,
        "--ratings",
        ratings,
        "--pairs",
        pairs,
        "--plots",
        plots,
        "--output",
        output,
    )
    assert code == 0, err
    report = json.loads(output.read_text())
    ranking = report["pairs"]["ranking"]
    assert set(ranking["signals"]) == {"margin", "probability", "effect_size"} and ranking["pairs"] == 8
    for curve in ranking["signals"].values():
        assert {"coverage", "accuracy", "area", "random", "n", "left_out"} <= set(curve)
        assert curve["accuracy"][-1] == pytest.approx(report["pairs"]["accuracy"])  # 100 %: every pair
    selective = report["ratings"]["models"]["qrm"]["selective_error"]
    assert set(selective) == {"a", "b", "c"}
    assert {"mae_surer", "mae_random", "r2_surer", "r2_random", "n", "left_out"} <= set(selective["b"])
    assert selective["b"]["n"] == 15 and selective["b"]["left_out"] == 1  # b: one of 16 labels missing
    for name in ("reliability.png", "pit.png", "selective_error.png", "accuracy_coverage.png"):
        assert (plots / name).stat().st_size > 0
    assert set(report["pairs"]["accuracy_by_kind"]) == {"x", "y"}


def test_group_column_and_contrast_are_the_users(tmp_path):
    from qrm_hf.evaluation import evaluate_ratings

    model, tokenizer = make_qrm(seed=5, attribute_names=["a", "b", "c"]), make_tokenizer()
    buckets = {"clear": "low", "controversial": "high"}
    rows = [
        {**{key: value for key, value in row.items() if key != "kind"}, "bucket": buckets[row["kind"]]}
        for row in rating_rows()
    ]
    default = evaluate_ratings(model, tokenizer, rows, (0.0, 4.0))
    assert "pinball_by_kind" not in default and "by_kind" not in default["models"]["qrm"]  # no `kind` column
    report = evaluate_ratings(
        model, tokenizer, rows, (0.0, 4.0), group_column="bucket", contrast=("high", "low")
    )
    assert set(report["pinball_by_kind"]) == {"low", "high"} and report["group_column"] == "bucket"
    qrm = report["models"]["qrm"]
    ratio = qrm["by_kind"]["high"]["a"]["width_90"] / qrm["by_kind"]["low"]["a"]["width_90"]
    assert qrm["width_ratio"]["a"] == pytest.approx(ratio)
    # the annotators' spread by hand: high rows 0, 4, 0, 4 -> std .5; low rows 3, 3, 3, 4 -> std .108253
    assert report["annotator_spread_ratio"]["a"] == pytest.approx(0.5 / (np.std([3, 3, 3, 4]) / 4))


def test_group_column_on_the_command_line(tmp_path, capsys):
    from qrm_hf.training.assemble import save_qrm

    model_dir = save_qrm(
        make_qrm(seed=2, attribute_names=["a", "b", "c"]), tmp_path / "model", tokenizer=make_tokenizer()
    )
    ratings, output = tmp_path / "ratings.jsonl", tmp_path / "report.json"
    rows = [{**row, "bucket": row["kind"][:3]} for row in rating_rows()]
    ratings.write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, err = run_cli(capsys, "evaluate", model_dir, "--ratings", ratings, "--group-column", "bucket",
                        "--contrast", "con", "cle", "--output", output)  # fmt: skip
    assert code == 0, err
    report = json.loads(output.read_text())["ratings"]
    assert set(report["pinball_by_kind"]) == {"cle", "con"} and report["contrast"] == ["con", "cle"]
    assert (
        set(report["annotator_spread_ratio"])
        == set(report["models"]["qrm"]["width_ratio"])
        == {"a", "b", "c"}
    )


class ReadDistribution(ReadScore):
    """`ReadScore` that also gives each response the reward quantiles (r - .1, r, r + .1)."""

    def __call__(self, conversations):
        scores = np.array(super().__call__(conversations))
        return {"scores": scores, "reward_quantiles": scores[:, None] + np.array([-0.1, 0.0, 0.1])}


def test_rewardbench_ranks_the_pairs_strict_ties_wrong():
    rows = [row for row in V1_ROWS if row["subset"] in ("alpacaeval-easy", "mt-bench-easy", "llmbar-natural")]
    # (chosen, rejected): (2, 1) right, margin 1; (1, 1) a tie, wrong, margin 0; (3, 1) right, margin 2;
    # (1, 2) wrong, margin 1; (5, 4) right, margin 1. Surest first: 2 (right), then three tied at margin 1
    # (two right of three), then 0 (wrong).
    report = evaluate_rewardbench(rows, ReadDistribution())
    ranking = report["ranking"]
    assert (
        ranking["pairs"] == 5
        and ranking["left_out_rows"] == 0
        and ranking["accuracy"] == pytest.approx(3 / 5)
    )
    tied = 2 / 3
    running = [1, 1 + tied, 1 + 2 * tied, 1 + 3 * tied, 3]
    area = np.mean([right / k for k, right in enumerate(running, start=1)])
    assert ranking["signals"]["margin"]["area"] == pytest.approx(area)
    assert "ranking" not in evaluate_rewardbench(rows, ReadScore())  # scores only: nothing to rank with


def test_rewardbench_2_pairs_the_first_chosen_with_its_strongest_rival():
    report = evaluate_rewardbench(V2_ROWS, ReadDistribution())
    ranking = report["ranking"]
    assert ranking["left_out_rows"] == 4 and ranking["pairs"] == 4  # the four Ties rows are not pairs
    # Factuality: 3 vs 2 (right, margin 1), 1 vs 1 (tied at the top: 1/2, margin 0), 0 vs 1 (wrong, margin 1);
    # Focus: 2 vs 1 (right, margin 1)
    assert ranking["accuracy"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert ranking["signals"]["margin"]["accuracy"][-1] == pytest.approx(ranking["accuracy"])
    tied = 2 / 3  # three pairs tied at margin 1, two of them right; then the 1/2 at margin 0
    running = [tied, 2 * tied, 3 * tied, 2.5]
    assert ranking["signals"]["margin"]["area"] == pytest.approx(
        np.mean([r / k for k, r in enumerate(running, 1)])
    )


def test_rewardbench_command_prints_and_plots_the_ranking(tmp_path, capsys):
    from qrm_hf.training.assemble import save_qrm

    model_dir = save_qrm(make_qrm(seed=1), tmp_path / "model", tokenizer=make_tokenizer())
    data = tmp_path / "filtered.jsonl"
    rows = [
        {"prompt": "w11", "chosen": f"w2{i} w3{i}", "rejected": f"w4{i}", "subset": "hep-go", "id": i}
        for i in range(6)
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output, plots = tmp_path / "rb.json", tmp_path / "plots"
    code, err = run_cli(
        capsys, "rewardbench", model_dir, "--data", data, "--output", output, "--plots", plots
    )
    assert code == 0, err
    ranking = json.loads(output.read_text())["ranking"]
    assert set(ranking["signals"]) == {"margin", "probability", "effect_size"} and ranking["pairs"] == 6
    assert (plots / "accuracy_coverage.png").stat().st_size > 0


def test_widths_equal_up_to_rounding_tie_instead_of_ranking_by_their_rounding_errors():
    """A constant-width model (a point prediction plus fixed residual quantiles, like the ridge baseline) has
    widths q_hi - q_lo that differ only in their last bits with the size of q: its surer half is no surer
    than a random one, and its accuracy-coverage curve is flat."""
    rng = np.random.default_rng(0)
    center = rng.uniform(0, 1, 200)
    low, high = center + (-0.1), center + 0.3
    widths = high - low
    assert len(np.unique(widths)) > 1  # the rounding noise the ranking must not read
    labels = center + rng.normal(0, 0.2, 200)
    report = evaluation.selective_error(labels, center, widths)
    assert report["mae_surer"] == pytest.approx(report["mae_random"])
    correct = (rng.uniform(size=200) < 0.7).astype(float)
    curve = accuracy_coverage(correct, -widths)
    assert curve["area"] == pytest.approx(correct.mean())
    assert np.allclose(curve["accuracy"], correct.mean())
