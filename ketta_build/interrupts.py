"""Ctrl-C and SIGTERM: one way to stop, that unwinds every ``finally`` and leaves nothing half-done.

Both signals become a :class:`KeyboardInterrupt` in the main thread (SIGTERM as :class:`Terminated`
once :func:`sigterm_raises` is in force, which the CLI does for the length of a verb), so the clean-up
a verb has for Ctrl-C (temporary trees, downloads, locks) runs for SIGTERM too.
:func:`deferred` holds both back across a short section that puts finished work in place: a signal
that comes then is honoured when the section ends, as :class:`Interrupted`, so the verb has either
not started to replace anything or has replaced all of it.

The git processes the tool starts run in a session of their own (:mod:`ketta_build.gitcmd`): the
terminal's Ctrl-C reaches the tool only, which lets a git in a deferred section finish, and otherwise
stops it with SIGTERM (git removes its own ``*.lock`` files then) and waits for it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program was, so that it unwinds like Ctrl-C."""

    signum = signal.SIGTERM


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) that came during a :func:`deferred` section: what it protected was completed."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__()
        self.signum = signum


def signal_of(exc: KeyboardInterrupt) -> int:
    """The signal that stopped the program (SIGINT unless it says otherwise)."""
    return getattr(exc, "signum", signal.SIGINT)


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """For the length of the block, SIGTERM raises :class:`Terminated` (main thread only; elsewhere,
    and where SIGTERM is ignored, as it was)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) == signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the end of the block, then raise :class:`Interrupted`
    (main thread only; elsewhere the block just runs). A signal whose handler is the default action
    (SIGTERM outside the CLI) is delivered again as it came once the block is over; an ignored one
    stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous: dict[int, object] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler == signal.SIG_IGN or handler is None:
            continue
        previous[signum] = signal.signal(signum, lambda s, frame: caught.append(s))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if caught:
        first = caught[0]
        if previous.get(first) == signal.SIG_DFL:
            signal.raise_signal(first)  # what it would have done, now that the section is complete
        raise Interrupted(first)
