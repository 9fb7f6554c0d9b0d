"""The consensus core does no I/O (docs/architecture.md, "The consensus core").

Determinism is what makes the core testable by replaying seeds: it must not reach for
sockets, files, clocks, threads, global randomness or logging. We check that statically,
by walking the AST of every module in ``raftkv/raft/`` and comparing what it imports with
an allowlist, so a forbidden import fails here even in a branch no test executes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import raftkv.raft

CORE_PACKAGE = "raftkv.raft"
CORE_DIR = Path(raftkv.raft.__file__).parent

ALLOWED_MODULES = frozenset(
    {
        "__future__",
        "collections",
        "collections.abc",
        "dataclasses",
        "enum",
        "typing",
        "struct",
        "bisect",
        "itertools",
        "functools",
        "raftkv_ext.entry",
        "raftkv_ext.codec",
    }
)

# Modules that do I/O or read time or global state; each must be refused by the checker.
IO_MODULES = (
    "asyncio",
    "socket",
    "os",
    "time",
    "random",
    "threading",
    "select",
    "selectors",
    "subprocess",
    "io",
    "pathlib",
    "logging",
)

# Builtins that do I/O or import behind the checker's back.
FORBIDDEN_BUILTINS = frozenset(
    {"open", "print", "input", "__import__", "exec", "eval", "compile", "breakpoint"}
)


def _is_allowed(module: str) -> bool:
    return (
        module in ALLOWED_MODULES or module == CORE_PACKAGE or module.startswith(CORE_PACKAGE + ".")
    )


def _resolve(node: ast.ImportFrom, package: str) -> str:
    """The absolute module an ``ImportFrom`` names, resolving ``from .. import x``."""
    if not node.level:
        return node.module or ""
    parts = package.split(".")
    base = parts[: len(parts) - (node.level - 1)]
    if node.module:
        base.append(node.module)
    return ".".join(base)


def forbidden_imports(source: str, package: str = CORE_PACKAGE) -> list[str]:
    """Every import in ``source`` outside the allowlist, as 'line N: module'.

    ``package`` is the package the source lives in, for relative imports. Imports inside
    functions and ``if TYPE_CHECKING:`` blocks count too: the rule is about the code, not
    about which branch happens to run.
    """
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(
                f"line {node.lineno}: {alias.name}"
                for alias in node.names
                if not _is_allowed(alias.name)
            )
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node, package)
            # ``from pkg import sub`` is fine when every name is an allowed submodule.
            submodules_ok = all(_is_allowed(f"{module}.{alias.name}") for alias in node.names)
            if not (_is_allowed(module) or submodules_ok):
                found.append(f"line {node.lineno}: {module}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
        ):
            found.append(f"line {node.lineno}: dynamic import_module()")
    return found


def forbidden_builtin_calls(source: str) -> list[str]:
    return [
        f"line {node.lineno}: {node.func.id}()"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in FORBIDDEN_BUILTINS
    ]


def _core_modules() -> list[Path]:
    return sorted(CORE_DIR.glob("*.py"))


def test_the_walk_covers_the_whole_core() -> None:
    names = {path.name for path in _core_modules()}
    # If the package moved or the glob broke, the purity tests below would pass vacuously.
    assert {"core.py", "log.py", "progress.py", "membership.py", "ready.py", "config.py"} <= names


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: p.name)
def test_core_module_imports_only_allowlisted_modules(path: Path) -> None:
    assert forbidden_imports(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: p.name)
def test_core_module_calls_no_io_builtins(path: Path) -> None:
    assert forbidden_builtin_calls(path.read_text(encoding="utf-8")) == []


def test_checker_rejects_a_module_that_imports_time() -> None:
    source = "from __future__ import annotations\n\nimport time\n\n\ndef now() -> float:\n"
    source += "    return time.monotonic()\n"
    assert forbidden_imports(source) == ["line 3: time"]


@pytest.mark.parametrize("module", IO_MODULES)
def test_checker_rejects_io_modules_in_every_import_form(module: str) -> None:
    sources = [
        f"import {module}\n",
        f"import {module} as renamed\n",
        f"from {module} import something\n",
        f"def f():\n    import {module}\n",
        f"from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import {module}\n",
    ]
    for source in sources:
        assert forbidden_imports(source), f"checker accepted:\n{source}"


def test_checker_rejects_submodules_and_escapes_from_the_package() -> None:
    assert forbidden_imports("import os.path\n") == ["line 1: os.path"]
    # ``from .. import storage`` inside raftkv.raft reaches raftkv.storage, which does I/O.
    assert forbidden_imports("from .. import storage\n") == ["line 1: raftkv"]
    assert forbidden_imports("from raftkv.storage import log_store\n") != []
    assert forbidden_imports("import importlib\nimportlib.import_module('time')\n") == [
        "line 1: importlib",
        "line 2: dynamic import_module()",
    ]
    assert forbidden_builtin_calls("__import__('time')\nopen('f')\n") == [
        "line 1: __import__()",
        "line 2: open()",
    ]


def test_checker_accepts_the_allowlist() -> None:
    source = (
        "from __future__ import annotations\n"
        "import struct\n"
        "from collections import deque\n"
        "from collections.abc import Iterable\n"
        "from raftkv.raft.log import RaftLog\n"
        "from . import membership\n"
        "from raftkv_ext.entry import Entry\n"
        "from raftkv_ext import codec\n"
    )
    assert forbidden_imports(source) == []
