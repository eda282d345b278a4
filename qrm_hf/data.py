"""JSON Lines rows for `qrm score --file` and `qrm evaluate` (converted to examples by `qrm_hf.presets`)."""

from __future__ import annotations

import json
from pathlib import Path


def check_utf8(path: str | Path) -> None:
    """Raise a ValueError naming the file and line of the first bytes that are not UTF-8 text.

    (Readers of text data otherwise fail later, or in another library, without saying where.)
    """
    path = Path(path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}, line {number}: bytes that are not UTF-8 text ({error.reason} at byte "
                    f"{error.start} of the line: {raw[max(error.start - 10, 0) : error.start + 10]!r})."
                ) from None


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON Lines file; a clear error names the file and the line of a malformed row
    (invalid JSON, bytes that are not UTF-8, a value that is not an object)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist." if not path.exists() else f"{path} is not a file.")
    rows = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}, line {number}: bytes that are not UTF-8 text ({error.reason} at byte "
                    f"{error.start} of the line: {raw[max(error.start - 10, 0) : error.start + 10]!r})."
                ) from None
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}, line {number}: not valid JSON ({error}).") from None
                if not isinstance(row, dict):
                    raise ValueError(
                        f"{path}, line {number}: expected a JSON object, got {line.strip()[:60]!r}."
                    )
                rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no rows.")
    return rows


def line_names(path: str | Path) -> list[str]:
    """``"<path>, line N"`` for each row `read_jsonl(path)` returns (blank lines hold none): how errors
    about a row's results (e.g. a NaN score) name it."""
    with Path(path).open("rb") as handle:
        numbers = [n for n, raw in enumerate(handle, start=1) if raw.decode("utf-8", "replace").strip()]
    return [f"{path}, line {number}" for number in numbers]
