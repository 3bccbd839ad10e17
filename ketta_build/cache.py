"""The content-addressed cache shared by every ketta-build run.

Layout under the cache root (``--cache-dir``, default: the user cache dir)::

    blobs/sha256/ab/abcdef...      downloaded artifacts, named by their sha256
    releases/<source>/<project>-<version>.json  (e.g. idna-3.10.json)
                                   which file and sha256 a version resolved to on one source
                                   (the indexes asked, hashed): another index never reuses it
    pristine/<sha256>.git          a bare git repository of the unpacked sdist
    pristine/<sha256>.json         the commit and tree its tag was made with, checked on every use
    locks/<name>.lock              inter-process locks (filelock)

Blobs only enter the cache after their hash was checked, by an atomic
rename, so a run that is interrupted or a second run at the same time never
sees a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock
import platformdirs

from .atomic import write_atomic
from .errors import KettaError, LockTimeout, UpstreamError

DEFAULT_LOCK_TIMEOUT = 600.0
_SHA256 = re.compile(r"[0-9a-f]{64}")


def is_sha256(value: object) -> bool:
    """Is ``value`` a sha256 as ketta-build writes and accepts it: exactly 64 lowercase hex digits?
    Every hash from an index page, a cache record or ``releases.toml`` is checked with this before it
    is compared, shown or made part of a path."""
    return isinstance(value, str) and _SHA256.fullmatch(value) is not None


def _checked(sha256: str) -> str:
    if not is_sha256(sha256):
        raise UpstreamError(f"{sha256!r} is not a sha256 (64 lowercase hex digits): refusing to use it as a cache key")
    return sha256


def default_cache_dir() -> Path:
    env = os.environ.get("KETTA_BUILD_CACHE")
    return Path(env) if env else Path(platformdirs.user_cache_dir("ketta-build"))


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _seconds(text: str) -> float:
    """``KETTA_BUILD_LOCK_TIMEOUT``: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise KettaError(f"KETTA_BUILD_LOCK_TIMEOUT must be a number of seconds (0 or more), got {text!r}")
    return value


class Cache:
    def __init__(self, root: Path | None = None, lock_timeout: float | None = None) -> None:
        self.root = (root or default_cache_dir()).expanduser()
        env = os.environ.get("KETTA_BUILD_LOCK_TIMEOUT")
        self.lock_timeout = lock_timeout if lock_timeout is not None else _seconds(env) if env else DEFAULT_LOCK_TIMEOUT

    def ensure(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ------------------------------------------------------------ locks
    @contextmanager
    def lock(self, name: str, timeout: float | None = None) -> Iterator[None]:
        if not re.fullmatch(r"[\w.+!-]+", name):
            raise UpstreamError(f"{name!r} is not a plain lock name: refusing to make it a path")
        path = self.ensure("locks") / f"{name}.lock"
        lock = filelock.FileLock(str(path), timeout=self.lock_timeout if timeout is None else timeout)
        try:
            with lock:
                yield
        except filelock.Timeout:
            raise LockTimeout(
                f"another ketta-build holds the lock '{name}' for longer than {lock.timeout:.0f}s; "
                "wait for it to finish (or remove the lock file if no ketta-build is running)",
                path=path,
            ) from None

    # ------------------------------------------------------------ blobs
    def blob_path(self, sha256: str) -> Path:
        _checked(sha256)
        return self.root / "blobs" / "sha256" / sha256[:2] / sha256

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def add_blob(self, tmp_file: Path, sha256: str) -> Path:
        """Move an already verified file into place (atomic rename)."""
        dest = self.blob_path(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_file, dest)
        return dest

    # ------------------------------------------------------------ release records
    def _record_path(self, project: str, version: str, source: str) -> Path:
        key = hashlib.sha256(source.encode()).hexdigest()[:16]
        if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", project):
            raise UpstreamError(f"{project!r} is not a normalised project name: refusing to use it as a cache key")
        return self.root / "releases" / key / f"{project}-{version}.json"

    def read_release(self, version: str, source: str, project: str) -> dict | None:
        """What ``version`` of ``project`` (its normalised name) resolved to on ``source`` (the indexes asked), or None."""
        path = self._record_path(project, version, source)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not {"filename", "sha256", "url"} <= data.keys() or data.get("source") != source:
            return None
        if not is_sha256(data["sha256"]) or not isinstance(data["filename"], str) or not isinstance(data["url"], str):
            return None  # not a record this tool wrote: ignored, the release is resolved again
        return data

    def write_release(self, version: str, source: str, record: dict, project: str) -> None:
        path = self._record_path(project, version, source)
        write_atomic(path, json.dumps({"version": version, "source": source, **record}, indent=2, sort_keys=True).encode())

    # ------------------------------------------------------------ pristine repositories
    def pristine_repo(self, key: str) -> Path:
        return self.root / "pristine" / f"{_checked(key)}.git"

