"""Check the import contracts of pyproject's ``[tool.importlinter]`` (run by `make lint`).

import-linter builds its graph with grimp, which walks a package's own directory; pyproject's
``[tool.setuptools] package-dir`` puts ``qrm_hf.training`` in ``training/`` and ``qrm_hf.modeling`` in
``modeling/``, outside ``qrm_hf/``, so an editable install would hide them from the check. This script lays
the package out as it is installed (links into a temporary directory, from that same mapping) and runs
import-linter from there (it puts the working directory first on the path): the contracts see every
module, whatever the install.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def installed_layout(target: Path) -> Path:
    """Link each package of pyproject's ``package-dir`` mapping into `target` as it is installed; returns
    `target`."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, directory in sorted(mapping.items()):  # parents first: qrm_hf before qrm_hf.training
        destination = target.joinpath(*package.split("."))
        destination.mkdir(parents=True, exist_ok=True)
        for source in (ROOT / directory).iterdir():
            if source.suffix == ".py":
                (destination / source.name).symlink_to(source)
    return target


def main() -> int:
    """Run `lint-imports` over the installed layout; returns its exit status."""
    from importlinter.cli import lint_imports

    with tempfile.TemporaryDirectory(prefix="qrm-lint-imports-") as tmp:
        os.chdir(installed_layout(Path(tmp)))
        return lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)


if __name__ == "__main__":
    raise SystemExit(main())
