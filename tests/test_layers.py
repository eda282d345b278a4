"""The house rule of docs/design.md ("Layers"): no module of the package imports a private name (``_x``) of
another one. A helper that two modules need is public, with a docstring. (The layers themselves are
import-linter contracts in pyproject, checked by `make lint`.)"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ("qrm_hf", "training", "modeling")  # pyproject's package-dir: qrm_hf, qrm_hf.training, ...


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_names_imported(source: str) -> list[tuple[int, str]]:
    """(line, what) of every private name `source` takes from another module of the package: ``from .x
    import _y`` (any import of a private name), and ``x._y`` where ``x`` is a package module it imported."""
    tree = ast.parse(source)
    found, package_names = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            internal = node.level > 0 or (node.module or "").startswith("qrm_hf")
            for alias in node.names:
                if _is_private(alias.name):
                    found.append(
                        (node.lineno, f"from {'.' * node.level}{node.module or ''} import {alias.name}")
                    )
                if internal:
                    package_names.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            package_names.update(
                (alias.asname or alias.name).split(".")[0]
                for alias in node.names
                if alias.name.startswith("qrm_hf")
            )
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _is_private(node.attr)
            and _root_name(node.value) in package_names
        ):
            found.append((node.lineno, f"{ast.unparse(node.value)}.{node.attr}"))
    return sorted(found)


def _root_name(node: ast.expr) -> str | None:
    """``a`` of ``a``, ``a.b``, ``a.b.c``; None for anything else (calls, subscripts)."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def test_the_scan_finds_both_forms():
    source = "from .cli import _load_model\nfrom . import hub\nimport qrm_hf.io\nhub._stale_files()\nqrm_hf.io._PARTIAL\n"
    assert [what for _, what in private_names_imported(source)] == [
        "from .cli import _load_model",
        "hub._stale_files",
        "qrm_hf.io._PARTIAL",
    ]


def test_no_module_imports_a_private_name_of_another():
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for directory in PACKAGE_DIRS
        for path in sorted((ROOT / directory).rglob("*.py"))
        for line, what in private_names_imported(path.read_text())
    ]
    assert not offenders, (
        "private names imported across modules (make them public, or move them):\n" + "\n".join(offenders)
    )
