"""The paths that each `qrm` command reads and writes, checked once by `qrm_hf.cli.main` before the command runs.

`PATH_ARGUMENTS` declares, per command, which arguments (argparse `dest`) are inputs, output files and output
directories. `check_paths` refuses, before any work, an output that is one of the inputs (or an output
directory that holds one), and an output directory that the command may not write (`qrm_hf.io`: absent, empty
or an earlier output of the same command). The library functions that write check again when they write;
this early check makes the CLI fail in a second rather than after the training. tests/test_outputs.py
enumerates the parser so that a path argument added later without a declaration fails the tests.
"""

from __future__ import annotations

import argparse
from pathlib import Path

INPUT, OUTPUT_FILE, OUTPUT_DIR = "input", "output file", "output directory"

_MODEL = {"model": INPUT}
PATH_ARGUMENTS: dict[str, dict[str, str]] = {
    "demo": {"output_dir": OUTPUT_DIR, "backbone": INPUT},
    "convert": {"source": INPUT, "destination": OUTPUT_DIR},
    "score": {**_MODEL, "file": INPUT, "plot": OUTPUT_FILE},
    "evaluate": {
        **_MODEL,
        "ratings": INPUT,
        "pairs": INPUT,
        "showcase": INPUT,
        "baselines": INPUT,
        "plot": OUTPUT_FILE,
        "json": OUTPUT_FILE,
        "output": OUTPUT_FILE,
        "plots": OUTPUT_DIR,
    },
    "extract": {"backbone": INPUT, "source": INPUT, "output_dir": OUTPUT_DIR},
    "fit-quantiles": {"features": INPUT, "validation": INPUT, "output_dir": OUTPUT_DIR},
    "debias": {"heads": INPUT, "reference": INPUT, "output_dir": OUTPUT_DIR},
    "fit-gating": {"heads": INPUT, "pairs": INPUT, "transform": INPUT, "output_dir": OUTPUT_DIR},
    "assemble": {
        "backbone": INPUT,
        "heads": INPUT,
        "gating": INPUT,
        "transform": INPUT,
        "results": INPUT,
        "output_dir": OUTPUT_DIR,
    },
    "train": {"config": INPUT, "output_dir": OUTPUT_DIR},
    "sft": {"model": INPUT, "chat_template": INPUT, "data": INPUT, "config": INPUT, "output_dir": OUTPUT_DIR},
    "rloo": {
        "policy": INPUT,
        "reward_model": INPUT,
        "data": INPUT,
        "config": INPUT,
        "output_dir": OUTPUT_DIR,
    },
    "grpo": {
        "policy": INPUT,
        "reward_model": INPUT,
        "data": INPUT,
        "config": INPUT,
        "output_dir": OUTPUT_DIR,
    },
    "rewardbench": {**_MODEL, "data": INPUT, "output": OUTPUT_FILE, "plots": OUTPUT_DIR},
    "preference-strength": {
        **_MODEL,
        "pairs": INPUT,
        "features": INPUT,
        "output": OUTPUT_FILE,
        "plot": OUTPUT_FILE,
    },
    "push": {"model_dir": INPUT, "results": INPUT},
    "calibrate": {**_MODEL, "ratings": INPUT, "heldout": INPUT, "output_dir": OUTPUT_DIR},
}

# Inputs that may name a Hub repo or a dataset (by name or preset) instead of a local path. Every other input
# must exist locally: `check_paths` says so before the command imports torch (a mistyped path answers at once).
REMOTE_INPUTS = {"model", "backbone", "policy", "reward_model", "source", "data"}

# The command whose outputs a command's output directory holds, when it is another one: `qrm demo` is
# `qrm train` on the demo config (then an evaluation written into the same run directory).
OUTPUT_OWNER = {"demo": "train"}


def output_owner(command: str) -> str:
    """The marker (`qrm_hf.io`) that the output directories of `command` carry, e.g. "qrm fit-gating"."""
    return f"qrm {OUTPUT_OWNER.get(command, command)}"


def _values(value) -> list:
    if value is None:
        return []
    return [str(item) for item in value] if isinstance(value, list | tuple) else [str(value)]


def check_paths(args: argparse.Namespace) -> None:
    """Refuse the outputs of `args.command` that are inputs (or hold one), output directories of other files
    than the command's own (ValueError / `qrm_hf.io.ForeignDirectoryError`, one line each), and local inputs
    that do not exist (FileNotFoundError; not those of `REMOTE_INPUTS`)."""
    from .io import check_output_directory, check_outputs_apart_from_inputs, interrupted_replacement_note

    roles = PATH_ARGUMENTS.get(args.command, {})
    inputs, outputs = [], []
    for dest, role in roles.items():
        for value in _values(getattr(args, dest, None)):
            if role == INPUT:
                inputs.append((dest, value))
            else:
                outputs.append((dest, value, role == OUTPUT_DIR))
    check_outputs_apart_from_inputs(outputs, inputs)
    for _, path, is_directory in outputs:
        if is_directory:
            check_output_directory(path, output_owner(args.command))
    for dest, path in inputs:
        if dest not in REMOTE_INPUTS and not Path(path).expanduser().exists():
            raise FileNotFoundError(
                f"{path} does not exist (the {dest.replace('_', ' ')} input){interrupted_replacement_note(path)}."
            )


def check_writable(path: str | Path | None, what: str) -> None:
    """Fail now, not after the work, when the output file `path` cannot be written (the file is not created)."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"The {what} path {path} is a directory; give a file name.")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a"):
            pass
    except OSError as error:
        raise OSError(f"Cannot write the {what} to {path}: {error.strerror or error}.") from error
    if not existed:
        path.unlink()
