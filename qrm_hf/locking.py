"""One lock per directory that a qrm process writes: the backbone cache and the output of a run or a stage.

`directory_lock(path)` takes an exclusive `filelock.FileLock` on the sibling file ``<name>.lock`` (the
directory itself may be replaced by a rename while locked) and records its holder (pid, host, command) in
``<name>.lock.owner`` while it holds it. With ``wait=True`` a second process waits for the first (the backbone cache: the
first converts, the others then use its result); with ``wait=False`` it fails at once with
`DirectoryInUseError` naming the holder's pid (two runs writing one output directory would delete each
other's files). The operating system releases the lock when its holder dies, even by kill -9.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .io import write_text_atomic


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

__all__ = ["DirectoryInUseError", "directory_lock", "lock_holder", "lock_path"]
