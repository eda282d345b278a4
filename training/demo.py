"""The end-to-end demo (`qrm demo`, `make demo`): `qrm train` on ``training/configs/demo.yaml``, then a check.

1. `qrm train` runs every stage on the shipped demo data with the embedded SmolLM2-135M-Instruct:
   feature extraction, the quantile heads (linear quantile regression, alpha 0.003, 19 levels, labels in
   [0, 1], 10 members refitted on bootstrap resamples of the training responses; held-out pinball loss
   next to a ridge baseline), the gating network
   (Bradley-Terry on expected rewards) and the assembled model with its tokenizer and model card;
2. the saved model is reloaded in a fresh process with `AutoModelForSequenceClassification.from_pretrained(
   ..., trust_remote_code=True)` and scored on held-out data (`qrm evaluate`): the distribution measures,
   the error of the median on the ratings with the narrowest intervals next to a random half (MAE@50), and
   the ranking table of the pairs (accuracy on the surest half and area per signal: the scalar margin
   against the distribution's |P - 1/2| and effect size); the model's own epistemic
   spread per kind is printed next to the bootstrap refits (`--bootstrap 10`) it replaces.
3. the held-out ratings are split by prompt into a calibration and a test half: `qrm calibrate` fits
   conformal offsets (Mondrian, `CALIBRATION_WIDTH_BINS` groups of predicted width) on the first and prints
   the 80 % coverage, pinball and CRPS before and after, by attribute and kind, on the second.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .demo_data import DEMO_DATA
from .outputs import GatingOutput, QuantileHeadsOutput
from .pipeline import TrainConfig, run_training
from .stages import selected_epoch

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"
# Mondrian groups of `qrm calibrate` in the demo: two bins of predicted 80 % width (docs/design.md,
# "Conformal calibration"); ~46 calibration responses leave 23 per bin, above the 19 the 0.05 level needs.
CALIBRATION_WIDTH_BINS = 2


def _merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = (
            _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
    return merged


def demo_config(
    output_dir: str | Path = "outputs/demo", backbone: str | Path | None = None, **overrides
) -> TrainConfig:
    """The demo's `TrainConfig`, with another output directory, backbone or settings (nested dicts)."""
    import yaml

    values = yaml.safe_load(DEMO_CONFIG.read_text())
    if backbone is not None:
        values["backbone"] = str(backbone)
    values = _merge(values, overrides)
    return TrainConfig.from_dict(
        values, base_dir=DEMO_CONFIG.parent, where=str(DEMO_CONFIG), output_dir=output_dir
    )


def run_demo(config: TrainConfig | None = None, data_dir: Path = DEMO_DATA) -> Path:
    """Train with `config` (default: the demo config), reload and evaluate; returns the model directory."""
    config = config or demo_config()
    started = time.perf_counter()
    print(f"Training with `qrm train {DEMO_CONFIG}` into {config.output_dir}")
    model_dir = run_training(config)
    heads = QuantileHeadsOutput.load(config.output_dir / "heads").info
    gating = GatingOutput.load(config.output_dir / "gating").info
    validation = heads["validation"]
    print(f"Held-out pinball loss (lower is better) on {validation['examples']} ratings:")
    print(f"  QRM quantile heads          {validation['pinball_loss']:.4f}")
    if "pinball_loss_ridge_baseline" in validation:
        print(f"  ridge + residual quantiles  {validation['pinball_loss_ridge_baseline']:.4f}")
    if "pinball_loss_gaussian_baseline" in validation:
        print(f"  heteroscedastic Gaussian    {validation['pinball_loss_gaussian_baseline']:.4f}")
    print(f"  crossing quantile pairs before sorting: {validation['crossing_fraction_before_sorting']:.3f}")
    diagnostics = gating["diagnostics"]
    print(
        f"Gating validation accuracy: {selected_epoch(gating)['validation_accuracy']:.3f}; on the training "
        f"pairs {diagnostics['accuracy']:.3f} (fixed mixes: "
        + ", ".join(f"{name} {value:.3f}" for name, value in diagnostics["fixed_mixes"].items())
        + f"); mean normalised entropy {diagnostics['mean_normalised_entropy']:.3f}"
    )

    print("Reloading in a fresh process with trust_remote_code=True and evaluating on held-out data")
    output_dir = config.output_dir
    subprocess.run(
        [
            sys.executable,
            "-m",
            "qrm_hf",
            "evaluate",
            str(model_dir),
            "--ratings",
            str(data_dir / "ratings_heldout.jsonl"),
            "--pairs",
            str(data_dir / "pairs_heldout.jsonl"),
            "--showcase",
            str(data_dir / "showcase.jsonl"),
            "--label-range",
            "0",
            "4",
            "--plot",
            str(output_dir / "showcase_distributions.png"),
            "--baselines",
            str(output_dir / "features" / "attribute" / "ratings_train"),
            "--bootstrap",
            "10",
            "--plots",
            str(output_dir / "calibration"),
            "--output",
            str(output_dir / "heldout_evaluation.json"),
            "--trust-remote-code",  # our own model: check the code files saved with it, not the installed ones
        ],
        check=True,
        env={**os.environ, "QRM_HF_REMOTE_CODE_ONLY": "1"},
    )
    calibrate_on_heldout_half(model_dir, data_dir / "ratings_heldout.jsonl", output_dir)
    print(f"Demo finished in {time.perf_counter() - started:.0f} s. Model: {model_dir}")
    return model_dir


def split_by_prompt(rows) -> tuple[list[dict], list[dict]]:
    """(calibration, test) halves of rating rows, whole prompts to each side (the responses to one prompt are
    not independent of each other). Prompts with controversial responses alternate between the halves, then
    the others, each in sorted order, the test half first: it gets the larger share of the controversial
    prompts, the scarce rows whose coverage is measured (the width groups of the calibration need no kind)."""
    controversial = {row["prompt"] for row in rows if row.get("kind") == "controversial"}
    prompts = sorted(
        {row["prompt"] for row in rows}, key=lambda prompt: (prompt not in controversial, prompt)
    )
    test = set(prompts[::2])
    return [row for row in rows if row["prompt"] not in test], [row for row in rows if row["prompt"] in test]


def calibrate_on_heldout_half(model_dir: Path, ratings: Path, output_dir: Path) -> Path:
    """`qrm calibrate` on the calibration half of the held-out ratings (`split_by_prompt`), measured on the
    test half; returns the calibrated model's directory."""
    from qrm_hf.data import read_jsonl
    from qrm_hf.io import write_text_atomic

    calibration, test = split_by_prompt(read_jsonl(ratings))
    paths = output_dir / "ratings_calibration.jsonl", output_dir / "ratings_test.jsonl"
    for path, rows in zip(paths, (calibration, test), strict=True):
        write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    calibrated = output_dir / "calibrated_model"
    print(f"Conformal calibration on {paths[0].name} (held-out prompts), measured on {paths[1].name}")
    command = ["calibrate", str(model_dir), "--ratings", str(paths[0]), "--heldout", str(paths[1])]
    command += ["--width-bins", str(CALIBRATION_WIDTH_BINS), "--output-dir", str(calibrated)]
    subprocess.run([sys.executable, "-m", "qrm_hf", *command], check=True)
    return calibrated
