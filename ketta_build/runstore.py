"""Work a suite did, kept by its inputs, so a change that cannot affect it does not redo it.

A cell's key (:mod:`ketta_build.cellstore`) holds the wheel under test, so editing one patch reruns
every cell of every release it touches. Part of a cell's work often does not depend on what
changed, and is kept here under the sha256 of what it does depend on:

* ``stock-runs``: the upstream suite runs the release's own tests on the patched wheel and on
  the stock one; the stock run is the same whatever the patches say (its inputs: the stock wheel,
  the test environment, the test files, the runner's code, the PostgreSQL version). The suite decides
  when a stored run may stand in for a fresh one (``compat_tests.upstream_runner.stored_baseline_holds``):
  never to blame Ketta for a failure, never to excuse one whose message differs from the stored one.
* ``fills``: the upgrade suite's start databases, each made by one release's server (a stock one,
  or a Ketta one whose wheel did not change), kept as a dump with the server's home
  (``compat_tests.upgrade``).

``matrix --rerun`` (``KETTA_RERUN=1``) makes everything again, and stores the new one.

Layout: ``<cache>/<kind>/<key[:2]>/<key>/run.json`` and the files beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import filelock

from .atomic import write_atomic

KEY_SCHEMA = "ketta-build/stock-run/1"
FILL_KEY_SCHEMA = "ketta-build/fill/1"


def stock_run_key(inputs: dict) -> str:
    """The key of a stock run that depends on ``inputs`` (a JSON-able dict)."""
    return run_key(KEY_SCHEMA, inputs)


def run_key(schema: str, inputs: dict) -> str:
    """The key of kept work of the kind ``schema`` that depends on ``inputs`` (a JSON-able dict)."""
    return hashlib.sha256(json.dumps({"schema": schema, **inputs}, sort_keys=True).encode()).hexdigest()


def digest_tree(root: Path) -> str:
    """The sha256 of every file under ``root`` (paths and contents; ``__pycache__`` left out)."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(root)).encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def reuse_allowed(environ: dict[str, str] | None = None) -> bool:
    """False under ``matrix --rerun`` (everything kept is made again) and while coverage is measured
    (``KETTA_COVERAGE``: kept work runs no server, so its hunks would go unmeasured)."""
    env = environ if environ is not None else os.environ
    return env.get("KETTA_RERUN") != "1" and not env.get("KETTA_COVERAGE")


@dataclass(frozen=True)
class StoredRun:
    key: str
    date: str
    data: dict  # what the suite stored about the run
    files: dict[str, Path]  # name -> the stored copy


class RunStore:
    """Kept work of one kind by key under ``root`` (``<cache>/stock-runs``, ``<cache>/fills``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    @contextmanager
    def locked(self, key: str, timeout: float = 900) -> Iterator[None]:
        """Hold ``key`` against other processes: around a lookup and the reading of its files, or
        around a lookup and a save (two tox runs may make the same kept work at once)."""
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(str(locks / f"{key}.lock"), timeout=timeout):
            yield

    def lookup(self, key: str) -> StoredRun | None:
        where = self._dir(key)
        try:
            record = json.loads((where / "run.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("key") != key:
            return None
        files = {name: where / name for name in record.get("files", [])}
        if not all(path.is_file() for path in files.values()):
            return None
        return StoredRun(key, record["date"], record["data"], files)

    def save(self, key: str, data: dict, files: dict[str, Path]) -> StoredRun:
        """Keep a run: written whole in a staging directory, then renamed into place."""
        bad = [name for name in files if "/" in name or name in ("run.json", "", ".", "..")]
        if bad:
            raise ValueError(f"stored file names must be plain names: {bad}")
        where = self._dir(key)
        staging = where.with_name(f".{key}.{time.time_ns()}")
        staging.mkdir(parents=True)
        date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        try:
            for name, path in files.items():
                shutil.copy2(path, staging / name)
            write_atomic(staging / "run.json", json.dumps(
                {"key": key, "date": date, "data": data, "files": sorted(files)}, indent=2).encode())
            shutil.rmtree(where, ignore_errors=True)
            try:
                staging.replace(where)
            except OSError:  # another run stored the same key meanwhile: its copy stands
                if self.lookup(key) is None:
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return StoredRun(key, date, data, {name: where / name for name in files})
