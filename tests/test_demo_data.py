"""The shipped demo data (data/demo) is what `qrm_hf.training.demo_data` writes from the hand-written
files of data/demo/source, and has the properties the demo relies on."""

import hashlib
import json
import math
import random
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict

import pytest
import yaml

from qrm_hf.io import MARKER, check_output_directory
from qrm_hf.training import demo_data
from qrm_hf.training.demo_data import DEMO_DATA as DATA
from qrm_hf.training.demo_data import Response, load_content

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
def content():
    return load_content()


def read(name: str) -> list[dict]:
    with (DATA / name).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def by_response(rows: list[dict]) -> dict[str, list[dict]]:
    grouped = defaultdict(list)
    for row in rows:
        grouped[row["conversation_id"]].append(row)
    return grouped


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shipped_files_are_what_the_generator_writes(tmp_path):
    """`python -m qrm_hf.training.demo_data` (what `make demo-data` runs) rewrites every shipped file
    byte for byte from data/demo/source."""
    subprocess.run(
        [sys.executable, "-m", "qrm_hf.training.demo_data", "--out", str(tmp_path), "--seed", "0"],
        check=True,
        capture_output=True,
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([*FILES, MARKER])
    for name in FILES:
        assert sha256(tmp_path / name) == sha256(DATA / name), name


def copy_of_source(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(DATA / "source", source)
    return source, yaml.safe_load((source / "prompts.yaml").read_text(encoding="utf-8"))


def write_prompts(source, prompts) -> None:
    (source / "prompts.yaml").write_text(yaml.safe_dump(prompts, allow_unicode=True), encoding="utf-8")


def test_editing_one_prompt_changes_only_its_rows(tmp_path):
    """The data files are what the generator reads, and a prompt's labels are seeded by its key alone."""
    source, prompts = copy_of_source(tmp_path)
    edited = prompts[0]
    edited["responses"][0]["text"] += " It is also home to the Australian War Memorial."
    write_prompts(source, prompts)
    demo_data.write_demo_data(tmp_path / "out", seed=0, source=source)

    def rows_by_prompt(directory):
        rows = defaultdict(list)
        for split in ("train", "heldout"):
            for line in (directory / f"ratings_{split}.jsonl").read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                rows[row["conversation_id"].rsplit("-r", 1)[0]].append(row)
        return rows

    before, after = rows_by_prompt(DATA), rows_by_prompt(tmp_path / "out")
    assert before.keys() == after.keys()
    assert [key for key in before if before[key] != after[key]] == [edited["key"]]
    assert after[edited["key"]][0]["response"].endswith("Australian War Memorial.")


def test_a_misspelt_field_is_named(tmp_path):
    source, prompts = copy_of_source(tmp_path)
    response = prompts[3]["responses"][1]
    response["score"] = response.pop("scores")
    write_prompts(source, prompts)
    with pytest.raises(
        ValueError,
        match=rf"prompt '{prompts[3]['key']}', a response: missing field\(s\) \['scores'\], unknown field\(s\) \['score'\]",
    ):
        load_content(source)


def test_a_disputed_response_under_an_undisputed_category_is_refused(tmp_path):
    """A typo in the data files (group B scores on a factual answer) fails loudly instead of silently
    turning a clear prompt controversial."""
    source, prompts = copy_of_source(tmp_path)
    factual = next(prompt for prompt in prompts if prompt["category"] == "factual")
    factual["responses"][0]["scores_group_b"] = [0, 0, 0]
    write_prompts(source, prompts)
    with pytest.raises(ValueError, match=f"{factual['key']}: category 'factual' does not match"):
        load_content(source)


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


def test_pairs_prefer_the_higher_weighted_mean(content):
    weights = demo_data.weights_by_prompt(content.prompts)
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
            assert margin >= demo_data.MIN_MARGIN, pair


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


def test_content_files_are_consistent(content):
    demo_data.check_content(content)
    assert 60 <= len(content.prompts) <= 80
    kinds = [prompt.kind for prompt in content.prompts]
    assert 0.25 < kinds.count("controversial") / len(kinds) < 0.45


def test_the_ceiling_width_is_that_of_the_label_draws():
    """The README's ceiling ratio comes from `true_width_90`; check it against labels drawn the way the
    dataset draws them (`rate`): a clear response, one at the edge of the scale, a disputed one."""
    rng = random.Random(0)
    annotators = [1, 4, 12, 15, 17]  # two of group A, three of group B
    disputed = Response("a response", (4, 4, 3), (1, 4, 1))
    cases = [
        (Response("a response", (2, 3, 4)), (0, 1, 2)),
        (Response("a response", (0, 1, 4)), (0, 1, 2)),
        (disputed, (0, 1)),
    ]
    for response, attributes in cases:
        for attribute in attributes:
            name = demo_data.SCORED[attribute]
            draws = (demo_data.rate(response, rng.choice(annotators), rng)[name] for _ in range(20_000))
            labels = sorted(label for label in draws if label is not None)  # correctness is sometimes missing
            drawn = (
                labels[math.ceil(0.95 * len(labels)) - 1] - labels[math.ceil(0.05 * len(labels)) - 1]
            ) / 4
            assert demo_data.true_width_90(response, annotators, attribute) == drawn, (response, name)
    # Safety of the disputed response: group A's upper tail holds exactly 5 % (2 annotators of 5, each one
    # point up with probability 1/8), so every q0.95 in [3, 4] is a population quantile: the middle is used.
    assert demo_data.true_width_90(disputed, annotators, 2) == (3.5 - 0) / 4


def test_stock_responses_are_clear_cut_and_drawn_per_prompt(content):
    for prompt in content.prompts:
        stock = content.stock_responses(prompt)
        assert content.responses(prompt)[len(prompt.responses) :] == stock
        assert all(response.kind == "clear" for response in stock)  # stock answers are never disputed
        assert {r.text for r in stock}.isdisjoint(r.text for r in prompt.responses)


def test_an_output_directory_of_other_files_is_refused(tmp_path):
    """`--out` is refused like every output (`qrm_hf.io.claim_directory`) when it holds files the generator
    did not write: a README.md of the user's would be replaced. One line, exit status 2."""
    out = tmp_path / "project"
    out.mkdir()
    (out / "README.md").write_text("mine")
    run = subprocess.run(
        [sys.executable, "-m", "qrm_hf.training.demo_data", "--out", str(out)], capture_output=True, text=True
    )
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "did not write (README.md" in run.stderr and (out / "README.md").read_text() == "mine"
    (out / "README.md").unlink()
    out.rmdir()
    demo_data.write_demo_data(tmp_path / "new", source=DATA / "source")  # marked, so it may write there again
    demo_data.write_demo_data(tmp_path / "new", source=DATA / "source")
    assert sorted(path.name for path in (tmp_path / "new").iterdir()) == sorted([*FILES, MARKER])
    check_output_directory(DATA, demo_data.OUTPUT_OWNER)  # data/demo (with source/) is marked as its output


def test_a_bad_stock_responses_file_is_named(tmp_path):
    """A misspelt field of stock_responses.yaml, or a YAML syntax error, names the file (it was a KeyError)."""
    source, _ = copy_of_source(tmp_path)
    stock_file = source / "stock_responses.yaml"
    stock = yaml.safe_load(stock_file.read_text(encoding="utf-8"))
    style = next(iter(stock["styles"]))
    stock["styles"][style]["text"] = stock["styles"][style].pop("texts")
    stock_file.write_text(yaml.safe_dump(stock, allow_unicode=True), encoding="utf-8")
    with pytest.raises(
        ValueError, match=rf"stock_responses.yaml, style '{style}': missing field\(s\) \['texts'\]"
    ):
        load_content(source)
    stock_file.write_text("styles: [unclosed\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"stock_responses.yaml, line 2: "):
        load_content(source)
