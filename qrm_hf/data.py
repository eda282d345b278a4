"""JSON Lines rows for `qrm score --file` and `qrm evaluate` (converted to examples by `qrm_hf.presets`)."""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON Lines file; a clear error names the file and line of a malformed row."""
    path = Path(path)
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}, line {number}: not valid JSON ({error}).") from error
    if not rows:
        raise ValueError(f"{path} holds no rows.")
    return rows
