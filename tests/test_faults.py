"""No model lost, no run clobbered, bad data and configs named early.

`qrm train` runs on the tiny backbone of `test_pipeline`, with `reuse_across_datasets` (as the demo): the
preference pairs are built from the rated responses, so the pairs extraction reuses their embeddings.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pipeline import (
    ATTRIBUTES,
    PROMPTS,
    WORDS,
    pairs_spec,
    ratings_spec,
    save_backbone,
    write_config,
)

from conftest import run_cli
from qrm_hf.cli import main
from qrm_hf.training.features import DamagedFeaturesError, load_features
from qrm_hf.training.pipeline import TrainConfig

PAIRS = "features/preference/pairs"


def write_shared_data(directory: Path) -> dict[str, Path]:
    """Ratings, and preference pairs made of the rated responses (same prompt): shared conversations."""
    rng = np.random.default_rng(1)
    directory.mkdir(parents=True)
    ratings = []
    for i in range(40):
        length = int(rng.integers(1, 9))
        ratings.append(
            {
                "prompt": PROMPTS[i % len(PROMPTS)],
                "response": " ".join(rng.choice(WORDS, size=length)),
                "helpfulness": int(min(length // 2, 4)),
                "safety": int(rng.integers(2, 5)),
                "verbosity": int(min(length // 2, 4)),
            }
        )
    pairs = []
    for i in range(30):
        same_prompt = [row for row in ratings if row["prompt"] == PROMPTS[i % len(PROMPTS)]]
        a, b = rng.choice(len(same_prompt), size=2, replace=False)
        better, worse = sorted((same_prompt[a], same_prompt[b]), key=lambda row: -row["helpfulness"])
        pairs.append(
            {"prompt": better["prompt"], "chosen": better["response"], "rejected": worse["response"]}
        )
    paths = {"ratings": directory / "ratings.jsonl", "pairs": directory / "pairs.jsonl"}
    for key, rows in (("ratings", ratings), ("pairs", pairs)):
        paths[key].write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths


def run_config(backbone: Path, data: dict, output_dir: Path, epochs: int = 2) -> dict:
    return {
        "output_dir": str(output_dir),
        "backbone": str(backbone),
        "extraction": {"max_length": 256, "batch_size": 4, "shard_size": 8, "reuse_across_datasets": True},
        "attribute_datasets": [ratings_spec(data["ratings"])],
        "quantile_heads": {"quantile_levels": [0.25, 0.5, 0.75], "alpha": 0.001},
        "preference_datasets": [pairs_spec(data["pairs"])],
        "gating": {"hidden_dim": 8, "n_hidden": 1, "batch_size": 8, "epochs": epochs, "learning_rate": 1e-3},
    }


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """One uninterrupted `qrm train`; tests work on copies of its output directory."""
    root = tmp_path_factory.mktemp("faults")
    backbone = save_backbone(root / "backbone", seed=4)
    data = write_shared_data(root / "data")
    values = run_config(backbone, data, root / "run")
    main(["train", str(write_config(root / "config.yaml", values))])
    return root, backbone, data, Path(values["output_dir"])


def copy_run(clean_run, tmp_path, **overrides) -> tuple[Path, Path]:
    """A copy of the clean run's output and its config (every stage up to date unless `overrides`)."""
    root, backbone, data, out = clean_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    values = run_config(backbone, data, copy, **overrides)
    return copy, write_config(tmp_path / "config.yaml", values)


def shard_bytes(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.glob("features-*.safetensors"))}


# ------------------------------------------------------------------------------------------ locks


def test_a_second_run_on_the_same_output_directory_is_refused_naming_the_first(clean_run, tmp_path, capsys):
    copy, config = copy_run(clean_run, tmp_path, epochs=3)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            f"""
            import time
            from qrm_hf.io import directory_lock
            with directory_lock({str(copy)!r}), directory_lock({str(copy / "gating")!r}):
                print("locked", flush=True)
                time.sleep(120)
            """
        )],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = shard_bytes(copy / PAIRS), (copy / "model" / "model.safetensors").read_bytes()
        code, err = run_cli(capsys, "train", config)
        assert code == 2 and f"is in use by process {holder.pid}" in err and str(copy) in err, err
        code, err = run_cli(
            capsys, "fit-gating", copy / "heads", copy / PAIRS, "--output-dir", copy / "gating"
        )
        assert code == 2 and f"is in use by process {holder.pid}" in err, err
        # nothing of the first run was touched
        assert (shard_bytes(copy / PAIRS), (copy / "model" / "model.safetensors").read_bytes()) == before
    finally:
        holder.kill()
        holder.wait()
    main(["train", str(config)])  # the lock died with its holder
    assert json.loads((copy / "gating" / "gating.json").read_text())["settings"]["epochs"] == 3


# ------------------------------------------------------------------------------------------ no model lost


def test_kill_9_during_assemble_keeps_the_previous_model(clean_run, tmp_path):
    copy, config = copy_run(clean_run, tmp_path, epochs=3)  # gating and model must be redone
    old_model = (copy / "model" / "model.safetensors").read_bytes()
    script = textwrap.dedent(
        f"""
        import os, signal
        from qrm_hf.cli import main
        from qrm_hf.training import assemble

        save_qrm = assemble.save_qrm

        def save_then_die(model, directory, **kwargs):
            save_qrm(model, directory, **kwargs)  # the new model is complete in .model.qrm-partial ...
            os.kill(os.getpid(), signal.SIGKILL)  # ... and the process dies before it is renamed in

        assemble.save_qrm = save_then_die
        main(["train", {str(config)!r}])
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert (copy / ".model.qrm-partial" / "model.safetensors").exists()  # the kill hit in the right place
    assert (copy / "model" / "model.safetensors").read_bytes() == old_model
    code = subprocess.run(
        [sys.executable, "-m", "qrm_hf", "score", str(copy / "model"), "--prompt", "Say hi.", "--response", "hi"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert code.returncode == 0 and "expected" in code.stdout, code.stderr[-2000:]
    main(["train", str(config)])  # the interrupted stage runs again and replaces the model
    assert (copy / "model" / "model.safetensors").read_bytes() != old_model
    assert not (copy / ".model.qrm-partial").exists() and not (copy / ".model.qrm-previous").exists()


# ------------------------------------------------------------------------------------------ shards


def test_a_truncated_shard_is_named_and_extracted_again(clean_run, tmp_path, capsys):
    copy, config = copy_run(clean_run, tmp_path)
    original = shard_bytes(copy / PAIRS)
    shard = copy / PAIRS / "features-00001.safetensors"
    shard.write_bytes(original[shard.name][:-64])
    with pytest.raises(DamagedFeaturesError, match=r"features-00001.safetensors: \d+ bytes instead of"):
        load_features(copy / PAIRS)
    code, err = run_cli(capsys, "fit-gating", copy / "heads", copy / PAIRS, "--output-dir", tmp_path / "g")
    assert code == 2 and "Damaged feature shard(s)" in err and "features-00001.safetensors" in err, err
    assert "SafetensorError" not in err
    # same size, other bytes: the checksum tells
    shard.write_bytes(original[shard.name][:-8] + b"\x00" * 8)
    with pytest.raises(DamagedFeaturesError, match="checksum differs"):
        load_features(copy / PAIRS)
    main(["train", str(config)])
    printed = capsys.readouterr().out
    assert "damaged shard(s)" in printed and "extracting it again" in printed
    assert "] fit-quantiles: up to date" in printed and "] assemble: up to date" in printed
    assert shard_bytes(copy / PAIRS) == original  # extracted again, bit for bit


def test_a_resumed_extraction_is_bitwise_equal_to_an_uninterrupted_one(clean_run, tmp_path, capsys):
    copy, config = copy_run(clean_run, tmp_path)
    original = {path: shard_bytes(copy / path) for path in ("features/attribute/ratings", PAIRS)}
    reference = load_features(copy / PAIRS)[0]
    # As after a kill -9 during the pairs extraction: shards 1 and 3 not written yet, stage unfinished.
    state = json.loads((copy / "pipeline_state.json").read_text())
    state["stages"]["extract preference/pairs"]["complete"] = False
    (copy / "pipeline_state.json").write_text(json.dumps(state))
    for number in (1, 3):
        (copy / PAIRS / f"features-0000{number}.safetensors").unlink()
    main(["train", str(config)])
    assert "] extract preference/pairs (resuming)" in capsys.readouterr().out
    for path, shards in original.items():
        assert shard_bytes(copy / path) == shards, path
    for name, tensor in load_features(copy / PAIRS)[0].items():
        assert torch.equal(tensor, reference[name])


# ------------------------------------------------------------------------------------------ bad data


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b'{"prompt": "hi", "response": "yo", "helpfulness": 1}\n{"prompt": "hi", "response": \n',
         "line 2: not valid JSON"),
        (b'{"prompt": "hi", "response": "yo", "helpfulness": 1}\n{"prompt": "\xff", "response": "yo", '
         b'"helpfulness": 1}\n', "line 2: bytes that are not UTF-8"),
    ],
)  # fmt: skip
def test_extract_names_the_file_and_line_of_malformed_data(clean_run, tmp_path, capsys, content, fragment):
    backbone = clean_run[1]
    source = tmp_path / "bad.jsonl"
    source.write_bytes(content)
    code, err = run_cli(
        capsys, "extract", backbone, "--output-dir", tmp_path / "features", "--source", source, "--kind",
        "attribute", "--prompt", "prompt", "--response", "response", "--attributes", "helpfulness",
        "--label-range", "0", "4",
    )  # fmt: skip
    assert code == 2 and f"{source} {fragment}" in err, err


@pytest.mark.parametrize("size", ["0", "-1"])
def test_extract_refuses_a_batch_size_below_one(clean_run, tmp_path, capsys, size):
    code, err = run_cli(capsys, "extract", clean_run[1], "--output-dir", tmp_path / "f", "--preset",
                            "helpsteer", "--batch-size", size)  # fmt: skip
    assert code == 2 and "--batch-size: must be at least 1" in err and "Traceback" not in err


def test_a_missing_local_data_file_fails_the_dry_run(clean_run, tmp_path, capsys):
    root, backbone, data, _ = clean_run
    values = run_config(backbone, data, tmp_path / "run")
    values["preference_datasets"] = [pairs_spec(tmp_path / "data" / "no-such-pairs.jsonl")]
    config = write_config(tmp_path / "config.yaml", values)
    code, err = run_cli(capsys, "train", config, "--dry-run")
    assert code == 2 and "no-such-pairs.jsonl does not exist" in err and "preference_datasets" in err, err
    with pytest.raises(FileNotFoundError, match="no-such-pairs.jsonl"):
        TrainConfig.from_yaml(config)
    assert not (tmp_path / "run").exists()


def test_a_missing_backbone_directory_is_named(clean_run, tmp_path, capsys):
    code, err = run_cli(
        capsys, "extract", tmp_path / "no-backbone", "--output-dir", tmp_path / "f", "--source",
        clean_run[2]["ratings"], "--kind", "attribute", "--prompt", "prompt", "--response", "response",
        "--attributes", *ATTRIBUTES, "--label-range", "0", "4",
    )  # fmt: skip
    assert code == 2 and "no-backbone does not exist" in err and "Repo id must be" not in err, err
