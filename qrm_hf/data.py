"""JSON Lines rows, and where each row was read: the one reader of the JSON Lines files of every command
(`qrm score --file`, `qrm evaluate`, `qrm preference-strength`, and through `qrm_hf.dataset_loading.load_rows` the
data of `qrm extract` / `qrm train` / `qrm sft` / `qrm rloo` / `qrm grpo` / `qrm rewardbench`).

Every error about a row names it by :func:`row_location`: ``"FILE line N"``, the 1-based line of the file
(blank lines counted), for rows read from a JSON Lines file; ``"NAME, row I (counted from 0)"`` for rows
that come from elsewhere (a Python list, a Hub dataset, a Parquet file), I being the position in that
sequence.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path


class JsonlRows(list):
    """The rows of a JSON Lines file (dicts), with ``row_locations[i]``: ``"FILE line N"`` of row i."""

    def __init__(self, rows: Iterable[dict], row_locations: Sequence[str]):
        super().__init__(rows)
        self.row_locations = list(row_locations)
        if len(self.row_locations) != len(self):
            raise ValueError(f"{len(self.row_locations)} locations for {len(self)} rows.")

    def select(self, positions: Sequence[int]) -> JsonlRows:
        """The rows at `positions`, each keeping its location."""
        return JsonlRows([self[i] for i in positions], [self.row_locations[i] for i in positions])


# The row column whose values the evaluation measures are broken down by (its values are the *kinds*), and
# the two kinds whose 90 % widths and annotator spreads are compared (`qrm evaluate --group-column`,
# `--contrast`): the demo data's. Here, not in `evaluation`, so that the parser reads them without numpy.
GROUP_COLUMN = "kind"
CONTRAST = ("controversial", "clear")


def row_location(rows, index: int, name: str = "rows") -> str:
    """Where row `index` of `rows` was read, for error messages: ``"FILE line N"`` when `rows` carries
    ``row_locations`` (rows of :func:`read_jsonl`, or a dataset of `load_rows` read from a JSON Lines
    file), else ``"NAME, row INDEX (counted from 0)"``."""
    locations = getattr(rows, "row_locations", None)
    if locations is not None:
        return locations[index]
    return f"{name}, row {index} (counted from 0)"


def check_utf8(path: str | Path) -> None:
    """Raise a ValueError naming the file and line of the first bytes that are not UTF-8 text.

    (Readers of text data otherwise fail later, or in another library, without saying where.)
    """
    path = Path(path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            _decode(raw, path, number)


def _decode(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} line {number}: bytes that are not UTF-8 text ({error.reason} at byte "
            f"{error.start} of the line: {raw[max(error.start - 10, 0) : error.start + 10]!r})."
        ) from None


class _RepeatedKeys(Exception):
    """A JSON object with a key twice (its message: the keys)."""


def _object_with_unique_keys(pairs: list[tuple[str, object]]) -> dict:
    row = dict(pairs)
    if len(row) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        repeated = sorted(key for key, count in counts.items() if count > 1)
        raise _RepeatedKeys(", ".join(map(repr, repeated)))
    return row


def read_jsonl(path: str | Path) -> JsonlRows:
    """The rows of a JSON Lines file, each with its location (`JsonlRows`); a clear error names the file
    and the line of a malformed row (invalid JSON, bytes that are not UTF-8, a string with a lone
    surrogate escape such as ``"\\ud800"``, which is no text, a value that is not an object, an object with
    a key twice)."""
    rows, locations = [], []
    for row, where in checked_jsonl_rows(path):
        rows.append(row)
        locations.append(where)
    return JsonlRows(rows, locations)


def jsonl_row_locations(path: str | Path) -> list[str]:
    """The locations of the rows of a JSON Lines file, every row checked as `read_jsonl` does, without
    keeping the rows (for readers that load the file their own way, e.g. `datasets`)."""
    return [where for _, where in checked_jsonl_rows(path)]


def checked_jsonl_rows(path: str | Path) -> Iterator[tuple[dict, str]]:
    """(row, ``"FILE line N"``) of every non-blank line of a JSON Lines file, one at a time; the checks
    and errors of `read_jsonl`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist." if not path.exists() else f"{path} is not a file.")
    empty = True
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = _decode(raw, path, number)
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(line, object_pairs_hook=_object_with_unique_keys)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error}).") from None
            except _RepeatedKeys as error:
                raise ValueError(
                    f"{where}: the key(s) {error} appear twice in one object, so the row says two things "
                    "(json keeps the last, pyarrow refuses the file): keep one."
                ) from None
            except RecursionError:  # thousands of nested brackets: Python's parser gives up
                raise ValueError(f"{where}: JSON nested too deeply to be a row.") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {line.strip()[:60]!r}.")
            try:  # a "\ud800" escape parses into a str that no tokenizer or writer can encode
                json.dumps(row, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as error:
                raise ValueError(
                    f"{where}: a string holds a lone surrogate ({error.object[error.start : error.end]!r}, "
                    "from an escape such as \\ud800), which is not text."
                ) from None
            empty = False
            yield row, where
    if empty:
        raise ValueError(f"{path} holds no rows.")


__all__ = [
    "JsonlRows",
    "check_utf8",
    "checked_jsonl_rows",
    "jsonl_row_locations",
    "read_jsonl",
    "row_location",
]
