"""Every `qrm` command, enumerated from the parser: a quick start (no heavy import for
`--help` and argument errors) and one error convention (bad input: one line, exit 2, nothing changed).

- `--help`, `COMMAND --help` and argument errors import none of torch, transformers, trl, datasets, sklearn.
- Every command is run against a shared set of bad inputs (missing file, a directory with foreign files as
  output, output = input, a NaN model, a model with a missing tensor, a non-UTF-8 row, an unreachable Hub, a
  malformed tokenizer.json of a model, backbone or policy):
  exit status 2, exactly one line on stderr, no traceback, nothing changed outside the output directory.
  A command added to the parser without an argument template in TEMPLATES fails `test_every_command_has_a_template`.
- A full disk / file-size limit while writing (safetensors or JSON) is one line with exit 2 as well.

The inputs are the outputs of one tiny `qrm train` run (test_pipeline's backbone and data), copied per case.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from test_convert import released_checkpoint
from test_pipeline import config_values, save_backbone, write_config, write_data
from test_trl import save_tiny_policy, tiny_tokenizer

from qrm_hf.cli import build_parser, main

HEAVY_MODULES = ("torch", "transformers", "trl", "datasets", "sklearn")
UNREACHABLE_HUB = "http://127.0.0.1:9"  # the discard port: connection refused at once
QUICK_TRAINING = [
    "--max-steps",
    "1",
    "--batch-size",
    "2",
    "--per-device-batch-size",
    "2",
    "--precision",
    "fp32",
]

# One argument template per command: a function of the input paths (a mapping) to the command line. The
# keys a template reads decide which bad inputs apply to the command; its first input is its "primary" one.
TEMPLATES = {
    "demo": lambda p: ["demo", "--backbone", p["backbone"], "--output-dir", p["output_dir"]],
    "convert": lambda p: ["convert", p["released"], p["output_dir"]],
    "score": lambda p: ["score", p["model"], "--file", p["rows"]],
    "evaluate": lambda p: ["evaluate", p["model"], "--ratings", p["rows"], "--output", p["output_file"]],
    "extract": lambda p: [
        "extract",
        p["backbone"],
        "--source",
        p["rows"],
        "--kind",
        "attribute",
        "--prompt",
        "prompt",
        "--response",
        "response",
        "--attributes",
        "helpfulness",
        "--label-range",
        "0",
        "4",
        "--output-dir",
        p["output_dir"],
    ],
    "fit-quantiles": lambda p: ["fit-quantiles", p["features"], "--output-dir", p["output_dir"]],
    "debias": lambda p: ["debias", p["heads"], p["pair_features"], "--output-dir", p["output_dir"]],
    "fit-gating": lambda p: ["fit-gating", p["heads"], p["pair_features"], "--output-dir", p["output_dir"]],
    "assemble": lambda p: [
        "assemble",
        p["backbone"],
        "--heads",
        p["heads"],
        "--gating",
        p["gating"],
        "--output-dir",
        p["output_dir"],
    ],
    "train": lambda p: ["train", p["config"], "--output-dir", p["output_dir"]],
    "sft": lambda p: [
        "sft",
        p["policy"],
        "--data",
        p["pairs"],
        "--output-dir",
        p["output_dir"],
        *QUICK_TRAINING,
    ],
    **{  # the two RL commands take the same arguments
        command: lambda p, command=command: [
            command,
            p["policy"],
            p["model"],
            "--data",
            p["pairs"],
            "--output-dir",
            p["output_dir"],
            *QUICK_TRAINING,
        ]
        for command in ("rloo", "grpo")
    },  # fmt: skip
    "rewardbench": lambda p: ["rewardbench", p["model"], "--data", p["bench"], "--output", p["output_file"]],
    "preference-strength": lambda p: [
        "preference-strength",
        p["model"],
        "--pairs",
        p["pairs"],
        "--output",
        p["output_file"],
    ],
    "push": lambda p: ["push", p["model"], "someone/qrm", "--token", "hf_not_a_token"],
    "calibrate": lambda p: ["calibrate", p["model"], "--ratings", p["rows"], "--output-dir", p["output_dir"]],
}
OUTPUTS = ("output_dir", "output_file")
MODELS = ("model",)  # inputs that are QRMs
LOADED = ("model", "backbone", "policy")  # inputs whose config, tokenizer and weights transformers loads
ROWS = ("rows", "pairs", "bench")  # inputs that are JSON Lines files
HUB_INPUTS = ("model", "policy", "backbone")  # inputs that may be Hub ids


def commands() -> list[str]:
    return sorted(build_parser()._subparsers._group_actions[0].choices)


class _Recorder(dict):
    def __missing__(self, key):
        self.setdefault(key, f"<{key}>")
        return self[key]


def keys_of(command: str) -> list[str]:
    """The input and output keys the command's template reads, in order."""
    recorder = _Recorder()
    TEMPLATES[command](recorder)
    return list(recorder)


def primary_input(command: str) -> str:
    return next(key for key in keys_of(command) if key not in OUTPUTS)


CASES = {
    "missing_file": lambda command: True,
    "foreign_output": lambda command: any(key in OUTPUTS for key in keys_of(command)),
    "output_is_input": lambda command: any(key in OUTPUTS for key in keys_of(command)),
    "nan_model": lambda command: any(key in MODELS for key in keys_of(command)),
    "missing_tensor": lambda command: any(key in MODELS for key in keys_of(command)),
    "non_utf8_row": lambda command: any(key in ROWS for key in keys_of(command)),
    "unreachable_hub": lambda command: any(key in HUB_INPUTS for key in keys_of(command)),
    "malformed_tokenizer": lambda command: any(key in LOADED for key in keys_of(command)),
}


def table() -> list:
    rows = []
    for command in commands():
        if command not in TEMPLATES:
            continue  # test_every_command_has_a_template fails
        for case, applies in CASES.items():
            if applies(command):
                rows.append(pytest.param(command, case, id=f"{command}-{case}"))
    return rows


def test_every_command_has_a_template():
    assert set(commands()) - set(TEMPLATES) == set(), "add an argument template to TEMPLATES"
    assert set(TEMPLATES) - set(commands()) == set(), "a template of a command that no longer exists"


# ------------------------------------------------------------------------ start-up: no heavy import


def test_help_and_argument_errors_import_no_heavy_library():
    """`qrm --help`, `qrm COMMAND --help` and bad options, for every command, in a fresh interpreter. The
    `--help` of the commands whose options are a TRL config's fields (qrm_hf.cli_rlhf.COMMANDS) lists
    those fields, which imports TRL: it is left out of the import check (its exit status is checked)."""
    script = textwrap.dedent(
        f"""
        import contextlib, io, json, sys
        from qrm_hf.cli import build_parser, main
        from qrm_hf.cli_rlhf import COMMANDS as TRL_COMMANDS
        names = sorted(build_parser()._subparsers._group_actions[0].choices)
        codes = {{}}
        for argv in [["--help"], ["--no-such-option"], ["no-such-command"]] + [
            extra for name in names for extra in ([name, "--help"], [name, "--no-such-option"])
            if extra[1] != "--help" or name not in TRL_COMMANDS
        ] + [[name, "--help"] for name in TRL_COMMANDS]:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                if argv[0] in TRL_COMMANDS and argv[1:] == ["--help"] and "heavy" not in codes:
                    codes["heavy"] = [m for m in {HEAVY_MODULES!r} if m in sys.modules]
                try:
                    main(argv)
                except SystemExit as exit:
                    codes[" ".join(argv)] = exit.code
        print(json.dumps({{"codes": codes, "heavy": codes.pop("heavy")}}))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["heavy"] == []
    names = commands()
    assert report["codes"]["--help"] == 0 and report["codes"]["--no-such-option"] == 2
    for name in names:
        assert report["codes"][f"{name} --help"] == 0, name
        assert report["codes"][f"{name} --no-such-option"] == 2, name


def test_import_qrm_hf_registers_the_auto_classes_when_transformers_loads():
    script = textwrap.dedent(
        """
        import sys
        import qrm_hf
        assert "torch" not in sys.modules and "transformers" not in sys.modules
        from transformers import AutoConfig, AutoModelForSequenceClassification
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING
        config = AutoConfig.for_model("qrm")
        assert type(config) is qrm_hf.QRMConfig
        assert MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)] is qrm_hf.QRMForSequenceClassification
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------- the inputs


@pytest.fixture(scope="module")
def shared_inputs(tmp_path_factory) -> Path:
    """Valid inputs of every command (one tiny `qrm train` run) and the bad models and rows."""
    root = tmp_path_factory.mktemp("inputs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    backbone = save_backbone(root / "backbone")
    data = write_data(root / "data")
    main(
        ["train", str(write_config(root / "train.yaml", config_values(backbone, data, root / "run", False)))]
    )
    torch.set_num_threads(threads)
    save_tiny_policy(root / "policy", tiny_tokenizer())
    released_checkpoint(root / "released", num_attributes=3, num_levels=5)
    model = root / "run" / "model"
    weights = load_file(model / "model.safetensors")
    for name, edit in (
        ("nan-model", lambda tensors: tensors["regression_layer.weight"].view(-1)[0].fill_(float("nan"))),
        ("missing-tensor-model", lambda tensors: tensors.pop("regression_layer.weight")),
    ):
        shutil.copytree(model, root / name)
        edited = {key: value.clone() for key, value in weights.items()}
        edit(edited)
        save_file(edited, root / name / "model.safetensors", metadata={"format": "pt"})
    for name in LOADED:  # a tokenizer.json without its "added_tokens" (a KeyError deep in transformers)
        source = model if name == "model" else root / name
        shutil.copytree(source, root / f"malformed-{name}")
        (root / f"malformed-{name}" / "tokenizer.json").write_text('{"version": "1.0"}')
    pairs = [json.loads(line) for line in data["pairs"].read_text().splitlines()]
    bench = [{**pair, "subset": "alpacaeval-easy"} for pair in pairs]  # RewardBench's format
    (root / "rewardbench.jsonl").write_text("".join(json.dumps(row) + "\n" for row in bench))
    rows = data["heldout"].read_bytes().splitlines(keepends=True)
    (root / "non-utf8.jsonl").write_bytes(rows[0] + rows[1].replace(b'"prompt": "', b'"prompt": "\xff', 1))
    config = yaml.safe_load((root / "train.yaml").read_text())
    write_config(root / "config.yaml", {**config, "output_dir": str(root / "another-run")})
    return root


def input_paths(root: Path, case_dir: Path) -> dict[str, str]:
    features = root / "run" / "features"
    return {
        "backbone": str(root / "backbone"),
        "policy": str(root / "policy"),
        "model": str(root / "run" / "model"),
        "released": str(root / "released"),
        "rows": str(root / "data" / "heldout.jsonl"),
        "pairs": str(root / "data" / "pairs.jsonl"),
        "bench": str(root / "rewardbench.jsonl"),
        "features": str(features / "attribute" / "ratings"),
        "pair_features": str(features / "preference" / "pairs"),
        "heads": str(root / "run" / "heads"),
        "gating": str(root / "run" / "gating"),
        "config": str(root / "config.yaml"),
        "output_dir": str(case_dir / "out"),
        "output_file": str(case_dir / "out.json"),
    }


def bad_arguments(command: str, case: str, root: Path, case_dir: Path) -> list[str]:
    """The command line of `command` with the bad input of `case` (the Hub's address is set by the caller)."""
    paths = input_paths(root, case_dir)
    used = keys_of(command)
    output = (
        next(key for key in used if key in OUTPUTS) if case in ("foreign_output", "output_is_input") else None
    )
    if case == "missing_file":
        paths[primary_input(command)] = str(case_dir / "missing")
    elif case == "foreign_output":
        foreign = case_dir / "my-project"
        foreign.mkdir()
        (foreign / "notes.txt").write_text("my own notes\n")
        paths[output] = str(foreign)
    elif case == "output_is_input":
        inputs = [key for key in used if key not in OUTPUTS]
        if output == "output_file":  # a report over one of the input files
            inputs = [key for key in inputs if key in ROWS] or inputs
        paths[output] = paths[inputs[0]]
    elif case in ("nan_model", "missing_tensor"):
        paths["model"] = str(root / ("nan-model" if case == "nan_model" else "missing-tensor-model"))
    elif case == "non_utf8_row":
        paths[next(key for key in used if key in ROWS)] = str(root / "non-utf8.jsonl")
    elif case == "malformed_tokenizer":
        loaded = next(key for key in used if key in LOADED)
        paths[loaded] = str(root / f"malformed-{loaded}")
    elif case == "unreachable_hub":
        paths[next(key for key in used if key in HUB_INPUTS)] = "someone/absent"
    return [str(argument) for argument in TEMPLATES[command](paths)]


def tree(root: Path) -> dict[str, str]:
    """Every file and directory under `root`, with the hash of each file's bytes."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if path.is_symlink() or not path.is_file():
            snapshot[relative] = "dir" if path.is_dir() else "other"
        else:
            snapshot[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return snapshot


# The rows that need another environment (an unreachable Hub; `push` always, so that no test reaches the
# real Hub) run in one fresh interpreter: huggingface_hub reads the Hub's address when imported. Its retries
# of a refused connection wait 1 + 2 + 4 + 8 + 8 s; the waits are skipped, the attempts are not. Each
# command's stderr is captured at the file descriptor, as a terminal would see it.
HUB_ENVIRONMENT_RUNNER = """
import contextlib, io, json, os, sys, tempfile, time
time.sleep = lambda seconds: None
from qrm_hf.cli import main
results = []
for argv in json.loads(sys.stdin.read()):
    with tempfile.TemporaryFile() as err, contextlib.redirect_stdout(io.StringIO()):
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            main(argv)
            code = 0
        except SystemExit as exit:
            code = exit.code
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        results.append({"code": code, "err": err.read().decode(errors="replace")})
print(json.dumps(results))
"""


def needs_hub_environment(command: str, case: str) -> bool:
    return case == "unreachable_hub" or command == "push"


@pytest.fixture(scope="module")
def hub_environment_results(shared_inputs, tmp_path_factory) -> dict:
    """(command, case) -> (exit status, stderr, inputs unchanged?, foreign directory unchanged?)."""
    root = tmp_path_factory.mktemp("hub-environment")
    inputs = root / "inputs"
    shutil.copytree(shared_inputs, inputs)
    rows = [
        row.values[:2]
        for row in table()
        if needs_hub_environment(*row.values[:2])
        and not any(mark.kwargs.get("run") is False for mark in row.marks)
    ]
    argvs, case_dirs = [], []
    for command, case in rows:
        case_dir = root / f"{command}-{case}"
        case_dir.mkdir()
        argvs.append(bad_arguments(command, case, inputs, case_dir))
        case_dirs.append((case_dir, tree(case_dir)))
    before = tree(inputs)
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=UNREACHABLE_HUB, HF_HOME=str(root / "hf-home"), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", HUB_ENVIRONMENT_RUNNER],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    unchanged = tree(inputs) == before
    return {
        row: (outcome["code"], outcome["err"], unchanged, tree(case_dir) == snapshot)
        for row, outcome, (case_dir, snapshot) in zip(
            rows, json.loads(result.stdout.splitlines()[-1]), case_dirs, strict=True
        )
    }


def run_in_process(argv: list[str], capfd) -> tuple[int, str]:
    """(exit status, stderr) of `qrm ARGV` run in this process, stderr captured at the file descriptor."""
    capfd.readouterr()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(argv)
        code = 0
    except SystemExit as exit:
        code = exit.code
    finally:
        torch.set_num_threads(threads)
    return code, capfd.readouterr().err


@pytest.mark.parametrize("command, case", table())
def test_every_command_refuses_bad_input_in_one_line(command, case, shared_inputs, tmp_path, capfd, request):
    if needs_hub_environment(command, case):
        code, err, inputs_unchanged, foreign_unchanged = request.getfixturevalue("hub_environment_results")[
            (command, case)
        ]
    else:
        inputs = tmp_path / "inputs"
        shutil.copytree(shared_inputs, inputs)
        case_dir = tmp_path / "case"
        case_dir.mkdir()
        argv = bad_arguments(command, case, inputs, case_dir)
        before, foreign_before = tree(inputs), tree(case_dir)
        code, err = run_in_process(argv, capfd)
        inputs_unchanged, foreign_unchanged = tree(inputs) == before, tree(case_dir) == foreign_before
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith(f"qrm {command}: error: "), err
    assert "Traceback" not in err
    assert inputs_unchanged, "an input changed"
    if case == "foreign_output":
        assert foreign_unchanged, "the foreign directory changed"
    if case == "missing_file":
        assert "missing" in lines[0], lines[0]


# ----------------------------------------------------------------------------------- disk full, file size

PROGRESS_BAR = re.compile(r"\d+%\|.*\| *\d+/\d+ \[")  # tqdm: "scoring: 100%|####| 2/2 [00:00<..."
FILE_SIZE_RUNNER = """
import contextlib, io, json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so that a write past the limit raises EFBIG
from qrm_hf.cli import main
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
err = io.StringIO()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
    try:
        main(sys.argv[2:])
        code = 0
    except SystemExit as exit:
        code = exit.code
print(json.dumps({"code": code, "err": err.getvalue()}))
"""


@pytest.mark.parametrize(
    "command, limit",
    [("convert", 64 * 1024), ("fit-quantiles", 256), ("evaluate", 256)],
    ids=["convert-safetensors", "fit-quantiles", "evaluate-json"],
)
def test_a_file_size_limit_while_writing_is_one_line(command, limit, shared_inputs, tmp_path):
    """Weights past RLIMIT_FSIZE (convert: its config fits in 64 KiB, its model.safetensors does not) and
    small outputs past a 256-byte limit (heads, a JSON report)."""
    paths = input_paths(shared_inputs, tmp_path)
    argv = [str(argument) for argument in TEMPLATES[command](paths)]
    result = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_RUNNER, str(limit), *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    # the progress bars of the work done before the failed write show progress, not the error
    lines = [line for line in report["err"].splitlines() if line.strip() and not PROGRESS_BAR.search(line)]
    assert report["code"] == 2 and len(lines) == 1 and "Traceback" not in report["err"], report["err"]
    assert lines[0].startswith(f"qrm {command}: error: ")


def test_ctrl_c_is_one_line_with_the_status_of_sigint(tmp_path, capfd, monkeypatch):
    """Ctrl-C during a command printed the traceback of wherever torch happened to be (a user's action is not a
    bug); with --debug it still does."""

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("qrm_hf.cli_paths.check_paths", interrupted)
    argv = ["fit-quantiles", str(tmp_path / "features"), "--output-dir", str(tmp_path / "heads")]
    code, err = run_in_process(argv, capfd)
    assert code == 130 and err.strip() == "qrm fit-quantiles: interrupted", err
    with pytest.raises(KeyboardInterrupt):
        main(["--debug", *argv])


def test_a_missing_local_input_is_refused_before_any_heavy_import(tmp_path):
    """`qrm train missing.yaml` or `qrm score M --file missing.jsonl` took the 5 s of importing torch to say the
    file is not there: every input that is not a possible Hub name is checked by `check_paths` first."""
    from test_outputs import argv_for

    from qrm_hf.cli_paths import INPUT, PATH_ARGUMENTS, REMOTE_INPUTS

    argvs = [
        argv_for(command, {dest: str(tmp_path / f"missing-{dest}")}, tmp_path / "placeholder")
        for command, roles in PATH_ARGUMENTS.items()
        for dest, role in roles.items()
        if role == INPUT and dest not in REMOTE_INPUTS
    ]
    script = textwrap.dedent(
        f"""
        import contextlib, io, json, sys
        from qrm_hf.cli import main
        results = []
        for argv in json.loads(sys.argv[1]):
            err = io.StringIO()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                try:
                    main(argv)
                    code = 0
                except SystemExit as exit:
                    code = exit.code
            results.append((code, err.getvalue()))
        print(json.dumps({{"results": results, "heavy": [m for m in {HEAVY_MODULES!r} if m in sys.modules]}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(argvs)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(argvs) > 20 and report["heavy"] == []
    for argv, (code, err) in zip(argvs, report["results"], strict=True):
        assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1, (argv, err)
