"""The driver does no I/O (docs/architecture.md, "The driver").

``kvnode``, the simulator and the core's test harness all run the same driver; that is
only possible, and the simulation only replays exactly, while the driver reaches the
disk, the network and the clock through its host alone. Checked statically: the driver
and the modules it keeps its books in import nothing that does I/O, read a clock or
draw global randomness, and call no I/O builtin.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import raftkv.node

NODE_DIR = Path(raftkv.node.__file__).parent
DRIVER_MODULES = (
    "driver.py",
    "request_tracker.py",
    "requests.py",
    "request_ids.py",
    "operator_actions.py",
    "snapshot_record.py",
)
IO_MODULES = frozenset(
    {
        "asyncio",
        "socket",
        "os",
        "time",
        "threading",
        "select",
        "selectors",
        "subprocess",
        "io",
        "pathlib",
        "concurrent",
        "ssl",
        "shutil",
        "tempfile",
    }
)
FORBIDDEN_BUILTINS = frozenset({"open", "print", "input", "__import__", "exec", "eval"})
# The random module may be named (a seeded ``random.Random`` is passed in); its global
# functions draw from shared state and may not be called.
RANDOM_ALLOWED = frozenset({"Random", "SystemRandom"})


def impurities(source: str) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in IO_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module.split(".")[0] in IO_MODULES:
                found.append(node.module)
            if node.module == "random":
                found += [a.name for a in node.names if a.name not in RANDOM_ALLOWED]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in FORBIDDEN_BUILTINS:
                found.append(f"{node.func.id}()")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
            and node.attr not in RANDOM_ALLOWED
        ):
            found.append(f"random.{node.attr}")
    return found


@pytest.mark.parametrize("name", DRIVER_MODULES)
def test_driver_modules_do_no_io(name: str) -> None:
    assert impurities((NODE_DIR / name).read_text()) == []


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "from os import fsync",
        "import asyncio.events",
        "from random import randrange",
        "x = random.random()",
        "open('f')",
        "from concurrent.futures import ThreadPoolExecutor",
    ],
)
def test_the_checker_refuses_what_it_should(source: str) -> None:
    assert impurities(source) != []
