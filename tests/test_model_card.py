"""The model card rendered from model_cards/qrm_model_card.md through huggingface_hub's ModelCard:
its snippets run as printed, it passes trust_remote_code only where the model's own code is wanted, and it
links no page the user did not configure."""

import argparse
import ast
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from huggingface_hub import ModelCard

from conftest import make_qrm, run_without_qrm_hf, tiny_backbone_config
from qrm_hf.chat import derive_prompt_end_pattern
from qrm_hf.cli import build_parser, main
from qrm_hf.model_cards import (
    PLACEHOLDER_REPO_ID,
    TAGS,
    ModelCardTemplateError,
    render_model_card,
    retarget_model_card,
    set_card_homepage,
)
from qrm_hf.training.assemble import save_qrm
from qrm_hf.training.settings import AssembleSettings, settings_from_mapping

EVALUATION = [
    {"dataset": "allenai/reward-bench", "metric": "accuracy", "value": 0.912, "split": "filtered"},
    {"dataset": "qrm-org/heldout", "metric": "pinball_loss", "value": 0.071, "metric_name": "pinball loss"},
]


@pytest.fixture(scope="module")
def config():
    return make_qrm().config


def test_metadata(config):
    card = render_model_card(
        config,
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        repo_id="qrm-org/qrm-smollm2",
        datasets=["nvidia/HelpSteer2", "Skywork/Skywork-Reward-Preference-80K-v0.2"],
        license="mit",
        evaluation=EVALUATION,
    )
    data = ModelCard(str(card)).data  # what the Hub reads back
    assert data.library_name == "transformers" and data.pipeline_tag == "text-classification"
    assert data.tags == TAGS and {"reward-model", "quantile-regression", "qrm", "trl"} <= set(data.tags)
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data.datasets == ["nvidia/HelpSteer2", "Skywork/Skywork-Reward-Preference-80K-v0.2"]
    assert data.license == "mit" and data.model_name == "qrm-smollm2"
    results = {(r.dataset_type, r.metric_type): r for r in data.eval_results}
    assert results["allenai/reward-bench", "accuracy"].metric_value == 0.912
    assert results["allenai/reward-bench", "accuracy"].dataset_split == "filtered"
    assert results["qrm-org/heldout", "pinball_loss"].metric_name == "pinball loss"
    assert all(r.task_type == "text-classification" for r in data.eval_results)
    assert "| allenai/reward-bench | filtered | accuracy | 0.912 |" in card.text


def test_no_model_index_without_evaluation(config):
    card = render_model_card(config, base_model="tiny-llama")
    assert "model-index" not in str(card) and "## Evaluation" not in card.text
    assert card.data.base_model == "tiny-llama"


def test_a_local_backbone_path_is_not_base_model_metadata(config, tmp_path):
    """The Hub rejects a card whose base_model is not a model id; a path is named in the text only."""
    card = render_model_card(config, base_model=str(tmp_path / "smollm2"))
    assert card.data.base_model is None and str(tmp_path / "smollm2") in card.text


def test_body_explains_outputs_usage_training_and_the_remote_code(config):
    card = render_model_card(
        config, repo_id="qrm-org/qrm-tiny", training_summary="Heads fitted on 123 ratings.", datasets=["d/x"]
    )
    text = card.text
    for output in (
        "`logits` / `score`",
        "`reward_quantiles`",
        "`attribute_quantiles`",
        "`rewards`",
        "`gating_output`",
    ):
        assert output in text
    assert "expected reward" in text and "gating" in text
    # usage: transformers with remote code, pinning, offline; qrm-hf; TRL
    assert "AutoModelForSequenceClassification.from_pretrained(\n    repo_id, trust_remote_code=True" in text
    assert 'repo_id = "qrm-org/qrm-tiny"' in text
    assert 'code_revision="<commit>"' in text and "HF_HUB_OFFLINE=1" in text
    assert "RLOOTrainer(" in text and "reward_funcs=reward_model" in text
    # levels and attributes, in head order
    assert "0.1, 0.25, 0.5, 0.75, 0.9" in text
    assert "### Attributes (3)\n\nhelpfulness, correctness, safety\n" in text
    assert "Heads fitted on 123 ratings." in text and "[`d/x`](https://huggingface.co/datasets/d/x)" in text
    remote = text[text.index("## What the remote code does") :]
    assert "configuration_qrm.py" in remote and "modeling_qrm.py" in remote
    assert "do **not** open network connections" in remote and "write files" in remote
    assert "{{" not in str(card) and "}}" not in str(card)


def test_retarget_names_the_repo_the_card_was_pushed_to(config):
    card = render_model_card(config, evaluation=EVALUATION[:1])
    assert PLACEHOLDER_REPO_ID in card.text
    pushed = retarget_model_card(str(card), "qrm-org/pushed")
    assert PLACEHOLDER_REPO_ID not in str(pushed) and 'repo_id = "qrm-org/pushed"' in pushed.text
    assert pushed.text.startswith("\n# pushed\n") and pushed.data.model_name == "pushed"
    assert pushed.data.eval_results[0].metric_value == 0.912
    # a card written for a real repo id stays as it is
    named = render_model_card(config, repo_id="qrm-org/named")
    assert str(retarget_model_card(named, "qrm-org/other")) == str(named)


def test_bad_evaluation_entry(config):
    with pytest.raises(ValueError, match="lacks value"):
        render_model_card(config, evaluation=[{"dataset": "x", "metric": "accuracy"}])


def test_template_errors(config, tmp_path):
    template = tmp_path / "card.md"
    template.write_text("---\n{{ card_data }}\n---\n{{ config.hidden_size }}\n")
    with pytest.raises(ModelCardTemplateError, match="'config' is undefined"):
        render_model_card(config, template_path=template)
    template.write_text("---\n{{ card_data }}\n---\n{% for x in attribute_names %}\n")
    with pytest.raises(ModelCardTemplateError, match="not valid Jinja"):
        render_model_card(config, template_path=template)
    template.write_text("---\n{{ card_data }}\n---\n# {{ model_name }} ({{ num_quantiles }} levels)\n")
    assert "# qrm-reward-model (5 levels)" in str(render_model_card(config, template_path=template))


# ------------------------------------------------------------------------------ the card's code, run


REPO_ID = "qrm-org/qrm-tiny"
# Every Hub name in the card's snippets, and what stands for it here (the test has no Hub access).
TRL_POLICY, TRL_DATASET = "Qwen/Qwen2.5-0.5B-Instruct", "trl-lib/ultrafeedback-prompt"
# The test machine has no GPU: TRL's RLOOConfig (bf16 by default) is made a one-step CPU run; the
# snippet's own code is left as it is.
CPU_RLOO = """
import trl

class _OneStepOnCPU(trl.RLOOConfig):
    def __init__(self, *args, **kwargs):
        kwargs.update(use_cpu=True, bf16=False, max_steps=1, report_to="none", save_strategy="no")
        super().__init__(*args, **kwargs)

trl.RLOOConfig = _OneStepOnCPU
"""
# What each session reports after the snippets ran (the names the card's snippets bind).
REPORT = """
import json as _json
_report = dict(model_module=type(model).__module__, input_ids=inputs["input_ids"].tolist(),
               logits=out.logits.float().tolist(), reward_quantiles=out.reward_quantiles.float().tolist())
if "trainer" in globals():
    _report.update(reward_model_module=type(reward_model).__module__, steps=trainer.state.global_step)
_json.dump(_report, open({path!r}, "w"))
"""


def python_blocks(markdown: str) -> list[str]:
    """The ```python code blocks of a markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```$", markdown, flags=re.DOTALL | re.MULTILINE)


def imports_qrm_hf(code: str) -> bool:
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "qrm_hf" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "qrm_hf":
            return True
    return False


def remote_code_problems(code: str) -> list[str]:
    """Where a snippet passes `trust_remote_code` although no code of the model is needed: on a tokenizer
    (a QRM's is its backbone's standard one), or in a snippet that imports qrm_hf (its classes load the model)."""
    problems = []
    for node in ast.walk(ast.parse(code)):
        if not isinstance(node, ast.Call) or not any(k.arg == "trust_remote_code" for k in node.keywords):
            continue
        call = ast.unparse(node.func)
        if not re.fullmatch(r"AutoModel\w*\.from_pretrained", call):
            problems.append(f"{call} passes trust_remote_code")
        elif imports_qrm_hf(code):
            problems.append(f"{call} passes trust_remote_code where qrm_hf is imported")
    return problems


@pytest.fixture(scope="module")
def card_run(tmp_path_factory):
    """A tiny QRM saved by `save_qrm` (which writes the card), its card's snippets run: those that import
    qrm_hf in order in one process, each other one alone in a process where qrm_hf cannot be imported.
    Returns (model, card text, reports of the sessions)."""
    from test_trl import CHAT_PROMPTS, save_tiny_policy, tiny_tokenizer, token_ids

    root = tmp_path_factory.mktemp("card")
    tokenizer = tiny_tokenizer()
    model = make_qrm(
        backbone_config=tiny_backbone_config(**token_ids(tokenizer)),
        prompt_end_pattern=derive_prompt_end_pattern(tokenizer),
    )
    save_qrm(model, root / "qrm", tokenizer=tokenizer, repo_id=REPO_ID)
    save_tiny_policy(root / "policy", tokenizer)
    (root / "prompts").mkdir()
    (root / "prompts" / "train.jsonl").write_text(
        "".join(json.dumps({"prompt": p}) + "\n" for p in CHAT_PROMPTS)
    )
    card = (root / "qrm" / "README.md").read_text()
    local = {REPO_ID: root / "qrm", TRL_POLICY: root / "policy", TRL_DATASET: root / "prompts"}
    blocks = python_blocks(card)
    for name, path in local.items():
        assert any(name in block for block in blocks), f"the card's snippets no longer name {name}"
        blocks = [block.replace(name, str(path)) for block in blocks]
    with_qrm_hf = [block for block in blocks if imports_qrm_hf(block)]
    without = [block for block in blocks if not imports_qrm_hf(block)]
    assert with_qrm_hf and without
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", HF_MODULES_CACHE=str(root / "modules"))
    reports = {}
    script = root / "with_qrm_hf.py"
    script.write_text(CPU_RLOO + "\n".join(with_qrm_hf) + REPORT.format(path=str(root / "with.json")))
    result = subprocess.run(
        [sys.executable, str(script)], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-5000:]
    reports["with qrm-hf"] = json.loads((root / "with.json").read_text())
    for number, block in enumerate(without):
        path = root / f"without_{number}.json"
        result = run_without_qrm_hf(block + REPORT.format(path=str(path)), root)
        assert result.returncode == 0, result.stderr[-5000:]
        reports[f"without qrm-hf {number}"] = json.loads(path.read_text())
    return model, card, reports


def test_every_snippet_of_the_card_runs_with_and_without_qrm_hf(card_run):
    """The card's usage, risk and TRL snippets run as printed against a saved QRM; with qrm-hf the installed
    classes load it (no code of the repository runs), without it the repository's code does; both give
    the saved model's expected reward and quantiles."""
    model, _, reports = card_run
    with_qrm_hf = reports.pop("with qrm-hf")
    assert with_qrm_hf["model_module"].startswith("qrm_hf.")
    assert with_qrm_hf["reward_model_module"].startswith("qrm_hf.") and with_qrm_hf["steps"] == 1
    assert reports, "no snippet shows the load without qrm-hf"
    for report in [with_qrm_hf, *reports.values()]:
        if report is not with_qrm_hf:
            assert report["model_module"].startswith("transformers_modules.")
        with torch.no_grad():
            expected = model(input_ids=torch.tensor(report["input_ids"]))
        # the snippets load the model in bfloat16
        torch.testing.assert_close(torch.tensor(report["logits"]), expected.logits, atol=3e-2, rtol=3e-2)
        torch.testing.assert_close(
            torch.tensor(report["reward_quantiles"]), expected.reward_quantiles, atol=3e-2, rtol=3e-2
        )


@pytest.mark.parametrize("document", ["card", "README.md + docs/guide.md"])
def test_trust_remote_code_only_on_model_loads_without_qrm_hf(config, document):
    """No snippet teaches passing trust_remote_code where no code of the model is needed."""
    if document == "card":
        text = render_model_card(config, repo_id=REPO_ID).text
    else:
        root = Path(__file__).resolve().parent.parent
        text = "\n".join((root / name).read_text() for name in document.split(" + "))
    blocks = python_blocks(text)
    assert any("trust_remote_code=True" in block for block in blocks)
    assert {block: remote_code_problems(block) for block in blocks if remote_code_problems(block)} == {}


def test_the_card_names_the_package_and_links_only_what_the_user_configured(config):
    plain = str(render_model_card(config, repo_id=REPO_ID, datasets=["d/x"]))
    assert "pip install qrm-hf" in plain and "Project page" not in plain
    paper = "https://arxiv.org/abs/2409.10164"
    assert set(re.findall(r"https?://[^\s)>\]]+", plain)) == {paper, "https://huggingface.co/datasets/d/x"}
    homepage = "https://example.org/my-qrm"
    linked = str(render_model_card(config, repo_id=REPO_ID, homepage=homepage))
    assert f"\nProject page: <{homepage}>\n" in linked
    assert set(re.findall(r"https?://[^\s)>\]]+", linked)) == {paper, homepage}
    for bad in ("example.org", "ftp://example.org/x", "https://", "https://example.org/a b"):
        with pytest.raises(ValueError, match="not an http"):
            render_model_card(config, homepage=bad)


def test_set_card_homepage_replaces_or_adds_the_line(config):
    card = render_model_card(config, homepage="https://example.org/old")
    replaced = set_card_homepage(str(card), "https://example.org/new").text
    assert "Project page: <https://example.org/new>" in replaced and "example.org/old" not in replaced
    added = set_card_homepage(str(render_model_card(config)), "https://example.org/new").text
    assert added.count("Project page: <https://example.org/new>") == 1
    assert added.index("Project page") < added.index("## What it outputs")
    hand_written = set_card_homepage("---\nlicense: mit\n---\n# Mine\n", "https://example.org/x")
    assert hand_written.text.endswith("# Mine\n\nProject page: <https://example.org/x>\n")
    assert hand_written.data.license == "mit"


# ------------------------------------------------------------------------- --homepage on every command


# The functions that render or edit a model card; a command whose handler reaches one writes a card.
CARD_FUNCTIONS = {"render_model_card", "set_card_homepage", "retarget_model_card", "add_evaluation_to_card"}


def _called_name(func) -> str | None:
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def card_writing_functions() -> set[str]:
    """Names of the installed packages' functions that reach a card function through calls (a call graph by
    name over the sources of every package pyproject.toml installs, so a new module cannot be missed)."""
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    calls: dict[str, set] = {}
    for package in pyproject["tool"]["setuptools"]["packages"]:
        for path in Path(importlib.import_module(package).__file__).parent.glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    called = {_called_name(c.func) for c in ast.walk(node) if isinstance(c, ast.Call)}
                    calls.setdefault(node.name, set()).update(called)
    writers = set(CARD_FUNCTIONS)
    while more := {name for name, called in calls.items() if called & writers} - writers:
        writers |= more
    return writers


def card_commands() -> dict[str, argparse.ArgumentParser]:
    """The `qrm` subcommands whose handler writes (or uploads) a model card."""
    writers = card_writing_functions()
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: parser
        for name, parser in commands.choices.items()
        if parser.get_default("handler").__name__ in writers
    }


def test_every_command_that_writes_a_card_takes_homepage():
    commands = card_commands()
    assert {"assemble", "train", "demo", "push"} <= set(commands)  # the analysis finds the known ones
    for name, parser in commands.items():
        options = {option for action in parser._actions for option in action.option_strings}
        assert "--homepage" in options, f"qrm {name} writes a model card but has no --homepage"


HOMEPAGE = "https://example.org/my-qrm"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """`qrm train` of a tiny run whose YAML config sets `model: homepage:`; returns (config path, values,
    backbone, the card it wrote)."""
    from test_pipeline import config_values, save_backbone, write_config, write_data

    root = tmp_path_factory.mktemp("homepage_run")
    backbone = save_backbone(root / "backbone")
    values = config_values(backbone, write_data(root / "data"), root / "run")
    values["model"] = {"homepage": "https://example.org/from-the-config"}
    path = write_config(root / "config.yaml", values)
    main(["train", str(path)])
    return path, values, backbone, (root / "run" / "model" / "README.md").read_text()


def _train(tiny_run, tmp_path, monkeypatch):
    path, values, _, _ = tiny_run
    main(["train", str(path), "--homepage", HOMEPAGE])  # overrides the config's: the model is assembled again
    return (Path(values["output_dir"]) / "model" / "README.md").read_text()


def _assemble(tiny_run, tmp_path, monkeypatch):
    _, values, backbone, _ = tiny_run
    run = Path(values["output_dir"])
    main(["assemble", str(backbone), "--heads", str(run / "heads"), "--gating", str(run / "gating"),
          "--transform", str(run / "debias"), "--output-dir", str(tmp_path / "model"), "--homepage", HOMEPAGE])  # fmt: skip
    return (tmp_path / "model" / "README.md").read_text()


def _demo(tiny_run, tmp_path, monkeypatch):
    """The demo is `qrm train` of its config (`_train` shows the config's homepage reaches the card): the
    demo's run is replaced by a check that its config carries the homepage."""
    from qrm_hf.training import demo

    configs = []
    monkeypatch.setattr(demo, "run_demo", configs.append)
    main(["demo", "--output-dir", str(tmp_path / "demo"), "--homepage", HOMEPAGE])
    (config,) = configs
    assert config.output_dir == tmp_path / "demo" and config.backbone == "embedded:smollm2"
    return f"Project page: <{config.model.homepage}>"


def _push(tiny_run, tmp_path, monkeypatch):
    """`qrm push` of a saved model to a recording stand-in of the Hub: the uploaded card."""
    from huggingface_hub import HfApi

    uploaded = {}

    def create_commit(self, repo_id, operations, **kwargs):
        for operation in operations:
            with operation.as_file() as handle:
                uploaded[operation.path_in_repo] = handle.read()
        return argparse.Namespace(oid="0" * 40, commit_url="local")

    monkeypatch.setattr(
        HfApi, "create_repo", lambda self, repo_id, **kwargs: argparse.Namespace(repo_id=repo_id)
    )
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo_id, **kwargs: [])
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    save_qrm(make_qrm(), tmp_path / "model", tokenizer=tiny_run[2])
    main(["push", str(tmp_path / "model"), "qrm-org/pushed", "--homepage", HOMEPAGE])
    assert (
        "Project page" not in (tmp_path / "model" / "README.md").read_text()
    )  # the local card is left alone
    return uploaded["README.md"].decode()


def _calibrate(tiny_run, tmp_path, monkeypatch):
    """`qrm calibrate` of a saved tiny model: the calibrated copy's card."""
    from test_calibration import rating_rows
    from test_hub import make_tokenizer

    save_qrm(make_qrm(attribute_names=["a", "b", "c"]), tmp_path / "model", tokenizer=make_tokenizer())
    ratings = tmp_path / "ratings.jsonl"
    ratings.write_text("".join(json.dumps(row) + "\n" for row in rating_rows()))
    main(["calibrate", str(tmp_path / "model"), "--ratings", str(ratings), "--output-dir", str(tmp_path / "calibrated"),
          "--homepage", HOMEPAGE])  # fmt: skip
    return (tmp_path / "calibrated" / "README.md").read_text()


CARD_OF = {"train": _train, "assemble": _assemble, "demo": _demo, "push": _push, "calibrate": _calibrate}


@pytest.mark.parametrize("command", sorted(card_commands()))
def test_homepage_reaches_the_card_of_every_command(command, tiny_run, tmp_path, monkeypatch):
    assert command in CARD_OF, f"qrm {command} writes a model card: add how to get its card to CARD_OF"
    card = CARD_OF[command](tiny_run, tmp_path, monkeypatch)
    assert f"Project page: <{HOMEPAGE}>" in card and card.count("Project page:") == 1


def test_homepage_from_the_training_config(tiny_run):
    card = tiny_run[3]
    assert "Project page: <https://example.org/from-the-config>" in card
    assert "pip install qrm-hf" in card and "github.com" not in card


@pytest.mark.parametrize(
    "argv",
    [
        ["assemble", "b", "--heads", "h", "--gating", "g", "--output-dir", "o", "--homepage", "example.org"],
        ["push", "model", "qrm-org/x", "--homepage", "example.org"],
    ],
)
def test_a_homepage_that_is_not_a_url_is_a_one_line_error(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("h", "g", "model"):  # the inputs exist (empty): the homepage is what is wrong
        (tmp_path / name).mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g", "h", "model"]  # refused before any write
    assert not any(any((tmp_path / name).iterdir()) for name in ("g", "h", "model"))
    message = capsys.readouterr().err
    assert exit_info.value.code == 2 and "is not an http(s) URL" in message
    assert len(message.strip().splitlines()) == 1


def test_a_homepage_that_is_not_a_url_fails_when_the_config_is_read(tmp_path):
    with pytest.raises(ValueError, match="not an http"):
        settings_from_mapping(AssembleSettings, {"homepage": "example.org"}, "config: model")
