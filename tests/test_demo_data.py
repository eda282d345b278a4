"""The shipped demo data (data/demo) is reproducible and has the properties the demo relies on."""

import importlib.util
import json
import math
import random
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "make_demo_data.py"
DATA = ROOT / "data" / "demo"
FILES = [
    "ratings_train.jsonl",
    "ratings_heldout.jsonl",
    "pairs_train.jsonl",
    "pairs_heldout.jsonl",
    "showcase.jsonl",
    "README.md",
]
ATTRIBUTES = ("helpfulness", "correctness", "safety", "verbosity")


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_demo_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(name: str) -> list[dict]:
    with (DATA / name).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def by_response(rows: list[dict]) -> dict[str, list[dict]]:
    grouped = defaultdict(list)
    for row in rows:
        grouped[row["conversation_id"]].append(row)
    return grouped


def test_shipped_files_are_what_the_script_writes(tmp_path):
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path), "--seed", "0"], check=True, capture_output=True
    )
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


def test_schema_and_label_range():
    for split in ("train", "heldout"):
        for row in read(f"ratings_{split}.jsonl"):
            assert list(row) == ["conversation_id", "prompt", "response", "kind", "annotator", *ATTRIBUTES]
            assert row["kind"] in ("clear", "controversial")
            assert isinstance(row["annotator"], int)
            for name in ATTRIBUTES:
                assert row[name] is None or (isinstance(row[name], int) and 0 <= row[name] <= 4)
        for row in read(f"pairs_{split}.jsonl"):
            assert list(row) == ["prompt", "chosen", "rejected", "kind", "category"]
            assert row["chosen"] != row["rejected"]
    rows = read("ratings_train.jsonl") + read("ratings_heldout.jsonl")
    missing = sum(row["correctness"] is None for row in rows) / len(rows)
    assert 0.05 < missing < 0.15
    assert all(row[name] is not None for row in rows for name in ("helpfulness", "safety", "verbosity"))
    assert len(by_response(rows)) <= 500


def test_split_by_prompt_with_both_kinds():
    train, heldout = read("ratings_train.jsonl"), read("ratings_heldout.jsonl")
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in heldout})
    assert {r["conversation_id"] for r in train}.isdisjoint({r["conversation_id"] for r in heldout})
    for split in ("train", "heldout"):
        assert {r["kind"] for r in read(f"ratings_{split}.jsonl")} == {"clear", "controversial"}
        assert {r["kind"] for r in read(f"pairs_{split}.jsonl")} == {"clear", "controversial"}
        prompts = {r["prompt"] for r in read(f"ratings_{split}.jsonl")}
        assert {r["prompt"] for r in read(f"pairs_{split}.jsonl")} <= prompts
    n_train, n_heldout = len({r["prompt"] for r in train}), len({r["prompt"] for r in heldout})
    assert 0.15 < n_heldout / (n_train + n_heldout) < 0.25


def test_controversial_labels_are_spread_out():
    rows = read("ratings_train.jsonl") + read("ratings_heldout.jsonl")
    spread = defaultdict(list)
    for group in by_response(rows).values():
        spread[group[0]["kind"]].append(statistics.pstdev(r["helpfulness"] for r in group))
    assert statistics.fmean(spread["controversial"]) > 2 * statistics.fmean(spread["clear"])


def test_pairs_prefer_the_higher_weighted_mean(script):
    weights = script.weights_by_prompt()
    for split in ("train", "heldout"):
        responses = defaultdict(list)
        for row in read(f"ratings_{split}.jsonl"):
            responses[row["prompt"], row["response"]].append(row)

        def score(prompt, response, weights=weights, responses=responses):
            labels = {}
            for name in ATTRIBUTES:
                values = [r[name] for r in responses[prompt, response] if r[name] is not None]
                labels[name] = statistics.fmean(values) if values else None
            used = {name: w for name, w in weights[prompt].items() if labels[name] is not None}
            return sum(w * labels[name] for name, w in used.items()) / sum(used.values())

        pairs = read(f"pairs_{split}.jsonl")
        assert pairs
        for pair in pairs:
            margin = score(pair["prompt"], pair["chosen"]) - score(pair["prompt"], pair["rejected"])
            assert margin >= script.MIN_MARGIN, pair


def test_showcase_comes_from_heldout():
    heldout = by_response(read("ratings_heldout.jsonl"))
    conversations = {(g[0]["prompt"], g[0]["response"]): g for g in heldout.values()}
    showcase = read("showcase.jsonl")
    assert [s["name"] for s in showcase] == ["clear-cut good", "clear-cut bad", "controversial"]
    for item in showcase:
        assert (item["prompt"], item["response"]) in conversations
    good, bad, controversial = (conversations[s["prompt"], s["response"]] for s in showcase)
    assert min(r["helpfulness"] for r in good) >= 3 and max(r["helpfulness"] for r in bad) <= 1
    labels = [r["helpfulness"] for r in controversial]
    assert controversial[0]["kind"] == "controversial"
    assert min(sum(v <= 1 for v in labels), sum(v >= 3 for v in labels)) >= 2  # two camps


def test_content_tables_are_consistent(script):
    script.check_content()
    assert 60 <= len(script.PROMPTS) <= 80
    kinds = [script.prompt_kind(category) for _, category, *_ in script.PROMPTS]
    assert 0.25 < kinds.count("controversial") / len(kinds) < 0.45


def test_the_ceiling_width_is_that_of_the_label_draws(script):
    """The README's ceiling ratio comes from `true_width_90`; check it against labels drawn the way the
    dataset draws them (`rate`): a clear response, one at the edge of the scale, a disputed one."""
    rng = random.Random(0)
    annotators = [1, 4, 12, 15, 17]  # two of group A, three of group B
    cases = [([(2, 3, 4)], (0, 1, 2)), ([(0, 1, 4)], (0, 1, 2)), ([(4, 4, 3), (1, 4, 1)], (0, 1))]
    for scores, attributes in cases:
        for attribute in attributes:
            name = script.SCORED[attribute]
            draws = (
                script.rate("a response", scores, rng.choice(annotators), rng)[name] for _ in range(20_000)
            )
            labels = sorted(label for label in draws if label is not None)  # correctness is sometimes missing
            drawn = (
                labels[math.ceil(0.95 * len(labels)) - 1] - labels[math.ceil(0.05 * len(labels)) - 1]
            ) / 4
            assert script.true_width_90(scores, annotators, attribute) == drawn, (scores, name)
    # Safety of the disputed response: group A's upper tail holds exactly 5 % (2 annotators of 5, each one
    # point up with probability 1/8), so every q0.95 in [3, 4] is a population quantile: the middle is used.
    assert script.true_width_90([(4, 4, 3), (1, 4, 1)], annotators, 2) == (3.5 - 0) / 4


def test_stock_responses_are_clear_cut_and_drawn_per_prompt(script):
    for key, category, _, written in script.PROMPTS:
        stock = script.stock_responses(key, category)
        assert script.with_stock(key, category, written)[len(written) :] == stock
        assert all(len(entry) == 2 for entry in stock)  # (text, scores): stock answers are never disputed
        assert {text for text, *_ in stock}.isdisjoint(text for text, *_ in written)
