"""Exceptions raised by ketta-build.

Every error a user can cause is a :class:`KettaError` whose ``str()`` is one
line that names the file (and line, where there is one) and says what to do.
The CLI prints that line and exits with :attr:`KettaError.exit_code`.
"""

from __future__ import annotations

from pathlib import Path

#: Exit codes shared by every command.
EXIT_OK = 0
EXIT_PATCH_FAILED = 1
EXIT_BAD_INPUT = 2


class KettaError(Exception):
    """An error caused by input, configuration or environment."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path if self.line is None else f"{self.path}:{self.line}"
            where += ": "
        # Keep it to one line whatever the message holds.
        return (where + self.message).replace("\n", " ")


class SeriesError(KettaError):
    """The series file or a patch file is malformed or inconsistent."""


class UpstreamError(KettaError):
    """A Letta release could not be found, fetched, verified or unpacked."""


class NotAServerRelease(UpstreamError):
    """The requested version exists but is not the Letta agent server."""


class UnknownRelease(UpstreamError):
    """The requested version is not a known Letta server release."""


class IndexUnreachable(UpstreamError):
    """The package index could not be reached and the cache does not help."""


class HashMismatch(UpstreamError):
    """A downloaded artifact does not have the sha256 the index publishes."""


class BuildTreeError(KettaError):
    """The output tree cannot be written (exists, dirty, locked, ...)."""


class LockTimeout(KettaError):
    """Another ketta-build holds a lock we need."""
