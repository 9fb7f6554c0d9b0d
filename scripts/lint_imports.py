"""Check the import contracts of pyproject.toml: ``lint-imports``, seeing the whole package.

pyproject.toml installs ``cli/`` as ``raftkv.cli`` and ``bench/kvbench/`` as
``raftkv.kvbench`` ([tool.setuptools.package-dir]). Grimp, which builds import-linter's
graph, finds a root package's modules by walking the package's directory, and
``lint-imports`` puts the current directory first on ``sys.path``: run from the repository,
it walks ``raftkv/`` alone and never sees those two packages, so the contracts that name
them fail with "Missing layer". This is ``lint-imports`` (same arguments, same output) with
one addition: each package that pyproject.toml maps to a directory of its own inside a
root package is scanned too, from that directory, under its installed name.

Run it from the repository root: ``python scripts/lint_imports.py``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import grimp
from grimp.adaptors.packagefinder import ImportLibPackageFinder
from grimp.application.config import settings as grimp_settings
from grimp.application.ports.filesystem import AbstractFileSystem
from importlinter import cli
from importlinter.adapters.building import GraphBuilder
from importlinter.application.app_config import settings as linter_settings

ROOT = Path(__file__).resolve().parent.parent


def mapped_packages(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, Path]:
    """Each package that pyproject.toml installs from a directory of its own."""
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    mapping: dict[str, str] = config["tool"]["setuptools"].get("package-dir", {})
    return {name: pyproject.parent / directory for name, directory in mapping.items() if name}


class MappedPackageFinder(ImportLibPackageFinder):
    """Grimp's finder, except that a mapped package is found in its mapped directory
    (grimp's own refuses any package that is not top-level)."""

    def __init__(self, mapped: dict[str, Path]) -> None:
        self.mapped = mapped

    def determine_package_directories(
        self, package_name: str, file_system: AbstractFileSystem
    ) -> set[str]:
        directory = self.mapped.get(package_name)
        if directory is not None:
            return {str(directory)}
        return super().determine_package_directories(package_name, file_system)


class MappedGraphBuilder(GraphBuilder):
    """Builds the graph of the root packages and of the mapped packages inside them."""

    def __init__(self, mapped: dict[str, Path]) -> None:
        self.mapped = mapped

    def build(
        self,
        root_package_names: list[str],
        cache_dir: str | None,
        include_external_packages: bool = False,
        exclude_type_checking_imports: bool = False,
    ) -> grimp.ImportGraph:
        inside = [
            name
            for name in self.mapped
            if any(name.startswith(f"{root}.") for root in root_package_names)
        ]
        return super().build(
            [*root_package_names, *inside],
            cache_dir,
            include_external_packages=include_external_packages,
            exclude_type_checking_imports=exclude_type_checking_imports,
        )


def main() -> None:
    mapped = mapped_packages()
    grimp_settings.configure(PACKAGE_FINDER=MappedPackageFinder(mapped))
    linter_settings.configure(GRAPH_BUILDER=MappedGraphBuilder(mapped))
    cli.lint_imports_command(prog_name="lint-imports")


if __name__ == "__main__":
    main()
