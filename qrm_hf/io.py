"""Every write of a model, features or a report: write-then-rename, and only over what qrm-hf wrote.

Files: `atomic_file(path)` yields a temporary sibling to write; it is renamed over `path` only when the block
succeeds (`write_bytes_atomic`, `write_text_atomic` and `write_json_atomic` use it), so a crash (even kill -9)
leaves the old file or the new one, never half of one. JSON reports are strict JSON: NaN and infinities are
written as null (`finite_or_null`), never as bare ``NaN``.

Directories: every output directory of a command carries the marker file `MARKER` (``.qrm-output.json``)
naming the command that wrote it, and an identifier of that write (`output_id`: `qrm train` notices a stage
output that another command replaced since). A command may replace or write into a directory only if it is absent,
empty, or marked by that same command (`check_output_directory`); anything else is refused, naming what is
there, so that ``--output-dir $PWD`` deletes nothing. Outputs written at once (heads, gating, models) go
through `replace_directory` (a temporary sibling, swapped in when complete); outputs written in place (feature
shards that resume, training runs with checkpoints) through `claim_directory`, which marks the directory
before the first write. A kill between the two renames of a swap leaves the previous output in a hidden
sibling: the next `replace_directory` puts it back, and `interrupted_replacement_note` says where it lies.

Locks: one per directory that a qrm process writes, the backbone cache and the output of a run or a stage.
`directory_lock(path)` takes an exclusive `filelock.FileLock` on the sibling file ``<name>.lock`` (the
directory itself may be replaced by a rename while locked) and records its holder (pid, host, command) in
``<name>.lock.owner`` while it holds it. With ``wait=True`` a second process waits for the first (the backbone
cache: the first converts, the others then use its result); with ``wait=False`` it fails at once with
`DirectoryInUseError` naming the holder's pid (two runs writing one output directory would delete each
other's files). The operating system releases the lock when its holder dies, even by kill -9.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MARKER = ".qrm-output.json"
_PARTIAL = "qrm-partial"  # in the names of temporaries (files and directories) that qrm-hf writes
_PREVIOUS = "qrm-previous"  # the hidden sibling that holds the old output during a directory swap


class ForeignDirectoryError(FileExistsError):
    """An output directory holds files that the command did not write: it is never replaced."""


# ------------------------------------------------------------------------------------------- files


def finite_or_null(value):
    """`value` (nested dicts, lists, tuples) with NaN and infinite floats replaced by None (JSON null)."""
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(item) for item in value]
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):  # numpy floats too
        return float(value) if math.isfinite(value) else None
    return value


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path` (same suffix) to write; it replaces `path` when the block succeeds.

    The parent directory is created. On an error the temporary is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{_PARTIAL}-{os.getpid()}{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through `atomic_file`."""
    with atomic_file(path) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` through `atomic_file`."""
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, payload) -> None:
    """Write `payload` as strict JSON (NaN and infinities as null) through `atomic_file`."""
    write_text_atomic(path, json.dumps(finite_or_null(payload), indent=2, allow_nan=False))


def save_figure(figure, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Lay out a matplotlib `figure`, write it (PNG unless `path` says otherwise) through `atomic_file`,
    close it and return `path`."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path = Path(path)
    with atomic_file(path) as temporary:
        figure.savefig(temporary, dpi=dpi)
    plt.close(figure)
    return path


# ------------------------------------------------------------------------------------------- locks


class DirectoryInUseError(OSError):
    """Another process holds the lock of a directory this one wants to write."""


def lock_path(directory: str | os.PathLike) -> Path:
    """The lock file of `directory`: a sibling, so that it survives the directory being replaced."""
    directory = Path(os.path.realpath(directory))  # "." has no name; a link and its folder share one lock
    return directory.with_name(f"{directory.name}.lock")


def lock_holder(directory: str | os.PathLike) -> dict | None:
    """What the current holder of `directory`'s lock recorded (pid, host, command, since), if anything."""
    try:
        return json.loads(Path(f"{lock_path(directory)}.owner").read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def directory_lock(
    directory: str | os.PathLike, *, wait: bool = False, what: str = "output directory"
) -> Iterator[None]:
    """Hold the exclusive lock of `directory` for the block (re-entrant within one process).

    Args:
        wait: wait for another holder to finish (True) or raise `DirectoryInUseError` at once (False).
        what: how the error names the directory ("output directory", ...).
    """
    from filelock import FileLock, Timeout

    path = lock_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _locks.setdefault(str(path.resolve()), FileLock(str(path)))
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        holder = lock_holder(directory) or {}
        who = (
            f"process {holder['pid']} on {holder.get('host', '?')} (`{holder.get('command', '?')}`, since "
            f"{holder.get('since', '?')})"
            if "pid" in holder
            else "another process"
        )
        raise DirectoryInUseError(
            f"The {what} {directory} is in use by {who}: wait for it to finish, or write somewhere else."
        ) from None
    owner = Path(f"{path}.owner")
    first = lock.lock_counter == 1
    try:
        if first:
            write_text_atomic(
                owner,
                json.dumps(
                    {
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200],
                        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                    }
                ),
            )
        yield
    finally:
        if first:
            owner.unlink(missing_ok=True)
        lock.release()


_locks: dict = {}  # one FileLock per lock file in this process, so that nested holds are re-entrant


# ------------------------------------------------------------------------------------------- directories


def _absolute(path: str | os.PathLike) -> Path:
    """`path` made absolute with its links followed: "." and ".." have no name to put a sibling next to, and an
    output directory given as a link to a folder (``out -> /data/run3``) is that folder (renaming the link
    aside would replace the user's link and then fail to delete it as a directory)."""
    return Path(os.path.realpath(os.path.expanduser(path)))


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}")


def _marker(path: str | os.PathLike) -> dict:
    """The marker of the directory `path` as a dict, empty when there is no readable one."""
    try:
        marker = json.loads((Path(path) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def output_owner(path: str | os.PathLike) -> str | None:
    """The command recorded in the marker of the directory `path`, None when there is no readable marker."""
    owner = _marker(path).get("command")
    return owner if isinstance(owner, str) else None


def _is_own_temporary(name: str) -> bool:
    """Whether `name` is that of a temporary qrm-hf writes: hidden, with `_PARTIAL` in it (a user's
    ``notes.qrm-partial.txt`` is not one)."""
    return name.startswith(".") and _PARTIAL in name


def output_id(path: str | os.PathLike) -> str | None:
    """The identifier the marker of the directory `path` got when the output there was written (a new one for
    every write of a whole output): who recorded it (`qrm train`'s state) can tell that another run has
    replaced that output since. None without a readable marker."""
    return _marker(path).get("written")


def _foreign_entries(path: Path) -> list[str]:
    """The entries of `path` other than qrm-hf's own temporaries and marker (a file: a folder of that name is
    not one)."""
    return sorted(
        entry.name
        for entry in path.iterdir()
        if not (entry.name == MARKER and entry.is_file() and not entry.is_symlink())
        and not _is_own_temporary(entry.name)
    )


def check_output_directory(path: str | os.PathLike, command: str) -> None:
    """Refuse (`ForeignDirectoryError`) to write the output of `command` (e.g. "qrm fit-gating") into `path`
    unless it is absent, empty, or marked as an output of `command`; the error names what is there."""
    path = _absolute(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise NotADirectoryError(f"The output directory {path} is a file; give a directory.")
    owner = output_owner(path)
    entries = _foreign_entries(path)
    if owner == command:  # its own output, unless files were added since (a report saved into a model dir)
        written = _marker(path).get("files")
        entries = [name for name in entries if name not in written] if isinstance(written, list) else []
    if not entries:
        return
    shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    if owner == command:
        reason = (
            f"is an output of `{command}`, but {shown} {'was' if len(entries) == 1 else 'were'} added since"
        )
    elif owner is not None:
        reason = f"is an output of `{owner}`, not of `{command}` (it holds {shown})"
    else:
        reason = f"holds files that `{command}` did not write ({shown}; no {MARKER} of it)"
    raise ForeignDirectoryError(
        f"The output directory {path} {reason}: nothing there is replaced. Give a new or empty directory"
        + (", or move those files away." if owner == command else ".")
    )


def _write_marker(directory: Path, command: str, files: list[str] | None = None) -> None:
    """Mark `directory` as an output of `command`, with a new write id and, for an output written at once,
    the names of its `files` (anything else found there later is not the command's to delete)."""
    marker = {"command": command, "written": uuid.uuid4().hex}
    if files is not None:
        marker["files"] = files
    write_json_atomic(directory / MARKER, marker)


def _delete(path: Path) -> None:
    """Delete the directory `path`, its marker last: a kill midway leaves a directory still known to be ours."""
    for entry in path.iterdir():
        if entry.name != MARKER:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    (path / MARKER).unlink(missing_ok=True)
    path.rmdir()


def _remove_own(path: Path) -> None:
    """Delete a temporary or previous directory of an earlier, killed swap: only if it is marked or empty."""
    if not path.exists():
        return
    if path.is_dir() and (output_owner(path) is not None or not any(path.iterdir())):
        _delete(path)
        return
    raise ForeignDirectoryError(f"{path} was not written by qrm-hf; move it away to write next to it.")


def restore_interrupted_replacement(path: str | os.PathLike) -> None:
    """Put back the output that `replace_directory` had renamed aside when it was killed before renaming the
    new one in."""
    path = _absolute(path)
    previous = _sibling(path, _PREVIOUS)
    if previous.is_dir() and not path.exists():
        os.replace(previous, path)


def interrupted_replacement_note(path: str | os.PathLike) -> str:
    """For an error about a missing output `path`: where a killed replacement left its previous version."""
    path = _absolute(path)
    previous = _sibling(path, _PREVIOUS)
    if path.exists() or not previous.is_dir():
        return ""
    return (
        f" (a run killed while replacing it left the previous version in {previous}: run that command "
        "again, which puts it back, or rename it back)"
    )


@contextmanager
def replace_directory(path: str | os.PathLike, command: str) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write the output of `command` into; it replaces `path` only
    if the block succeeds, and only if `path` may be replaced (`check_output_directory`).

    The directory is locked for the block (`directory_lock`: another process writing it gets a
    clear error). The old `path` stays until the new one is complete: it is renamed aside, the new one renamed
    in, and only then deleted, so a crash at any moment leaves the old or the new output (after a crash
    between the two renames, the next call puts the old one back first).
    """
    path = _absolute(path)
    temporary, previous = _sibling(path, _PARTIAL), _sibling(path, _PREVIOUS)
    with directory_lock(path):
        restore_interrupted_replacement(path)
        check_output_directory(path, command)
        _remove_own(temporary)
        temporary.mkdir(parents=True)
        _write_marker(temporary, command)  # first: a temporary left by a kill is known to be ours
        try:
            yield temporary
        except BaseException:
            _delete(temporary)
            raise
        _write_marker(temporary, command, files=_foreign_entries(temporary))
        _remove_own(previous)
        if path.exists():
            os.replace(path, previous)
        os.replace(temporary, path)
        if previous.exists():
            _delete(previous)


def claim_directory(path: str | os.PathLike, command: str, *, fresh: bool = False) -> Path:
    """Make `path` the output directory of `command`, written in place (resumable outputs); returns it.

    Refuses a directory `command` may not write (`check_output_directory`); creates `path` and marks it
    before anything else is written. `fresh` first deletes an earlier output of `command` there.
    """
    path = _absolute(path)
    check_output_directory(path, command)
    if fresh and path.exists():
        _delete(path)
    path.mkdir(parents=True, exist_ok=True)
    if output_owner(path) != command:
        _write_marker(path, command)
    return path


@contextmanager
def files_into(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder inside `directory`; when the block succeeds each file written there replaces
    its namesake in `directory` (one rename each, so every file is whole), for outputs that share a
    directory with other files (a trainer's merged model next to its checkpoints)."""
    directory = _absolute(directory)
    temporary = directory / f".{_PARTIAL}-{os.getpid()}"
    directory.mkdir(parents=True, exist_ok=True)
    if temporary.exists():
        _delete(temporary)
    temporary.mkdir()
    try:
        yield temporary
        for path in sorted(temporary.rglob("*")):
            if path.is_file():
                destination = directory / path.relative_to(temporary)
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, destination)
    finally:
        _delete(temporary)


def remove_output(path: str | os.PathLike, command: str) -> None:
    """Delete the directory `path` if it is an output of `command` (or empty); refuse anything else."""
    path = _absolute(path)
    check_output_directory(path, command)
    if path.exists():
        _delete(path)


def check_outputs_apart_from_inputs(
    outputs: list[tuple[str, str | os.PathLike, bool]], inputs: list[tuple[str, str | os.PathLike]]
) -> None:
    """Refuse an output that is one of the inputs, an output directory that holds one of them, one path
    given as two outputs (``--plot a.png --output a.png``: the second write would replace the first), and an
    output inside another output directory (``--plots P --output P/r.json``: the next run finds a file there
    that the plots did not write).

    `outputs` are (what, path, is a directory) and `inputs` (what, path), "what" naming the argument in the
    error (e.g. "output_dir"); inputs that do not exist locally (Hub ids) are left out. Paths are compared
    resolved (symlinks followed).
    """
    existing = [
        (what, Path(path).expanduser().resolve()) for what, path in inputs if Path(path).expanduser().exists()
    ]
    resolved = [
        (what, path, Path(path).expanduser().resolve(), is_directory) for what, path, is_directory in outputs
    ]
    claimed = {}
    for out_what, out_path, output, is_directory in resolved:
        if output in claimed:
            raise ValueError(
                f"The output {out_path} is given twice ({claimed[output]} and {out_what}): one would overwrite "
                "the other. Give each output its own path."
            )
        claimed[output] = out_what
        for in_what, input_path in existing:
            if output == input_path:
                raise ValueError(
                    f"The output {out_path} ({out_what}) is also an input ({in_what}): writing it would destroy the "
                    "input. Give another output path."
                )
            if is_directory and output in input_path.parents:
                raise ValueError(
                    f"The output directory {out_path} ({out_what}) holds an input ({in_what}: {input_path}): writing "
                    "it could destroy the input. Give another output directory."
                )
    for out_what, out_path, output, _ in resolved:
        holder = next((d for _, _, d, is_dir in resolved if is_dir and d in output.parents), None)
        if holder is not None:
            raise ValueError(
                f"The output {out_path} ({out_what}) is inside the output directory {holder} ({claimed[holder]}), "
                "which is written as a whole: give it a place outside."
            )


__all__ = [
    "check_outputs_apart_from_inputs",
    "MARKER",
    "DirectoryInUseError",
    "ForeignDirectoryError",
    "atomic_file",
    "check_output_directory",
    "claim_directory",
    "directory_lock",
    "files_into",
    "finite_or_null",
    "interrupted_replacement_note",
    "lock_holder",
    "lock_path",
    "output_id",
    "output_owner",
    "remove_output",
    "replace_directory",
    "restore_interrupted_replacement",
    "save_figure",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
