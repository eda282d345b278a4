"""The demo pipeline end to end, on the shipped demo data with a tiny random backbone and SmolLM2's tokenizer."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaModel

from conftest import tiny_backbone_config
from qrm_hf import QRMForSequenceClassification
from qrm_hf.backbones import smollm2_backbone_dir
from qrm_hf.chat import encode_conversation
from qrm_hf.cli import main
from qrm_hf.training.demo import demo_config, run_demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Run the whole demo once with a tiny backbone that uses SmolLM2's tokenizer and chat template."""
    root = tmp_path_factory.mktemp("demo")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_backbone_dir())
    torch.manual_seed(0)
    config = tiny_backbone_config(
        vocab_size=len(tokenizer), max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id
    )
    LlamaModel(config).save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    config = demo_config(
        root / "out", backbone=root / "backbone", gating={"hidden_dim": 32, "n_hidden": 2, "epochs": 3}
    )
    return run_demo(config), config


@pytest.mark.slow
def test_demo_saves_a_model_that_reloads_through_remote_code_with_the_fitted_numbers(demo_run, capfd):
    model_dir, config = demo_run
    out = config.output_dir
    heads = json.loads((out / "heads" / "heads.json").read_text())
    heldout = json.loads((out / "heldout_evaluation.json").read_text())
    # The fresh process scored the held-out ratings with the saved model (full forward pass, remote code);
    # the training process scored the same rows with the fitted heads on extracted features.
    assert heldout["ratings"]["pinball"] == pytest.approx(heads["validation"]["pinball_loss"], abs=1e-4)
    assert set(heldout["ratings"]["pinball_by_kind"]) == {"clear", "controversial"}
    # the model's own members: their spread per kind, next to the offline bootstrap refits
    assert heldout["ratings"]["epistemic"]["members"] == heads["num_members"] == 10
    assert set(heldout["ratings"]["epistemic"]["mean_std"]) == {"all", "clear", "controversial"}
    assert "own_uncertainty" in heldout["ratings"]
    # and it was the saved code that scored them, not the installed package's
    assert heldout["model_class"].startswith("transformers_modules.")
    heldout_pairs = (
        (Path(__file__).parent.parent / "data" / "demo" / "pairs_heldout.jsonl").read_text().splitlines()
    )
    assert 0 <= heldout["pairs"]["accuracy"] <= 1 and heldout["pairs"]["pairs"] == len(heldout_pairs)
    gating = heldout["pairs"]["gating"]  # the gating's numbers next to the fixed mixes', by prompt category
    assert gating["accuracy"] == pytest.approx(heldout["pairs"]["accuracy"])
    assert set(gating["fixed_mixes"]) == {f"{name} only" for name in heads["attribute_names"]} | {"uniform"}
    assert {"harmful", "factual"} <= set(gating["mean_weights_by_category"])
    ranking = heldout["pairs"]["ranking"]  # how well each signal ranks the model's mistakes on the pairs
    # with members, the epistemic signals rank the mistakes next to the distribution's own
    assert set(ranking["signals"]) == {
        "margin",
        "probability",
        "effect_size",
        "epistemic",
        "margin_over_epistemic",
    }
    assert ranking["pairs"] == len(heldout_pairs)
    selective = heldout["ratings"]["models"]["qrm"]["selective_error"]  # MAE@50 by predicted width
    assert set(selective) == set(heads["attribute_names"])
    assert (out / "calibration" / "accuracy_coverage.png").stat().st_size > 0
    assert json.loads((out / "gating" / "gating.json").read_text())["settings"]["fit_loss_scale"]
    assert (out / "showcase_distributions.png").stat().st_size > 10_000
    card = (model_dir / "README.md").read_text()
    assert "pinball_loss" in card and "helpfulness, correctness, safety, verbosity" in card
    assert {"tokenizer.json", "modeling_qrm.py", "configuration_qrm.py", "model.safetensors"} <= {
        p.name for p in model_dir.iterdir()
    }


@pytest.mark.slow
def test_score_command_prints_the_model_numbers(demo_run, capsys):
    model_dir, _ = demo_run
    prompt, response = "What is 2 + 2?", "2 + 2 = 4."
    main(["score", str(model_dir), "--prompt", prompt, "--response", response])
    printed = capsys.readouterr().out.splitlines()
    header, row = printed[-2].split(), printed[-1].split()
    assert header[1:] == ["expected", "q0.05", "median", "q0.95", "cert_equiv", "cvar"]

    model = QRMForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        output = model(torch.tensor([encode_conversation(tokenizer, prompt=prompt, response=response)]))
    quantiles = output.reward_quantiles[0]
    assert float(row[1]) == pytest.approx(output.logits.item(), abs=1e-4)
    assert float(row[2]) == pytest.approx(quantiles[0].item(), abs=1e-4)  # level 0.05 is the first level
    # certainty equivalent of the exponential utility at lambda 1: -log mean_k exp(-q_k)
    assert float(row[5]) == pytest.approx(-torch.exp(-quantiles.double()).mean().log().item(), abs=1e-4)


@pytest.mark.slow
def test_demo_calibrates_on_half_of_the_heldout_prompts_and_keeps_the_other_half_for_the_test(demo_run):
    from qrm_hf.training.demo import CALIBRATION_WIDTH_BINS

    model_dir, config = demo_run
    out = config.output_dir
    halves = [
        [json.loads(line) for line in (out / f"ratings_{name}.jsonl").read_text().splitlines()]
        for name in ("calibration", "test")
    ]
    heldout = (
        (Path(__file__).parent.parent / "data" / "demo" / "ratings_heldout.jsonl").read_text().splitlines()
    )
    assert len(halves[0]) + len(halves[1]) == len(heldout)
    prompts = [{row["prompt"] for row in half} for half in halves]
    assert not prompts[0] & prompts[1]  # whole prompts to each side
    assert all({"clear", "controversial"} <= {row["kind"] for row in half} for half in halves)
    calibrated = QRMForSequenceClassification.from_pretrained(out / "calibrated_model")
    calibration = calibrated.config.calibration
    assert len(calibration["offsets"]) == CALIBRATION_WIDTH_BINS
    responses = {(row["prompt"], row["response"]) for row in halves[0]}
    assert sum(group[0] for group in calibration["calibration_responses"]) == len(responses)
    card = (out / "calibrated_model" / "README.md").read_text()
    assert "## Calibration" in card and "| helpfulness | controversial |" in card
    assert "pinball_loss" in card  # the trained model's card, with its calibration section added
