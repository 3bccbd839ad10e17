"""Content-addressed results of matrix cells: a cell whose inputs did not change is not run again.

A cell (release × suite) has an input key, the sha256 of everything its result depends on:

* the wheel under test (its sha256) and the constraints it is installed under, or for a
  ``--no-patches`` run the unpatched wheel, which the flag also marks;
* the files of ``compat_tests/`` the suite's tests import (transitively), ``conftest.py``, and the
  data files those modules name (``fuzz-allowed.toml``, ``fixtures/``, ...);
* ``tox.ini``, and the tool's version;
* what else changes the suite's run: the upgrade pairs (``ci``/``all``) and the wheels and sdists of
  every release the upgrade cell's pairs start from, the fuzz suite's examples, steps and seed.

A passing cell is stored under its key with its JUnit file and log; a later run whose cell has the
same key reports it as passed *and reused*, naming the run that proved it. A failing cell is never
stored. ``matrix --rerun`` ignores the store.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .atomic import write_atomic

KEY_SCHEMA = "ketta-build/cell-key/1"


# ---------------------------------------------------------------------------- what a suite reads


def _local_imports(path: Path) -> set[str]:
    """The modules of the same package ``path`` imports (``from . import x``, ``from .x import y``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def _suite_of(path: Path) -> set[str]:
    """The suites a test module is marked with (``pytestmark = pytest.mark.NAME``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    suites = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "mark" \
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "pytest":
            suites.add(node.attr)
    return suites


def suite_files(tests: Path, suite: str) -> list[Path]:
    """The files of the test directory ``tests`` (``compat_tests/``) a suite's run depends on."""
    wanted = {"conftest"}
    wanted |= {p.stem for p in tests.glob("test_*.py") if suite in _suite_of(p)}
    todo = list(wanted)
    while todo:
        module = tests / f"{todo.pop()}.py"
        if not module.is_file():
            continue
        for name in _local_imports(module):
            if name not in wanted and (tests / f"{name}.py").is_file():
                wanted.add(name)
                todo.append(name)
    files = {tests / f"{m}.py" for m in wanted if (tests / f"{m}.py").is_file()}
    texts = "\n".join(f.read_text(encoding="utf-8") for f in files)
    for item in tests.iterdir():  # data files, directories and scripts (fork_helper.py) a module names
        if item not in files and not item.name.startswith((".", "__")) and item.name in texts:
            files |= {f for f in ([item] if item.is_file() else item.rglob("*")) if f.is_file() and "__pycache__" not in f.parts}
    return sorted(files)


def digest_files(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def cell_key(inputs: dict) -> str:
    """The key of a cell whose result depends on ``inputs`` (a JSON-able dict)."""
    return hashlib.sha256(json.dumps({"schema": KEY_SCHEMA, "tool": __version__, **inputs}, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class Proof:
    """The run that proved a cell: when, on which series commit, and where its evidence is kept."""

    key: str
    date: str
    series_commit: str | None
    env: str
    passed: int
    skipped: int
    xfailed: int
    duration: float
    log: Path
    junit: Path | None


class CellStore:
    """Passing cells by key, under ``<cache>/cells/<key[:2]>/<key>/`` (cell.json, log, junit.xml)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def lookup(self, key: str) -> Proof | None:
        where = self._dir(key)
        try:
            data = json.loads((where / "cell.json").read_text())
        except (OSError, ValueError):
            return None
        if data.get("key") != key or data.get("status") != "pass" or not (where / "log").is_file():
            return None
        junit = where / "junit.xml"
        return Proof(key, data["date"], data.get("series_commit"), data["env"], data["passed"], data.get("skipped", 0),
                     data.get("xfailed", 0), data.get("duration", 0.0), where / "log", junit if junit.is_file() else None)

    def save(self, key: str, cell, log: Path, junit: Path | None, series_commit: str | None) -> None:
        """Keep a passing ``cell`` (a failing one is never kept): written whole, then renamed into place."""
        if cell.status != "pass":
            return
        where = self._dir(key)
        staging = where.with_name(f".{key}.{time.time_ns()}")
        staging.mkdir(parents=True)
        try:
            shutil.copy2(log, staging / "log")
            if junit is not None and junit.is_file():
                shutil.copy2(junit, staging / "junit.xml")
            write_atomic(staging / "cell.json", json.dumps({
                "key": key, "status": "pass", "env": cell.session or cell.env, "passed": cell.passed, "skipped": cell.skipped,
                "xfailed": cell.xfailed, "duration": cell.duration, "series_commit": series_commit,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            }, indent=2).encode())
            shutil.rmtree(where, ignore_errors=True)
            staging.replace(where)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
