"""No provider key the suites send reaches a Ketta server's log or a response body (issue #28).

Every request a suite sends through :class:`~compat_tests.letta_server.LettaServer` is read for the
keys in it (``api_key``, ``access_key``, at any depth of the body); from then on every response the
suites receive from a Ketta server and every line such a server writes to its log is searched for
all of them. A hit is a finding that names the response (method, path, status) or the log file and
line, and shows only the first characters of the key. The suites' autouse fixture fails the test
during which a finding was made, and the session fails for one made at its end (a server's
shutdown). Nothing needs to remember the guard: a test that sends a key is guarded by sending it.

Only Ketta servers are guarded (a build tree with ``letta/ketta.py``): stock Letta echoes keys in
its responses by design, which the upgrade suite's stock side and ``--no-patches`` runs meet.
Keys shorter than :data:`MIN_LENGTH` are not searched for: a short string turns up in any log.
"""

from __future__ import annotations

import threading
from pathlib import Path

KEY_FIELDS = ("api_key", "access_key")
MIN_LENGTH = 8


def masked(key: str) -> str:
    """What a finding shows of a key: enough to tell which, never the key."""
    return f"{key[:6]}…({len(key)} chars)"


class KeyGuard:
    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.findings: list[str] = []
        self._read: dict[Path, tuple[int, int]] = {}  # log -> (bytes read, lines read)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ learning keys

    def add(self, *keys: str) -> None:
        """Keys sent some other way (a server's environment, a test's own client): searched for too."""
        with self._lock:
            self.keys.update(k for k in keys if isinstance(k, str) and len(k) >= MIN_LENGTH)

    def learn(self, body: object) -> None:
        """Every key in a request body, at any depth."""
        found: list[str] = []

        def walk(value: object) -> None:
            if isinstance(value, dict):
                for name, item in value.items():
                    if name in KEY_FIELDS and isinstance(item, str):
                        found.append(item)
                    else:
                        walk(item)
            elif isinstance(value, list):
                for item in value:
                    walk(item)

        walk(body)
        self.add(*found)

    # ------------------------------------------------------------------ searching

    def watch(self, log: Path) -> None:
        """A Ketta server's log, searched by every :meth:`scan`."""
        with self._lock:
            self._read.setdefault(log, (0, 0))

    def scan(self) -> None:
        """Search every watched log."""
        with self._lock:
            logs = list(self._read)
        for log in logs:
            self.scan_log(log)

    def _keys_in(self, text: str) -> list[str]:
        with self._lock:
            keys = sorted(self.keys)
        return [k for k in keys if k in text]

    def check_response(self, method: str, path: str, status: int, text: str) -> None:
        for key in self._keys_in(text):
            self._found(f"{method} {path} answered {status} with a provider key in its body ({masked(key)})")

    def scan_log(self, log: Path | None) -> None:
        """Search what ``log`` gained since the last scan (whole lines only)."""
        if log is None or not log.is_file():
            return
        with self._lock:
            offset, line_no = self._read.get(log, (0, 0))
        with open(log, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        lines = data[:end].decode("utf-8", "replace").splitlines()
        with self._lock:
            self._read[log] = (offset + end, line_no + len(lines))
        for number, line in enumerate(lines, start=line_no + 1):
            for key in self._keys_in(line):
                self._found(f"{log}:{number}: the server log holds a provider key ({masked(key)}): "
                            f"{self.mask(line)[:300]}")

    def _found(self, finding: str) -> None:
        with self._lock:
            self.findings.append(finding)

    def take(self) -> list[str]:
        """The findings made since the last call."""
        with self._lock:
            found, self.findings = self.findings, []
        return found

    def mask(self, text: str) -> str:
        """``text`` with every known key replaced (for reports, logs kept beside them, messages)."""
        for key in sorted(self._keys_in(text), key=len, reverse=True):
            text = text.replace(key, "***")
        return text


GUARD = KeyGuard()
