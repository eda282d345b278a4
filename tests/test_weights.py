"""Weights are complete, or refused; and what transformers' own common tests expect (labels, export, a fresh QRM).

Tiny random QRMs (conftest), tiny GPT-2 / GPT-NeoX / Llama backbones saved here; nothing from the Hub.
"""

from __future__ import annotations

import ast
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_pipeline import config_values, write_config, write_data
from test_safety import assert_one_line_error, run_cli
from test_trl import tiny_tokenizer, token_ids
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    BloomConfig,
    BloomForCausalLM,
    FalconConfig,
    FalconForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaForCausalLM,
)

from conftest import PATTERN, conversation, make_qrm, pad_batch, tiny_backbone_config
from qrm_hf import QRMConfig, QRMForSequenceClassification
from qrm_hf.chat import encode_conversation
from qrm_hf.hub import load_qrm

REPO_ROOT = Path(__file__).resolve().parents[1]
ROWS = [conversation(4, 6, seed=1), conversation(9, 3, seed=2), conversation(2, 12, seed=3)]
HEAD_KEYS = {"regression_layer.weight", "reward_transform_matrix", "gating.logit_scale"}


@pytest.fixture
def saved(tmp_path):
    """A tiny QRM saved with a tokenizer: (model, directory)."""
    from test_hub import saved_qrm

    model, _, directory = saved_qrm(tmp_path / "qrm", seed=11)
    return model, directory


def edit_weights(directory: Path, edit) -> None:
    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


# --- a QRM checkpoint is complete, or refused --------------------------------------------------


@pytest.mark.parametrize(
    "removed",
    [
        ["regression_layer.weight"],
        ["gating.logit_scale", "reward_transform_matrix"],
        ["model.layers.1.mlp.down_proj.weight"],
    ],
)
def test_missing_tensors_are_refused_by_every_loader(saved, capsys, removed):
    _, directory = saved
    edit_weights(directory, lambda tensors: [tensors.pop(name) for name in removed])
    named = [name.replace("reward_transform_matrix", "reward_transform.weight") for name in removed]
    for loader in (QRMForSequenceClassification, AutoModelForSequenceClassification):
        with pytest.raises(ValueError, match="missing") as error:
            loader.from_pretrained(directory)
        assert all(name in str(error.value) for name in named) and "\n" not in str(error.value)
    with pytest.raises(ValueError, match="missing") as error:
        load_qrm(directory)
    assert all(name in str(error.value) for name in named)
    capsys.readouterr()
    code, _, err = run_cli(capsys, "score", directory, "--prompt", "w11", "--response", "w20")
    assert_one_line_error(code, err, *named)


def test_unexpected_tensors_are_refused(saved, capsys):
    _, directory = saved
    edit_weights(directory, lambda tensors: tensors.update({"extra_head.weight": torch.ones(2, 2)}))
    with pytest.raises(ValueError, match="unexpected extra_head.weight"):
        QRMForSequenceClassification.from_pretrained(directory)
    capsys.readouterr()
    code, _, err = run_cli(capsys, "score", directory, "--prompt", "w11", "--response", "w20")
    assert_one_line_error(code, err, "extra_head.weight")


def test_a_qrm_without_any_head_loads_fresh_heads_only_through_from_pretrained(saved):
    """No head tensor at all is what a backbone checkpoint looks like: from_pretrained builds fresh heads
    (reported missing); load_qrm, behind every command, scores only complete QRMs."""
    _, directory = saved
    edit_weights(directory, lambda t: [t.pop(k) for k in list(t) if not k.startswith("model.")])
    model, info = QRMForSequenceClassification.from_pretrained(directory, output_loading_info=True)
    assert {k.split(".")[0] for k in info["missing_keys"]} == {
        "regression_layer",
        "reward_transform",
        "gating",
    }
    with pytest.raises(ValueError, match="missing .*regression_layer.weight"):
        load_qrm(directory)


def test_shape_mismatch_is_one_line_without_the_load_report(saved, capsys, caplog):
    _, directory = saved
    config = json.loads((directory / "config.json").read_text())
    config["attribute_names"] = config["attribute_names"][:2]
    (directory / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    with pytest.raises(ValueError) as error:
        QRMForSequenceClassification.from_pretrained(directory)
    message = str(error.value)
    assert (
        "\n" not in message and "regression_layer.weight is [15, 32] in the checkpoint, [10, 32]" in message
    )
    assert "LOAD REPORT" not in capsys.readouterr().err + caplog.text
    code, _, err = run_cli(capsys, "score", directory, "--prompt", "w11", "--response", "w20")
    assert_one_line_error(code, err, "regression_layer.weight")


def test_every_qrm_load_of_the_package_goes_through_load_qrm_or_assemble():
    """AST scan: QRM classes are loaded from a checkpoint only in load_qrm (every command: score, evaluate,
    rewardbench, preference-strength, rloo, grpo) and in assemble_qrm, both checked for completeness."""
    loaders = {"QRMForSequenceClassification", "AutoModelForSequenceClassification"}
    callers = set()
    for path in [*REPO_ROOT.joinpath("qrm_hf").rglob("*.py"), *REPO_ROOT.joinpath("training").rglob("*.py")]:
        tree = ast.parse(path.read_text(), filename=str(path))
        for function in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
            for call in [n for n in ast.walk(function) if isinstance(n, ast.Call)]:
                target = call.func
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr == "from_pretrained"
                    and isinstance(target.value, ast.Name)
                    and target.value.id in loaders
                ):
                    callers.add((path.name, function.name))
    # hub._load_model_weights is the loading step of load_qrm, which checks what it returns
    assert callers == {("hub.py", "_load_model_weights"), ("assemble.py", "assemble_qrm")}, callers
    hub_tree = ast.parse(REPO_ROOT.joinpath("qrm_hf", "hub.py").read_text())
    step_callers = {
        function.name
        for function in ast.walk(hub_tree)
        if isinstance(function, ast.FunctionDef)
        for call in ast.walk(function)
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "_load_model_weights"
    }
    assert step_callers == {"load_qrm"}, step_callers


def test_the_shipped_modeling_code_reads_no_traceback_frames():
    for path in REPO_ROOT.joinpath("modeling").glob("*.py"):
        source = path.read_text()
        assert not any(word in source for word in ("f_locals", "tb_frame", "__traceback__")), path


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_corrupt_weights_file_is_named_by_load_qrm(saved, capsys, damage):
    _, directory = saved
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 100)
    with pytest.raises(OSError, match="model.safetensors is truncated or corrupt"):
        load_qrm(directory)
    code, _, err = run_cli(capsys, "score", directory, "--prompt", "w11", "--response", "w20")
    assert_one_line_error(code, err, "model.safetensors")


# --- backbones whose checkpoint prefix is not `model.` -----------------------------------------


def save_causal_lm(kind: str, path: Path) -> Path:
    """A tiny random GPT-2, BLOOM, Falcon (`transformer.`) or GPT-NeoX (`gpt_neox.`) language model with the
    tiny tokenizer."""
    tokenizer = tiny_tokenizer()
    ids = token_ids(tokenizer)
    torch.manual_seed(0)
    if kind == "gpt2":
        config = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=512, **ids)
        model = GPT2LMHeadModel(config)
    elif kind == "bloom":
        model = BloomForCausalLM(BloomConfig(hidden_size=32, n_layer=2, n_head=4, **ids))
    elif kind == "falcon":
        model = FalconForCausalLM(
            FalconConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, **ids)
        )
    else:
        config = GPTNeoXConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=512, **ids,
        )  # fmt: skip
        model = GPTNeoXForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("kind", ["gpt2", "gpt_neox", "bloom", "falcon"])
def test_qrm_train_on_a_backbone_stored_under_another_prefix_keeps_the_backbone(tmp_path, kind):
    from qrm_hf.cli import main

    backbone = save_causal_lm(kind, tmp_path / "backbone")
    config = config_values(backbone, write_data(tmp_path / "data"), tmp_path / "run", debias=False)
    main(["train", str(write_config(tmp_path / "config.yaml", config))])
    model, tokenizer = load_qrm(tmp_path / "run" / "model")
    saved_keys = set(load_file(tmp_path / "run" / "model" / "model.safetensors"))
    assert "reward_transform_matrix" in saved_keys  # the documented key of the transform
    assert all(key.startswith(("model.", "regression_layer.", "gating.", "reward_")) for key in saved_keys)
    reference = AutoModel.from_pretrained(backbone)  # the backbone, loaded independently of qrm-hf
    messages = [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."}]
    ids = torch.tensor([encode_conversation(tokenizer, messages=messages)])
    with torch.no_grad():
        hidden = reference(input_ids=ids).last_hidden_state[0]
        output = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        gating_position = ids[0].tolist().index(model.config.prompt_end_pattern[0])
        expected = model.score_embeddings(hidden[-1:], hidden[gating_position : gating_position + 1])
    torch.testing.assert_close(output.prompt_embedding[0], hidden[gating_position])
    torch.testing.assert_close(output.attribute_quantiles, expected.attribute_quantiles)
    torch.testing.assert_close(output.logits, expected.logits)


def test_a_backbone_missing_a_tensor_is_refused_by_extract_train_and_assemble(tmp_path, capsys):
    # Each load would draw the missing tensor at random anew: the features, and the assembled model whose
    # probe check compares it with its own load, would sit on different decoders, with exit 0.
    backbone = save_causal_lm("gpt_neox", tmp_path / "backbone")
    tensors = load_file(backbone / "model.safetensors")
    del tensors["gpt_neox.layers.1.mlp.dense_4h_to_h.weight"]
    save_file(tensors, backbone / "model.safetensors", metadata={"format": "pt"})
    from qrm_hf.training.stages import load_extraction_backbone  # behind extract, train and assemble

    with pytest.raises(ValueError, match=r"lacks 1 tensor.*layers\.1\.mlp\.dense_4h_to_h\.weight"):
        load_extraction_backbone(str(backbone), None)
    config = config_values(backbone, write_data(tmp_path / "data"), tmp_path / "run", debias=False)
    capsys.readouterr()  # (the progress bars of the saves above)
    code, _, err = run_cli(capsys, "train", str(write_config(tmp_path / "config.yaml", config)))
    assert_one_line_error(code, err, "layers.1.mlp.dense_4h_to_h.weight")
    assert not (tmp_path / "run" / "model").exists()


def test_a_backbone_with_pickled_weights_only_is_never_unpickled(tmp_path, capsys):
    backbone = save_causal_lm("gpt_neox", tmp_path / "backbone")
    tensors = load_file(backbone / "model.safetensors")
    (backbone / "model.safetensors").unlink()
    torch.save(tensors, backbone / "pytorch_model.bin")
    from qrm_hf.training.stages import load_extraction_backbone  # behind extract, train and assemble

    with pytest.raises(OSError, match="model.safetensors"):
        load_extraction_backbone(str(backbone), None)


def test_from_pretrained_refuses_a_backbone_stored_under_another_prefix(tmp_path):
    backbone = save_causal_lm("gpt2", tmp_path / "gpt2")
    # (Checked first: a config that ignored the backbone's would build the default 8B Llama.)
    assert QRMConfig.from_pretrained(backbone).backbone_config.model_type == "gpt2"
    with pytest.raises(ValueError, match=r"missing model\.h\.0.*unexpected transformer\.h\.0.*qrm assemble"):
        QRMForSequenceClassification.from_pretrained(backbone, attribute_names=["a"], quantile_levels=[0.5])


def test_assemble_check_fails_unless_the_model_reproduces_the_extraction():
    from qrm_hf.training.assemble import check_reproduces_extraction

    model = make_qrm(seed=12)
    ids = ROWS[0]
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    gating_position = ids.index(PATTERN[0])  # conversation() puts the pattern once, after the prompt
    check_reproduces_extraction(model, ids, hidden[-1], hidden[gating_position])  # the real backbone passes
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.normal_()  # a backbone other than the extraction's
    with pytest.raises(ValueError, match="does not reproduce the feature extraction"):
        check_reproduces_extraction(model, ids, hidden[-1], hidden[gating_position])


# --- a fresh QRM on a pretrained backbone, the transformers way --------------------------------


def test_fresh_qrm_from_a_plain_llama_directory(tmp_path):
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_backbone_config()).save_pretrained(tmp_path)
    config = QRMConfig.from_pretrained(tmp_path, attribute_names=["a", "b"], quantile_levels=[0.25, 0.75])
    assert config.hidden_size == 32 and config.backbone_config.model_type == "llama"
    assert (config.attribute_names, config.quantile_levels) == (["a", "b"], [0.25, 0.75])
    with pytest.raises(ValueError, match="strictly increasing"):  # QRM fields are checked as in __init__
        QRMConfig.from_pretrained(tmp_path, quantile_levels=[0.75, 0.25])

    model, info = QRMForSequenceClassification.from_pretrained(
        tmp_path, attribute_names=["a", "b"], quantile_levels=[0.25, 0.75], output_loading_info=True
    )
    assert {k.split(".")[0] for k in info["missing_keys"]} == {
        "regression_layer",
        "reward_transform",
        "gating",
    }
    assert info["unexpected_keys"] == {"lm_head.weight"}
    reference = AutoModel.from_pretrained(tmp_path)
    ids = torch.tensor([ROWS[0]])
    with torch.no_grad():
        torch.testing.assert_close(model.model(ids).last_hidden_state, reference(ids).last_hidden_state)
    assert model.regression_layer.weight.shape == (4, 32)


# --- fine-tuning with labels trains the heads; the gating is frozen ----------------------------


def test_the_gating_and_transform_are_frozen_after_loading_and_labels_refuse_a_trainable_gating(saved):
    _, directory = saved
    model = QRMForSequenceClassification.from_pretrained(directory).train()
    assert not any(
        p.requires_grad for p in [*model.gating.parameters(), *model.reward_transform.parameters()]
    )
    ids, mask = pad_batch(ROWS)
    labels = torch.rand(3, 3)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()  # heads and backbone train
    assert model.regression_layer.weight.grad.abs().sum() > 0
    model.gating.requires_grad_(True)
    with pytest.raises(ValueError, match=r"gating network no gradient.*requires_grad_\(False\)"):
        model(input_ids=ids, attention_mask=mask, labels=labels)


DDP_WORKER = """
import json, os, sys
import torch
sys.path.insert(0, {tests!r})
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments
from conftest import conversation, make_qrm, pad_batch

class Ratings(Dataset):
    def __len__(self):
        return 16
    def __getitem__(self, i):
        return dict(input_ids=conversation(3 + i % 4, 2 + i % 3, seed=i), labels=torch.rand(3, generator=torch.Generator().manual_seed(i)))

def collate(items):
    ids, mask = pad_batch([item["input_ids"] for item in items])
    return dict(input_ids=ids, attention_mask=mask, labels=torch.stack([item["labels"] for item in items]))

model = make_qrm(seed=13).train()
before = {{name: p.detach().clone() for name, p in model.named_parameters()}}
args = TrainingArguments(
    output_dir={out!r}, per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, report_to="none",
    save_strategy="no", use_cpu=True, ddp_backend="gloo", ddp_find_unused_parameters=False,
    gradient_checkpointing=True, remove_unused_columns=False, seed=0,
)
Trainer(model=model, args=args, train_dataset=Ratings(), data_collator=collate).train()
moved = sorted({{name.split(".")[0] for name, p in model.named_parameters() if not torch.equal(p, before[name])}})
rank = int(os.environ["RANK"])
json.dump({{"moved": moved, "heads": model.regression_layer.weight.sum().item()}}, open({out!r} + f"/rank{{rank}}.json", "w"))
# Shut the process group down before exit: gloo's threads alive at interpreter exit can abort the process
# ("terminate called without an active exception") after the work is done.
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
"""


def test_trainer_with_labels_and_gradient_checkpointing_under_ddp(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(DDP_WORKER).format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}"]
    result = subprocess.run([*command, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0] == ranks[1]  # the replicas stay identical
    assert "regression_layer" in ranks[0]["moved"] and "gating" not in ranks[0]["moved"]


# --- the plain call exports and compiles -------------------------------------------------------


def test_plain_call_exports_and_compiles_with_the_gating_search(qrm):
    ids, mask = pad_batch(ROWS, side="left")
    with torch.no_grad():
        eager = qrm(input_ids=ids, attention_mask=mask)
        exported = torch.export.export(qrm, (ids,), {"attention_mask": mask}).module()
        compiled = torch.compile(qrm, fullgraph=True)
        for program in (exported, compiled):
            out = program(ids, attention_mask=mask)
            for field in ("logits", "reward_quantiles", "prompt_embedding"):
                torch.testing.assert_close(out[field], eager[field], atol=1e-5, rtol=1e-5)
    # The gating positions found are those of the pattern, searched independently here.
    for row, (row_ids, row_mask) in enumerate(zip(ids.tolist(), mask.tolist(), strict=True)):
        starts = [
            i for i in range(len(row_ids) - 2) if row_ids[i : i + 3] == PATTERN and all(row_mask[i : i + 3])
        ]
        hidden = qrm.model(ids[row : row + 1], attention_mask=mask[row : row + 1],
                           position_ids=(mask[row : row + 1].cumsum(-1) - 1).clamp(min=0)).last_hidden_state  # fmt: skip
        torch.testing.assert_close(
            eager.prompt_embedding[row], hidden[0, starts[-1]].detach(), atol=1e-5, rtol=1e-5
        )
    no_pattern = ids.clone()
    no_pattern[0][torch.isin(no_pattern[0], torch.tensor(PATTERN))] = 20
    with pytest.raises(RuntimeError, match="prompt_end_pattern"):
        exported(no_pattern, attention_mask=mask)
    with pytest.raises(ValueError, match="prompt_end_pattern .* row 0"):
        qrm(input_ids=no_pattern, attention_mask=mask)
