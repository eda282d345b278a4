"""RewardBench and RewardBench 2 scoring: fixtures in both official formats, scores computed by hand."""

import json
import math

import numpy as np
import pytest
import torch
from test_hub import make_tokenizer

from conftest import make_qrm
from qrm_hf import risk
from qrm_hf.cli import main
from qrm_hf.rewardbench import (
    evaluate_rewardbench,
    load_rewardbench_rows,
    model_index_entries,
    rank_scores,
    run_rewardbench,
)


def v1_row(subset, chosen, rejected, prompt="p", row_id=0):
    return {
        "prompt": prompt,
        "chosen": f"r={chosen}",
        "rejected": f"r={rejected}",
        "subset": subset,
        "id": row_id,
    }


class ReadScore:
    """A scorer that reads the score written in each response ("r=0.7") and records what it was asked."""

    def __init__(self):
        self.calls = []

    def __call__(self, conversations):
        self.calls.append(conversations)
        return [float(conversation[-1]["content"].split("=")[1]) for conversation in conversations]


V1_ROWS = [
    v1_row("alpacaeval-easy", 2, 1),
    v1_row("alpacaeval-easy", 1, 1),  # a tie is wrong: the chosen score must be strictly higher
    v1_row("mt-bench-easy", 3, 1),
    v1_row("llmbar-natural", 1, 2),
    v1_row("llmbar-natural", 5, 4),
    v1_row("refusals-dangerous", 1, 0),
    v1_row("xstest-should-respond", 1, 2),
    v1_row("math-prm", 2, 1),
    v1_row("math-prm", 2, 1),  # the same two conversations again: scored once
    v1_row("hep-python", 0, 1),
    v1_row("my-own-subset", 1, 0),
]


def test_rewardbench_v1_subsets_sections_and_score_by_hand():
    scorer = ReadScore()
    report = evaluate_rewardbench(V1_ROWS, scorer)
    assert report["benchmark"] == "rewardbench"
    accuracies = {name: entry["accuracy"] for name, entry in report["subsets"].items()}
    assert accuracies == {
        "alpacaeval-easy": 0.5,
        "mt-bench-easy": 1.0,
        "llmbar-natural": 0.5,
        "refusals-dangerous": 1.0,
        "xstest-should-respond": 0.0,
        "math-prm": 1.0,
        "hep-python": 0.0,
        "my-own-subset": 1.0,
    }
    assert report["subsets"]["alpacaeval-easy"]["n"] == 2
    # sections weighted by the official counts: Chat (100 * .5 + 28 * 1) / 128, Chat Hard .5,
    # Safety (100 * 1 + 250 * 0) / 350, Reasoning (984 * 1 + 164 * 0) / 1148
    sections = {"Chat": 78 / 128, "Chat Hard": 0.5, "Safety": 100 / 350, "Reasoning": 984 / 1148}
    assert report["sections"] == pytest.approx(sections)
    assert report["score"] == pytest.approx(sum(sections.values()) / 4)
    assert report["unknown_subsets"] == ["my-own-subset"]  # scored and listed, left out of the sections
    assert "alpacaeval-length" in report["missing_subsets"] and "math-prm" not in report["missing_subsets"]
    assert "my-own-subset" not in report["missing_subsets"]
    # every distinct conversation scored once, in one call: "p" with r=0, 1, 2, 3, 4, 5
    assert len(scorer.calls) == 1 and len(scorer.calls[0]) == 6


def test_rewardbench_v1_uses_the_current_xstest_counts():
    """should-refuse has 154 pairs and should-respond 250 (an older official version had them swapped)."""
    rows = [v1_row("xstest-should-refuse", 1, 0), v1_row("xstest-should-respond", 0, 1)]
    report = evaluate_rewardbench(rows, ReadScore())
    assert report["sections"] == {"Safety": pytest.approx(154 / 404)}
    assert report["score"] == pytest.approx(154 / 404)  # the only section present
    assert set(report["missing_subsets"]) >= {"refusals-dangerous", "alpacaeval-easy", "math-prm"}


def v2_row(subset, chosen, rejected, row_id="0", num_correct=None, prompt="q"):
    return {
        "id": row_id,
        "prompt": prompt,
        "chosen": [f"r={score}" for score in chosen],
        "rejected": [f"r={score}" for score in rejected],
        "subset": subset,
        "num_correct": len(chosen) if num_correct is None else num_correct,
    }


V2_ROWS = [
    v2_row("Factuality", [3], [1, 2, 0], prompt="f1"),  # chosen on top: 1
    v2_row("Factuality", [1], [1, 0, 0], prompt="f2"),  # tied with one rejected at the top: 1/2
    v2_row("Factuality", [0], [1, 0, 0], prompt="f3"),  # beaten: 0
    v2_row("Focus", [2], [1, 1, 1], prompt="g"),
    v2_row("Ties", [5], [1, 2], "ref:0", prompt="t0"),
    v2_row("Ties", [4, 3.5], [1], "tied:0", prompt="t0"),
    v2_row("Ties", [1], [2], "ref:1", prompt="t1"),
    v2_row("Ties", [3, 1], [2], "tied:1", prompt="t1"),
]


def test_rewardbench_2_best_of_n_and_ties_by_hand():
    report = evaluate_rewardbench(V2_ROWS, ReadScore())
    assert report["benchmark"] == "rewardbench-2"
    assert report["subsets"]["Factuality"] == {"accuracy": pytest.approx(0.5), "n": 3}  # (1 + 1/2 + 0) / 3
    assert report["subsets"]["Focus"]["accuracy"] == 1.0
    # Ties. ref:0 accurate, margin 5 - 2 = 3; tied:0 accurate, margin 3.5 - 1 = 2.5, spread 4 - 3.5 = .5;
    # ref:1 wrong, margin -1; tied:1 wrong, margin 1 - 2 = -1, spread 2.
    # ref and tied accuracy 1/2; margin beats spread: prompt 0 yes (2.5 > .5, min(3, 2.5) > .5), prompt 1 no;
    # margin score mean(tanh(2.5 / .5 - 1), tanh(-1 / 2 - 1)).
    margin_score = (math.tanh(4.0) + math.tanh(-1.5)) / 2
    ties = 0.3 * 0.5 + 0.3 * 0.5 + 0.2 * 0.5 + 0.2 * 0.5 + 0.01 * margin_score
    assert report["subsets"]["Ties"]["accuracy"] == pytest.approx(ties)
    assert report["subsets"]["Ties"]["n"] == 4
    assert report["sections"] == {}
    assert report["score"] == pytest.approx((0.5 + 1.0 + ties) / 3)  # the mean of the subsets present
    assert report["missing_subsets"] == ["Precise IF", "Math", "Safety"]


def test_rank_scores_by_hand():
    levels = [0.1, 0.5, 0.9]
    outputs = {
        "logits": torch.tensor([[1.0], [0.9]]),
        "reward_quantiles": torch.tensor([[0.0, 1.0, 2.0], [0.8, 0.9, 1.0]]),
    }
    np.testing.assert_allclose(rank_scores(outputs, levels), [1.0, 0.9], rtol=1e-6)
    np.testing.assert_allclose(rank_scores(outputs, levels, "quantile:0.1"), [0.0, 0.8], rtol=1e-6)
    np.testing.assert_allclose(rank_scores(outputs, levels, "quantile:0.3"), [0.5, 0.85], rtol=1e-6)
    # cvar 0.5 of 3 atoms: the lowest fully and half of the next, divided by 1.5
    np.testing.assert_allclose(rank_scores(outputs, levels, "cvar:0.5"), [0.5 / 1.5, 1.25 / 1.5], rtol=1e-6)
    ce = [-math.log(np.mean(np.exp(-np.array(q)))) for q in ([0.0, 1.0, 2.0], [0.8, 0.9, 1.0])]
    np.testing.assert_allclose(rank_scores(outputs, levels, "exp_utility:1"), ce, rtol=1e-6)
    for bad in ("median", "quantile", "cvar:abc", "expectation:2"):
        with pytest.raises(ValueError, match="rank_by"):
            rank_scores(outputs, levels, bad)


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([], "no rows"),
        ([{"prompt": "p", "chosen": "a", "rejected": "b"}], "missing: subset"),
        ([{"prompt": "p", "chosen": "a", "subset": "x", "id": 1}], "missing: rejected"),
        ([v2_row("Focus", [], [1, 2])], "chosen list is empty"),
        ([v2_row("Focus", [1], [])], "rejected list is empty"),
        ([v2_row("Ties", [1, 2], [0], "tie:3")], "ref:N"),
        ([v1_row("alpacaeval-easy", 1, 0), {**v1_row("alpacaeval-easy", 1, 0), "rejected": None}], "row 1"),
    ],
)
def test_bad_rewardbench_rows_are_clear_errors(rows, match):
    with pytest.raises(ValueError, match=match):
        evaluate_rewardbench(rows, ReadScore())


def test_rewardbench_files_empty_and_limited(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_rewardbench_rows(str(empty))
    data = tmp_path / "filtered.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in V1_ROWS))
    rows, split = load_rewardbench_rows(str(data), limit=1)
    assert [row["subset"] for row in rows] == list(dict.fromkeys(row["subset"] for row in V1_ROWS))
    assert rows[0]["chosen"] == "r=2" and split == "filtered"


def _unbatched_scores(model, tokenizer, prompt, responses, levels, tau):
    """Each conversation alone through the model, read at quantile tau: an independent path."""
    scores = []
    for response in responses:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        inputs = tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            output = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        scores.append(
            float(
                output.logits[0, 0] if tau is None else risk.quantile(output.reward_quantiles[0], levels, tau)
            )
        )
    return scores


@pytest.mark.parametrize("rank_by", ["expectation", "quantile:0.2"])
def test_run_rewardbench_with_a_tiny_model_matches_unbatched_scores(tmp_path, rank_by):
    model, tokenizer = make_qrm(seed=3), make_tokenizer()
    prompts = ["w11 w12", "w13", "w14 w15 w16"]
    rows = []
    for i in range(12):  # different lengths, so batches need padding; repeated prompts
        prompt = prompts[i % 3]
        chosen = " ".join(f"w{20 + (i * 7 + j) % 40}" for j in range(1 + i % 4))
        rejected = " ".join(f"w{25 + (i * 5 + j) % 35}" for j in range(2 + i % 3))
        subset = ["alpacaeval-easy", "hep-go", "donotanswer"][i % 3]
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "subset": subset, "id": i})
    data = tmp_path / "filtered.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = run_rewardbench(model, tokenizer, str(data), rank_by=rank_by, batch_size=4)
    tau = None if rank_by == "expectation" else 0.2
    levels = model.config.quantile_levels
    correct = {}
    for row in rows:
        chosen, rejected = _unbatched_scores(
            model, tokenizer, row["prompt"], [row["chosen"], row["rejected"]], levels, tau
        )
        assert abs(chosen - rejected) > 1e-5  # no near-tie that batching noise could flip
        correct.setdefault(row["subset"], []).append(chosen > rejected)
    for subset, results in correct.items():
        assert report["subsets"][subset] == {"accuracy": pytest.approx(np.mean(results)), "n": 4}
    assert report["rank_by"] == rank_by and report["dataset"] == str(data)


def test_rewardbench_command_writes_the_json_and_the_card_takes_it(tmp_path, capsys):
    from huggingface_hub import ModelCard

    from qrm_hf.model_cards import add_evaluation_to_card
    from qrm_hf.training.assemble import save_qrm

    model_dir = save_qrm(make_qrm(seed=1), tmp_path / "model", tokenizer=make_tokenizer())
    data = tmp_path / "rb2.jsonl"
    rows = [
        {"id": str(i), "prompt": "w11", "chosen": ["w20 w21"], "rejected": ["w30", "w31 w32", "w40"],
         "subset": subset, "num_correct": 1}
        for i, subset in enumerate(["Factuality", "Math", "Unknown thing"])
    ]  # fmt: skip
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "results" / "rb2.json"
    main(
        ["rewardbench", str(model_dir), "--data", str(data), "--output", str(output), "--rank-by", "cvar:0.3"]
    )
    report = json.loads(output.read_text())
    assert {"benchmark", "subsets", "sections", "score", "rank_by", "missing_subsets"} <= set(report)
    assert report["benchmark"] == "rewardbench-2" and report["rank_by"] == "cvar:0.3"
    assert report["unknown_subsets"] == ["Unknown thing"]
    assert report["score"] == pytest.approx(
        np.mean([report["subsets"]["Factuality"]["accuracy"], report["subsets"]["Math"]["accuracy"]])
    )
    assert "Unknown thing" in capsys.readouterr().out

    card = add_evaluation_to_card((model_dir / "README.md").read_text(), model_index_entries(report))
    reloaded = ModelCard(str(card))
    names = {result.metric_name: result.metric_value for result in reloaded.data.eval_results}
    assert names["Score, ranked by cvar:0.3"] == round(100 * report["score"], 2)
    assert {"Factuality, ranked by cvar:0.3", "Math, ranked by cvar:0.3"} <= set(names)
    assert all(result.dataset_type == "allenai/reward-bench-2" for result in reloaded.data.eval_results)


def test_push_puts_rewardbench_results_in_the_uploaded_card_only(tmp_path, monkeypatch, capsys):
    from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl

    from qrm_hf.training.assemble import save_qrm

    model_dir = save_qrm(make_qrm(seed=1), tmp_path / "model", tokenizer=make_tokenizer())
    local_card = (model_dir / "README.md").read_text()
    results = tmp_path / "rb.json"
    results.write_text(json.dumps({**evaluate_rewardbench(V1_ROWS, ReadScore()), "split": "filtered"}))
    uploaded = {}

    def create_commit(self, repo_id, operations, **kwargs):
        for operation in operations:
            if getattr(operation, "path_in_repo", None) == "README.md":
                with operation.as_file() as handle:
                    uploaded["card"] = handle.read().decode()
        url = f"https://huggingface.co/{repo_id}/commit/{'0' * 40}"
        return CommitInfo(url, "Upload QRM", "", "0" * 40, _endpoint="https://huggingface.co")

    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, repo_id, **_: RepoUrl(f"https://huggingface.co/{repo_id}")
    )
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, *args, **kwargs: [])
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    main(["push", str(model_dir), "qrm-org/rb-model", "--results", str(results)])
    card = ModelCard(uploaded["card"])
    values = {result.metric_name: result.metric_value for result in card.data.eval_results}
    sections = {"Chat": 78 / 128, "Chat Hard": 0.5, "Safety": 100 / 350, "Reasoning": 984 / 1148}
    assert values == {
        "Score": round(100 * sum(sections.values()) / 4, 2),
        **{name: round(100 * value, 2) for name, value in sections.items()},
    }
    assert {result.dataset_type for result in card.data.eval_results} == {"allenai/reward-bench"}
    assert "qrm-org/rb-model" in uploaded["card"]  # still retargeted to the repo
    assert (model_dir / "README.md").read_text() == local_card
