"""Every public name has one import path: no module of the package re-exports what another defines
(an `__all__` lists only the module's own names, and no import is kept unused with `noqa: F401`)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = ("qrm_hf", "modeling", "training")
# `qrm_hf/__init__.py` serves the contract's names lazily (`from qrm_hf import QRMConfig, ...`), and
# `modeling/__init__.py` imports transformers for its side effect (the auto classes exist before ours).
EXEMPT = {"qrm_hf/__init__.py", "modeling/__init__.py"}


def modules():
    for folder in PACKAGE_DIRS:
        for path in sorted((ROOT / folder).glob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative not in EXEMPT:
                yield relative, path.read_text(encoding="utf-8")


def top_level_definitions(tree: ast.Module) -> set[str]:
    defined = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update(
                name.id for target in targets for name in ast.walk(target) if isinstance(name, ast.Name)
            )
    return defined


def test_the_scan_sees_the_package():
    assert len(list(modules())) > 30


def test_all_lists_only_names_the_module_defines():
    borrowed = {}
    for relative, source in modules():
        tree = ast.parse(source)
        defined = top_level_definitions(tree)
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == "__all__" for t in node.targets
            ):
                names = [element.value for element in node.value.elts]
                if [name for name in names if name not in defined]:
                    borrowed[relative] = [name for name in names if name not in defined]
    assert borrowed == {}


def test_no_import_is_kept_only_to_be_re_exported():
    kept = [
        f"{relative}:{number}"
        for relative, source in modules()
        for number, line in enumerate(source.splitlines(), 1)
        if "noqa: F401" in line
    ]
    assert kept == []
