"""``ketta-build cache``: what the cache holds, store by store, and pruning it by age or size.

The stores under the cache root (``--cache-dir``; see :mod:`ketta_build.cache`):

=============  =============================================  ==========================
store          one entry                                      held while in use by
=============  =============================================  ==========================
blobs          a downloaded sdist or wheel (by sha256)        lock ``blob-<sha256>``
releases       what a version resolved to on one index        (a small record)
pristine       a bare repository of a release + its record    lock ``pristine-<sha256>``
envs           a server or test environment (a venv)          lock ``env-<key>``; a process
                                                              running from it
cells          a matrix cell's stored pass                    (replaced by a rename)
stock-runs     an upstream suite's stored stock run           ``stock-runs/.locks/<key>``
fills          an upgrade suite's stored start database       ``fills/.locks/<key>``
ports          the list of ports in progress                  never pruned
locks          the lock files                                 never pruned
=============  =============================================  ==========================

An entry's *last use* is the newest modification time of the entry and of what is directly in it,
or access time of the files directly in it, as the file system records them (with ``relatime``, an
access is recorded at most once a day). Pruning removes the least recently used entries first; an entry whose lock another
process holds, or an environment a running process was started from, is kept and reported as in
use. Each entry is removed under its lock, renamed out of place first, so a reader sees it whole
or not at all.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import filelock

from .cache import Cache, is_sha256
from .errors import KettaError, LockTimeout

SCHEMA = "ketta-build/cache/1"


@dataclass(frozen=True)
class Store:
    name: str
    pattern: str  # glob under the cache root giving the entries
    what: str
    prunable: bool = True


STORES = (
    Store("blobs", "blobs/sha256/*/*", "downloaded sdists and wheels, by sha256"),
    Store("releases", "releases/*/*.json", "which file a version resolved to on an index"),
    Store("pristine", "pristine/*.git", "bare repositories of pristine releases"),
    Store("envs", "envs/*", "server and test environments"),
    Store("cells", "cells/*/*", "matrix cells' stored passes"),
    Store("stock-runs", "stock-runs/*/*", "the upstream suite's stored stock runs"),
    Store("fills", "fills/*/*", "the upgrade suite's stored start databases"),
    Store("ports", "ports/*/*.json", "ports in progress (never pruned)", prunable=False),
    Store("locks", "locks/*.lock", "lock files (never pruned)", prunable=False),
)


@dataclass
class Entry:
    store: str
    path: Path
    bytes: int
    last_used: float
    extra: tuple[Path, ...] = ()  # files removed with the entry (a pristine repository's record)

    def as_json(self) -> dict:
        return {"store": self.store, "path": str(self.path), "bytes": self.bytes,
                "last_used": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_used))}


@dataclass
class StoreInfo:
    store: Store
    path: Path
    entries: list[Entry]

    @property
    def bytes(self) -> int:
        return sum(e.bytes for e in self.entries)


@dataclass
class Pruned:
    removed: list[Entry] = field(default_factory=list)
    in_use: list[Entry] = field(default_factory=list)
    dry_run: bool = False

    @property
    def freed(self) -> int:
        return sum(e.bytes for e in self.removed)


def _size(path: Path) -> int:
    """Bytes under ``path`` (links not followed)."""
    try:
        st = path.lstat()
    except OSError:
        return 0
    if not path.is_dir() or path.is_symlink():
        return st.st_size
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _last_used(path: Path) -> float:
    """The newest mtime of ``path`` and of what is directly in it, and the newest atime of those that
    are files: a directory's atime changes when it is merely listed (as this module does), a file's
    when it is read (a blob hashed, a repository's HEAD, an environment's pyvenv.cfg, a cell.json)."""
    paths = [path]
    if path.is_dir() and not path.is_symlink():
        try:
            paths += list(path.iterdir())
        except OSError:
            pass
    newest = 0.0
    for p in paths:
        try:
            st = p.lstat()
        except OSError:
            continue
        newest = max(newest, st.st_mtime, st.st_atime if stat.S_ISREG(st.st_mode) else 0.0)
    return newest


def inspect(cache: Cache) -> list[StoreInfo]:
    """Every store of ``cache`` with its entries (names starting with a dot are work in progress: left out)."""
    found = []
    for store in STORES:
        entries = []
        for path in sorted(cache.root.glob(store.pattern)):
            if path.name.startswith(".") or any(part.startswith(".") for part in path.relative_to(cache.root).parts):
                continue
            extra = (path.with_suffix(".json"),) if store.name == "pristine" and path.with_suffix(".json").exists() else ()
            entries.append(Entry(store.name, path, _size(path) + sum(_size(e) for e in extra), _last_used(path), extra))
        found.append(StoreInfo(store, cache.root / store.pattern.split("/")[0], entries))
    return found


def parse_size(text: str) -> int:
    """``500M``, ``2G``, ``1.5GiB``, ``123456``: bytes (K, M, G and T are powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(i?b)?\s*", text, re.I)
    if not match or (match.group(3) and not match.group(2) and match.group(3).lower() != "b"):
        raise KettaError(f"--max-size {text!r}: give bytes or a number with K, M, G or T (e.g. 500M, 2G)")
    return int(float(match.group(1)) * 1024 ** " kmgt".index(match.group(2).lower() or " "))


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _processes_running_from(paths: list[Path]) -> set[Path]:
    """Which of ``paths`` a running process's command line names (Linux ``/proc``; elsewhere none)."""
    proc = Path("/proc")
    if not proc.is_dir() or not paths:
        return set()
    wanted = {str(p.absolute()): p for p in paths}
    busy = set()
    for pid in proc.iterdir():
        if not pid.name.isdigit():
            continue
        try:
            words = (pid / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for word in words:
            text = word.decode("utf-8", "replace")
            for prefix, path in wanted.items():
                if text == prefix or text.startswith(prefix + "/"):
                    busy.add(path)
    return busy


@contextmanager
def _held(cache: Cache, entry: Entry) -> Iterator[None]:
    """The lock the tool takes while it uses ``entry``, taken without waiting (LockTimeout if held)."""
    name = entry.path.name.removesuffix(".git")
    if entry.store == "blobs" and is_sha256(name):
        with cache.lock(f"blob-{name}", timeout=0):
            yield
    elif entry.store == "pristine" and is_sha256(name):
        with cache.lock(f"pristine-{name}", timeout=0):
            yield
    elif entry.store == "envs":
        with cache.lock(f"env-{name}", timeout=0):
            yield
    elif entry.store in ("stock-runs", "fills"):
        locks = cache.root / entry.store / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        try:
            with filelock.FileLock(str(locks / f"{name}.lock"), timeout=0):
                yield
        except filelock.Timeout:
            raise LockTimeout(f"{entry.path} is in use") from None
    else:
        with nullcontext():
            yield


def _remove(entry: Entry) -> None:
    gone = entry.path.with_name(f".pruned-{entry.path.name}-{time.time_ns()}")
    for extra in entry.extra:
        extra.unlink(missing_ok=True)  # a repository without its record is made again, never trusted
    os.replace(entry.path, gone)
    if gone.is_dir() and not gone.is_symlink():
        shutil.rmtree(gone, ignore_errors=True)
    else:
        gone.unlink(missing_ok=True)


def prune(cache: Cache, *, older_than_days: float | None = None, max_bytes: int | None = None, dry_run: bool = False,
          now: float | None = None, progress: Callable[[str], None] = lambda _: None) -> Pruned:
    """Remove entries unused for ``older_than_days``, then the least recently used until the prunable
    stores hold at most ``max_bytes``; entries in use are kept. ``dry_run``: only say what would go."""
    if older_than_days is None and max_bytes is None:
        raise KettaError("cache prune: say what to remove: --older-than DAYS and/or --max-size SIZE")
    if older_than_days is not None and older_than_days < 0:
        raise KettaError("--older-than must be 0 or more days")
    now = time.time() if now is None else now
    stores = inspect(cache)
    candidates = sorted((e for s in stores if s.store.prunable for e in s.entries), key=lambda e: e.last_used)
    total = sum(e.bytes for e in candidates)
    busy_envs = _processes_running_from([e.path for e in candidates if e.store == "envs"])
    result = Pruned(dry_run=dry_run)
    for entry in candidates:
        old = older_than_days is not None and now - entry.last_used > older_than_days * 86400
        over = max_bytes is not None and total > max_bytes
        if not (old or over):
            continue
        if entry.path in busy_envs:
            result.in_use.append(entry)
            continue
        try:
            with _held(cache, entry):
                if not dry_run:
                    progress(f"removing {entry.path}")
                    _remove(entry)
        except LockTimeout:
            result.in_use.append(entry)
            continue
        result.removed.append(entry)
        total -= entry.bytes
    return result


def report_json(cache: Cache, stores: list[StoreInfo], pruned: Pruned | None, older_than_days=None, max_bytes=None) -> dict:
    return {
        "schema": SCHEMA,
        "root": str(cache.root),
        "stores": [{"name": s.store.name, "path": str(s.path), "what": s.store.what, "entries": len(s.entries),
                    "bytes": s.bytes, "prunable": s.store.prunable} for s in stores],
        "total_bytes": sum(s.bytes for s in stores),
        "prune": None if pruned is None else {
            "dry_run": pruned.dry_run, "older_than_days": older_than_days, "max_size_bytes": max_bytes,
            "removed": [e.as_json() for e in pruned.removed], "in_use": [e.as_json() for e in pruned.in_use],
            "freed_bytes": pruned.freed,
        },
    }
