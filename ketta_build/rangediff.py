"""``ketta-build range-diff --release X OLD NEW``: what changed between two versions of the series, patch by patch.

OLD and NEW are each a git ref of this repository (its ``patches/`` at that commit; with
``--patches DIR``, DIR's repository and DIR's path in it) or a patch directory. Both are applied to release X in throw-away build trees; ``git range-diff`` then pairs
the commits (one per patch) and shows, per patch, whether it is unchanged (``=``), changed (``!``,
with the interdiff), new (``>``) or gone (``<``). It is the review of a refresh or a port.

Each pair also gets a semantic class, from what the two commits do to the release (their diffs,
file by file: the added and removed lines in order, and the hunks with their context and numbers):

``unchanged``     the same hunks (the message may differ: ``message_changed``)
``context-only``  the same added and removed lines in every file; only context or offsets differ
                  (an earlier patch moved or touched the lines around them, or upstream did)
``content``       added or removed lines differ
``new`` / ``dropped``  a patch only NEW has / only OLD had
``split``         one old patch's changes are now spread over two or more new patches
``merged``        two or more old patches' changes are now in one new patch

Split and merged are found by comparing the sets of (file, +/-, line) of every old and new patch: a
new patch belongs to an old one when at least half of its changed lines come from it, and the old
one is split when two or more new patches belong to it, each carrying lines of it the others do
not, and together carry at least half of its changed lines (merged: the same the other way
round). A pair in such a group says which patches the group holds (``group``: old and new
positions).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import Version

from .buildtree import ApplyOptions, apply_series
from .cache import Cache
from .errors import GitError, KettaError
from .gitcmd import extract_tree, git, git_succeeds, run
from .series import read_series
from .releases import load_releases
from .sources import IndexSource

_PAIR = re.compile(r"^\s*(-|\d+):\s+(-+|[0-9a-f]+)\s+([<>=!])\s+(-|\d+):\s+(-+|[0-9a-f]+)\s+(.*)$")
_MEANING = {"=": "unchanged", "!": "changed", "<": "removed", ">": "added"}


@dataclass
class RangeDiff:
    release: str
    old: str
    new: str
    text: str
    pairs: list[dict] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(p["status"] != "unchanged" for p in self.pairs)


def _where_in_git(series_dir: Path, repo: Path) -> tuple[Path, str]:
    """The repository a git ref is read from and the series' path in it: ``series_dir``'s own
    repository when it is in one, else ``repo`` with ``series_dir`` as given (``patches``)."""
    if series_dir.is_dir() and git_succeeds(series_dir, "rev-parse", "--is-inside-work-tree"):
        top = Path(git(series_dir, "rev-parse", "--show-toplevel").strip())
        inside = series_dir.resolve().relative_to(top.resolve()).as_posix()
        if inside != ".":
            return top, inside
    return repo, series_dir.as_posix()


def _series_dir(spec: str, repo: Path, work: Path, label: str, inside: str = "patches") -> Path:
    """A patch directory: ``spec`` itself, or ``inside`` (``patches/``) of git ref ``spec`` in ``repo``."""
    path = Path(spec)
    if path.is_dir():
        return path
    if not git_succeeds(repo, "rev-parse", "--verify", "-q", f"{spec}^{{commit}}"):
        raise KettaError(f"'{spec}' is neither a patch directory nor a git ref of {repo}")
    target = work / label
    target.mkdir(parents=True)
    try:
        extract_tree(repo, spec, target, inside)
    except GitError:
        raise KettaError(f"{spec} has no {inside}/ directory in {repo}") from None
    return target / inside


@dataclass
class _Commit:
    """What one commit of a build tree does: per file the +/- lines in order, and its hunks as text."""

    patch: str | None  # its Ketta-Patch trailer
    message: str
    changes: dict[str, tuple[str, ...]]
    hunks: dict[str, tuple[str, ...]]

    @property
    def lines(self) -> set[tuple[str, str]]:
        """(file, "+line" or "-line") of every changed line."""
        return {(path, line) for path, lines in self.changes.items() for line in lines}


def _one_sided(tree: Path, span: str, side: str) -> str:
    """git range-diff's lines for ``span`` when the other side has no commit: each one removed (old) or
    added (new), as git would print them."""
    lines = []
    for n, row in enumerate(git(tree, "log", "--reverse", "--format=%h%x00%s", "--abbrev=7", span).splitlines(), 1):
        short, _, subject = row.partition("\0")
        dashes = "-" * len(short)
        lines.append(f"{n}:  {short} < -:  {dashes} {subject}\n" if side == "old"
                     else f"-:  {dashes} > {n}:  {short} {subject}\n")
    return "".join(lines)


def _commits(tree: Path, span: str) -> list[_Commit]:
    """The commits of ``span``, oldest first (position n in git range-diff's output is the n-th)."""
    out = []
    for sha in git(tree, "rev-list", "--reverse", span).split():
        message = git(tree, "log", "-1", "--format=%B", sha)
        patch = git(tree, "log", "-1", "--format=%(trailers:key=Ketta-Patch,valueonly,separator=%x2C)", sha) or None
        diff = git(tree, "-c", "diff.noprefix=false", "show", "--format=", "--no-color", "--no-renames", "--no-ext-diff",
                   "-U3", sha)
        changes: dict[str, list[str]] = {}
        hunks: dict[str, list[str]] = {}
        path = None
        in_hunk = False
        for line in diff.split("\n"):
            if line.startswith("diff --git "):
                path = line.split(" b/", 1)[1] if " b/" in line else line
                changes.setdefault(path, [])
                hunks.setdefault(path, [])
                in_hunk = False
            elif path is None:
                continue
            elif line.startswith("@@"):
                in_hunk = True
                hunks[path].append(line + "\n")
            elif in_hunk:
                hunks[path][-1] += line + "\n"
                if line[:1] in ("+", "-"):
                    changes[path].append(line)
        out.append(_Commit(patch, message, {k: tuple(v) for k, v in changes.items()},
                           {k: tuple(v) for k, v in hunks.items()}))
    return out


def _belongs(part: set, whole: set) -> bool:
    """Do at least half of ``part``'s changed lines come from ``whole``?"""
    shared = len(part & whole)
    return shared > 0 and 2 * shared >= len(part)


def _parts(whole: set, sets: list[set]) -> list[int]:
    """The 1-based positions of ``sets`` that ``whole`` was cut into: each belongs to it and carries
    lines of it that the larger parts do not (a new patch whose lines an unchanged patch already
    carries, such as a blank line or ``return 1``, is no part: it is new)."""
    candidates = sorted((j for j, part in enumerate(sets, 1) if _belongs(part, whole)),
                        key=lambda j: (-len(sets[j - 1] & whole), j))
    kept, covered = [], set()
    for j in candidates:
        mine = sets[j - 1] & whole
        if mine - covered:
            kept.append(j)
            covered |= mine
    return sorted(kept)


def _groups(old: list[_Commit], new: list[_Commit]) -> list[tuple[str, list[int], list[int]]]:
    """(split|merged, old positions, new positions), 1-based, for every split or merged group."""
    old_sets = [c.lines for c in old]
    new_sets = [c.lines for c in new]
    found = []
    for i, whole in enumerate(old_sets, 1):
        parts = _parts(whole, new_sets)
        if len(parts) >= 2 and _belongs(whole, set().union(*(new_sets[j - 1] for j in parts))):
            found.append(("split", [i], parts))
    for j, whole in enumerate(new_sets, 1):
        parts = _parts(whole, old_sets)
        if len(parts) >= 2 and _belongs(whole, set().union(*(old_sets[i - 1] for i in parts))):
            found.append(("merged", parts, [j]))
    return found


def classify(pairs: list[dict], old: list[_Commit], new: list[_Commit]) -> None:
    """Give every pair of git range-diff's its semantic class (module docstring), in place."""
    for pair in pairs:
        a = old[pair["old"] - 1] if pair["old"] else None
        b = new[pair["new"] - 1] if pair["new"] else None
        pair["old_patch"] = a.patch if a else None
        pair["new_patch"] = b.patch if b else None
        if a is None or b is None:
            pair["class"] = "new" if a is None else "dropped"
            pair["message_changed"] = None
            continue
        pair["message_changed"] = a.message != b.message
        if a.hunks == b.hunks:
            pair["class"] = "unchanged"
        elif a.changes == b.changes:
            pair["class"] = "context-only"
        else:
            pair["class"] = "content"
    for kind, olds, news in _groups(old, new):
        for pair in pairs:
            if (pair["old"] in olds) or (pair["new"] in news):
                pair["class"] = kind
                pair["group"] = {"old": olds, "new": news}


def class_lines(pairs: list[dict]) -> list[str]:
    """The text output's summary: one line per pair, ``old -> new  class  subject``."""
    lines = []
    for p in pairs:
        where = f"{p['old'] or '-':>3} -> {p['new'] or '-':<3}"
        cls = p["class"] + (" (message too)" if p.get("message_changed") and p["class"] != "unchanged" else
                            " (message only)" if p.get("message_changed") else "")
        group = ""
        if "group" in p:
            group = (f"  [old {', '.join(map(str, p['group']['old']))} -> new "
                     f"{', '.join(map(str, p['group']['new']))}]")
        lines.append(f"{where} {cls:28} {p['subject']}{group}")
    return lines


def range_diff(version: Version, old: str, new: str, *, repo: Path, series_dir: Path, cache: Cache | None = None,
               index_url: str | None = None, progress=lambda _: None) -> RangeDiff:
    """``series_dir`` says where a git ref's series is: its repository, and its path there."""
    cache = cache or Cache()
    git_repo, inside = _where_in_git(series_dir, repo.absolute())
    work = Path(tempfile.mkdtemp(prefix="ketta-range-diff-"))
    try:
        source = IndexSource(cache, index_url, progress=progress, allow_unsupported=True,
                             releases=load_releases(series_dir))  # the pins of the series asked for
        release = source.resolve(version)
        trees = {}
        for label, spec in (("old", old), ("new", new)):
            series = read_series(_series_dir(spec, git_repo, work, label, inside))
            progress(f"applying {label} ({spec}) to {series.profile.name} {version}")
            report = apply_series(release, source, series, work / f"tree-{label}", options=ApplyOptions(), cache=cache,
                                  base_source=source)
            if report.exit_code:
                failed = ", ".join(r.name for r in report.failed) or ", ".join(report.not_attempted)
                raise KettaError(f"{spec}: the series does not apply to {series.profile.name} {version} "
                                 f"({failed}); see ketta-build apply")
            trees[label] = work / f"tree-{label}"
        git(trees["new"], "fetch", "-q", str(trees["old"]), "+HEAD:refs/ketta/old")
        old_commits = _commits(trees["new"], f"upstream/{version}..refs/ketta/old")
        new_commits = _commits(trees["new"], f"upstream/{version}..HEAD")
        if old_commits and new_commits:
            proc = run(trees["new"], "-c", "color.ui=false", "range-diff", "--no-color", "--creation-factor=95",
                       f"upstream/{version}..refs/ketta/old", f"upstream/{version}..HEAD")
            if proc.returncode != 0:
                raise KettaError(f"git range-diff failed: {proc.stderr.decode(errors='replace').strip()[-300:]}")
            text = proc.stdout.decode("utf-8", errors="replace")
        else:  # git range-diff refuses an empty range: a series with no patch (a new one, or all dropped)
            text = (_one_sided(trees["new"], f"upstream/{version}..refs/ketta/old", "old")
                    + _one_sided(trees["new"], f"upstream/{version}..HEAD", "new"))
        result = RangeDiff(str(version), old, new, text)
        for line in text.splitlines():
            m = _PAIR.match(line)
            if m:
                result.pairs.append({"old": None if m.group(1) == "-" else int(m.group(1)),
                                     "new": None if m.group(4) == "-" else int(m.group(4)),
                                     "status": _MEANING[m.group(3)], "subject": m.group(6)})
        classify(result.pairs, old_commits, new_commits)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
