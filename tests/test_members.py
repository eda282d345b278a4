"""A QRM with E members: sets of quantile heads on one backbone, combined level by level into the aleatoric
distribution, with the members' disagreement reported apart (epistemic spread) and read by risk measures."""

from types import SimpleNamespace

import pytest
import torch

from conftest import PATTERN, conversation, make_qrm, pad_batch, run_without_qrm_hf, tiny_backbone_config
from qrm_hf import QRMConfig, QRMForSequenceClassification, risk
from qrm_hf.training.bootstrap import HeadEnsemble
from qrm_hf.training.rewards import expected_rewards

ROWS = [conversation(4, 3, seed) for seed in range(3)]


def one_hot_qrm(member_quantiles: list[list[list[float]]]) -> QRMForSequenceClassification:
    """A QRM whose heads output `member_quantiles` [E][M][K] on the embedding e_0, with equal gating weights
    (no hidden gating layer, zero weights) and the identity transform."""
    num_members, num_attributes, num_levels = (
        len(member_quantiles),
        len(member_quantiles[0]),
        len(member_quantiles[0][0]),
    )
    config = QRMConfig(
        backbone_config=tiny_backbone_config(),
        attribute_names=[f"a{m}" for m in range(num_attributes)],
        quantile_levels=[(k + 1) / (num_levels + 1) for k in range(num_levels)],
        gating_n_hidden=0,
        prompt_end_pattern=PATTERN,
        num_members=num_members,
    )
    model = QRMForSequenceClassification(config).eval()
    with torch.no_grad():
        model.regression_layer.weight.zero_()
        model.regression_layer.weight[:, 0] = torch.tensor(member_quantiles).flatten()  # row e*M*K + m*K + k
        model.gating.layers[-1].weight.zero_()
        model.gating.layers[-1].bias.zero_()
    return model


def score_e0(model) -> object:
    embedding = torch.zeros(1, model.config.hidden_size)
    embedding[0, 0] = 1.0
    return model.score_embeddings(embedding, embedding)


def test_members_are_sorted_then_averaged_level_by_level():
    """Hand-computed: member 0 says [0, 1, 2], member 1 [4, 2, 3] (crossing: sorted to [2, 3, 4]). Combined
    quantiles [1, 2, 3] (averaging before sorting would give [1.5, 2, 2.5]); member rewards 1 and 3, so the
    expected reward 2 and the epistemic std 1 (population std of {1, 3})."""
    output = score_e0(one_hot_qrm([[[0.0, 1.0, 2.0]], [[4.0, 2.0, 3.0]]]))
    torch.testing.assert_close(output.attribute_quantiles, torch.tensor([[[1.0, 2.0, 3.0]]]))
    torch.testing.assert_close(output.member_rewards, torch.tensor([[1.0, 3.0]]))
    torch.testing.assert_close(output.logits, torch.tensor([[2.0]]))
    torch.testing.assert_close(output.reward_epistemic_std, torch.tensor([1.0]))
    torch.testing.assert_close(output.attribute_epistemic_std, torch.tensor([[1.0]]))


def test_members_with_two_attributes_and_equal_gating():
    """Hand-computed, M = 2 with gating weights 1/2 each. Member 0: a0 [0, 2] (mean 1), a1 [4, 4] (mean 4);
    member 1: a0 [2, 4] (mean 3), a1 [0, 0] (mean 0). Member rewards (1 + 4)/2 = 2.5 and (3 + 0)/2 = 1.5;
    attribute stds 1 (a0: {1, 3}) and 2 (a1: {4, 0}); reward std 0.5; combined a0 [1, 3], a1 [2, 2]."""
    output = score_e0(one_hot_qrm([[[0.0, 2.0], [4.0, 4.0]], [[2.0, 4.0], [0.0, 0.0]]]))
    torch.testing.assert_close(output.member_rewards, torch.tensor([[2.5, 1.5]]))
    torch.testing.assert_close(output.attribute_epistemic_std, torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(output.reward_epistemic_std, torch.tensor([0.5]))
    torch.testing.assert_close(output.attribute_quantiles, torch.tensor([[[1.0, 3.0], [2.0, 2.0]]]))
    torch.testing.assert_close(output.logits, torch.tensor([[2.0]]))


def test_one_member_is_the_single_heads_format():
    model = make_qrm()
    assert model.config.num_members == 1
    assert model.regression_layer.weight.shape[0] == model.config.num_attributes * model.config.num_quantiles
    ids, mask = pad_batch(ROWS)
    output = model(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(output.member_rewards, output.logits)
    assert (output.reward_epistemic_std == 0).all() and (output.attribute_epistemic_std == 0).all()


def test_members_are_one_matmul_of_e_times_the_rows():
    model = make_qrm(num_members=4)
    config = model.config
    assert model.regression_layer.weight.shape == (4 * config.num_attributes * config.num_quantiles, 32)
    ids, mask = pad_batch(ROWS)
    output = model(input_ids=ids, attention_mask=mask)
    assert output.member_rewards.shape == (3, 4) and (output.reward_epistemic_std > 0).all()
    torch.testing.assert_close(output.logits[:, 0], output.member_rewards.mean(-1))  # linear in the members
    with pytest.raises(ValueError, match="num_members"):
        QRMConfig(backbone_config=tiny_backbone_config(), num_members=0)


def test_a_member_alone_is_its_own_single_member_qrm():
    """Member e of an E-member QRM scores as a one-member QRM holding member e's rows."""
    ensemble = make_qrm(seed=3, num_members=3)
    rows = ensemble.config.num_attributes * ensemble.config.num_quantiles
    single = make_qrm(seed=3)
    single.load_state_dict(
        {
            **ensemble.state_dict(),
            "regression_layer.weight": ensemble.regression_layer.weight[rows : 2 * rows],
        }
    )
    ids, mask = pad_batch(ROWS)
    torch.testing.assert_close(
        ensemble(input_ids=ids, attention_mask=mask).member_rewards[:, 1],
        single(input_ids=ids, attention_mask=mask).logits[:, 0],
    )


def test_bootstrap_ensemble_and_rewards_compute_the_heads_as_the_model():
    """`HeadEnsemble` (ensemble fitting) and `expected_rewards` (debias, gating) reuse the model's heads."""
    model = make_qrm(seed=5, num_members=2, regression_bias=True)
    with torch.no_grad():
        model.regression_layer.bias.normal_()
    config = model.config
    shape = (2, config.num_attributes, config.num_quantiles, config.hidden_size)
    coef = model.regression_layer.weight.detach().reshape(shape)
    intercept = model.regression_layer.bias.detach().reshape(shape[:3])
    embeddings = torch.randn(6, config.hidden_size)
    output = model.score_embeddings(embeddings, embeddings)
    ensemble = HeadEnsemble(
        coef, intercept, model.reward_transform_matrix.detach(), [model.gating], config.quantile_levels
    )
    members = ensemble.attribute_quantiles(embeddings)  # [E, N, M, K]
    torch.testing.assert_close(members.mean(0), output.attribute_quantiles)
    for member in range(2):
        rewards = expected_rewards(coef[member], model.reward_transform_matrix, embeddings, intercept[member])
        torch.testing.assert_close(rewards, members[member].mean(-1))


OUTPUT = SimpleNamespace(
    logits=torch.tensor([[2.0], [5.0]]),
    reward_quantiles=torch.tensor([[0.0, 1.0, 2.0, 5.0], [4.0, 5.0, 5.0, 6.0]]),
    reward_epistemic_std=torch.tensor([1.0, 0.5]),
    member_rewards=torch.tensor([[1.0, 3.0], [4.5, 5.5]]),
)
LEVELS = [0.2, 0.4, 0.6, 0.8]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("lcb:2", [2.0 - 2 * 1.0, 5.0 - 2 * 0.5]),
        ("lcb", [2.0 - 1.0, 5.0 - 0.5]),  # k = 1 by default
        ("worst_member", [1.0, 4.5]),
        (
            "cvar:0.5+lcb:1",
            [(0.0 + 1.0) / 2 - 1.0, (4.0 + 5.0) / 2 - 0.5],
        ),  # mean of the lower half, penalised
        ("quantile:0.2", [0.0, 4.0]),  # an aleatoric measure alone ignores the members
    ],
)
def test_output_measures_hand_computed(spec, expected):
    torch.testing.assert_close(risk.parse_output(spec)(OUTPUT, LEVELS), torch.tensor(expected))


def test_output_measures_of_a_model_without_members():
    """No `reward_epistemic_std` (e.g. a released QRM): lcb is the aleatoric measure, worst_member the mean."""
    plain = SimpleNamespace(logits=OUTPUT.logits, reward_quantiles=OUTPUT.reward_quantiles)
    torch.testing.assert_close(risk.parse_output("lcb:3")(plain, LEVELS), torch.tensor([2.0, 5.0]))
    torch.testing.assert_close(risk.parse_output("worst_member")(plain, LEVELS), torch.tensor([2.0, 5.0]))


@pytest.mark.parametrize(
    "spec", ["lcb:0", "lcb:-1", "lcb:x", "worst_member:1", "cvar+worst_member", "cvar+quantile"]
)
def test_bad_output_measures(spec):
    with pytest.raises(ValueError):
        risk.parse_output(spec)


def test_rlhf_commands_take_output_measures():
    import argparse

    from qrm_hf.cli import parse_arguments
    from qrm_hf.cli_rlhf import add_rlhf_commands, trainer_config

    parser = argparse.ArgumentParser()
    add_rlhf_commands(parser.add_subparsers(dest="command"))
    for algorithm in ("rloo", "grpo"):
        args = parse_arguments(parser, [algorithm, "sft", "qrm", "--risk-measure", "cvar:0.25+lcb:2"])
        measure = trainer_config(args).parse_risk_measure()
        assert (measure.epistemic, measure.penalty) == ("lcb", 2.0)


def test_members_round_trip_with_and_without_qrm_hf(tmp_path):
    model = make_qrm(seed=4, num_members=3)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    loaded = QRMForSequenceClassification.from_pretrained(model_dir)
    assert loaded.config.num_members == 3
    ids, mask = pad_batch(ROWS)
    expected = model(input_ids=ids, attention_mask=mask)
    got = loaded(input_ids=ids, attention_mask=mask)
    for name in ("logits", "member_rewards", "reward_epistemic_std", "attribute_quantiles"):
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0)
    torch.save({"ids": ids, "mask": mask}, tmp_path / "inputs.pt")
    names = (
        "logits",
        "member_rewards",
        "reward_epistemic_std",
        "attribute_epistemic_std",
        "attribute_quantiles",
    )
    script = f"""
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForSequenceClassification
        inputs = torch.load({str(tmp_path / "inputs.pt")!r}, weights_only=True)
        model = AutoModelForSequenceClassification.from_pretrained({str(model_dir)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        out = model(input_ids=inputs["ids"], attention_mask=inputs["mask"])
        save_file({{k: out[k].contiguous() for k in {names!r}}}, {str(tmp_path / "out.safetensors")!r})
        """
    result = run_without_qrm_hf(script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    from safetensors.torch import load_file

    for name, value in load_file(tmp_path / "out.safetensors").items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_epistemic_bandit_plain_training_drifts_to_the_unknown_arm_lcb_stays(tmp_path, algorithm):
    """Arm A: the 4 members agree (mean 1.0). Arm B: they disagree (mean 1.1, epistemic std 1.46), each
    member tight. Risk-neutral training follows B's higher mean, `lcb:1` (A 1.0, B -0.36) keeps A; the
    logged epistemic std is B's for the first and 0 (A's) for the second."""
    import importlib.util
    from pathlib import Path

    torch.set_num_threads(1)
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "risk_bandit.py"
    spec = importlib.util.spec_from_file_location("risk_bandit", path)
    bandit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bandit)
    results = bandit.run_bandit(
        tmp_path, measures=("expectation", "lcb:1"), algorithm=algorithm, bandit="epistemic"
    )
    neutral, lcb = results["expectation"], results["lcb:1"]
    assert neutral["p_a_before"] == pytest.approx(0.5, abs=1e-6) == lcb["p_a_before"]
    assert neutral["p_a_after"] < 0.2 and lcb["p_a_after"] > 0.8
    assert neutral["final"]["epistemic_std"] > 1.0 > 0.1 > lcb["final"]["epistemic_std"]
    assert neutral["final"]["aleatoric_std"] < 0.1 and lcb["final"]["aleatoric_std"] < 0.1  # tight members


def test_evaluate_reports_the_models_own_epistemic_spread_per_kind():
    """`qrm evaluate` of a model with members: the mean over distinct responses of each one's
    `attribute_epistemic_std`, overall and per kind, next to the 90 % width; absent for one member."""
    from test_evaluation import rating_rows
    from test_hub import make_tokenizer

    from qrm_hf.evaluation import evaluate_ratings, format_ratings_report

    tokenizer, rows = make_tokenizer(), rating_rows()
    model = make_qrm(seed=5, attribute_names=["a", "b", "c"], num_members=3)
    report = evaluate_ratings(model, tokenizer, rows, (0.0, 4.0), batch_size=3)
    spreads = {}
    for row in rows:  # each distinct response alone through the model
        messages = [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["response"]},
        ]
        inputs = tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            spreads[row["conversation_id"]] = (row["kind"], model(**inputs).attribute_epistemic_std[0])
    epistemic = report["epistemic"]
    assert epistemic["members"] == 3
    for kind in ("all", "clear", "controversial"):
        chosen = [value for k, value in spreads.values() if kind in ("all", k)]
        expected = torch.stack(chosen).mean(0)
        got = torch.tensor([epistemic["mean_std"][kind][name] for name in "abc"], dtype=torch.float32)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert "epistemic spread (3 members)" in format_ratings_report(report)
    single = evaluate_ratings(make_qrm(seed=5, attribute_names=["a", "b", "c"]), tokenizer, rows, (0.0, 4.0))
    assert "epistemic" not in single


def test_the_heads_are_computed_in_one_place():
    """Every function of the package that calls the heads (`regression_layer(...)`) or reshapes fitted head
    weights into quantiles turns them into quantiles through `member_quantiles`, the model's own definition:
    none re-implements the reshape, transform and sorting."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    offenders, callers = [], []
    for directory in ("qrm_hf", "training", "modeling", "benchmarks"):
        for path in sorted((root / directory).glob("*.py")):
            tree = ast.parse(path.read_text())
            for function in (
                n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            ):
                calls = {
                    node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                    for node in ast.walk(function)
                    if isinstance(node, ast.Call)
                }
                heads_call = "regression_layer" in calls
                einsum_of_heads = any(
                    isinstance(node, ast.Constant) and isinstance(node.value, str) and "mkh" in node.value
                    for node in ast.walk(function)
                )
                if heads_call or einsum_of_heads:
                    name = f"{path.relative_to(root)}:{function.name}"
                    callers.append(name)
                    if "member_quantiles" not in calls:
                        offenders.append(name)
    assert "modeling/modeling_qrm.py:score_embeddings" in callers  # the scan sees the model itself
    assert "training/bootstrap.py:attribute_quantiles" in callers
    assert not offenders, offenders


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "3"])
def test_a_bad_member_count_is_refused_by_every_entry(value, tmp_path):
    """`HeadsSettings` checks `num_members` once: `qrm fit-quantiles`, `qrm train` configs and the stage
    function all build it."""
    from qrm_hf.training.settings import HeadsSettings
    from qrm_hf.training.stages import fit_quantile_heads

    with pytest.raises(ValueError, match="num_members"):
        HeadsSettings(num_members=value)
    with pytest.raises(ValueError, match="num_members"):
        fit_quantile_heads([tmp_path / "features"], tmp_path / "heads", num_members=value)
    assert not (tmp_path / "heads").exists()


def test_a_calibrated_model_moves_every_member_with_the_quantiles():
    """Conformal offsets move the combined quantiles; each member moves with them, so the members' mean stays
    the expected reward every consumer reads and their spread (the epistemic std) is unchanged."""
    from qrm_hf.modeling.configuration_qrm import check_calibration

    model = make_qrm(seed=4, num_members=3)
    ids, mask = pad_batch(ROWS)
    before = model(input_ids=ids, attention_mask=mask)
    M, K = model.config.num_attributes, model.config.num_quantiles
    offsets = torch.linspace(-0.2, 0.3, M * K).view(1, M, K)  # increasing: the sum stays sorted
    model.config.calibration = check_calibration(
        {"offsets": offsets.tolist(), "width_bin_edges": [], "width_scales": [1.0] * M,
         "width_level_indices": [0, K - 1]}, M, K,
    )  # fmt: skip
    after = model(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(after.attribute_quantiles, before.attribute_quantiles + offsets[0])
    torch.testing.assert_close(after.member_rewards.mean(-1), after.logits[:, 0])
    torch.testing.assert_close(after.reward_epistemic_std, before.reward_epistemic_std)
    assert not torch.allclose(after.logits, before.logits)
