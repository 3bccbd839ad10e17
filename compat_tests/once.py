"""Work done once per key however many threads ask, and how long each piece took.

The upgrade suite makes its builds, filled databases and upgraded pairs ahead of the tests on worker
threads; a test asking for one that is under way waits for it instead of making it again.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Any


class Once:
    """``get(key, make)`` runs ``make()`` for the first caller of ``key``; a failure is kept and raised to all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[Hashable, list[Any]] = {}  # key -> [lock, value, exception]

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        with self._lock:
            slot = self._slots.setdefault(key, [threading.Lock(), None, None])
        with slot[0]:
            if slot[1] is None and slot[2] is None:
                try:
                    slot[1] = make()
                except BaseException as exc:  # noqa: BLE001 - kept and raised to every caller
                    slot[2] = exc
        if slot[2] is not None:
            raise slot[2]
        return slot[1]

    def made(self, kind: str) -> list[Any]:
        """The values made so far under keys that are tuples starting with ``kind``."""
        with self._lock:
            slots = [s for k, s in self._slots.items() if isinstance(k, tuple) and k and k[0] == kind]
        return [s[1] for s in slots if s[1] is not None]


class Stopwatch:
    """Named durations, collected from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.timings: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def timed(self, what: str) -> Iterator[list[str]]:
        """Time the block under ``what``; the block may add to the name in ``label[0]`` (how it went)."""
        label = [what]
        start = time.monotonic()
        try:
            yield label
        finally:
            with self._lock:
                self.timings.append((label[0], time.monotonic() - start))

    def table(self) -> str:
        return "\n".join(f"{seconds:7.1f} s  {what}" for what, seconds in self.timings)
