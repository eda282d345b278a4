"""`qrm sft` and `qrm rloo`: the paper's RLHF pipeline run end to end through the commands.

A tiny random Llama base model (Llama-3 chat template, helpers shared with `test_trl.py`), a tiny random
QRM and a few HH-RLHF transcripts written to a JSON Lines file: SFT trains and merges a LoRA adapter, RLOO
trains the merged SFT model against the QRM's risk reward. The commands are reached through
`add_rlhf_commands` on a local parser, exactly as `qrm` calls them.
"""

import argparse
import contextlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from peft import PeftModel
from safetensors.torch import load_file
from test_trl import save_tiny_policy, save_tiny_qrm, tiny_tokenizer
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from qrm_hf.cli import main, parse_arguments
from qrm_hf.cli_rlhf import add_rlhf_commands, trainer_config
from qrm_hf.dataset_loading import load_rows
from qrm_hf.risk import RISK_MEASURES
from qrm_hf.training.rlhf_data import chosen_completions, rloo_prompts
from qrm_hf.training.rlhf_pipeline import PAPER_MAX_PROMPT_LENGTH, PaperRLOOConfig
from qrm_hf.training.sft import PaperSFTConfig, paper_lora_config

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [
    ("What is two plus two?", "It is four.", "It is five."),
    ("Tell me a joke.", "No joke.", "What?"),
    ("Name a color.", "Blue.", "Four."),
    ("Say hi.", "hi", "No."),
    ("What is two plus two?", "Four.", "Blue."),
    ("Name a color.", "It is blue.", "It is a joke."),
]
LONG_PROMPT = "Tell me a joke. " * 400  # far more than 1024 tokens (and than 347)


def transcript(*turns: str) -> str:
    """An HH-RLHF transcript of alternating Human / Assistant turns."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {text}" for i, text in enumerate(turns))


def hh_rows() -> list[dict]:
    rows = [{"chosen": transcript(q, good), "rejected": transcript(q, bad)} for q, good, bad in PAIRS]
    rows.append(  # a multi-turn pair: the prompt holds the earlier turns
        {
            "chosen": transcript("Hi", "Hello.", "Name a color.", "Blue."),
            "rejected": transcript("Hi", "Hello.", "Name a color.", "No."),
        }
    )
    rows.append({"chosen": transcript(LONG_PROMPT, "Ha."), "rejected": transcript(LONG_PROMPT, "No.")})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def parser() -> argparse.ArgumentParser:
    qrm = argparse.ArgumentParser(prog="qrm")
    add_rlhf_commands(qrm.add_subparsers(dest="command", required=True))
    return qrm


def parse(*argv) -> argparse.Namespace:
    """`qrm ARGV` parsed as `qrm_hf.cli.main` parses it (the trainer options kept for the handler)."""
    return parse_arguments(parser(), [str(a) for a in argv])


def qrm(*argv: str) -> str:
    """Run `qrm ARGV` (sft or rloo); return what it printed."""
    args = parse(*argv)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        args.handler(args)
    return out.getvalue()


QUICK = ["--precision", "fp32", "--logging-steps", "1", "--save-steps", "1000", "--seed", "0"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Base model, QRM, HH data, and the outputs of one `qrm sft` and one `qrm rloo` run (on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rlhf")
    tokenizer = tiny_tokenizer()
    save_tiny_policy(root / "base", tokenizer)
    save_tiny_qrm(root / "tiny-qrm", tokenizer)
    data = write_jsonl(root / "hh.jsonl", hh_rows())
    sft_out = qrm(
        "sft", root / "base", "--data", data, "--output-dir", root / "sft",
        "--batch-size", 4, "--per-device-batch-size", 2, "--epochs", 4, "--learning-rate", 1e-2, *QUICK,
    )  # fmt: skip
    rloo_out = qrm(
        "rloo", root / "sft", root / "tiny-qrm", "--data", data, "--output-dir", root / "rloo",
        "--batch-size", 4, "--per-device-batch-size", 4, "--max-completion-length", 6, "--max-steps", 3, *QUICK,
    )  # fmt: skip
    yield dict(root=root, tokenizer=tokenizer, data=data, sft_out=sft_out, rloo_out=rloo_out)
    torch.set_num_threads(threads)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "model.safetensors")


def chat_ids(tokenizer, messages, **kwargs) -> list[int]:
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"]


@torch.no_grad()
def completion_logprob(model, tokenizer, example) -> float:
    """log p(completion | prompt) under `model`, tokenized as TRL's SFTTrainer does."""
    prompt_ids = chat_ids(tokenizer, example["prompt"], add_generation_prompt=True)
    ids = chat_ids(tokenizer, example["prompt"] + example["completion"])
    assert ids[: len(prompt_ids)] == prompt_ids
    logits = model(torch.tensor([ids])).logits[0, :-1].float()
    logp = logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1)
    return logp[len(prompt_ids) - 1 :].sum().item()


def log_history(path: Path) -> list[dict]:
    return json.loads((path / "trainer_state.json").read_text())["log_history"]


# ------------------------------------------------------------------------------------------------ data


def test_hh_pairs_become_sft_examples_and_rloo_prompts(assets):
    rows = load_rows(assets["data"])
    examples = chosen_completions(rows)
    assert len(examples) == len(rows) == len(PAIRS) + 2
    assert examples[0]["prompt"] == [{"role": "user", "content": "What is two plus two?"}]
    assert examples[0]["completion"] == [{"role": "assistant", "content": "It is four."}]
    multi_turn = examples[len(PAIRS)]
    assert [m["role"] for m in multi_turn["prompt"]] == ["user", "assistant", "user"]
    assert multi_turn["completion"] == [{"role": "assistant", "content": "Blue."}]
    assert rloo_prompts(rows)["prompt"] == examples["prompt"]  # the prompt is the chosen side's context
    text_prompts = rloo_prompts(
        load_rows(write_jsonl(assets["root"] / "p.jsonl", [{"prompt": "Hi", "x": 1}]))
    )
    assert text_prompts.column_names == ["prompt"] and text_prompts["prompt"] == ["Hi"]


# ------------------------------------------------------------------------------------------------- SFT


def test_sft_drops_examples_longer_than_1024_tokens(assets):
    tokenizer, root = assets["tokenizer"], assets["root"]
    examples = chosen_completions(load_rows(assets["data"]))
    lengths = [len(chat_ids(tokenizer, e["prompt"] + e["completion"])) for e in examples]
    assert lengths[-1] > 1024 and max(lengths[:-1]) < 100
    assert "Trained on 7 examples (1 dropped for having more than 1024 tokens)" in assets["sft_out"]
    # 7 examples, 2 per forward pass, 4 per optimizer step: 2 steps per epoch, 4 epochs
    losses = [h["loss"] for h in log_history(root / "sft") if "loss" in h]
    assert len(losses) == 8
    assert sum(losses[-2:]) < sum(losses[:2])


def test_sft_merges_the_adapter_into_a_plain_model_that_learned_the_chosen_responses(assets):
    root, tokenizer = assets["root"], assets["tokenizer"]
    sft = root / "sft"
    assert not (sft / "adapter_config.json").exists() and not (sft / "adapter_model.safetensors").exists()
    adapter = json.loads((sft / "adapter" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (32, 64)
    merged = AutoModelForCausalLM.from_pretrained(sft).eval()
    assert type(merged) is LlamaForCausalLM  # no PEFT wrapper, no lora_ weights
    before, after = weights(root / "base"), weights(sft)
    assert after.keys() == before.keys() and not any("lora" in name for name in after)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert any("self_attn.q_proj" in n for n in changed) and any("mlp.down_proj" in n for n in changed)
    assert "<|start_header_id|>" in (sft / "chat_template.jinja").read_text()  # saved with the model
    # the merged weights are the base model with the adapter applied
    base = AutoModelForCausalLM.from_pretrained(root / "base")
    with_adapter = PeftModel.from_pretrained(base, sft / "adapter").eval()
    ids = torch.tensor([tokenizer("What is two plus two? It is four.")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, with_adapter(ids).logits, rtol=1e-4, atol=1e-4)
    # and it gives the chosen responses of the training examples a higher likelihood than the base model
    base = AutoModelForCausalLM.from_pretrained(root / "base").eval()
    examples = chosen_completions(load_rows(assets["data"])).select(range(len(PAIRS) + 1))
    gains = [
        completion_logprob(merged, tokenizer, e) - completion_logprob(base, tokenizer, e) for e in examples
    ]
    assert min(gains) > 0, gains


# ------------------------------------------------------------------------------------------------ RLOO


def test_rloo_trains_the_sft_model_against_the_risk_reward(assets):
    root = assets["root"]
    assert "Trained on 7 prompts (1 dropped for having more than 347 tokens)" in assets["rloo_out"]
    logs = [h for h in log_history(root / "rloo") if "rewards/tiny-qrm/risk" in h]
    assert len(logs) == 3
    for log in logs:
        risk, expectation = log["rewards/tiny-qrm/risk"], log["rewards/tiny-qrm/expectation"]
        assert log["rewards/tiny-qrm/mean"] == pytest.approx(risk)  # TRL optimises the risk reward
        # exp_utility (lambda 1) of each distribution is at most -exp(-its mean), and so is their average
        assert risk < -math.exp(-expectation)
        assert {"rewards/tiny-qrm/q0.05", "rewards/tiny-qrm/q0.25"} <= set(log)
    # policy and reference both start as the SFT model: no KL at the first step, some after updates
    assert logs[0]["kl"] == 0.0 and logs[-1]["kl"] > 0.0
    policy = AutoModelForCausalLM.from_pretrained(root / "rloo")
    assert type(policy) is LlamaForCausalLM and not (root / "rloo" / "adapter_config.json").exists()
    before, after = weights(root / "sft"), weights(root / "rloo")
    assert after.keys() == before.keys()
    assert any(not torch.equal(before[name], after[name]) for name in before)


def test_grpo_trains_the_sft_model_against_a_risk_spec(assets):
    """`qrm grpo`, the command beside `qrm rloo`, here with the reward given as a spec (CVaR at 0.5)."""
    root = assets["root"]
    out = qrm(
        "grpo", root / "sft", root / "tiny-qrm", "--data", assets["data"], "--output-dir", root / "grpo",
        "--risk-measure", "cvar:0.5", "--batch-size", 4, "--per-device-batch-size", 4,
        "--max-completion-length", 6, "--max-steps", 2, *QUICK,
    )  # fmt: skip
    assert "Trained on 7 prompts (1 dropped for having more than 347 tokens); cvar:0.5 reward" in out
    logs = [h for h in log_history(root / "grpo") if "rewards/tiny-qrm/risk" in h]
    assert len(logs) == 2
    for log in logs:
        risk, expectation = log["rewards/tiny-qrm/risk"], log["rewards/tiny-qrm/expectation"]
        assert log["rewards/tiny-qrm/mean"] == pytest.approx(risk)  # TRL optimises the risk reward
        # the mean of the lower half of each distribution: between its 5 % quantile and its mean
        assert log["rewards/tiny-qrm/q0.05"] < risk < expectation
    policy = AutoModelForCausalLM.from_pretrained(root / "grpo")
    assert type(policy) is LlamaForCausalLM and not (root / "grpo" / "adapter_config.json").exists()
    before, after = weights(root / "sft"), weights(root / "grpo")
    assert any(not torch.equal(before[name], after[name]) for name in before)


# ------------------------------------------------------------------------------------------- bad input


def fails(*argv) -> str:
    """The error line of `qrm ARGV`, which must exit with status 2 (qrm_hf.cli.main's convention)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit:
        main([str(a) for a in argv])
    assert exit.value.code == 2 and len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
    return err.getvalue()


def test_bad_input_gives_clear_errors(assets):
    root, data = assets["root"], assets["data"]
    no_pairs = write_jsonl(root / "text.jsonl", [{"text": "Hello"}])
    message = fails("sft", root / "base", "--data", no_pairs, "--output-dir", root / "x", *QUICK)
    assert "`chosen` and `rejected` columns" in message and "['text']" in message
    message = fails("rloo", root / "sft", root / "tiny-qrm", "--data", no_pairs, "--output-dir", root / "x")
    assert "Expected a `prompt` column" in message
    message = fails("rloo", root / "sft", root / "base", "--data", data, "--output-dir", root / "x", *QUICK)
    assert "is not a Quantile Reward Model" in message
    message = fails("grpo", root / "sft", root / "tiny-qrm", "--risk-measure", "quantile:2")
    assert "`risk_measure`: `tau` must lie in (0, 1)" in message  # the config checks the spec
    message = fails("rloo", root / "sft", root / "tiny-qrm", "--risk-lambda", "0", "--output-dir", root / "x")
    assert "`risk_lambda` must be a finite number > 0" in message
    message = fails("sft", root / "base", "--batch-size", "6", "--per-device-batch-size", "4")
    assert "must be a positive multiple of the per-device batch size (4)" in message
    message = fails(
        "rloo", root / "sft", root / "tiny-qrm", "--data", data, "--limit", 1, "--batch-size", 4,
        "--per-device-batch-size", 4, "--output-dir", root / "x", *QUICK,
    )  # fmt: skip
    assert "takes 2 distinct prompts" in message and "only 1 are left" in message
    bare = tiny_tokenizer()
    bare.chat_template = None
    save_tiny_policy(root / "no-template", bare)
    message = fails("sft", root / "no-template", "--data", data, "--output-dir", root / "x", *QUICK)
    assert "has no chat template" in message and "--chat-template" in message


def test_an_episode_longer_than_the_policys_positions_is_refused_before_any_work(assets):
    """`qrm rloo --max-completion-length 1000000` trained with exit 0, generating past the positions of the
    policy (2048); like `qrm sft --max-length`, it is refused, before the QRM loads or OUTPUT_DIR is made."""
    root, data = assets["root"], assets["data"]
    for command in ("rloo", "grpo"):
        message = fails(
            command, root / "sft", root / "tiny-qrm", "--data", data, "--max-completion-length", 1_000_000,
            "--output-dir", root / "too-long", *QUICK,
        )  # fmt: skip
        assert "= 1000347 tokens is more than the 2048 positions of the policy" in message
        assert not (root / "too-long").exists()
    message = fails(
        "sft", root / "base", "--data", data, "--max-length", 1_000_000, "--output-dir", root / "x"
    )
    assert "more than the 2048 positions" in message


# ----------------------------------------------------------------------------------------- the commands


def test_defaults_are_the_paper_values():
    sft_args, rloo_args = parse("sft", "base"), parse("rloo", "sft", "qrm")
    sft, rloo = trainer_config(sft_args), trainer_config(rloo_args)
    sft_fields, rloo_fields = PaperSFTConfig.__dataclass_fields__, PaperRLOOConfig.__dataclass_fields__
    assert sft.learning_rate == sft_fields["learning_rate"].default == 3e-4
    assert sft.lr_scheduler_type == "cosine" and sft.num_train_epochs == 1
    assert sft.max_length == sft_fields["max_length"].default == 1024
    assert rloo.learning_rate == rloo_fields["learning_rate"].default == 1e-4
    assert rloo.lr_scheduler_type == "constant"
    assert rloo.num_generations == rloo_fields["num_generations"].default == 2
    assert rloo.max_completion_length == rloo_fields["max_completion_length"].default == 512
    assert rloo_args.max_prompt_length == PAPER_MAX_PROMPT_LENGTH == 347
    assert rloo.risk_measure == rloo_fields["risk_measure"].default == "exp_utility"
    for measure in RISK_MEASURES:  # every measure the trainer knows is offered
        assert trainer_config(parse("rloo", "sft", "qrm", "--risk-measure", measure)).risk_measure == measure
    lora = paper_lora_config()
    assert (lora.r, lora.lora_alpha, lora.target_modules) == (32, 64, "all-linear")
    for args, config in ((sft_args, sft), (rloo_args, rloo)):
        assert args.batch_size == 1024 and args.data == "Anthropic/hh-rlhf"
        assert config.gradient_accumulation_steps == 1024 // config.per_device_train_batch_size
        assert config.output_dir == f"outputs/{args.command}"
        cli_lora = (args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules)
        assert cli_lora == (lora.r, lora.lora_alpha, lora.lora_dropout, lora.target_modules)


def test_the_option_names_users_already_use_set_the_trainer_config():
    old_names = [
        "--learning-rate", "1e-2", "--per-device-batch-size", "2", "--batch-size", "8", "--epochs", "2",
        "--max-steps", "3", "--no-gradient-checkpointing", "--logging-steps", "1", "--save-steps", "7",
        "--report-to", "none", "--seed", "5", "--precision", "fp32", "--output-dir", "out",
    ]  # fmt: skip
    sft = trainer_config(parse("sft", "base", *old_names, "--max-length", "64"))
    rloo = trainer_config(parse("rloo", "sft", "qrm", *old_names, "--num-generations", "4", "--beta", "0.1",
                                "--temperature", "0.7", "--risk-measure", "cvar", "--risk-alpha", "0.3",
                                "--max-completion-length", "16"))  # fmt: skip
    for config in (sft, rloo):
        assert (config.learning_rate, config.per_device_train_batch_size, config.gradient_accumulation_steps) == (
            1e-2, 2, 4,
        )  # fmt: skip
        assert (config.num_train_epochs, config.max_steps, config.gradient_checkpointing) == (2, 3, False)
        assert (config.logging_steps, config.save_steps, config.seed, config.output_dir) == (1, 7, 5, "out")
        assert (config.bf16, config.fp16) == (False, False)
    assert sft.max_length == 64
    assert (rloo.num_generations, rloo.beta, rloo.temperature, rloo.max_completion_length) == (
        4,
        0.1,
        0.7,
        16,
    )
    assert (rloo.risk_measure, rloo.risk_alpha) == ("cvar", 0.3)


def test_any_trl_field_is_an_option_and_a_config_file_sets_fields(tmp_path):
    """A field the command never named (TRL's `warmup_steps`, `max_grad_norm`) is an option; a --config YAML
    file sets fields, and an option on the command line wins over the file."""
    config = trainer_config(parse("rloo", "sft", "qrm", "--warmup_steps", "3", "--max-grad-norm", "0.5"))
    assert (config.warmup_steps, config.max_grad_norm) == (3, 0.5)
    yaml_file = tmp_path / "rloo.yaml"
    yaml_file.write_text("logging_steps: 3\nrisk_measure: quantile:0.2\noutput_dir: from-yaml\nbeta: 0.2\n")
    config = trainer_config(parse("rloo", "sft", "qrm", "--config", yaml_file, "--beta", "0.3"))
    assert (config.logging_steps, config.risk_measure, config.output_dir, config.beta) == (
        3, "quantile:0.2", "from-yaml", 0.3,
    )  # fmt: skip
    config = trainer_config(parse("rloo", "sft", "qrm", "--config", yaml_file, "--output-dir", "given"))
    assert config.output_dir == "given"
    yaml_file.write_text("no_such_field: 1\n")
    with pytest.raises(ValueError, match="no_such_field"):
        trainer_config(parse("rloo", "sft", "qrm", "--config", yaml_file))


def test_a_misspelt_or_overridden_trainer_option_is_refused_not_ignored(tmp_path):
    """No trainer option is silently dropped or taken for another: a prefix of a field is no abbreviation, a
    `gradient_accumulation_steps` that `--batch-size` would overwrite is refused, and an unknown key of the
    --config file (a misspelling, a qrm option) is named with the file; each a one-line error, exit 2."""
    with pytest.raises(ValueError, match="--learning_rat"):
        trainer_config(parse("rloo", "sft", "qrm", "--learning_rat", "0.3"))
    with pytest.raises(ValueError, match="--batch-size"):
        trainer_config(parse("sft", "base", "--gradient_accumulation_steps", "7"))
    yaml_file = tmp_path / "rloo.yaml"
    yaml_file.write_text("gradient_accumulation_steps: 3\n")
    with pytest.raises(ValueError, match="--batch-size"):
        trainer_config(parse("rloo", "sft", "qrm", "--config", yaml_file))
    yaml_file.write_text("learning_rat: 0.3\nlora_r: 4\n")
    with pytest.raises(
        ValueError, match=f"{yaml_file}: unknown field learning_rat, lora_r of PaperRLOOConfig"
    ):
        trainer_config(parse("rloo", "sft", "qrm", "--config", yaml_file))
    for name in ("sft", "qrm"):
        (tmp_path / name).mkdir()
    message = fails(
        "rloo", tmp_path / "sft", tmp_path / "qrm", "--lr", "0.3", "--output-dir", tmp_path / "out"
    )
    assert "--lr" in message


def test_help_explains_the_commands(capsys):
    for command, words in (
        ("sft", ["chosen responses", "(default: 0.0003)", "(default: 1024)", "accelerate launch"]),
        ("rloo", ["exp_utility", "(default: 0.0001)", "(default: 347)", "rewards/<QRM>/risk"]),
        ("grpo", ["GRPOTrainer", "quantile:0.05", "(default: 0.0001)", "rewards/<QRM>/risk"]),
    ):
        with pytest.raises(SystemExit) as exit_code:
            parser().parse_args([command, "--help"])
        assert exit_code.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert all(word in text for word in words), (command, text)


def test_importing_the_commands_stays_light():
    code = (
        "import sys, argparse, qrm_hf.cli_rlhf as c; c.add_rlhf_commands(argparse.ArgumentParser()"
        ".add_subparsers()); print(sorted(m for m in ('trl', 'peft', 'datasets') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "name, distributed_type, zero_stage",
    [
        ("accelerate_multi_gpu.yaml", "MULTI_GPU", None),
        ("accelerate_deepspeed_zero2.yaml", "DEEPSPEED", 2),
        ("accelerate_deepspeed_zero3.yaml", "DEEPSPEED", 3),
    ],
)
def test_accelerate_configs_are_valid(name, distributed_type, zero_stage):
    """Each file loads with the installed accelerate (unknown keys raise), and `accelerate launch` takes it
    with `-m qrm_hf sft ...` (its own validation of the launch arguments)."""
    path = ROOT / "training" / "configs" / name
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == distributed_type and config.mixed_precision == "bf16"
    launch = launch_command_parser()
    assert set(config.deepspeed_config or {}) <= {action.dest for action in launch._actions}
    args = launch.parse_args(["--config_file", str(path), "-m", "qrm_hf", "sft", "base-model"])
    _validate_launch_command(args)
    assert (
        args.module
        and args.training_script == "qrm_hf"
        and args.training_script_args == ["sft", "base-model"]
    )
    assert args.use_deepspeed == (zero_stage is not None) and args.multi_gpu == (zero_stage is None)
    if zero_stage is not None:
        assert int(args.zero_stage) == zero_stage
    if zero_stage == 3:  # the adapter saved before the merge needs the gathered weights
        assert config.deepspeed_config["zero3_save_16bit_model"] is True
