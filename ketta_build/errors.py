"""Exceptions raised by ketta-build, and the exit codes every command shares.

Every error a user can cause is a :class:`KettaError` whose ``str()`` is one
line that names the file (and line, where there is one) and says what to do.
The CLI prints that line and exits with :attr:`KettaError.exit_code`, which
tells the kinds of failure apart (see :data:`EXIT_CODES`).
"""

from __future__ import annotations

from pathlib import Path

#: Exit codes shared by every command (the table in each verb's ``--help`` and in the docs).
EXIT_OK = 0
EXIT_FAILED = 1  # the work was done and the answer is no: a patch did not apply, a port stopped, a red cell
EXIT_USAGE = 2  # usage or bad input: arguments, series, patch file, releases.toml, unknown release
EXIT_SOURCE = 3  # the upstream source: index unreachable, download failed, hash mismatch, git source
EXIT_CHECK = 4  # a check found something: lint findings, export --check differences, series --check
EXIT_REFUSED = 5  # refused to protect work: dirty or foreign build tree, work since a stop, lock held
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT): 128 + 2, as a shell reports it
EXIT_TERMINATED = 143  # SIGTERM: 128 + 15

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "done"),
    (EXIT_FAILED, "done, and the answer is no: a patch did not apply, a port stopped at a conflict, a matrix cell is red, "
                  "bisect found no commit"),
    (EXIT_USAGE, "usage or bad input: arguments, series, patch file, releases.toml, unknown or non-server release"),
    (EXIT_SOURCE, "upstream source: index unreachable, download failed, hash mismatch, git repository unusable"),
    (EXIT_CHECK, "a check found something: lint findings, export --check differences, series --check problems"),
    (EXIT_REFUSED, "refused to protect work: dirty or foreign build tree, unexported work, port in progress, lock held"),
    (10, "upstream check: a new server release onto which the series carries over exactly"),
    (11, "upstream check: a new server release that needs porting"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C); nothing half-written or temporary is left"),
    (EXIT_TERMINATED, "terminated (SIGTERM); cleaned up as for Ctrl-C"),
)


def exit_code_table() -> str:
    """The exit codes as the text of a ``--help`` epilog."""
    return "exit codes:\n" + "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES)


class KettaError(Exception):
    """An error caused by input, configuration or environment."""

    exit_code = EXIT_USAGE

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
    """An upstream release could not be found, fetched, verified or unpacked."""

    exit_code = EXIT_SOURCE


class NotAServerRelease(UpstreamError):
    """The requested version exists but is not the project the series is kept for (another product)."""

    exit_code = EXIT_USAGE


class UnknownRelease(UpstreamError):
    """The requested version is not a release the series supports."""

    exit_code = EXIT_USAGE


class IndexUnreachable(UpstreamError):
    """The package index could not be reached and the cache does not help."""


class DeadlineExceeded(IndexUnreachable):
    """A page or download took longer than its whole-request deadline ($KETTA_DOWNLOAD_DEADLINE)."""


class HashMismatch(UpstreamError):
    """A downloaded artifact does not have the sha256 the index publishes."""


class BuildTreeError(KettaError):
    """The build tree cannot be used or written as asked (foreign, dirty, in the middle of something)."""

    exit_code = EXIT_REFUSED


class DamagedPortState(KettaError):
    """A port's ``.git/ketta-port.json`` is there but is not what ketta-build wrote: the port can only be
    aborted (``port --abort --force``, which saves the tree first)."""


class GitError(KettaError):
    """A git command failed where it should not have."""


class StaleLock(GitError):
    """A git of the tool's found a ``*.lock`` file in its way in a repository: left by a git that died
    (or held by one that is running); the message names it."""

    exit_code = EXIT_REFUSED


class LockTimeout(KettaError):
    """Another ketta-build holds a lock we need."""

    exit_code = EXIT_REFUSED


class ClaimError(KettaError):
    """What a verb would write leaves a release the series claims without a patch that applies."""

    exit_code = EXIT_CHECK
