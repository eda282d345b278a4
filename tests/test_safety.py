"""Safe and reliable under bad input. No code of a model directory runs without consent; the CLI
refuses bad input early, in one line naming the cause, with exit status 2.

Models are tiny random QRMs saved with the word-level tokenizer of `test_hub` (`saved_qrm`).
"""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import mpmath
import pytest
import torch
from test_hub import CONVERSATIONS, make_tokenizer, saved_qrm

from conftest import make_qrm
from qrm_hf import hub
from qrm_hf.chat import encode_conversation
from qrm_hf.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return saved_qrm(tmp_path_factory.mktemp("qrm") / "model", seed=3)[2]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `qrm ARGV` run in this process."""
    try:
        main([str(arg) for arg in argv])
        code = 0
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip() and "Loading weights" not in line]  # no bars
    assert len(lines) == 1 and lines[0].startswith("qrm ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def copy_model(source: Path, destination: Path) -> Path:
    destination.mkdir(parents=True)
    for path in source.iterdir():
        (destination / path.name).write_bytes(path.read_bytes())
    return destination


def marker_code(marker: Path, body: str = "") -> str:
    """Python source that leaves `marker` behind when it is imported (stands for any hostile code)."""
    return f"from pathlib import Path\nPath({str(marker)!r}).write_text('code ran')\n{body}"


# ------------------------------------------------------------------------------------------ 1. remote code


@pytest.mark.parametrize("declares_class", [True, False])
def test_score_never_runs_the_tokenizer_code_of_a_model_directory(
    model_dir, tmp_path, capsys, declares_class
):
    hostile = copy_model(model_dir, tmp_path / "hostile")
    marker = tmp_path / "marker"
    (hostile / "tokenization_evil.py").write_text(
        marker_code(marker, "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    )
    tokenizer_config = json.loads((hostile / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
    if not declares_class:
        tokenizer_config.pop("tokenizer_class", None)
    (hostile / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    for trust in ([], ["--trust-remote-code"]):  # the tokenizer never needs remote code, even when trusted
        code, out, err = run_cli(capsys, "score", hostile, "--prompt", "w11 w12", "--response", "w20", *trust)
        assert not marker.exists()
        if declares_class:  # a standard tokenizer class is named: it loads without the auto_map code
            assert code == 0 and "expected" in out, err
        else:
            assert_one_line_error(code, err, "qrm-hf never runs tokenizer code")


def test_a_config_of_another_model_type_is_refused_before_any_code_or_weight(model_dir, tmp_path, capsys):
    hostile = copy_model(model_dir, tmp_path / "hostile")
    marker = tmp_path / "marker"
    config = json.loads((hostile / "config.json").read_text())
    config["model_type"] = "evil"
    config["auto_map"] = {
        "AutoConfig": "configuration_qrm.EvilConfig",
        "AutoModelForSequenceClassification": "modeling_qrm.EvilModel",
    }
    (hostile / "config.json").write_text(json.dumps(config))
    (hostile / "configuration_qrm.py").write_text(marker_code(marker))
    (hostile / "modeling_qrm.py").write_text(marker_code(marker))
    (hostile / "model.safetensors").write_bytes(b"not read")  # reading it would fail differently
    for command in (["score", hostile, "--prompt", "w11", "--response", "w20"], ["evaluate", hostile,
                    "--showcase", write_rows(tmp_path / "rows.jsonl", [{"prompt": "w11", "response": "w20"}])]):  # fmt: skip
        code, _, err = run_cli(capsys, *command)
        assert_one_line_error(code, err, "model_type 'evil', not 'qrm'", "--trust-remote-code")
        assert not marker.exists()
    with pytest.raises(ValueError, match="model_type 'evil'"):
        hub.load_qrm(hostile)
    assert not marker.exists()


def test_a_qrm_loads_with_the_installed_classes_not_its_code_files(model_dir, tmp_path):
    hostile = copy_model(model_dir, tmp_path / "hostile")
    marker = tmp_path / "marker"
    for name in ("configuration_qrm.py", "modeling_qrm.py"):
        (hostile / name).write_text(marker_code(marker))
    model, tokenizer = hub.load_qrm(hostile)
    assert not marker.exists()
    assert type(model).__module__ == "qrm_hf.modeling.modeling_qrm"
    reference = make_qrm(seed=3)  # the model saved in model_dir
    ids = torch.tensor([encode_conversation(tokenizer, messages=CONVERSATIONS[0])])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).reward_quantiles, reference(ids).reward_quantiles)


def test_no_library_call_passes_trust_remote_code_true():
    """Only the user may ask for remote code: no call in qrm_hf/ or training/ passes trust_remote_code=True."""
    found = []
    for path in [*(REPO_ROOT / "qrm_hf").rglob("*.py"), *(REPO_ROOT / "training").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.keyword)
                and node.arg == "trust_remote_code"
                and isinstance(node.value, ast.Constant)
                and node.value.value is True
            ):
                found.append(f"{path.relative_to(REPO_ROOT)}:{node.value.lineno}")
    assert found == []


# ------------------------------------------------------------------------------------------ 3. bad input


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the model is loaded: the error must come before the heavy work."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(hub, "load_qrm", refuse)


def test_errors_of_the_model_argument_name_the_cause(model_dir, tmp_path, capsys):
    code, _, err = run_cli(
        capsys, "score", tmp_path / "no-such-model", "--prompt", "w11", "--response", "w20"
    )
    assert_one_line_error(code, err, "no-such-model does not exist")
    assert "Repo id must be" not in err
    no_tokenizer = copy_model(model_dir, tmp_path / "no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink()
    code, _, err = run_cli(capsys, "score", no_tokenizer, "--prompt", "w11", "--response", "w20")
    assert_one_line_error(code, err, "has no tokenizer", "tokenizer_config.json")
    assert "sentencepiece" not in err


@pytest.mark.parametrize(
    "rows, fragment",
    [
        ([{"prompt": "w11", "response": "w20"}, {"prompt": "w12", "response": None}],
         "rows.jsonl line 2: the response is missing (null)"),
        ([{"prompt": "w11", "response": [{"role": "user", "content": "w12"}]}],
         "rows.jsonl line 1: the conversation ends with a 'user' turn"),
        ([{"prompt": "w11", "answer": "w20"}], "rows.jsonl line 1 has no 'response' column (it has ['answer', 'prompt'])"),
    ],
)  # fmt: skip
def test_score_refuses_rows_that_are_not_a_response_naming_the_row(
    model_dir, tmp_path, capsys, no_model_load, rows, fragment
):
    code, _, err = run_cli(capsys, "score", model_dir, "--file", write_rows(tmp_path / "rows.jsonl", rows))
    assert_one_line_error(code, err, fragment)


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b'{"prompt": "w11", "response": "w20"}\n{"prompt": "w11", "response": \n', "line 2: not valid JSON"),
        (b'{"prompt": "w11", "response": "w20"}\n{"prompt": "\xff\xfe", "response": "w20"}\n',
         "line 2: bytes that are not UTF-8"),
        (b'{"prompt": "w11", "response": "w20"}\n[1, 2]\n', "line 2: expected a JSON object"),
    ],
)  # fmt: skip
def test_malformed_files_are_named_with_their_line(
    model_dir, tmp_path, capsys, no_model_load, content, fragment
):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    for command in (["score", model_dir, "--file", path], ["evaluate", model_dir, "--pairs", path]):
        code, _, err = run_cli(capsys, *command)
        assert_one_line_error(code, err, f"{path} {fragment}")


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        (["--batch-size", "0"], "--batch-size: must be at least 1"),
        (["--batch-size", "-1"], "--batch-size: must be at least 1"),
        (["--alpha", "0"], "--alpha: must lie in (0, 1]"),
        (["--lam", "-1"], "--lam: must be a finite number > 0"),
        (["--max-length", "0"], "--max-length: must be at least 1"),
    ],
)
def test_bad_arguments_are_refused_before_the_model_loads(
    model_dir, capsys, no_model_load, arguments, fragment
):
    code, _, err = run_cli(capsys, "score", model_dir, "--prompt", "w11", "--response", "w20", *arguments)
    assert code == 2 and fragment in err and "Traceback" not in err


def test_unwritable_outputs_are_refused_before_the_model_loads(model_dir, tmp_path, capsys, no_model_load):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = run_cli(
        capsys, "score", model_dir, "--prompt", "w11", "--response", "w20", "--plot", blocker / "plot.png"
    )
    assert_one_line_error(code, err, "Cannot write the plot to", "plot.png")
    rows = write_rows(tmp_path / "rows.jsonl", [{"prompt": "w11", "response": "w20"}])
    code, _, err = run_cli(capsys, "evaluate", model_dir, "--showcase", rows, "--json", tmp_path)
    assert_one_line_error(code, err, "JSON report path", "is a directory")
    assert not (tmp_path / "a-file" / "plot.png").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["--debug", "score", str(tmp_path / "missing"), "--prompt", "w11", "--response", "w20"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["score", str(tmp_path / "missing"), "--prompt", "w11", "--response", "w20", "--debug"])


def test_over_long_conversations_are_refused_by_score_and_counted_by_evaluate(model_dir, tmp_path, capsys):
    long_response = " ".join(["w20"] * 140)  # more tokens than the tiny backbone's 128 positions
    code, out, err = run_cli(capsys, "score", model_dir, "--prompt", "w11", "--response", long_response)
    assert_one_line_error(code, err, "longer than max_length=128 tokens", "--prompt/--response (1")
    assert out == ""
    code, _, err = run_cli(
        capsys, "score", model_dir, "--prompt", "w11 w12 w13", "--response", "w20", "--max-length", "8"
    )
    assert_one_line_error(code, err, "longer than max_length=8 tokens")
    # evaluate leaves the long row out, counts it, and scores the others as if it were not there
    short = [{"prompt": f"w1{i}", "response": f"w2{i} w30", "helpfulness": i, "correctness": 2,
              "safety": 4 - i} for i in range(4)]  # fmt: skip
    long = {"prompt": "w11", "response": long_response, "helpfulness": 0, "correctness": 0, "safety": 0}
    ratings = write_rows(tmp_path / "ratings.jsonl", [short[0], long, *short[1:]])
    report_path = tmp_path / "report.json"
    code, out, err = run_cli(capsys, "evaluate", model_dir, "--ratings", ratings, "--json", report_path)
    assert code == 0, err
    assert "1 row(s) longer than max_length left out" in out
    with_long = json.loads(report_path.read_text())["ratings"]
    code, _, err = run_cli(
        capsys, "evaluate", model_dir, "--ratings", write_rows(tmp_path / "short.jsonl", short), "--json",
        report_path,
    )  # fmt: skip
    without = json.loads(report_path.read_text())["ratings"]
    assert with_long["skipped_too_long"] == 1 and without["skipped_too_long"] == 0
    assert with_long["pinball"] == pytest.approx(without["pinball"], abs=1e-7)


def test_a_large_risk_aversion_gives_a_finite_certainty_equivalent(model_dir, capsys):
    lam = 1000.0
    prompt, response = "w11 w12 w13", "w20 w21"
    code, out, err = run_cli(capsys, "score", model_dir, "--prompt", prompt, "--response", response,
                             "--lam", lam)  # fmt: skip
    assert code == 0, err
    header, row = out.strip().splitlines()[-2:]
    values = dict(zip(header.split()[1:], map(float, row.split()[1:]), strict=True))
    # The model's reward quantiles, from a forward pass of its own, and the certainty equivalent
    # -1/lam log mean_k exp(-lam q_k) in 50-digit arithmetic.
    model, tokenizer = make_qrm(seed=3), make_tokenizer()
    ids = torch.tensor([encode_conversation(tokenizer, prompt=prompt, response=response)])
    with torch.no_grad():
        quantiles = model(ids).reward_quantiles[0].double().tolist()
    assert min(quantiles) * lam < -1000  # exp(-lam q) overflows even float64 here
    mpmath.mp.dps = 50
    mean = mpmath.fsum(mpmath.exp(-lam * mpmath.mpf(q)) for q in quantiles) / len(quantiles)
    expected = float(-mpmath.log(mean) / lam)
    assert math.isfinite(values["cert_equiv"]) and "inf" not in out and "nan" not in out
    assert values["cert_equiv"] == pytest.approx(expected, abs=1e-4)
    assert min(quantiles) - 1e-4 <= values["cert_equiv"] <= values["expected"] + 1e-4


def test_token_ids_beyond_the_embedding_table_are_refused_in_one_line(tmp_path):
    """A tokenizer of another model (ids past vocab_size) met torch's IndexError ("index out of range in self")
    deep in the forward pass of `qrm extract` and `qrm score`: a traceback for a user's mismatch."""
    from conftest import PAD, PATTERN, conversation
    from qrm_hf.scoring import BackboneEncoder, split_scorable
    from qrm_hf.training.features import extract_to_shards

    model = make_qrm()
    vocabulary = model.config.backbone_config.vocab_size
    sequences = [conversation(3, 4, seed=0), [*conversation(3, 4, seed=1), vocabulary]]
    with pytest.raises(
        ValueError, match=f"token id {vocabulary}, but the model's embedding table has {vocabulary}"
    ):
        split_scorable(model, sequences)
    encoder = BackboneEncoder(model.model, PATTERN, PAD, batch_size=16)
    with pytest.raises(ValueError, match="the tokenizer is not this model's"):
        extract_to_shards(encoder, sequences, tmp_path / "features", {}, max_length=None)
    assert not (tmp_path / "features").exists()  # refused before the directory is claimed
    assert split_scorable(model, sequences[:1]) == ([0], [])  # ids inside the table pass
