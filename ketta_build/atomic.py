"""Writing so that a reader, a crash or Ctrl-C never sees half of it.

:func:`write_atomic` writes a file through a temporary sibling and a rename. :func:`uninterruptible`
holds Ctrl-C (SIGINT) back while a verb puts several finished things in place (a build tree's
renames, the files of an export or a port): an interrupt that comes then is honoured when the
section ends, so the verb either has not started to replace anything or has replaced all of it.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_atomic(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` whole or not at all: a temporary file beside it, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Interrupted(KeyboardInterrupt):
    """Ctrl-C that came during an uninterruptible section: what it protected was completed."""


@contextmanager
def uninterruptible() -> Iterator[None]:
    """Defer SIGINT to the end of the block (main thread only; elsewhere the block just runs)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise Interrupted()
