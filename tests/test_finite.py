"""Every number is finite, or refused.

Non-finite configs and weights are refused at load; a NaN or infinite model output is an error naming its
rows (file lines) in every command that scores; evaluation and RewardBench never count a NaN score as an
answer; the risk measures are right at extreme parameters; `MultiQuantileRegressor` takes sparse input.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from decimal import Decimal, localcontext
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy import sparse
from test_hub import make_tokenizer
from test_safety import assert_one_line_error, run_cli

from conftest import make_qrm, run_without_qrm_hf
from qrm_hf import QRMConfig, QRMForSequenceClassification, risk
from qrm_hf.cli import build_parser
from qrm_hf.evaluation import calibration_error, interval_coverage, pairwise_accuracy, pinball_loss
from qrm_hf.hub import load_qrm
from qrm_hf.rewardbench import best_of_n_result, evaluate_rewardbench
from qrm_hf.scoring import NonFiniteOutputError, conversation_embeddings, score_conversations
from qrm_hf.training.assemble import save_qrm
from qrm_hf.training.quantile_regression import MultiQuantileRegressor, identical_row_groups

PACKAGE = Path(__file__).resolve().parents[1] / "qrm_hf"
PROGRESS_BAR = re.compile(r"\d+%\||examples/s\]")


def assert_one_error_line(code: int, err: str, *fragments: str) -> None:
    """`test_safety.assert_one_line_error` with progress bars left aside (silenced by `qrm` main, not by scoring)."""
    assert_one_line_error(
        code, "\n".join(line for line in err.splitlines() if not PROGRESS_BAR.search(line)), *fragments
    )


def write_rows(path: Path, rows: list[dict], blank_lines_before: dict[int, int] | None = None) -> Path:
    """JSON Lines with `blank_lines_before[i]` blank lines before row i (so lines and rows differ)."""
    text = ""
    for i, row in enumerate(rows):
        text += "\n" * (blank_lines_before or {}).get(i, 0) + json.dumps(row) + "\n"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------- config and weights


@pytest.mark.parametrize(
    "field, value",
    [
        ("gating_temperature", float("nan")),
        ("gating_temperature", float("inf")),
        ("gating_temperature", 0.0),
        ("quantile_levels", [0.1, float("nan"), 0.9]),
        ("quantile_levels", [0.1, float("inf")]),
        ("gating_hidden_dim", 0),
        ("gating_hidden_dim", float("nan")),
        ("gating_n_hidden", -1),
        ("prompt_end_pattern", [7.9, 8, 9]),  # would be matched as the token ids [7, 8, 9]
        ("prompt_end_pattern", [float("nan"), 8, 9]),
    ],
)
def test_a_config_with_a_non_finite_or_out_of_range_number_is_refused_at_load(field, value, tmp_path):
    with pytest.raises(ValueError, match=field):
        QRMConfig(**{field: value})
    # the same number in a saved config.json (json writes NaN and Infinity as bare words, and reads them)
    make_qrm().config.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[field] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=field):
        QRMConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "field, value",
    [
        ("gating_temperature", float("nan")),
        ("quantile_levels", [0.5, 0.5, 0.5, 0.5, 0.5]),  # as many levels as saved: the shapes still fit
        ("gating_fallback", "sometimes"),
        ("attribute_names", ["a", "a", "b"]),
        ("problem_type", "single_label_classification"),  # pipeline() would squash the reward by a sigmoid
    ],
)
def test_a_config_field_given_at_load_is_checked_as_in_the_constructor(field, value, tmp_path):
    # from_pretrained(path, field=value) sets fields on the loaded config: they must not skip __init__'s checks
    make_qrm().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=field):
        QRMConfig.from_pretrained(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=field):
        QRMForSequenceClassification.from_pretrained(tmp_path, **{field: value})
    loaded = QRMConfig.from_pretrained(tmp_path, gating_temperature=2.0)  # a valid override is applied
    assert loaded.gating_temperature == 2.0


def test_the_saved_configuration_file_refuses_a_nan_temperature_without_qrm_hf(tmp_path):
    model_dir = save_qrm(make_qrm(), tmp_path / "model", tokenizer=make_tokenizer())
    config = json.loads((model_dir / "config.json").read_text())
    config["gating_temperature"] = float("nan")
    (model_dir / "config.json").write_text(json.dumps(config))
    result = run_without_qrm_hf(
        f"""
        from transformers import AutoConfig
        try:
            AutoConfig.from_pretrained({str(model_dir)!r}, trust_remote_code=True)
        except ValueError as error:
            print("REFUSED", error)
        """,
        tmp_path,
    )
    assert "REFUSED `gating_temperature` must be a finite number > 0" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize(
    "tensor, value",
    [("regression_layer.weight", float("nan")), ("model.layers.1.mlp.down_proj.weight", float("inf"))],
)
def test_weights_with_nan_or_inf_are_refused_at_load_naming_the_tensor(tensor, value, tmp_path, capsys):
    model_dir = save_qrm(make_qrm(), tmp_path / "model", tokenizer=make_tokenizer())
    weights = load_file(model_dir / "model.safetensors")
    assert tensor in weights
    weights[tensor][0, 0] = value
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"NaN or infinite values in 1 tensor.*{tensor}"):
        load_qrm(model_dir)
    capsys.readouterr()  # the progress bars of saving and loading above
    code, out, err = run_cli(capsys, "score", model_dir, "--prompt", "w11", "--response", "w20")
    assert_one_error_line(code, err, tensor)
    assert out == ""


# ----------------------------------------------------------------------- non-finite outputs, every command


def _candidate_conversations() -> list[tuple[str, str]]:
    return [(f"w1{a} w2{b}", f"w3{b} w4{c} w5{a}") for a in range(10) for b in range(3) for c in range(2)]


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory):
    """A QRM with finite weights whose backbone overflows to inf on some conversations only (the final
    norm scales one feature by 3e38, which the heads do not read: finite wherever it does not overflow),
    as a model in float16 does on some inputs. Returns (model dir, poisoned (prompt, response)s, clean ones)."""
    model, tokenizer = make_qrm(seed=3), make_tokenizer()
    candidates = _candidate_conversations()
    conversations = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in candidates
    ]
    response, prompt = conversation_embeddings(model, tokenizer, conversations)
    size = torch.maximum(response.abs(), prompt.abs())  # [N, H]: what the norm's weight multiplies
    for feature in range(size.shape[1]):
        poisoned = (size[:, feature] > 1.2).nonzero().flatten().tolist()
        clean = (size[:, feature] < 1.1).nonzero().flatten().tolist()
        if poisoned and len(clean) >= 4:
            break
    else:
        raise AssertionError("no feature separates the candidate conversations")
    with torch.no_grad():
        model.model.norm.weight[feature] = 3e38  # 3e38 * 1.2 > float32 max; 3e38 * 1.1 is not
        model.regression_layer.weight[:, feature] = 0.0
        model.gating.layers[0].weight[:, feature] = 0.0
    directory = save_qrm(model, tmp_path_factory.mktemp("overflow") / "model", tokenizer=tokenizer)
    return directory, [candidates[i] for i in poisoned], [candidates[i] for i in clean]


def test_the_overflowing_model_is_finite_on_clean_rows_and_refused_by_row_on_the_others(overflowing):
    directory, poisoned, clean = overflowing
    model, tokenizer = load_qrm(directory)  # finite weights: loads
    conversations = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
        for p, r in [clean[0], poisoned[0], clean[1]]
    ]
    finite = score_conversations(model, tokenizer, [conversations[0], conversations[2]], progress=False)
    assert all(torch.isfinite(finite[name]).all() for name in ("logits", "reward_quantiles", "rewards"))
    with pytest.raises(NonFiniteOutputError, match=r"for 1 conversation\(s\): line 7\.") as error:
        score_conversations(
            model, tokenizer, conversations, progress=False, row_names=["line 3", "line 7", "line 9"]
        )
    assert error.value.positions == [1]
    with pytest.raises(NonFiniteOutputError, match="embedding is NaN or infinite.*conversation 1"):
        conversation_embeddings(model, tokenizer, conversations)


def test_extract_refuses_non_finite_embeddings_naming_the_line_and_a_nan_backbone_by_tensor(
    overflowing, tmp_path, capsys
):
    # Features are an output like a score: "Features written" with exit 0 over NaN embeddings is a NaN answer
    directory, poisoned, clean = overflowing
    model, tokenizer = load_qrm(directory)
    backbone = tmp_path / "backbone"
    model.model.save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    rows = [{"prompt": p, "response": r, "helpfulness": 1} for p, r in [clean[0], clean[1], poisoned[0]]]
    data = write_rows(tmp_path / "data.jsonl", rows, {2: 2})  # the poisoned row on line 5
    extract = ["extract", backbone, "--kind", "attribute", "--source", data, "--prompt", "prompt", "--response",
               "response", "--attributes", "helpfulness", "--label-range", "0", "4", "--max-length", "128"]  # fmt: skip
    capsys.readouterr()
    code, _, err = run_cli(capsys, *extract, "--output-dir", tmp_path / "features")
    assert_one_error_line(code, err, "NaN or infinite", f"{data} line 5")
    assert not list((tmp_path / "features").glob("*.safetensors"))

    tensors = load_file(backbone / "model.safetensors")
    tensors["layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    save_file(tensors, backbone / "model.safetensors", metadata={"format": "pt"})
    code, _, err = run_cli(capsys, *extract, "--output-dir", tmp_path / "features-2")
    assert_one_error_line(code, err, "NaN or infinite", "layers.0.mlp.up_proj.weight")


def _scoring_commands() -> set[str]:
    """Every `qrm` command that scores with a QRM: its positional `model` is a QRM (`qrm_hf.cli_model.add_model_arguments`)."""
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name
        for name, parser in subparsers.choices.items()
        for action in parser._actions
        if not action.option_strings and action.dest == "model" and "QRM" in (action.help or "")
    }


def _command_cases(tmp_path: Path, poisoned, clean) -> dict[str, list[tuple[list, list[str]]]]:
    """Per scoring command: (arguments after the model, fragments the error must hold). The poisoned row
    is the third row of each file, on line 5 (two blank lines before it)."""
    (p_prompt, p_response), *_ = poisoned
    (c1_prompt, c1_response), (c2_prompt, c2_response), (c3_prompt, c3_response) = clean[:3]
    blanks = {2: 2}

    def rating(prompt, response):
        return {"prompt": prompt, "response": response, "helpfulness": 1, "correctness": 2, "safety": 3}

    score_file = write_rows(
        tmp_path / "score.jsonl",
        [{"prompt": c1_prompt, "response": c1_response}, {"prompt": c2_prompt, "response": c2_response},
         {"prompt": p_prompt, "response": p_response}],
        blanks,
    )  # fmt: skip
    ratings = write_rows(
        tmp_path / "ratings.jsonl",
        [rating(c1_prompt, c1_response), rating(c2_prompt, c2_response), rating(p_prompt, p_response)],
        blanks,
    )
    pairs = write_rows(
        tmp_path / "pairs.jsonl",
        [{"prompt": c1_prompt, "chosen": c1_response, "rejected": c2_response},
         {"prompt": c2_prompt, "chosen": c2_response, "rejected": c3_response},
         {"prompt": p_prompt, "chosen": c1_response, "rejected": p_response}],
        blanks,
    )  # fmt: skip
    rewardbench = write_rows(
        tmp_path / "rb.jsonl",
        [{"prompt": c1_prompt, "chosen": c1_response, "rejected": c2_response, "subset": "math-prm", "id": 10},
         {"prompt": p_prompt, "chosen": c1_response, "rejected": p_response, "subset": "hep-go", "id": 11}],
    )  # fmt: skip
    return {
        "score": [
            (["--file", score_file], [f"{score_file} line 5"]),
            (["--prompt", p_prompt, "--response", p_response], ["--prompt/--response"]),
        ],
        "evaluate": [
            (["--ratings", ratings], [f"{ratings} line 5"]),
            (["--pairs", pairs], [f"{pairs} line 5 (rejected)"]),
            (["--showcase", score_file], [f"{score_file} line 5"]),
        ],
        "rewardbench": [(["--data", rewardbench], [f"{rewardbench} line 2 (subset 'hep-go', id 11)"])],
        "preference-strength": [(["--pairs", pairs], [f"{pairs} line 5 (rejected)"])],
        "calibrate": [
            (["--ratings", ratings, "--output-dir", tmp_path / "calibrated"], [f"{ratings} line 5"])
        ],
    }


def test_every_scoring_command_refuses_a_non_finite_output_naming_the_line(overflowing, tmp_path, capsys):
    directory, poisoned, clean = overflowing
    cases = _command_cases(tmp_path, poisoned, clean)
    assert set(cases) == _scoring_commands()  # a new scoring command must be added here
    capsys.readouterr()
    for command, runs in cases.items():
        for arguments, fragments in runs:
            code, out, err = run_cli(capsys, command, directory, *arguments)
            assert_one_error_line(code, err, "NaN or infinite", *fragments)
            assert "nan" not in out.lower(), (command, out)


def test_scoring_is_one_path_no_module_runs_a_model_or_its_heads_elsewhere():
    """Outputs are checked in `qrm_hf.scoring`: no other module of the package calls a model, its forward or
    `score_embeddings` itself (the training package's trainers score in training, not for the user)."""
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "scoring.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            direct = isinstance(func, ast.Name) and func.id in ("model", "qrm")
            method = isinstance(func, ast.Attribute) and func.attr in ("score_embeddings", "forward")
            if direct or method:
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


# ---------------------------------------------------------------------- evaluation and RewardBench measures


def test_evaluation_measures_never_count_a_nan_score():
    with pytest.raises(
        ValueError, match=r"chosen scores are NaN or infinite in 1 row\(s\) \(0-based\): \[1\]"
    ):
        pairwise_accuracy([1.0, float("nan")], [0.0, 0.0])
    labels = np.array([[0.5], [0.2]])
    predictions = np.tile(np.array([0.1, 0.5, 0.9]), (2, 1, 1))
    predictions[1, 0, 1] = np.nan
    levels = [0.1, 0.5, 0.9]
    for measure in (
        lambda: interval_coverage(labels, predictions, levels, 0.8),
        lambda: pinball_loss(labels, predictions, levels),
        lambda: calibration_error(labels, predictions, levels),
    ):
        with pytest.raises(
            ValueError, match=r"predictions are NaN or infinite in 1 row\(s\) \(0-based\): \[1\]"
        ):
            measure()
    with pytest.raises(ValueError, match=r"labels are infinite in 1 row\(s\) \(0-based\): \[0\]"):
        pinball_loss(np.array([[np.inf], [0.2]]), np.nan_to_num(predictions), levels)
    # a NaN label is a missing one, as documented
    assert np.isfinite(pinball_loss(np.array([[np.nan], [0.2]]), np.nan_to_num(predictions), levels)).all()


def test_rewardbench_never_counts_a_nan_score_as_a_wrong_answer():
    rows = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "subset": "math-prm", "id": 1},
        {"prompt": "q", "chosen": "c", "rejected": "d", "subset": "math-prm", "id": 2},
    ]
    scores = {"a": 1.0, "b": 0.0, "c": float("nan"), "d": 0.0}

    def scorer(conversations):
        return [scores[conversation[-1]["content"]] for conversation in conversations]

    with pytest.raises(
        ValueError,
        match=r"NaN or infinite for 1 row\(s\): RewardBench rows, row 1 \(counted from 0\) \(subset 'math-prm', id 2\)",
    ):
        evaluate_rewardbench(rows, scorer)
    with pytest.raises(ValueError, match="finite"):
        best_of_n_result([float("nan"), 0.0, 1.0])


def _ties_row(row_id, chosen, rejected):
    return {"id": row_id, "prompt": row_id, "chosen": [f"r={s}" for s in chosen],
            "rejected": [f"r={s}" for s in rejected], "subset": "Ties", "num_correct": len(chosen)}  # fmt: skip


def _read_score(conversations):
    return [float(conversation[-1]["content"].split("=")[1]) for conversation in conversations]


def test_ties_score_cut_by_a_limit_is_left_out_with_its_reason_not_nan():
    focus = {
        "id": "f",
        "prompt": "f",
        "chosen": ["r=2"],
        "rejected": ["r=1"],
        "subset": "Focus",
        "num_correct": 1,
    }
    # the first rows of Ties are references only: no prompt is present as both ref and tied
    rows = [focus, _ties_row("ref:0", [5], [1]), _ties_row("ref:1", [1], [2])]
    report = evaluate_rewardbench(rows, _read_score)
    ties = report["subsets"]["Ties"]
    assert ties["accuracy"] is None and "both 'ref:N' and 'tied:N'" in ties["left_out"]
    assert report["left_out_subsets"] == {"Ties": ties["left_out"]}
    assert report["score"] == 1.0  # Focus alone; Ties is not counted as 0 or NaN
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN anywhere in the report
    # with a prompt present as both, the score is defined (and finite)
    rows += [_ties_row("tied:0", [4, 3.5], [1])]
    report = evaluate_rewardbench(rows, _read_score)
    assert np.isfinite(report["subsets"]["Ties"]["accuracy"]) and report["left_out_subsets"] == {}
    json.dumps(report, allow_nan=False)


# ------------------------------------------------------------------------ risk measures at extreme values


def _decimal(values) -> list[Decimal]:
    return [Decimal(float(v)) for v in values]


# 700 digits: 1 - 5e-324 is not 1; exponents far beyond float64's range.
def _context():
    return localcontext(prec=700, Emin=-(10**9), Emax=10**9)


def _certainty_equivalent(q: list[float], lam: float) -> float:
    """-1/lam log mean_k exp(-lam q_k) in 700-digit decimal arithmetic."""
    with _context():
        values, lam = _decimal(q), Decimal(lam)
        shift = min(values)
        mean = sum((-(lam * (v - shift))).exp() for v in values) / len(values)
        return float(shift - mean.ln() / lam)


def _exponential_utility(q: list[float], lam: float, largest: float) -> float:
    """-mean_k exp(-lam q_k) in decimal arithmetic; -inf beyond `largest`, the dtype's largest float."""
    with _context():
        values, lam = _decimal(q), Decimal(lam)
        if max(-(lam * v) for v in values) > 10**6:  # exp of it is far beyond any float
            return float("-inf")
        value = -sum((-(lam * v)).exp() for v in values) / len(values)
        return float(value) if abs(value) <= Decimal(largest) else float("-inf")


def _cvar(q: list[float], alpha: float) -> float:
    """Mean of the lowest alpha-mass of K equally likely atoms, in exact fractions."""
    atoms, mass, total = sorted(Fraction(v) for v in q), Fraction(alpha), Fraction(0)
    left = mass
    for atom in atoms:
        take = min(left, Fraction(1, len(atoms)))
        total, left = total + take * atom, left - take
        if left <= 0:
            break
    return float(total / mass)


QUANTILES = [-0.75, -0.3, 0.1, 0.1, 0.45, 2.5]
LEVELS = [0.05, 0.25, 0.4, 0.6, 0.75, 0.95]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lam", [5e-324, 1e-310, 1e-300, 1e-30, 1e-8, 1.0, 50.0, 1e30, 1e39, 1e300, 1.7e308])
def test_certainty_equivalent_and_utility_at_extreme_lambda_match_decimal_arithmetic(lam, dtype):
    q = torch.tensor(QUANTILES, dtype=dtype)
    exact = [float(v) for v in q.double()]  # the values the measure sees
    ce = risk.certainty_equivalent(q, lam)
    assert ce.dtype == dtype and torch.isfinite(ce)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    assert ce.item() == pytest.approx(_certainty_equivalent(exact, lam), rel=tolerance, abs=tolerance)
    utility = risk.exponential_utility(q, lam)
    assert not torch.isnan(utility)
    assert utility.item() == pytest.approx(
        _exponential_utility(exact, lam, torch.finfo(dtype).max), rel=tolerance
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [5e-324, 1e-300, 1e-9, 0.1, 1 / 6, 0.3, 0.5, 1.0])
def test_cvar_at_extreme_alpha_matches_exact_fractions(alpha, dtype):
    q = torch.tensor(QUANTILES, dtype=dtype)
    value = risk.cvar(q, LEVELS, alpha)
    assert torch.isfinite(value)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    assert value.item() == pytest.approx(
        _cvar([float(v) for v in q.double()], alpha), rel=tolerance, abs=tolerance
    )


@pytest.mark.parametrize("tau", [0.0, 5e-324, 1e-300, 0.05, 0.5, 0.95, 1 - 1e-16, 1.0])
def test_quantile_at_extreme_tau_matches_interpolation_by_hand(tau):
    q = torch.tensor(QUANTILES, dtype=torch.float64)
    clamped = min(max(tau, LEVELS[0]), LEVELS[-1])
    j = max(i for i in range(len(LEVELS) - 1) if LEVELS[i] <= clamped)
    expected = QUANTILES[j] + (clamped - LEVELS[j]) / (LEVELS[j + 1] - LEVELS[j]) * (
        QUANTILES[j + 1] - QUANTILES[j]
    )
    assert risk.quantile(q, LEVELS, tau).item() == pytest.approx(expected, abs=1e-12)


def test_score_with_extreme_lam_and_alpha_prints_finite_numbers(tmp_path, capsys):
    model_dir = save_qrm(make_qrm(seed=3), tmp_path / "model", tokenizer=make_tokenizer())
    capsys.readouterr()
    for options in (["--lam", "1e39"], ["--alpha", "1e-300"], ["--lam", "5e-324", "--alpha", "5e-324"]):
        code, out, err = run_cli(capsys, "score", model_dir, "--prompt", "w11", "--response", "w20", *options)
        assert code == 0, err
        assert "nan" not in out.lower() and "inf" not in out.lower(), (options, out)


# ------------------------------------------------------------------------------------------- sparse input


@pytest.mark.parametrize("solver", ["fast", "sklearn"])
def test_multi_quantile_regressor_takes_sparse_input_as_sklearn_quantile_regressor(solver):
    from sklearn.linear_model import QuantileRegressor

    rng = np.random.default_rng(0)
    X = sparse.random(120, 8, density=0.3, random_state=1, format="csr")
    y = X @ rng.normal(size=8) + 0.1 * rng.normal(size=120)
    levels = [0.25, 0.5, 0.75]
    heads = MultiQuantileRegressor(levels, alpha=1e-3, fit_intercept=True, solver=solver).fit(X, y)
    for k, tau in enumerate(levels):
        reference = QuantileRegressor(quantile=tau, alpha=1e-3, fit_intercept=True).fit(X, y)
        assert np.allclose(heads.coef_[0, k], reference.coef_, atol=1e-5)
        assert np.allclose(heads.predict(X)[:, 0, k], reference.predict(X), atol=1e-5)
    assert np.allclose(heads.predict(X.tocsc()), heads.predict(X.toarray()))
    with pytest.raises(TypeError, match="labels must be dense.*sparse"):
        heads.fit(X, sparse.csr_matrix(y.reshape(-1, 1)))


def test_identical_rows_of_a_sparse_matrix_are_grouped_as_dense_ones():
    dense = np.array([[0, 1, 0], [2, 0, 0], [0, 1, 0], [0, 0, 0], [2, 0, 0], [0, 0, 0]], dtype=float)
    explicit_zero = sparse.csr_matrix((np.array([0.0]), (np.array([3]), np.array([1]))), shape=(6, 3))
    X = sparse.csr_matrix(dense) + explicit_zero  # an explicitly stored zero is still a zero
    assert identical_row_groups(X).tolist() == identical_row_groups(dense).tolist() == [0, 1, 0, 2, 1, 2]
    heads = MultiQuantileRegressor([0.5], alpha=[1e-3, 1e-2], cv=2).fit(X, np.arange(6.0))
    assert heads.alpha_.shape == (1,)
