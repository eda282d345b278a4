"""No code of a model runs without `--trust-remote-code`, in any command or library function.

Two guards: an AST scan over the whole package finds every call that loads a config, tokenizer, model or
processor and requires it to pass `trust_remote_code` explicitly (transformers asks on stdin when the
keyword is unset, and a "y" piped in runs the code); and a tiny "evil" backbone whose config or tokenizer
names code of its own (`auto_map`) that writes a marker file is given to every command that loads a user's
backbone, base model or policy, with "y" on stdin: the marker must never appear and the command must stop
with exit 2 and one line.
"""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_hub import make_tokenizer, saved_qrm
from test_trl import save_tiny_qrm, tiny_tokenizer
from transformers import LlamaForCausalLM

from conftest import run_cli, tiny_backbone_config

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("qrm_hf", "training", "modeling")  # qrm_hf.training and qrm_hf.modeling live at the top

# ----------------------------------------------------------------------------------- the AST rule
#
# A *load* is a call of `<anything>.from_pretrained(...)`, of transformers' `pipeline(...)` or of TRL's
# `create_model_from_path(...)`. Every load passes `trust_remote_code=` explicitly, either as a keyword or
# through a `**name` splat where `name` is provably a dict holding that key: a local variable assigned
# exactly once in the enclosing function, from a `dict(...)` call or `{...}` display with that key, and
# used nowhere else than in `**name` splats (so no `.pop`, `[...] =` or `del` can remove the key).
# Exempt, each for a stated reason:
# - `super().from_pretrained(...)` inside a `from_pretrained` override: it forwards its caller's
#   arguments, and the caller's call is itself checked;
# - `PeftModel.from_pretrained(...)`: it reads a LoRA adapter (adapter_config.json and weights) onto a model
#   already loaded, and has no code of its own to run.
LOADER_FUNCTIONS = {"pipeline", "create_model_from_path"}
NO_CODE_LOADERS = {"PeftModel"}
KEYWORD = "trust_remote_code"


def _callee(call: ast.Call) -> tuple[str | None, str | None]:
    """(receiver source, called name) of a call: ("AutoTokenizer", "from_pretrained"), (None, "pipeline")."""
    if isinstance(call.func, ast.Attribute):
        return ast.unparse(call.func.value), call.func.attr
    if isinstance(call.func, ast.Name):
        return None, call.func.id
    return None, None


def _is_load(call: ast.Call) -> bool:
    receiver, name = _callee(call)
    if name == "from_pretrained":
        return receiver not in NO_CODE_LOADERS and receiver != "super()"
    return receiver is None and name in LOADER_FUNCTIONS


def _dict_holds_keyword(node: ast.AST) -> bool:
    if isinstance(node, ast.Dict):
        return any(isinstance(key, ast.Constant) and key.value == KEYWORD for key in node.keys)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        return any(keyword.arg == KEYWORD for keyword in node.keywords)
    return False


def _splat_provably_holds_keyword(name: str, function: ast.AST) -> bool:
    assignments = [
        node
        for node in ast.walk(function)
        if isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign | ast.NamedExpr)
        and any(
            isinstance(target, ast.Name) and target.id == name
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
        )
    ]
    parameters = [arg.arg for arg in ast.walk(function) if isinstance(arg, ast.arg)]
    if name in parameters or len(assignments) != 1 or not isinstance(assignments[0], ast.Assign):
        return False
    splats = {
        id(keyword.value)
        for keyword in ast.walk(function)
        if isinstance(keyword, ast.keyword) and keyword.arg is None
    }
    other_uses = [
        node
        for node in ast.walk(function)
        if isinstance(node, ast.Name)
        and node.id == name
        and isinstance(node.ctx, ast.Load | ast.Del)
        and id(node) not in splats
    ]
    return _dict_holds_keyword(assignments[0].value) and not other_uses


def _passes_keyword(call: ast.Call, function: ast.AST | None) -> bool:
    if any(keyword.arg == KEYWORD for keyword in call.keywords):
        return True
    for keyword in call.keywords:
        if keyword.arg is None and isinstance(keyword.value, ast.Name) and function is not None:
            if _splat_provably_holds_keyword(keyword.value.id, function):
                return True
    return False


def loads_without_explicit_trust(source: str, filename: str = "<source>") -> list[str]:
    """`file:line call` of every load in `source` that does not provably pass `trust_remote_code`."""
    tree = ast.parse(source, filename)
    found = []

    def visit(node: ast.AST, function: ast.AST | None) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            function = node
        if isinstance(node, ast.Call) and _is_load(node) and not _passes_keyword(node, function):
            found.append(f"{filename}:{node.lineno} {ast.unparse(node.func)}")
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, None)
    return found


def package_files() -> list[Path]:
    return sorted(path for name in PACKAGE_DIRS for path in (REPO_ROOT / name).rglob("*.py"))


def test_every_load_in_the_package_passes_trust_remote_code_explicitly():
    found = []
    for path in package_files():
        found += loads_without_explicit_trust(path.read_text(), str(path.relative_to(REPO_ROOT)))
    assert found == [], "loads that leave trust_remote_code unset (transformers then asks on stdin):\n" + (
        "\n".join(found)
    )


@pytest.mark.parametrize(
    "source, flagged",
    [
        ("def f(p):\n    return AutoTokenizer.from_pretrained(p)", True),
        ("def f(p):\n    return AutoTokenizer.from_pretrained(p, trust_remote_code=False)", False),
        ("def f(p, t):\n    return pipeline('text-classification', model=p, trust_remote_code=t)", False),
        ("def f(p):\n    return pipeline('text-classification', model=p)", True),
        ("def f(p):\n    return create_model_from_path(p)", True),
        ("def f(p):\n    kw = dict(trust_remote_code=False)\n    return AutoModel.from_pretrained(p, **kw)", False),
        ("def f(p):\n    kw = {'trust_remote_code': False}\n    return AutoModel.from_pretrained(p, **kw)", False),
        # a splat that may have lost the key, or never had it
        ("def f(p):\n    kw = dict(trust_remote_code=False)\n    kw.pop('trust_remote_code')\n"
         "    return AutoModel.from_pretrained(p, **kw)", True),
        ("def f(p):\n    kw = dict(revision=None)\n    return AutoModel.from_pretrained(p, **kw)", True),
        ("def f(p, **kw):\n    return AutoModel.from_pretrained(p, **kw)", True),
        ("def f(p, kw):\n    kw = dict(trust_remote_code=False)\n    return AutoModel.from_pretrained(p, **kw)", True),
        ("def f(p):\n    kw = dict(trust_remote_code=False)\n    kw = {}\n    return AutoModel.from_pretrained(p, **kw)", True),
        ("def f(p):\n    kw = dict(trust_remote_code=False)\n    kw['trust_remote_code'] = None\n"
         "    return AutoModel.from_pretrained(p, **kw)", True),
        ("x = AutoConfig.from_pretrained('gpt2')", True),  # module level too
        ("def f(b, a):\n    return PeftModel.from_pretrained(b, a)", False),
        ("class M:\n    @classmethod\n    def from_pretrained(cls, p, **kw):\n"
         "        return super().from_pretrained(p, **kw)", False),
    ],
)  # fmt: skip
def test_the_rule_cannot_be_fooled_by_a_splat(source, flagged):
    assert bool(loads_without_explicit_trust(source)) == flagged


# ------------------------------------------------------------------------- evil models, "y" on stdin


def write_evil_code(directory: Path, marker: Path, part: str) -> None:
    """Make `directory`'s config (part="config") or tokenizer (part="tokenizer") name code of its own that
    writes `marker` when it is imported."""
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('code ran')\n"
    if part == "config":
        (directory / "configuration_evil.py").write_text(
            code
            + "from transformers import LlamaConfig\n\nclass EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
        )
        config = json.loads((directory / "config.json").read_text())
        config.update(model_type="evil", auto_map={"AutoConfig": "configuration_evil.EvilConfig"})
        (directory / "config.json").write_text(json.dumps(config))
    else:
        (directory / "tokenization_evil.py").write_text(
            code + "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n"
        )
        tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
        tokenizer_config.pop("tokenizer_class", None)  # so that only the auto_map names a class
        tokenizer_config["auto_map"] = {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
        (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))


def evil_causal_lm(directory: Path, tokenizer, marker: Path, part: str) -> Path:
    values = dict(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id
    )
    values["bos_token_id"] = tokenizer.bos_token_id
    LlamaForCausalLM(tiny_backbone_config(**values)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_evil_code(directory, marker, part)
    return directory


@pytest.fixture
def answer_yes(monkeypatch, tmp_path):
    """Answer "y" to any question on stdin, as `echo y | qrm ...` does; dynamic modules go to tmp_path."""
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 20))
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))


def assert_refused_without_running_code(code: int, err: str, marker: Path) -> None:
    assert not marker.exists(), "the model's own code ran"
    progress = ("%|", "examples/s", "it/s]")  # bars of transformers and datasets, left aside
    lines = [line for line in err.splitlines() if line.strip() and not any(bar in line for bar in progress)]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("qrm "), err
    assert "comes with code of its own" in lines[0] and "which was not run" in lines[0], lines[0]


@pytest.fixture(scope="module")
def hh_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "hh.jsonl"
    rows = [{"chosen": f"\n\nHuman: Q{i}?\n\nAssistant: Yes.", "rejected": f"\n\nHuman: Q{i}?\n\nAssistant: No."}
            for i in range(8)]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("part", ["config", "tokenizer"])
def test_extract_never_runs_the_code_of_a_backbone(tmp_path, capsys, answer_yes, part):
    marker = tmp_path / "marker"
    backbone = evil_causal_lm(tmp_path / "backbone", make_tokenizer(), marker, part)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        '{"prompt": "w11", "response": "w20", "h": 3}\n{"prompt": "w12", "response": "w21", "h": 1}\n'
    )
    code, err = run_cli(
        capsys, "extract", backbone, "--kind", "attribute", "--source", rows, "--prompt", "prompt",
        "--response", "response", "--attributes", "h", "--label-range", "0", "4", "--output-dir", tmp_path / "out",
    )  # fmt: skip
    assert_refused_without_running_code(code, err, marker)


@pytest.mark.parametrize("part", ["config", "tokenizer"])
def test_sft_never_runs_the_code_of_its_base_model(tmp_path, capsys, answer_yes, hh_data, part):
    marker = tmp_path / "marker"
    base = evil_causal_lm(tmp_path / "base", tiny_tokenizer(), marker, part)
    code, err = run_cli(
        capsys, "sft", base, "--data", hh_data, "--max-steps", "1", "--batch-size", "2",
        "--per-device-batch-size", "2", "--output-dir", tmp_path / "out", "--precision", "fp32",
    )  # fmt: skip
    assert_refused_without_running_code(code, err, marker)


@pytest.mark.parametrize("command", ["rloo", "grpo"])
@pytest.mark.parametrize("part", ["config", "tokenizer"])
def test_rloo_and_grpo_never_run_the_code_of_the_policy(tmp_path, capsys, answer_yes, hh_data, command, part):
    marker = tmp_path / "marker"
    tokenizer = tiny_tokenizer()
    policy = evil_causal_lm(tmp_path / "policy", tokenizer, marker, part)
    save_tiny_qrm(tmp_path / "qrm", tokenizer)
    # --trust-remote-code is the QRM's consent (a qrm-hf QRM never needs it), not the policy's
    code, err = run_cli(
        capsys, command, policy, tmp_path / "qrm", "--data", hh_data, "--max-steps", "1", "--batch-size", "2",
        "--per-device-batch-size", "2", "--num-generations", "2", "--output-dir", tmp_path / "out",
        "--precision", "fp32", "--trust-remote-code",
        "--max-prompt-length", "64", "--max-completion-length", "8",  # within the tiny policy's 128 positions
    )  # fmt: skip
    assert_refused_without_running_code(code, err, marker)


def test_trust_remote_code_runs_the_saved_code_of_a_qrm_only_when_asked_twice(tmp_path):
    """With qrm-hf installed, a QRM (model_type "qrm") is built with the installed classes even with
    trust_remote_code=True; only trust_remote_code=True in a process started with QRM_HF_REMOTE_CODE_ONLY=1
    (the demo's check of the saved files) runs the code saved with it."""
    model_dir = saved_qrm(tmp_path / "qrm", seed=3)[2]
    marker = tmp_path / "marker"
    for name in ("configuration_qrm.py", "modeling_qrm.py"):
        original = (model_dir / name).read_text()
        (model_dir / name).write_text(
            f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n{original}"
        )

    def load(trust_remote_code: bool, remote_code_only: str) -> list[str]:
        script = textwrap.dedent(
            f"""
            from qrm_hf.hub import load_qrm
            model, _ = load_qrm({str(model_dir)!r}, trust_remote_code={trust_remote_code})
            print(type(model).__module__)
            """
        )
        env = dict(
            os.environ, QRM_HF_REMOTE_CODE_ONLY=remote_code_only, HF_MODULES_CACHE=str(tmp_path / "hf")
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    for trust_remote_code, remote_code_only in ((True, "0"), (False, "1")):
        assert load(trust_remote_code, remote_code_only) == ["qrm_hf.modeling.modeling_qrm"]
        assert not marker.exists()
    assert load(True, "1")[0].startswith("transformers_modules.")
    assert marker.read_text() == "ran"
