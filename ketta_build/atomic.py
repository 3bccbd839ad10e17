"""Writing so that a reader, a crash or Ctrl-C never sees half of it.

:func:`write_atomic` writes a file through a temporary sibling and a rename; :func:`replacing` puts
several files in place all or none (a failed rename puts back those already made); :func:`moving` does
the same for files already made (wheels). :func:`uninterruptible`
holds Ctrl-C and SIGTERM back while a verb puts several finished things in place (a build tree's
renames, the files of an export or a port): an interrupt that comes then is honoured when the
section ends, so the verb either has not started to replace anything or has replaced all of it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import KettaError
from .interrupts import Interrupted, deferred  # noqa: F401 (Interrupted: where callers found it)


def write_atomic(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` whole or not at all: a temporary file beside it (with the mode
    ``path`` has, or the umask's for a new file), then a rename."""
    tmp = _stage(path, content)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _stage(path: Path, content: bytes) -> Path:
    """``content`` written beside ``path``, with the mode ``path`` has (a new file: what the umask gives)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.ketta-new-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        if path.exists():
            mode = path.stat().st_mode & 0o7777
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def _keep(path: Path) -> Path:
    """A second name for ``path`` beside it (a hard link, else a copy), to put it back by a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.ketta-old-")
    os.close(fd)
    try:
        try:
            os.unlink(tmp)
            os.link(path, tmp)
        except OSError:
            shutil.copy2(path, tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


@contextmanager
def replacing(changes: dict[Path, bytes | None]) -> Iterator[None]:
    """Put every file of ``changes`` (path -> content, None: delete it) in place, or none of them.

    Every new content is written beside its file and every file replaced is given a second name before
    anything is renamed; then the renames. Should one fail, or the body of the ``with`` raise, the files
    already put in place are put back as they were (new ones removed) and the error goes on."""
    staged: list[tuple[Path, Path | None, Path | None]] = []  # (path, new content beside it, the old file kept)
    placed: list[tuple[Path, Path | None]] = []  # (path, the old file kept)
    try:
        for path, content in changes.items():
            new = _stage(path, content) if content is not None else None
            staged.append((path, new, None))
            if path.exists():
                staged[-1] = (path, new, _keep(path))
        for path, new, old in staged:
            if new is not None:
                os.replace(new, path)
            else:
                path.unlink()
            placed.append((path, old))
        yield
    except BaseException as exc:
        stuck: list[str] = []
        for path, old in reversed(placed):
            try:
                if old is not None:
                    os.replace(old, path)
                else:
                    path.unlink(missing_ok=True)
            except OSError:
                stuck.append(f"{path} (its previous content is kept in {old})" if old else str(path))
                staged = [(p, n, None if o == old else o) for p, n, o in staged]  # that copy stays
        if stuck:
            raise KettaError(f"writing failed ({exc}) and {', '.join(stuck)} could not be put back as it was") from exc
        raise
    finally:
        for _, new, old in staged:
            for leftover in (new, old):
                if leftover is not None:
                    leftover.unlink(missing_ok=True)


@contextmanager
def moving(moves: list[tuple[Path, Path]]) -> Iterator[None]:
    """Rename every ``(source, target)`` of ``moves`` (same file system), or none of them: should a
    rename fail, or the body of the ``with`` raise, the targets already replaced get their previous
    file back (new ones are removed) and the error goes on."""
    done: list[tuple[Path, Path, Path | None]] = []  # (source, target, the target's previous file kept)
    try:
        for source, target in moves:
            old = _keep(target) if target.exists() else None
            done.append((source, target, old))
            os.replace(source, target)
        yield
    except BaseException:
        for source, target, old in reversed(done):
            try:
                if target.exists() and not source.exists():
                    os.replace(target, source)  # the new file back where it was made
                if old is not None:
                    os.replace(old, target)
            except OSError:
                pass
        raise
    finally:
        for _, _, old in done:
            if old is not None:
                old.unlink(missing_ok=True)


def uninterruptible():
    """Hold Ctrl-C and SIGTERM back to the end of the block (:func:`ketta_build.interrupts.deferred`)."""
    return deferred()
