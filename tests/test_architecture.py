"""The architecture contract of pyproject.toml ([tool.importlinter]: the layers, and no
import cycles), checked by import-linter through scripts/lint_imports.py, so that a bare
``pytest`` catches a layering breach or a new cycle as scripts/test does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = ROOT / "scripts" / "lint_imports.py"
# The directories of the packages the contract covers (pyproject.toml's package-dir).
PACKAGE_DIRS = ("raftkv", "raftkv_ext", "cli", "bench/kvbench")


def lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LINT_IMPORTS), "--no-cache", "--no-logo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_import_contracts_are_kept() -> None:
    result = lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_the_check_sees_the_packages_installed_from_other_directories(tmp_path: Path) -> None:
    # raftkv.cli (cli/) and raftkv.kvbench (bench/kvbench/) are not under raftkv/: a
    # contract that their imports break must be reported broken, not pass unseen.
    config = tmp_path / "contracts.toml"
    config.write_text(
        """\
[tool.importlinter]
root_packages = ["raftkv", "raftkv_ext"]

[[tool.importlinter.contracts]]
name = "a contract that kvctl and kvbench break"
type = "forbidden"
source_modules = ["raftkv.cli", "raftkv.kvbench"]
forbidden_modules = ["raftkv.client", "raftkv.testing"]
""",
        encoding="utf-8",
    )
    result = lint_imports(str(config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "raftkv.cli is not allowed to import raftkv.client" in result.stdout
    assert "raftkv.kvbench is not allowed to import raftkv.testing" in result.stdout


def test_every_directory_of_modules_is_a_package() -> None:
    # Grimp does not descend into a directory without __init__.py inside a package, so
    # the contract would silently skip its modules.
    missing = sorted(
        str(directory.relative_to(ROOT))
        for top in PACKAGE_DIRS
        for directory in {path.parent for path in (ROOT / top).rglob("*.py")}
        if "__pycache__" not in directory.parts and not (directory / "__init__.py").exists()
    )
    assert missing == [], f"modules outside any package, unseen by the contract: {missing}"
