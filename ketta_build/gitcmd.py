"""Running git: one runner with a fixed, quiet and isolated configuration, and reading blobs.

Every git call of ketta-build goes through this module (:func:`git` for text, :func:`git_bytes` for
bytes, :func:`run` for an exit code, :func:`popen` for a stream): nothing prompts, fsync is off (a
build tree is disposable) and a failure raises :class:`~ketta_build.errors.GitError` with git's own
last line, never a traceback. :class:`Blobs` reads many files of one repository through a single
``git cat-file --batch`` process.

**Isolation.** What git does for ketta-build depends on nothing but its arguments and the
repository: neither the system nor the user's configuration is read (``GIT_CONFIG_NOSYSTEM``,
``GIT_CONFIG_SYSTEM`` and ``GIT_CONFIG_GLOBAL`` point at ``/dev/null``, so nothing under ``HOME`` or
``XDG_CONFIG_HOME`` is either, attribute and ignore files included), no ``GIT_*`` variable of the
caller's environment is passed on (``GIT_DIR``, ``GIT_INDEX_FILE``, ``GIT_CONFIG_PARAMETERS``,
``GIT_TRACE``...; only the two that say where TLS certificates are), and the ``-c`` settings of
:data:`ISOLATION` (command-line configuration outranks a repository's own) switch off hooks,
fsmonitor, signing and templates and fix the commit encoding, also in a repository the tool did not
make: a maintainer's build tree keeps its hooks for the maintainer's own git, never for ketta-build's.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import tarfile
from pathlib import Path

from .errors import GitError, StaleLock
from .safetree import check_member, extract_members, read_to_end

#: On every command line: no hook, fsmonitor, signature, template, attribute or ignore file of the
#: user's; replacements ignored; commit objects always UTF-8 (no ``encoding`` header).
ISOLATION = ("core.hooksPath=/dev/null", "core.fsmonitor=false", "core.attributesFile=/dev/null",
             "core.excludesFile=/dev/null", "commit.gpgSign=false", "tag.gpgSign=false", "tag.forceSignAnnotated=false",
             "log.showSignature=false", "init.templateDir=", "i18n.commitEncoding=UTF-8", "maintenance.auto=false")
_QUIET = ("core.fsync=none", "checkout.workers=0", "gc.auto=0", "core.autocrlf=false", "init.defaultBranch=main")
_CONFIG = tuple(arg for item in (*ISOLATION, *_QUIET) for arg in ("-c", item))
#: The caller's GIT_* variables that are passed on: where TLS trust anchors are (an --upstream-git URL).
_KEPT = ("GIT_SSL_CAINFO", "GIT_SSL_CAPATH")


#: ``info/attributes`` of every repository the tool makes: it outranks a tree's own ``.gitattributes``,
#: so git keeps every file's bytes as they are when it commits them, checks them out and archives
#: them (no CRLF, ident, filter, encoding, export-subst or export-ignore).
AS_IS_ATTRIBUTES = "* -text !eol -ident -filter !working-tree-encoding -export-subst -export-ignore\n"


def keep_bytes_as_they_are(git_dir: Path) -> None:
    """Give the repository whose git directory is ``git_dir`` the :data:`AS_IS_ATTRIBUTES`."""
    (git_dir / "info").mkdir(parents=True, exist_ok=True)
    (git_dir / "info" / "attributes").write_text(AS_IS_ATTRIBUTES)


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every git ketta-build runs: the caller's without its ``GIT_*`` variables,
    with system and user configuration switched off, plus ``extra`` (what the tool itself sets, e.g.
    an identity or ``GIT_INDEX_FILE``)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_") or key in _KEPT}
    env.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_SYSTEM": os.devnull, "GIT_CONFIG_GLOBAL": os.devnull,
                "GIT_ATTR_NOSYSTEM": "1", "GIT_NO_REPLACE_OBJECTS": "1", "GIT_TERMINAL_PROMPT": "0"})
    env.update(extra or {})
    return env


def command(*args: str) -> list[str]:
    """The command line of ``git args`` with the isolating and quiet configuration."""
    return ["git", *_CONFIG, *args]


def run(cwd: Path, *args: str, env: dict[str, str] | None = None,
        input: bytes | None = None) -> subprocess.CompletedProcess:
    """``git args`` in ``cwd``, whatever its exit code (stdout and stderr as bytes)."""
    proc = popen(cwd, *args, env=env, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = communicate(proc, input)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def popen(cwd: Path, *args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """``git args`` in ``cwd`` as a running process (``kwargs`` go to :class:`subprocess.Popen`), in a
    session of its own: the terminal's Ctrl-C reaches the tool, which stops git itself
    (:func:`communicate`, :func:`stop`), never git half-way through writing a ref or the index."""
    try:
        return subprocess.Popen(command(*args), cwd=cwd, env=environment(env), start_new_session=True, **kwargs)
    except OSError as exc:
        raise GitError(f"cannot run git in {cwd}: {exc}") from None


#: Seconds a git stopped with SIGTERM has to remove its locks and exit, before SIGKILL.
STOP_GRACE = 10.0


def stop(proc: subprocess.Popen) -> None:
    """End ``proc`` (and what it started) gracefully: SIGTERM, on which git removes its own ``*.lock``
    files, then wait for it; SIGKILL only if it is still there after :data:`STOP_GRACE` seconds or
    the wait itself is interrupted again."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the group is its pid
    except OSError:
        proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE)
    except BaseException:  # too slow, or a second Ctrl-C while it cleans up
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            proc.kill()
        proc.wait()
        raise


def communicate(proc: subprocess.Popen, input: bytes | None = None) -> tuple[bytes, bytes]:
    """:meth:`subprocess.Popen.communicate`, except that an interrupt (Ctrl-C, SIGTERM) or any other
    error while git runs stops it with :func:`stop` before it goes on."""
    try:
        return proc.communicate(input)
    except BaseException:
        stop(proc)
        raise


def git_bytes(cwd: Path, *args: str, env: dict[str, str] | None = None, check: bool = True,
              input: bytes | None = None) -> bytes:
    """``git args`` in ``cwd``; its standard output as bytes."""
    proc = run(cwd, *args, env=env, input=input)
    if check and proc.returncode != 0:
        stale = stale_lock(proc.stderr)
        if stale is not None:
            raise StaleLock(f"git {' '.join(args[:2])} in {cwd} found {stale} in the way: a git that was interrupted "
                            "or crashed there left it (or another git is still running there); if none is, remove "
                            "that file and run again", path=stale)
        last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise GitError(f"git {' '.join(args[:2])} failed in {cwd}: {last[0]}")
    return proc.stdout


_LOCK_IN_THE_WAY = re.compile(rb"Unable to create '([^\n]+?\.lock)': File exists")


def stale_lock(stderr: bytes) -> str | None:
    """The ``*.lock`` file git found in its way, from what it said (None if that was not it)."""
    found = _LOCK_IN_THE_WAY.search(stderr)
    return found.group(1).decode("utf-8", errors="surrogateescape") if found else None


def git(cwd: Path, *args: str, env: dict[str, str] | None = None, check: bool = True, input: str | None = None) -> str:
    """``git args`` in ``cwd``; its standard output as text, without the final newline."""
    out = git_bytes(cwd, *args, env=env, check=check, input=input.encode() if input is not None else None)
    return out.decode("utf-8", errors="surrogateescape").strip()


def git_succeeds(cwd: Path, *args: str) -> bool:
    """Does ``git args`` exit 0 (a question git answers with its exit code, e.g. ``merge-base --is-ancestor``)?"""
    return run(cwd, *args).returncode == 0


def extract_tree(repo: Path, rev: str, dest: Path, *paths: str) -> None:
    """The files of ``rev`` (only ``paths`` when given) written to ``dest`` (missing or empty), as ``git
    archive`` gives them: no work-tree noise, no ``.git``. A tree with a path or link leaving ``dest``
    (also through a chain of links) is refused and nothing is written (:mod:`ketta_build.safetree`)."""
    archive = git_bytes(repo, "archive", "--format=tar", rev, *paths)
    label = f"{rev} of {repo}"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = read_to_end(tar, label, GitError)
        for m in members:
            check_member(m, label, GitError)
        try:
            extract_members(tar, members, dest, label, GitError)
        except OSError as exc:
            raise GitError(f"cannot write {rev} of {repo} into {dest}: {exc}") from None


def blob(cwd: Path, rev: str, path: str) -> bytes | None:
    """The content of ``path`` at ``rev`` (None if it has no such file); ``cwd`` is a work tree or a bare repository."""
    proc = run(cwd, "cat-file", "blob", f"{rev}:{path}")
    return proc.stdout if proc.returncode == 0 else None


class Blobs:
    """Many blobs of one repository through one ``git cat-file --batch``; use as a context manager."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Blobs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get(self, rev: str, path: str) -> bytes | None:
        if "\n" in path:
            return blob(self.repo, rev, path)
        if self.proc is None:
            self.proc = popen(self.repo, "cat-file", "--batch", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{rev}:{path}\n".encode("utf-8", errors="surrogateescape"))
        self.proc.stdin.flush()
        header = self.proc.stdout.readline().decode().split()
        if len(header) != 3 or header[1] != "blob":
            if len(header) == 3:  # a tree or commit: skip its content
                self.proc.stdout.read(int(header[2]) + 1)
            return None
        data = self.proc.stdout.read(int(header[2]))
        self.proc.stdout.read(1)  # the newline after the content
        return data

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait()
            self.proc = None
