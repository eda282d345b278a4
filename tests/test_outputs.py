"""Nothing is deleted that qrm-hf did not write, no output is an input, every write is
write-then-rename, JSON is strict, and features follow their data.

The command-line tests enumerate the `qrm` parser (`qrm_hf.cli.build_parser`), so a command or a path
argument added later is covered (or fails `test_every_path_argument_of_every_command_is_declared`).
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_convert import released_checkpoint
from test_pipeline import ATTRIBUTES, save_backbone

from conftest import run_cli
from qrm_hf import io
from qrm_hf.cli import build_parser, main
from qrm_hf.cli_paths import INPUT, OUTPUT_DIR, PATH_ARGUMENTS

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = [ROOT / "qrm_hf", ROOT / "training", ROOT / "modeling", ROOT / "model_cards"]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def arguments(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ("help", "debug")}


# Words in an argument's name that make it a path, and the arguments that have them but are not paths.
PATH_WORDS = ("dir", "output", "file", "path", "plot", "json", "destination", "source", "data", "config",
              "model", "features", "heads", "gating", "transform", "pairs", "ratings", "showcase", "reference",
              "validation", "template", "backbone", "policy", "results", "baselines")  # fmt: skip
NOT_PATHS = {
    "gating_fallback",  # a mode of the model
    "gating_epochs",
    "gating_batch_size",
    "gating_learning_rate",
    "datasets",  # dataset names for the model card
    "validation_fraction",
    "push_to_hub",  # a Hub repo id
    "repo_id",
    "shard_size",  # "examples per shard file"
    "name",  # "dataset name ... (default: preset or file name)"
    "split",  # "... a local file is its split"
}


def test_every_path_argument_of_every_command_is_declared():
    commands = subcommands()
    assert set(PATH_ARGUMENTS) == set(commands), "declare the paths of every command in qrm_hf.cli_paths"
    for name, parser in commands.items():
        declared = PATH_ARGUMENTS[name]
        dests = arguments(parser)
        assert set(declared) <= set(dests), f"qrm {name}: declared paths that are not arguments"
        for dest, action in dests.items():
            looks_like_a_path = any(word in dest for word in PATH_WORDS) or any(
                word in (action.help or "").lower().split() for word in ("file", "directory", "dir")
            )
            if looks_like_a_path and dest not in NOT_PATHS:
                assert dest in declared, f"qrm {name} {dest}: declare it in qrm_hf.cli_paths.PATH_ARGUMENTS"


def argv_for(command: str, values: dict[str, str], placeholder: Path) -> list[str]:
    """`qrm COMMAND` with `values` for some arguments and a path that does not exist for the other required
    ones."""
    parser = subcommands()[command]
    positional, optional = [], []
    for dest, action in arguments(parser).items():
        value = values.get(dest)
        if value is None and (action.required or not action.option_strings):
            value = str(placeholder / dest)
        if value is None:
            continue
        if action.option_strings:
            optional += [action.option_strings[0], value]
        else:
            positional.append(value)
    return [command, *positional, *optional]


def foreign_directory(path: Path) -> dict[str, bytes]:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("three years of work")
    (path / "data").mkdir()
    (path / "data" / "ratings.jsonl").write_text('{"prompt": "hi"}\n')
    return snapshot(path)


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


OUTPUT_DIRECTORIES = [
    (command, dest)
    for command, roles in PATH_ARGUMENTS.items()
    for dest, role in roles.items()
    if role == OUTPUT_DIR
]
OUTPUTS = [
    (command, dest)
    for command, roles in PATH_ARGUMENTS.items()
    for dest, role in roles.items()
    if role != INPUT
]


@pytest.mark.parametrize("command, dest", OUTPUT_DIRECTORIES, ids=[f"{c}-{d}" for c, d in OUTPUT_DIRECTORIES])
@pytest.mark.parametrize("where", ["path", "cwd"])
def test_every_output_directory_refuses_a_directory_of_foreign_files(
    command, dest, where, tmp_path, capsys, monkeypatch
):
    project = tmp_path / "my-project"
    before = foreign_directory(project)
    if where == "cwd":  # --output-dir $PWD
        monkeypatch.chdir(project)
    target = "." if where == "cwd" else str(project)
    code, err = run_cli(capsys, *argv_for(command, {dest: target}, tmp_path / "missing"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "thesis.tex" in err and "Traceback" not in err, err
    assert snapshot(project) == before and sorted(p.name for p in project.iterdir()) == ["data", "thesis.tex"]


@pytest.mark.parametrize("command, dest", OUTPUTS, ids=[f"{c}-{d}" for c, d in OUTPUTS])
def test_no_output_of_any_command_is_one_of_its_inputs(command, dest, tmp_path, capsys):
    inputs = [d for d, role in PATH_ARGUMENTS[command].items() if role == INPUT]
    assert inputs, f"qrm {command} reads nothing?"
    data = tmp_path / "data"
    data.mkdir()
    (data / "ratings.jsonl").write_text('{"prompt": "hi", "response": "yo"}\n')
    for input_dest in inputs:
        before = snapshot(data)
        if PATH_ARGUMENTS[command][dest] == OUTPUT_DIR:  # a directory that holds the input
            values = {input_dest: str(data / "ratings.jsonl"), dest: str(data)}
            fragment = "holds an input"
        else:
            values = {input_dest: str(data / "ratings.jsonl"), dest: str(data / "ratings.jsonl")}
            fragment = "is also an input"
        code, err = run_cli(capsys, *argv_for(command, values, tmp_path / "missing"))
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, (input_dest, err)
        assert snapshot(data) == before


def test_evaluate_output_equal_to_ratings_leaves_the_ratings(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ratings = tmp_path / "r.jsonl"
    ratings.write_text('{"prompt": "hi", "response": "yo", "helpfulness": 2}\n')
    code, err = run_cli(capsys, "evaluate", tmp_path / "model", "--ratings", ratings, "--output", "r.jsonl")
    assert code == 2 and "also an input" in err
    code, err = run_cli(
        capsys, "evaluate", tmp_path / "model", "--ratings", ratings, "--output", tmp_path / "." / "r.jsonl"
    )
    assert code == 2 and "also an input (ratings)" in err
    assert ratings.read_text() == '{"prompt": "hi", "response": "yo", "helpfulness": 2}\n'


OUTPUT_PAIRS = [
    (command, first, second)
    for command, roles in PATH_ARGUMENTS.items()
    for i, first in enumerate(dest for dest, role in roles.items() if role != INPUT)
    for second in [dest for dest, role in roles.items() if role != INPUT][i + 1 :]
]


@pytest.mark.parametrize(
    "command, first, second", OUTPUT_PAIRS, ids=[f"{c}-{a}-{b}" for c, a, b in OUTPUT_PAIRS]
)
def test_one_path_given_as_two_outputs_of_a_command_is_refused(command, first, second, tmp_path, capsys):
    """`qrm evaluate --plot a.png --output a.png` wrote the plot, then the report over it, with exit 0."""
    values = {
        first: str(tmp_path / "a.png"),
        second: str(tmp_path / "." / "a.png"),
    }  # one file, two spellings
    code, err = run_cli(capsys, *argv_for(command, values, tmp_path / "missing"))
    assert code == 2 and "given twice" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "a.png").exists()


NESTED_OUTPUTS = [
    (command, directory, inner)
    for command, roles in PATH_ARGUMENTS.items()
    for directory, role in roles.items()
    if role == OUTPUT_DIR
    for inner, inner_role in roles.items()
    if inner_role != INPUT and inner != directory
]


@pytest.mark.parametrize(
    "command, directory, inner", NESTED_OUTPUTS, ids=[f"{c}-{d}-{i}" for c, d, i in NESTED_OUTPUTS]
)
def test_an_output_inside_another_output_directory_is_refused(command, directory, inner, tmp_path, capsys):
    """`qrm evaluate --plots P --output P/r.json` put the report into the plots' directory, where the next
    run found a file the plots had not written."""
    values = {directory: str(tmp_path / "plots"), inner: str(tmp_path / "plots" / "r.json")}
    code, err = run_cli(capsys, *argv_for(command, values, tmp_path / "missing"))
    assert code == 2 and "inside the output directory" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "plots").exists()


# ------------------------------------------------------------------------------------------ the mechanism


def test_a_directory_is_replaced_only_when_it_is_the_same_commands_output(tmp_path):
    target = tmp_path / "out"
    with io.replace_directory(target, "qrm fit-gating") as directory:
        (directory / "gating.json").write_text("{}")
    assert io.output_owner(target) == "qrm fit-gating"
    with io.replace_directory(target, "qrm fit-gating") as directory:  # its own output: replaced
        (directory / "gating.json").write_text('{"new": 1}')
    assert json.loads((target / "gating.json").read_text()) == {"new": 1}
    with pytest.raises(
        io.ForeignDirectoryError, match=r"an output of `qrm fit-gating`, not of `qrm assemble`"
    ):
        with io.replace_directory(target, "qrm assemble"):
            pass
    with pytest.raises(io.ForeignDirectoryError, match="gating.json"):
        io.claim_directory(target, "qrm train")
    (target / io.MARKER).unlink()  # a directory without the marker is someone else's
    with pytest.raises(io.ForeignDirectoryError, match="did not write"):
        io.remove_output(target, "qrm fit-gating")
    assert (target / "gating.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.lock"]  # no temporary left


def test_an_output_directory_given_as_a_link_is_the_folder_it_points_to(tmp_path):
    """`--output-dir out` with `out -> runs/3`: the folder behind the link holds the output, the link stays (it was
    renamed aside and then failed to be deleted as a directory: an error after every run, and the link lost)."""
    folder, link = tmp_path / "runs" / "3", tmp_path / "out"
    folder.mkdir(parents=True)
    link.symlink_to(folder, target_is_directory=True)
    for run in range(2):  # an empty folder, then the command's previous output
        with io.replace_directory(link, "qrm fit-gating") as directory:
            (directory / "gating.json").write_text(json.dumps({"run": run}))
        assert link.is_symlink() and json.loads((folder / "gating.json").read_text()) == {"run": run}
    trained = tmp_path / "trained"
    trained.mkdir()
    (tmp_path / "latest").symlink_to(trained, target_is_directory=True)
    io.claim_directory(tmp_path / "latest", "qrm train")
    (trained / "checkpoint.bin").write_bytes(b"old")
    io.claim_directory(tmp_path / "latest", "qrm train", fresh=True)  # deletes the old run, not the link
    assert (tmp_path / "latest").is_symlink() and sorted(p.name for p in trained.iterdir()) == [io.MARKER]
    assert not [p.name for p in tmp_path.iterdir() if "qrm-" in p.name]  # no temporary or previous left
    from qrm_hf.io import lock_path

    assert lock_path(link) == lock_path(folder)  # two runs through the link and the folder exclude each other


def test_files_added_to_an_output_since_it_was_written_are_not_deleted_with_it(tmp_path):
    """`qrm evaluate RUN/model ... --output RUN/model/eval.json`, then a second `qrm assemble` (or `qrm train`)
    into RUN/model deleted the report: a directory marked by the command was replaced whatever it held."""
    target = tmp_path / "model"
    with io.replace_directory(target, "qrm assemble") as directory:
        (directory / "model.safetensors").write_bytes(b"weights")
    (target / "eval.json").write_text('{"accuracy": 0.9}')
    with pytest.raises(io.ForeignDirectoryError, match="eval.json was added since"):
        with io.replace_directory(target, "qrm assemble"):
            pass
    assert (target / "eval.json").read_text() == '{"accuracy": 0.9}'
    (target / "eval.json").unlink()
    with io.replace_directory(target, "qrm assemble") as directory:  # only its own files: replaced
        (directory / "model.safetensors").write_bytes(b"new weights")
    assert (target / "model.safetensors").read_bytes() == b"new weights"


def test_user_files_that_look_like_qrm_files_are_foreign(tmp_path):
    """A user's `notes.qrm-partial.txt`, or a folder named like the marker, was taken for qrm-hf's own and
    deleted with the directory."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "draft.qrm-partial.txt").write_text("my draft")
    marker_folder = tmp_path / "marker-folder"
    (marker_folder / io.MARKER).mkdir(parents=True)
    (marker_folder / io.MARKER / "keep.txt").write_text("mine")
    for directory, name in ((notes, "draft.qrm-partial.txt"), (marker_folder, io.MARKER)):
        before = snapshot(directory)
        with pytest.raises(io.ForeignDirectoryError, match=name.replace(".", r"\.")):
            with io.replace_directory(directory, "qrm fit-gating"):
                pass
        assert snapshot(directory) == before


def test_library_stages_refuse_a_foreign_directory_before_the_work(tmp_path):
    from qrm_hf.convert import convert_released_checkpoint
    from qrm_hf.training.rlhf_pipeline import PaperGRPOConfig, PaperRLOOConfig, run_rlhf
    from qrm_hf.training.sft import PaperSFTConfig, run_sft
    from qrm_hf.training.stages import (
        DatasetSpec,
        assemble_model,
        extract_features,
        fit_debias,
        fit_gating,
        fit_quantile_heads,
    )

    before = foreign_directory(tmp_path / "mine")
    nothing = tmp_path / "nothing"
    trainer = dict(output_dir=str(tmp_path / "mine"), bf16=False, use_cpu=True)
    for call in (
        lambda: extract_features(nothing, DatasetSpec(preset="helpsteer2"), tmp_path / "mine"),
        lambda: fit_quantile_heads([nothing], tmp_path / "mine"),
        lambda: fit_debias(nothing, [nothing], tmp_path / "mine"),
        lambda: fit_gating(nothing, [nothing], tmp_path / "mine"),
        lambda: assemble_model(nothing, nothing, nothing, tmp_path / "mine"),
        lambda: convert_released_checkpoint(nothing, tmp_path / "mine"),
        # the trainer commands refuse before loading anything, not after the training
        lambda: run_sft(nothing, nothing, PaperSFTConfig(**trainer)),
        lambda: run_rlhf(nothing, nothing, nothing, PaperRLOOConfig(**trainer)),
        lambda: run_rlhf(nothing, nothing, nothing, PaperGRPOConfig(**trainer)),
    ):
        with pytest.raises(io.ForeignDirectoryError, match="thesis.tex"):
            call()
    assert snapshot(tmp_path / "mine") == before


def test_json_reports_are_strict_json_with_null_for_non_finite_numbers(tmp_path):
    import numpy as np

    path = tmp_path / "report.json"
    io.write_json_atomic(
        path, {"ties": float("nan"), "scores": [1.0, float("inf"), np.float32("nan"), -float("inf")], "n": 3}
    )

    def refuse(constant):
        raise AssertionError(f"bare {constant} in the JSON")

    assert json.loads(path.read_text(), parse_constant=refuse) == {
        "ties": None,
        "scores": [1.0, None, None, None],
        "n": 3,
    }


DESTRUCTIVE = {"rmtree", "move", "rename", "remove", "unlink", "rmdir", "removedirs", "replace"}
# Deletions and renames outside qrm_hf/io.py, each of a file that the same function created.
ALLOWED_DESTRUCTIVE = {
    ("qrm_hf/cli_paths.py", "unlink"),  # check_writable's probe file, when it did not exist before
}
WRITERS = {"save_pretrained", "save_file", "savefig", "write_text", "write_bytes", "save", "dump"}
# Functions that write into a directory their caller prepared (a replace_directory temporary, a claimed
# output directory): they write files, never replace the directory.
WRITES_INTO_A_PREPARED_DIRECTORY = {
    ("qrm_hf/backbones.py", "_convert"),  # into replace_directory's temporary
    ("training/assemble.py", "save_qrm"),  # assemble_model: replace_directory; push_qrm: a TemporaryDirectory
}


def package_files():
    for directory in PACKAGE_DIRS:
        for path in sorted(directory.rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text())


def _called_name(node: ast.Call) -> tuple[str | None, str | None]:
    """(receiver, name) of a call: ("os", "replace") for os.replace(...), (None, "rmtree") for rmtree(...)."""
    function = node.func
    if isinstance(function, ast.Attribute):
        receiver = function.value.id if isinstance(function.value, ast.Name) else None
        return receiver, function.attr
    if isinstance(function, ast.Name):
        return None, function.id
    return None, None


def test_only_qrm_hf_io_deletes_or_renames_files():
    """Every deletion or rename of the package goes through qrm_hf.io (which checks the output marker)."""
    found = []
    for name, tree in package_files():
        if name == "qrm_hf/io.py":
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            receiver, called = _called_name(node)
            if called not in DESTRUCTIVE:
                continue
            if called == "replace" and receiver != "os":  # str.replace, dataclasses.replace
                continue
            if called == "remove" and receiver not in ("os", "shutil"):  # list.remove
                continue
            if (name, called) not in ALLOWED_DESTRUCTIVE:
                found.append(f"{name}:{node.lineno} {receiver}.{called}")
    assert not found, f"delete or rename only through qrm_hf.io: {found}"


def test_every_write_of_the_package_is_write_then_rename():
    """Writers (save_pretrained, safetensors save_file, savefig, write_text, ...) run inside a `with` of
    qrm_hf.io (atomic_file, replace_directory, files_into) or in a function that writes into a prepared
    directory."""

    class Finder(ast.NodeVisitor):
        def __init__(self, name):
            self.name, self.protected, self.function, self.found = name, 0, None, []

        def visit_FunctionDef(self, node):
            outer, self.function = self.function, self.function or node.name
            self.generic_visit(node)
            self.function = outer

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_With(self, node):
            helpers = {
                _called_name(item.context_expr)[1]
                for item in node.items
                if isinstance(item.context_expr, ast.Call)
            }
            protected = bool(
                helpers & {"atomic_file", "replace_directory", "files_into", "TemporaryDirectory"}
            )
            self.protected += protected
            self.generic_visit(node)
            self.protected -= protected

        def visit_Call(self, node):
            receiver, called = _called_name(node)
            writes = called in WRITERS and not (
                called in ("save", "dump") and receiver not in ("torch", "json")
            )
            if (
                writes
                and not self.protected
                and (self.name, self.function) not in WRITES_INTO_A_PREPARED_DIRECTORY
            ):
                self.found.append(f"{self.name}:{node.lineno} {self.function}: {receiver}.{called}")
            self.generic_visit(node)

    found = []
    for name, tree in package_files():
        if name == "qrm_hf/io.py":
            continue
        finder = Finder(name)
        finder.visit(tree)
        found += finder.found
    assert not found, f"write through qrm_hf.io.atomic_file / replace_directory: {found}"


# ------------------------------------------------------------------------------------------ kill -9


KILL_DURING = """
import os, signal, sys
{patch}
from qrm_hf.cli import main
main({argv!r})
"""

HALF_A_FILE_THEN_DIE = """
import transformers.modeling_utils as modeling_utils
from safetensors.torch import save

def half_then_die(tensors, filename, metadata=None):
    data = save(tensors, metadata=metadata)
    with open(filename, "wb") as handle:
        handle.write(data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)

modeling_utils.safe_save_file = half_then_die
"""

DIE_BETWEEN_THE_RENAMES = """
import qrm_hf.io as qrm_io
real_replace = os.replace

def replace_then_die(source, destination):
    if "qrm-partial" in str(source) and os.path.isdir(source):  # the new output, about to be renamed in
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(source, destination)

qrm_io.os.replace = replace_then_die
"""


def rewritten(after: dict[str, bytes], before: dict[str, bytes]) -> bool:
    """The same files, the marker aside: it holds the id of each write (`io.output_id`), new every time."""
    return {**after, io.MARKER: b""} == {**before, io.MARKER: b""}


def killed(patch: str, argv: list[str]) -> subprocess.CompletedProcess:
    script = textwrap.dedent(KILL_DURING).format(patch=textwrap.dedent(patch), argv=[str(a) for a in argv])
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    released_checkpoint(root / "released", 3, 5, seed=3)
    main(["convert", str(root / "released"), str(root / "model")])
    return root


def test_kill_9_while_convert_writes_the_weights_keeps_the_previous_model(converted, tmp_path):
    model = Path(shutil.copytree(converted / "model", tmp_path / "model"))
    before = snapshot(model)
    result = killed(HALF_A_FILE_THEN_DIE, ["convert", converted / "released", model])
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert snapshot(model) == before  # no truncated model.safetensors
    main(["convert", str(converted / "released"), str(model)])  # the next run cleans up and completes
    assert rewritten(snapshot(model), before) and io.output_owner(model) == "qrm convert"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.lock"]


def test_a_kill_between_the_two_renames_is_named_then_restored(converted, tmp_path, capsys):
    model = Path(shutil.copytree(converted / "model", tmp_path / "model"))
    before = snapshot(model)
    result = killed(DIE_BETWEEN_THE_RENAMES, ["convert", converted / "released", model])
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    assert not model.exists()  # the kill hit between the renames: the old model is aside
    code, err = run_cli(capsys, "score", model, "--prompt", "hi", "--response", "yo")
    assert code == 2 and ".model.qrm-previous" in err and "run that command again" in err, err
    main(["convert", str(converted / "released"), str(model)])  # puts the old one back, then replaces it
    assert rewritten(snapshot(model), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.lock"]


# ------------------------------------------------------------------------ extraction follows its data


def write_ratings(path: Path, responses: list[str], labels: list[int]) -> Path:
    rows = [
        {"prompt": "Say hi.", "response": r, **dict.fromkeys(ATTRIBUTES, label)}
        for r, label in zip(responses, labels, strict=True)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_standalone_extract_follows_changed_labels_and_responses(tmp_path, capsys):
    from qrm_hf.training.features import load_features

    backbone = save_backbone(tmp_path / "backbone", seed=5)
    data = tmp_path / "ratings.jsonl"
    out = tmp_path / "features"
    extract = ["extract", backbone, "--output-dir", out, "--source", data, "--kind", "attribute",
               "--prompt", "prompt", "--response", "response", "--attributes", *ATTRIBUTES,
               "--label-range", "0", "4", "--max-length", "256"]  # fmt: skip
    write_ratings(data, ["hi", "hello there", "the blue four"], [0, 2, 4])
    main([str(a) for a in extract])
    first, _ = load_features(out)
    write_ratings(data, ["a joke", "Paris is it", "red"], [4, 1, 3])  # same row count
    main([str(a) for a in extract])
    assert "Features written" in capsys.readouterr().out
    second, _ = load_features(out)
    assert second["labels"][:, 0].tolist() == [1.0, 0.25, 0.75]
    assert not (first["embeddings"] == second["embeddings"]).all(dim=1).any()  # every response re-encoded


def test_standalone_extract_follows_a_backbone_replaced_in_place(tmp_path, capsys):
    """New weights saved over the backbone directory (a re-download, a fine-tune saved in place): `qrm extract`
    kept the old features and said "Features written" (`qrm train` keys on the backbone's content already)."""
    from qrm_hf.training.features import load_features

    backbone = save_backbone(tmp_path / "backbone", seed=5)
    data = write_ratings(tmp_path / "ratings.jsonl", ["hi", "hello there", "the blue four"], [0, 2, 4])
    out = tmp_path / "features"
    extract = ["extract", backbone, "--output-dir", out, "--source", data, "--kind", "attribute",
               "--prompt", "prompt", "--response", "response", "--attributes", *ATTRIBUTES,
               "--label-range", "0", "4", "--max-length", "256"]  # fmt: skip
    main([str(a) for a in extract])
    first, _ = load_features(out)
    shutil.rmtree(backbone)
    save_backbone(backbone, seed=6)
    main([str(a) for a in extract])
    assert "extracting anew" in capsys.readouterr().out
    second, _ = load_features(out)
    assert not (first["embeddings"] == second["embeddings"]).all(dim=1).any()
