"""The canonical diff of a change, made by git with every option fixed.

Whatever the user's git configuration says (``diff.noprefix``, ``diff.algorithm``,
``diff.context``, an order file, colour, external diff drivers), the same two trees always give the
same text: ``a/``/``b/`` prefixes, three lines of context, Myers with the indent heuristic, paths in
git's order, no renames, and ``index`` lines abbreviated to exactly seven hex digits (git would
lengthen them in a large repository).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import BuildTreeError
from .gitcmd import git, git_bytes, run

_CONFIG = ("diff.noprefix=false", "diff.mnemonicPrefix=false", "diff.relative=false", "diff.suppressBlankEmpty=false",
           "core.quotePath=true", "color.ui=false", "diff.external=", "core.autocrlf=false")
_OPTIONS = ("-p", "-r", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", "--full-index",
            "--inter-hunk-context=0", "--diff-algorithm=myers", "--indent-heuristic", "--src-prefix=a/",
            "--dst-prefix=b/", "-O/dev/null")
_INDEX = re.compile(r"^index ([0-9a-f]{7,64})\.\.([0-9a-f]{7,64})", re.MULTILINE)
ABBREV = 7


def _git_raw(repo: Path, *args: str) -> str:
    config = [arg for item in _CONFIG for arg in ("-c", item)]
    proc = run(repo, *config, *args)
    if proc.returncode != 0:
        raise BuildTreeError(f"git {args[0]} failed in {repo}: {proc.stderr.decode(errors='replace').strip()[-300:]}")
    return proc.stdout.decode("utf-8", errors="surrogateescape")


DEFAULT_CONTEXT = 3


def canonical_diff(repo: Path, old: str, new: str, contexts: dict[str, int] | None = None) -> str:
    """The diff from tree-ish ``old`` to ``new`` in ``repo``, canonical.

    Each file gets the context width ``contexts`` gives it (a patch keeps the width each of its
    file sections was made with; fewer lines let one patch apply exactly to releases whose
    surroundings differ), three lines otherwise.
    """
    contexts = contexts or {}
    names = _git_raw(repo, "diff-tree", "-r", "--no-renames", "--name-only", "-z", old, new).split("\0")
    parts = []
    for path in sorted(p for p in names if p):
        width = contexts.get(path, DEFAULT_CONTEXT)
        parts.append(_git_raw(repo, "diff-tree", *_OPTIONS, f"-U{width}", old, new, "--", path))
    text = "".join(parts)
    if re.search(r"^Binary files .* differ$", text, re.MULTILINE):
        raise BuildTreeError(f"the change {old}..{new} touches a binary file; patches hold text diffs only", path=repo)
    return _INDEX.sub(lambda m: f"index {m.group(1)[:ABBREV]}..{m.group(2)[:ABBREV]}", text)


def section_contexts(files) -> dict[str, int]:
    """The context width each file section of a parsed patch was made with (its widest hunk)."""
    out = {}
    for fp in files:
        if fp.hunks and not fp.is_new and not fp.is_deleted:
            out[fp.path] = max(max(h.leading_context, h.trailing_context) for h in fp.hunks)
    return out


def tree_of_files(repo: Path, files: dict[str, tuple[str, bytes]]) -> str:
    """A tree object in ``repo`` holding exactly ``files`` (path -> (mode, content)); its id."""
    if not files:
        return git(repo, "mktree", input="")
    index = repo / ".git" / f"ketta-tmp-index-{os.getpid()}"
    env = {"GIT_INDEX_FILE": str(index)}
    try:
        lines = []
        for path, (mode, content) in sorted(files.items()):
            sha = git_bytes(repo, "hash-object", "-w", "--stdin", input=content).decode().strip()
            lines.append(f"{mode} {sha}\t{path}")
        git(repo, "update-index", "--add", "--index-info", env=env, input="\n".join(lines) + "\n")
        return git(repo, "write-tree", env=env)
    finally:
        index.unlink(missing_ok=True)
