"""Running git: one runner with a fixed, quiet configuration, and reading blobs.

Every git call of ketta-build goes through :func:`git` (text) or :func:`git_bytes` (bytes): the
user's system configuration is ignored (``GIT_CONFIG_NOSYSTEM``), nothing prompts, fsync is off (a
build tree is disposable) and a failure raises :class:`~ketta_build.errors.GitError` with git's own
last line, never a traceback. :class:`Blobs` reads many files of one repository through a single
``git cat-file --batch`` process.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

from .errors import GitError
from .safetree import check_member, extract_members, read_to_end

_QUIET = ("-c", "core.fsync=none", "-c", "checkout.workers=0", "-c", "gc.auto=0", "-c", "core.autocrlf=false",
          "-c", "init.defaultBranch=main")


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    return {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0", **(extra or {})}


def git_bytes(cwd: Path, *args: str, env: dict[str, str] | None = None, check: bool = True,
              input: bytes | None = None) -> bytes:
    """``git args`` in ``cwd``; its standard output as bytes."""
    try:
        proc = subprocess.run(["git", *_QUIET, *args], cwd=cwd, env=_env(env), input=input, capture_output=True,
                              check=False)
    except OSError as exc:
        raise GitError(f"cannot run git in {cwd}: {exc}") from None
    if check and proc.returncode != 0:
        last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise GitError(f"git {' '.join(args[:2])} failed in {cwd}: {last[0]}")
    return proc.stdout


def git(cwd: Path, *args: str, env: dict[str, str] | None = None, check: bool = True, input: str | None = None) -> str:
    """``git args`` in ``cwd``; its standard output as text, without the final newline."""
    out = git_bytes(cwd, *args, env=env, check=check, input=input.encode() if input is not None else None)
    return out.decode("utf-8", errors="surrogateescape").strip()


def git_succeeds(cwd: Path, *args: str) -> bool:
    """Does ``git args`` exit 0 (a question git answers with its exit code, e.g. ``merge-base --is-ancestor``)?"""
    try:
        return subprocess.run(["git", *_QUIET, *args], cwd=cwd, env=_env(None), capture_output=True,
                              check=False).returncode == 0
    except OSError as exc:
        raise GitError(f"cannot run git in {cwd}: {exc}") from None


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
    proc = subprocess.run(["git", "cat-file", "blob", f"{rev}:{path}"], cwd=cwd, env=_env(None), capture_output=True,
                          check=False)
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
            self.proc = subprocess.Popen(["git", "cat-file", "--batch"], cwd=self.repo, env=_env(None),
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
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
