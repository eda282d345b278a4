"""The pipeline as commands: `qrm extract | fit-quantiles | debias | fit-gating | assemble`,
`qrm train CONFIG` with stage skipping and invalidation, `paper.yaml --dry-run`, and bad input.

Everything runs on a tiny random Llama backbone saved with a byte-level tokenizer and Llama-3's chat
template (`test_trl.tiny_tokenizer`), and on small rating / preference files written here.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_trl import tiny_tokenizer, token_ids
from transformers import AutoTokenizer, LlamaModel

from conftest import tiny_backbone_config
from qrm_hf import QRMForSequenceClassification
from qrm_hf.chat import encode_conversation
from qrm_hf.cli import main
from qrm_hf.training.features import load_features, load_labelled
from qrm_hf.training.pipeline import STATE_FORMAT_VERSION, TrainConfig, build_plan, run_training
from qrm_hf.training.quantile_regression import MultiQuantileRegressor
from qrm_hf.training.settings import ExtractionSettings, GatingSettings
from qrm_hf.training.stages import (
    DatasetSpec,
    extract_features,
    fit_gating,
    fit_quantile_heads,
    load_heads,
)

PAPER_CONFIG = Path(__file__).resolve().parent.parent / "training" / "configs" / "paper.yaml"
ATTRIBUTES = ["helpfulness", "safety", "verbosity"]
PROMPTS = ["What is two plus two?", "Tell me a joke.", "Name a color.", "Say hi.", "Capital of France?"]
WORDS = "the a blue four joke hi Paris is it color red two".split()


def _response(rng, length):
    return " ".join(rng.choice(WORDS, size=length))


def write_data(directory: Path, seed: int = 0) -> dict[str, Path]:
    """Ratings (0-4, a few missing) whose helpfulness grows with the response length, and pairs."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    ratings = []
    for i in range(48):
        length = int(rng.integers(1, 8))
        row = {"prompt": PROMPTS[i % len(PROMPTS)], "response": _response(rng, length)}
        row["helpfulness"] = int(np.clip(length // 2 + rng.integers(0, 2), 0, 4))
        row["safety"] = None if i % 7 == 0 else int(rng.integers(2, 5))
        row["verbosity"] = int(np.clip(length // 2, 0, 4))
        ratings.append(row)
    pairs = [
        {"prompt": PROMPTS[i % len(PROMPTS)], "chosen": _response(rng, 6), "rejected": _response(rng, 1)}
        for i in range(40)
    ]
    paths = {"ratings": directory / "ratings.jsonl", "heldout": directory / "heldout.jsonl"}
    paths["pairs"] = directory / "pairs.jsonl"
    for path, rows in (
        (paths["ratings"], ratings[:36]),
        (paths["heldout"], ratings[36:]),
        (paths["pairs"], pairs),
    ):
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths


def save_backbone(path: Path, seed: int = 0, **overrides) -> Path:
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = tiny_backbone_config(**token_ids(tokenizer), max_position_embeddings=512, **overrides)
    LlamaModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def ratings_spec(source, name="ratings") -> dict:
    return {
        "name": name,
        "kind": "attribute",
        "source": str(source),
        "prompt": "prompt",
        "response": "response",
        "attributes": ATTRIBUTES,
        "label_ranges": [0, 4],
    }


def pairs_spec(source, name="pairs") -> dict:
    return {
        "name": name,
        "kind": "preference",
        "source": str(source),
        "prompt": "prompt",
        "chosen": "chosen",
        "rejected": "rejected",
    }


def config_values(backbone, data, output_dir, debias=True) -> dict:
    values = {
        "output_dir": str(output_dir),
        "backbone": str(backbone),
        "extraction": {"max_length": 256, "batch_size": 8, "shard_size": 16},
        "attribute_datasets": [ratings_spec(data["ratings"])],
        "validation_datasets": [ratings_spec(data["heldout"], "heldout")],
        "quantile_heads": {"quantile_levels": [0.1, 0.3, 0.5, 0.7, 0.9], "alpha": 0.001},
        "preference_datasets": [pairs_spec(data["pairs"])],
        "gating": {"hidden_dim": 16, "n_hidden": 2, "batch_size": 8, "epochs": 3, "learning_rate": 1e-3},
    }
    if debias:
        values["debias"] = {"reference_datasets": [pairs_spec(data["pairs"])]}
    return values


def write_config(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One `qrm train` run on the tiny backbone, with debiasing; returns (config path, values, data)."""
    root = tmp_path_factory.mktemp("pipeline")
    backbone = save_backbone(root / "backbone")
    data = write_data(root / "data")
    values = config_values(backbone, data, root / "run")
    path = write_config(root / "config.yaml", values)
    main(["train", str(path)])
    return path, values, data, backbone


def mtimes(directory: Path) -> dict[str, int]:
    return {
        str(p.relative_to(directory)): p.stat().st_mtime_ns
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------------------------ qrm train


def test_train_assembles_a_model_whose_forward_pass_reproduces_the_fitted_parts(trained):
    path, values, data, _ = trained
    out = Path(values["output_dir"])
    model = QRMForSequenceClassification.from_pretrained(out / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    coef, intercept, info = load_heads(out / "heads")
    assert model.config.attribute_names == ATTRIBUTES == info["attribute_names"]
    torch.testing.assert_close(model.regression_layer.weight, coef.reshape(-1, coef.shape[-1]))
    debias = json.loads((out / "debias" / "transform.json").read_text())
    assert debias["verbosity_attribute"] == "verbosity" and debias["penalties"]["verbosity"] == 1.0
    expected_t = torch.eye(3)
    expected_t[2] -= torch.tensor([debias["penalties"][a] for a in ATTRIBUTES])
    torch.testing.assert_close(model.reward_transform_matrix, expected_t)
    # The saved model, run on the raw conversations, gives the heads' predictions on the extracted features.
    features, settings = load_features(out / "features" / "attribute" / "ratings")
    heads = np.einsum("nd,mkd->nmk", features["embeddings"].double().numpy(), coef.double().numpy())
    rows = [json.loads(line) for line in data["ratings"].read_text().splitlines()]
    for position in (0, 5, 17):
        row = rows[int(features["index"][position])]
        ids = encode_conversation(tokenizer, prompt=row["prompt"], response=row["response"])
        with torch.no_grad():
            output = model(torch.tensor([ids]))
        after_t = torch.einsum("mk,mn->nk", torch.tensor(heads[position]).float(), expected_t).sort(-1).values
        torch.testing.assert_close(output.attribute_quantiles[0], after_t, atol=1e-4, rtol=1e-4)
    gating = json.loads((out / "gating" / "gating.json").read_text())
    assert len(gating["history"]) == 3 and all("validation_accuracy" in epoch for epoch in gating["history"])
    validation = info["validation"]
    assert validation["examples"] == 12 and 0 <= validation["crossing_fraction_before_sorting"] <= 1


def test_train_stage_outputs_equal_direct_estimator_calls_bitwise(trained):
    """The pipeline adds nothing to its estimators: its heads are `MultiQuantileRegressor.fit` on the
    features it extracted, and its gating network `BradleyTerryGating.fit` on the expected rewards (mean
    over the levels, then T) of the pairs, bit for bit. A refactor of the stages must keep this."""
    from transformers import LlamaConfig

    from qrm_hf.modeling.configuration_qrm import QRMConfig
    from qrm_hf.training.gating import BradleyTerryGating
    from qrm_hf.training.rewards import expected_rewards

    _, values, _, _ = trained
    out = Path(values["output_dir"])
    heads_settings = values["quantile_heads"]
    ratings, _ = load_features(out / "features" / "attribute" / "ratings")
    direct = MultiQuantileRegressor(heads_settings["quantile_levels"], alpha=heads_settings["alpha"]).fit(
        ratings["embeddings"].double().numpy(), ratings["labels"].double().numpy()
    )
    coef, intercept, _ = load_heads(out / "heads")
    assert torch.equal(coef, torch.tensor(direct.coef_, dtype=torch.float32))
    assert torch.equal(intercept, torch.tensor(direct.intercept_, dtype=torch.float32))

    from safetensors.torch import load_file

    transform = load_file(str(out / "debias" / "transform.safetensors"))["transform"]
    pairs, _ = load_features(out / "features" / "preference" / "pairs")
    rewards = expected_rewards(
        coef, transform, pairs["embeddings"], intercept
    )  # [N, 2, M], the model's heads
    mean_then_transform = (pairs["embeddings"].float() @ coef.mean(1).T + intercept.mean(1)) @ transform
    torch.testing.assert_close(rewards, mean_then_transform)
    gating = values["gating"]
    config = QRMConfig(
        backbone_config=LlamaConfig(hidden_size=coef.shape[-1], num_attention_heads=1, num_key_value_heads=1),
        attribute_names=ATTRIBUTES,
        gating_hidden_dim=gating["hidden_dim"],
        gating_n_hidden=gating["n_hidden"],
    )
    fitted = BradleyTerryGating(
        config,
        learning_rate=gating["learning_rate"],
        batch_size=gating["batch_size"],
        epochs=gating["epochs"],
    ).fit(pairs["prompt_embeddings"][:, 0].float(), rewards[:, 0], rewards[:, 1])
    saved = load_file(str(out / "gating" / "gating.safetensors"))
    expected = fitted.network_.state_dict()
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[name], expected[name]) for name in saved)


def test_a_second_run_skips_every_stage(trained, capsys):
    path, values, _, _ = trained
    before = mtimes(Path(values["output_dir"]))
    main(["train", str(path)])
    printed = capsys.readouterr().out
    assert printed.count("up to date, skipped") == len(build_plan(TrainConfig.from_yaml(path)))
    assert mtimes(Path(values["output_dir"])) == before


def test_a_changed_setting_or_input_reruns_only_what_depends_on_it(trained, tmp_path, capsys):
    _, values, data, _ = trained
    out = Path(values["output_dir"])
    # Gating epochs: the gating and the model are redone; features, heads and transform are kept.
    changed = {**values, "gating": {**values["gating"], "epochs": 2}}
    before = mtimes(out)
    main(["train", str(write_config(tmp_path / "gating.yaml", changed))])
    after = mtimes(out)
    kept = [name for name in before if name.startswith(("features/", "heads/", "debias/"))]
    assert kept and all(before[name] == after[name] for name in kept)
    assert before["gating/gating.safetensors"] != after["gating/gating.safetensors"]
    assert len(json.loads((out / "gating" / "gating.json").read_text())["history"]) == 2
    # A changed preference file: its features, the debiasing (they are its reference), gating, model.
    lines = data["pairs"].read_text().splitlines()
    data["pairs"].write_text("\n".join(lines[:-1]) + "\n")
    capsys.readouterr()
    main(["train", str(write_config(tmp_path / "gating.yaml", changed))])
    printed = capsys.readouterr().out
    for name in ("extract preference/pairs", "debias", "fit-gating", "assemble"):
        assert f"] {name}: inputs changed" in printed
    for name in ("extract attribute/ratings", "fit-quantiles"):
        assert f"] {name}: up to date" in printed
    assert len(load_features(out / "features" / "preference" / "pairs")[0]["index"]) == 39


def test_paper_config_dry_run_resolves_every_dataset_and_prints_the_plan(tmp_path, capsys):
    main(["train", str(PAPER_CONFIG), "--dry-run", "--output-dir", str(tmp_path / "paper")])
    printed = capsys.readouterr().out
    config = TrainConfig.from_yaml(PAPER_CONFIG)
    assert len(config.attribute_datasets) == 8 and len(config.preference_datasets) == 11
    assert len(config.attributes) == 19
    from qrm_hf.modeling.configuration_qrm import DEFAULT_ATTRIBUTE_NAMES

    assert config.attributes == list(DEFAULT_ATTRIBUTE_NAMES)
    assert config.backbone == "sfairXC/FsfairX-LLaMA3-RM-v0.1"
    assert (config.quantile_heads.alpha, config.quantile_heads.max_samples_per_attribute) == (0.003, 60_000)
    assert config.quantile_heads.quantile_levels == pytest.approx([0.05 * k for k in range(1, 20)])
    gating = config.gating
    assert (gating.learning_rate, gating.batch_size, gating.epochs, gating.weight_decay) == (
        3e-4,
        1024,
        3,
        1e-3,
    )
    assert (gating.hidden_dim, gating.n_hidden, gating.temperature) == (1024, 3, 10.0)
    assert config.debias.threshold == 0.03 and config.debias.verbosity_attribute == "helpsteer-verbosity"
    assert (
        "RLHFlow/SHP-standard" in printed
        and "helpsteer-helpfulness: column 'helpfulness', labels 0-4" in printed
    )
    assert printed.count(" new ") == 25  # 21 extractions, heads, debias, gating, assemble
    assert not (tmp_path / "paper").exists()


# ------------------------------------------------------------------------------------------ the commands


def test_stage_commands_compose_the_same_model_as_train(trained, tmp_path):
    _, values, data, backbone = trained
    out = tmp_path / "manual"
    levels = [str(level) for level in values["quantile_heads"]["quantile_levels"]]
    dataset = [
        "--kind",
        "attribute",
        "--prompt",
        "prompt",
        "--response",
        "response",
        "--label-range",
        "0",
        "4",
    ]
    common = ["--max-length", "256", "--batch-size", "8", "--shard-size", "16"]
    main(["extract", str(backbone), "--output-dir", str(out / "ratings"), "--source", str(data["ratings"]),
          "--name", "ratings", *dataset, "--attributes", *ATTRIBUTES, *common])  # fmt: skip
    main(["extract", str(backbone), "--output-dir", str(out / "pairs"), "--source", str(data["pairs"]),
          "--name", "pairs", "--kind", "preference", "--prompt", "prompt", "--chosen", "chosen",
          "--rejected", "rejected", *common])  # fmt: skip
    main(["fit-quantiles", str(out / "ratings"), "--output-dir", str(out / "heads"), "--levels", *levels,
          "--alpha", "0.001"])  # fmt: skip
    main(["debias", str(out / "heads"), str(out / "pairs"), "--output-dir", str(out / "debias")])
    main(["fit-gating", str(out / "heads"), str(out / "pairs"), "--output-dir", str(out / "gating"),
          "--transform", str(out / "debias"), "--hidden-dim", "16", "--n-hidden", "2", "--batch-size", "8",
          "--epochs", "2", "--learning-rate", "1e-3"])  # fmt: skip
    main(["assemble", str(backbone), "--heads", str(out / "heads"), "--gating", str(out / "gating"),
          "--transform", str(out / "debias"), "--output-dir", str(out / "model")])  # fmt: skip
    manual = QRMForSequenceClassification.from_pretrained(out / "model")
    trained_model = QRMForSequenceClassification.from_pretrained(Path(values["output_dir"]) / "model")
    manual_state, trained_state = manual.state_dict(), trained_model.state_dict()
    for name in ("regression_layer.weight", "reward_transform.weight"):
        torch.testing.assert_close(manual_state[name], trained_state[name])
    assert {p.name for p in (out / "model").iterdir()} >= {"README.md", "modeling_qrm.py", "tokenizer.json"}


def test_assemble_puts_rewardbench_results_into_the_model_index(trained, tmp_path):
    from huggingface_hub import ModelCard

    _, values, _, backbone = trained
    run = Path(values["output_dir"])
    report = {"benchmark": "rewardbench-2", "subsets": {"Math": {"accuracy": 0.5, "n": 2}, "Ties": {"accuracy": 0.25, "n": 4}},
              "sections": {}, "score": 0.375, "rank_by": "expectation", "missing_subsets": [], "split": "test"}  # fmt: skip
    results = tmp_path / "rb2.json"
    results.write_text(json.dumps(report))
    main(["assemble", str(backbone), "--heads", str(run / "heads"), "--gating", str(run / "gating"),
          "--transform", str(run / "debias"), "--output-dir", str(tmp_path / "model"), "--results", str(results)])  # fmt: skip
    card = ModelCard.load(tmp_path / "model" / "README.md")
    values_by_name = {
        result.metric_name: result.metric_value
        for result in card.data.eval_results
        if result.dataset_type == "allenai/reward-bench-2"
    }
    assert values_by_name == {"Score": 37.5, "Math": 50.0, "Ties": 25.0}


def test_fit_quantiles_chooses_alpha_per_attribute_by_cross_validation(trained, tmp_path):
    from qrm_hf.training.quantile_regression import MultiQuantileRegressor
    from qrm_hf.training.stages import load_heads

    _, values, _, _ = trained
    features = Path(values["output_dir"]) / "features" / "attribute" / "ratings"
    levels = values["quantile_heads"]["quantile_levels"]
    main(["fit-quantiles", str(features), "--output-dir", str(tmp_path / "heads"),
          "--levels", *map(str, levels), "--alpha", "1e-4", "0.01", "10", "--cv", "3"])  # fmt: skip
    coef, _, info = load_heads(tmp_path / "heads")
    grid = ["0.0001", "0.01", "10.0"]
    for name in ATTRIBUTES:
        losses = info["cv_pinball"][name]
        assert list(losses) == grid and info["alpha_selected"][name] == float(min(losses, key=losses.get))
    # The heads are the plain fit of each attribute with its chosen penalty.
    X, Y = load_labelled([features], ATTRIBUTES)
    for m, name in enumerate(ATTRIBUTES):
        plain = MultiQuantileRegressor(levels, alpha=info["alpha_selected"][name]).fit(X, Y[:, m])
        np.testing.assert_allclose(coef[m].numpy(), plain.coef_[0], atol=1e-5)
    with pytest.raises(ValueError, match='quantile_heads: alpha must be a number, a list of numbers or "cv"'):
        TrainConfig.from_dict({**values, "quantile_heads": {"alpha": "auto"}})


def test_fit_quantiles_with_members_assembles_a_model_that_carries_them(trained, tmp_path):
    """`--num-members 3`: three refits on bootstrap resamples of the training responses (the ensemble
    fitting's own), stored as member heads with their mean as the heads; assemble puts all three in the model,
    which reports their disagreement; `qrm train` takes the same setting from its config."""
    from qrm_hf.training.bootstrap import fit_member_heads
    from qrm_hf.training.outputs import QuantileHeadsOutput
    from qrm_hf.training.quantile_regression import identical_row_groups

    _, values, _, backbone = trained
    run = Path(values["output_dir"])
    features = run / "features" / "attribute" / "ratings"
    levels = values["quantile_heads"]["quantile_levels"]
    main(["fit-quantiles", str(features), "--output-dir", str(tmp_path / "heads"),
          "--levels", *map(str, levels), "--alpha", "0.001", "--num-members", "3"])  # fmt: skip
    heads = QuantileHeadsOutput.load(tmp_path / "heads")
    X, Y = load_labelled([features], ATTRIBUTES)
    estimator = MultiQuantileRegressor(levels, alpha=0.001, max_samples_per_attribute=60_000, random_state=0)
    members = fit_member_heads(X, Y, identical_row_groups(X), estimator, 3, seed=0)
    assert heads.num_members == 3 and heads.info["num_members"] == 3
    for member, (fitted, _) in enumerate(members):
        np.testing.assert_allclose(heads.member_coef[member].numpy(), fitted.coef_, atol=1e-6)
    torch.testing.assert_close(heads.coef, heads.member_coef.mean(0))
    main(["assemble", str(backbone), "--heads", str(tmp_path / "heads"), "--gating", str(run / "gating"),
          "--output-dir", str(tmp_path / "model")])  # fmt: skip
    model = QRMForSequenceClassification.from_pretrained(tmp_path / "model")
    assert model.config.num_members == 3
    torch.testing.assert_close(
        model.regression_layer.weight.detach(), heads.member_coef.reshape(-1, heads.coef.shape[-1])
    )
    embeddings = torch.as_tensor(X[:5], dtype=torch.float32)
    output = model.score_embeddings(embeddings, embeddings)
    assert (output.reward_epistemic_std > 0).all()
    assert "3 members" in (tmp_path / "model" / "README.md").read_text()
    config = TrainConfig.from_dict(
        {**values, "quantile_heads": {**values["quantile_heads"], "num_members": 3}}
    )
    assert config.quantile_heads.num_members == 3


# ------------------------------------------------------------------------------------------ bad input


def test_bad_input_is_refused_with_a_clear_error_and_leaves_no_output(trained, tmp_path, monkeypatch):
    _, values, data, backbone = trained
    out = Path(values["output_dir"])
    pairs = out / "features" / "preference" / "pairs"
    with pytest.raises(ValueError, match="holds preference features; this step needs attribute"):
        fit_quantile_heads([pairs], tmp_path / "heads")
    # Features of another backbone (hidden size 48) cannot be mixed with these, nor meet these heads.
    other = save_backbone(tmp_path / "other", hidden_size=48)
    spec = DatasetSpec(**pairs_spec(data["pairs"]))
    short = ExtractionSettings(max_length=256, shard_size=64)
    other_pairs = extract_features(other, spec, tmp_path / "other_pairs", settings=short)
    with pytest.raises(ValueError, match="hidden size 48, the quantile heads 32"):
        fit_gating(out / "heads", [other_pairs], tmp_path / "gating")
    other_ratings = extract_features(
        other, DatasetSpec(**ratings_spec(data["ratings"])), tmp_path / "other_ratings", settings=short
    )
    with pytest.raises(ValueError, match="another backbone"):
        load_labelled([out / "features" / "attribute" / "ratings", other_ratings], ATTRIBUTES)
    # A failure inside a stage leaves neither its output nor a partial directory behind.
    from qrm_hf.training import gating as gating_module

    def broken_fit(self, *args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(gating_module.BradleyTerryGating, "fit", broken_fit)
    with pytest.raises(RuntimeError, match="out of memory"):
        fit_gating(out / "heads", [pairs], tmp_path / "broken", settings=GatingSettings(hidden_dim=8))
    assert not (tmp_path / "broken").exists() and not (tmp_path / ".broken.qrm-partial").exists()


@pytest.mark.parametrize(
    "rows, mapping, match",
    [
        ([{"prompt": "hi", "answer": "yo", "helpfulness": 1}], {}, r"lacks column\(s\) \['response'\] needed by preset 'bad'"),
        ([{"prompt": "hi", "response": "yo", "helpfulness": 7}], {}, r"label 7 .* outside the declared range \[0, 4\]"),
        ([{"prompt": "hi", "response": "yo", "helpfulness": 2, "safety": None}], {"attributes": ["helpfulness", "safety"]},
         r"attribute\(s\) \['safety'\] have no label at all"),
        ([], {}, "empty"),
    ],
)  # fmt: skip
def test_bad_datasets_are_named(trained, tmp_path, rows, mapping, match):
    backbone = trained[3]
    source = tmp_path / "bad.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    values = {**ratings_spec(source, "bad"), "attributes": ["helpfulness"], **mapping}
    with pytest.raises(ValueError, match=match):
        extract_features(
            backbone,
            DatasetSpec(**values),
            tmp_path / "features",
            settings=ExtractionSettings(max_length=256),
        )
    assert not (tmp_path / "features").exists()


def test_config_mistakes_are_caught_before_anything_runs(trained, tmp_path):
    _, values, data, _ = trained
    with pytest.raises(ValueError, match=r"gating: unknown key\(s\) \['epoch'\]"):
        TrainConfig.from_dict({**values, "gating": {"epoch": 3}})
    with pytest.raises(ValueError, match="attribute_datasets entry 'pairs' is preference data"):
        TrainConfig.from_dict({**values, "attribute_datasets": [pairs_spec(data["pairs"])]})
    with pytest.raises(ValueError, match=r"without data: \['honesty'\]"):
        TrainConfig.from_dict({**values, "attributes": [*ATTRIBUTES, "honesty"]})
    with pytest.raises(ValueError, match="Unknown dataset preset 'helpsteer3'"):
        TrainConfig.from_dict({**values, "attribute_datasets": [{"preset": "helpsteer3"}]})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_training(TrainConfig.from_yaml(tmp_path / "missing.yaml"))


def test_extract_under_accelerate_with_two_processes_equals_one(trained, tmp_path):
    _, _, data, backbone = trained
    arguments = ["extract", str(backbone), "--source", str(data["pairs"]), "--name", "pairs",
                 "--kind", "preference", "--prompt", "prompt", "--chosen", "chosen", "--rejected", "rejected",
                 "--max-length", "256", "--shard-size", "6"]  # fmt: skip
    main([*arguments, "--output-dir", str(tmp_path / "one")])
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "qrm_hf"]  # fmt: skip
    subprocess.run(
        [*launch, *arguments, "--output-dir", str(tmp_path / "two")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    one, one_settings = load_features(tmp_path / "one")
    two, two_settings = load_features(tmp_path / "two")
    assert (
        one_settings == two_settings
        and len(json.loads((tmp_path / "two" / "manifest.json").read_text())["shards"]) == 7
    )
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-6, rtol=0)


def test_an_interrupted_run_resumes_the_unfinished_extraction(tmp_path, capsys):
    backbone = save_backbone(tmp_path / "backbone")
    values = config_values(backbone, write_data(tmp_path / "data"), tmp_path / "run", debias=False)
    path = write_config(tmp_path / "config.yaml", values)
    main(["train", str(path)])
    out = Path(values["output_dir"])
    reference = load_features(out / "features" / "preference" / "pairs")[0]
    # As after a crash during the pairs extraction: one shard missing, the stage not marked complete.
    state = json.loads((out / "pipeline_state.json").read_text())
    state["stages"]["extract preference/pairs"]["complete"] = False
    (out / "pipeline_state.json").write_text(json.dumps(state))
    (out / "features" / "preference" / "pairs" / "features-00001.safetensors").unlink()
    kept = mtimes(out / "features" / "preference" / "pairs")
    capsys.readouterr()
    main(["train", str(path)])
    printed = capsys.readouterr().out
    assert "] extract preference/pairs (resuming)" in printed and "] fit-quantiles: up to date" in printed
    after = mtimes(out / "features" / "preference" / "pairs")
    assert all(after[name] == kept[name] for name in kept if name.startswith("features-00000"))
    for name, tensor in load_features(out / "features" / "preference" / "pairs")[0].items():
        torch.testing.assert_close(tensor, reference[name])


def test_a_state_file_of_another_format_version_runs_every_stage_again(tmp_path, capsys):
    """The state records the format version of its fingerprints; one of another version (here a file
    written before versions existed: version 1) is not compared, so every stage runs again, and the
    extractions keep the shards their own manifests vouch for."""
    backbone = save_backbone(tmp_path / "backbone")
    run = tmp_path / "run"
    values = config_values(backbone, write_data(tmp_path / "data"), run, debias=False)
    config = write_config(tmp_path / "config.yaml", values)
    main(["train", str(config)])
    state = json.loads((run / "pipeline_state.json").read_text())
    assert state["format_version"] == STATE_FORMAT_VERSION
    (run / "pipeline_state.json").write_text(json.dumps(state["stages"]))  # the layout without a version
    shards = {name: time for name, time in mtimes(run / "features").items() if "/features-" in name}
    fitted = mtimes(run / "gating")["gating.safetensors"]
    capsys.readouterr()
    main(["train", str(config)])
    printed = capsys.readouterr().out
    assert f"has format version 1, this qrm-hf writes {STATE_FORMAT_VERSION}" in printed
    assert "up to date" not in printed
    assert mtimes(run / "gating")["gating.safetensors"] != fitted
    assert shards and all(mtimes(run / "features")[name] == time for name, time in shards.items())
    assert json.loads((run / "pipeline_state.json").read_text())["format_version"] == STATE_FORMAT_VERSION
    main(["train", str(config)])
    assert capsys.readouterr().out.count("up to date, skipped") == len(
        build_plan(TrainConfig.from_yaml(config))
    )


def test_a_stage_output_replaced_by_another_command_is_redone(tmp_path, capsys):
    """`qrm fit-gating ... --output-dir <run>/gating --epochs 1` replaced the run's gating; the next `qrm train`
    found its state "complete" and skipped it, so the run's gating no longer was what its config says."""
    backbone = save_backbone(tmp_path / "backbone")
    data = write_data(tmp_path / "data")
    run = tmp_path / "run"
    config = write_config(tmp_path / "config.yaml", config_values(backbone, data, run, debias=False))
    main(["train", str(config)])
    trained_gating = json.loads((run / "gating" / "gating.json").read_text())
    pairs = run / "features" / "preference" / "pairs"
    main(["fit-gating", str(run / "heads"), str(pairs), "--output-dir", str(run / "gating"), "--epochs", "1"])
    assert json.loads((run / "gating" / "gating.json").read_text()) != trained_gating
    capsys.readouterr()
    main(["train", str(config)])
    printed = capsys.readouterr().out
    assert "] fit-gating: up to date" not in printed and "] fit-quantiles: up to date" in printed
    assert json.loads((run / "gating" / "gating.json").read_text()) == trained_gating


@pytest.mark.parametrize(
    "text, match",
    [
        ("backbone: [\n", "is not valid YAML"),  # a yaml.ParserError, not a ValueError
        ("backbone: b\noutput_dir: [1, 2]\n", "a setting has the wrong type"),  # a list where a path goes
        ("backbone: b\noutput_dir: o\nattribute_datasets: 5\n", "a setting has the wrong type"),
    ],
)
def test_a_malformed_config_file_is_one_line(text, match, tmp_path, capsys):
    from conftest import run_cli

    config = tmp_path / "config.yaml"
    config.write_text(text)
    code, err = run_cli(capsys, "train", config)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
