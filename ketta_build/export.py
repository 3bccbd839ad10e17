"""``ketta-build export``: write a build tree's commits back to the patch series.

The build tree (``ketta-build apply``) holds the pristine release, tagged ``upstream/<version>``,
and one commit per patch, each naming its patch file in a ``Ketta-Patch:`` trailer. A maintainer
edits there (``git commit --amend``, ``git rebase -i``, new commits, dropped commits) and exports:

* a commit whose change is still exactly what its patch does keeps the patch's diff byte for
  byte; only its header is taken from the commit message (so a reworded description is exported);
* a commit whose change differs gets a canonical diff of that change
  (:func:`ketta_build.gitdiff.canonical_diff`), made against this tree's release, which becomes
  its ``Base-Release``; it goes back to the file it came from, variant included;
* a commit without a trailer becomes a new patch, numbered after the last one, entered in the
  series with the guard ``[letta>=<this release>]`` (shown, to be widened by hand);
* a patch the series selects for this release but no commit carries is dropped from the series
  (and its file deleted) with ``prune``; otherwise it is reported.

``check`` writes nothing and lists the files that differ from what export would write.
Everything is computed before anything is written; each file is replaced atomically.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import Version

from .applying import Outcome, apply_hunks, decode, encode
from .buildtree import STATE_FILE, git
from .errors import BuildTreeError, KettaError, SeriesError
from .gitdiff import canonical_diff, section_contexts
from .header import header_from_commit, parse_commit, render_header, trailer
from .patchfile import Patch, parse_patch_text, split_lines
from .series import SERIES_FILE, Series, read_series

_NUMBER = re.compile(r"^(\d+)-")


@dataclass
class ExportedPatch:
    name: str
    status: str  # unchanged | refreshed | new | dropped | pruned
    commit: str | None
    guard: str | None = None
    note: str | None = None


@dataclass
class ExportPlan:
    tree: Path
    version: Version
    series_dir: Path
    patches: list[ExportedPatch] = field(default_factory=list)
    files: dict[Path, bytes | None] = field(default_factory=dict)  # path -> new content (None: delete)

    def differences(self) -> list[Path]:
        """The files whose content export would change."""
        out = []
        for path, content in self.files.items():
            current = path.read_bytes() if path.exists() else None
            if current != content:
                out.append(path)
        return out


def _state(tree: Path) -> dict:
    state = tree / ".git" / STATE_FILE
    if not (tree / ".git").is_dir() or not state.is_file():
        raise BuildTreeError("not a ketta-build tree (no .git/ketta-build.json); make one with ketta-build apply", path=tree)
    try:
        return json.loads(state.read_text())
    except ValueError:
        raise BuildTreeError("its .git/ketta-build.json is not readable JSON", path=tree) from None


def check_tree(tree: Path) -> Version:
    """The release of a build tree that is fit to export from (clean, no operation in progress)."""
    data = _state(tree)
    version = Version(data["upstream"]["version"])
    if git(tree, "rev-parse", "-q", "--verify", f"refs/tags/upstream/{version}", check=False) == "":
        raise BuildTreeError(f"the tag upstream/{version} is missing: not a ketta-build tree", path=tree)
    for marker, what in (("rebase-merge", "a rebase"), ("rebase-apply", "a rebase or git am"),
                         ("MERGE_HEAD", "a merge"), ("CHERRY_PICK_HEAD", "a cherry-pick")):
        if (tree / ".git" / marker).exists():
            raise BuildTreeError(f"{what} is in progress; finish or abort it first", path=tree)
    dirty = git(tree, "status", "--porcelain", "--untracked-files=all")
    if dirty:
        first = dirty.splitlines()[0]
        raise BuildTreeError(f"the tree has uncommitted changes ({first.strip()}, ...); commit or stash them first", path=tree)
    return version


@dataclass
class _Commit:
    sha: str
    message: str
    author_name: str
    author_email: str


def _commits(tree: Path, version: Version) -> list[_Commit]:
    merges = git(tree, "rev-list", "--merges", f"upstream/{version}..HEAD")
    if merges:
        raise BuildTreeError(f"merge commit {merges.splitlines()[0][:10]} cannot become a patch; rebase instead", path=tree)
    out = []
    for sha in git(tree, "rev-list", "--reverse", f"upstream/{version}..HEAD").splitlines():
        raw = git(tree, "show", "-s", "--format=%an%x00%ae%x00%B", sha)
        name, email, message = raw.split("\x00", 2)
        out.append(_Commit(sha, message, name, email))
    return out


def _files_of(tree: Path, sha: str) -> list[tuple[str, str]]:
    """(status, path) of the files commit ``sha`` changes."""
    raw = git(tree, "diff-tree", "-r", "--no-renames", "--no-commit-id", "--name-status", f"{sha}^", sha)
    rows = []
    for line in raw.splitlines():
        status, path = line.split("\t", 1)
        rows.append((status[0], path))
    return rows


def _blob(tree: Path, rev: str, path: str) -> bytes | None:
    import subprocess

    proc = subprocess.run(["git", "cat-file", "blob", f"{rev}:{path}"], cwd=tree, capture_output=True, check=False)
    return proc.stdout if proc.returncode == 0 else None


def _same_change(tree: Path, sha: str, patch: Patch) -> bool:
    """Does commit ``sha`` do exactly what ``patch`` does to the tree's release?"""
    touched = {path for _, path in _files_of(tree, sha)}
    if touched != {fp.path for fp in patch.files}:
        return False
    for fp in patch.files:
        before = _blob(tree, f"{sha}^", fp.path)
        after = _blob(tree, sha, fp.path)
        if fp.is_deleted:
            if after is not None:
                return False
            continue
        lines, results = apply_hunks(split_lines(decode(before or b"")), fp.hunks)
        if any(r.outcome not in (Outcome.CLEAN, Outcome.OFFSET) for r in results):
            return False
        if after is None or encode("".join(lines)) != after:
            return False
    return True


def _index_lines_hold(tree: Path, sha: str, patch: Patch) -> bool:
    """Do the patch's ``index`` lines name the blobs commit ``sha`` really has before and after?
    (An earlier patch changed under it and the pre-image moved: then the file is refreshed.)"""
    from .applying import git_blob_id

    for fp in patch.files:
        for rev, short in ((f"{sha}^", fp.old_blob), (sha, fp.new_blob)):
            if not short or set(short) == {"0"}:
                continue
            blob = _blob(tree, rev, fp.path)
            if blob is None or not git_blob_id(blob).startswith(short):
                return False
    return True


def _slug(subject: str) -> str:
    words = re.findall(r"[a-z0-9]+", subject.lower())
    slug = "-".join(words)[:48].rstrip("-")
    return slug or "patch"


def _diff_part(path: Path) -> bytes:
    raw = path.read_bytes()
    cut = raw.find(b"\ndiff --git ")
    return raw[cut + 1:] if cut >= 0 else raw


def plan_export(tree: Path, series_dir: Path, *, prune: bool = False) -> ExportPlan:
    """What export writes for ``tree`` into ``series_dir`` (nothing is written here)."""
    tree = tree.absolute()
    version = check_tree(tree)
    series = read_series(series_dir)
    plan = ExportPlan(tree, version, series_dir)
    entries = {e.name: e for e in series.entries}
    selected = series.select(version)
    numbers = [int(m.group(1)) for e in series.entries if (m := _NUMBER.match(e.name))]
    width = max((len(m.group(1)) for e in series.entries if (m := _NUMBER.match(e.name))), default=4)
    next_number = max(numbers, default=0) + 1
    seen: dict[str, str] = {}
    new_entries: list[tuple[str, str]] = []

    for commit in _commits(tree, version):
        short = commit.sha[:10]
        parsed = parse_commit(commit.message)
        if parsed.patch is not None:
            name = parsed.patch
            if name in seen:
                raise KettaError(f"commits {seen[name][:10]} and {short} both say Ketta-Patch: {name}; squash them "
                                 "(git rebase -i) or remove the trailer from the new one")
            if name not in entries:
                raise SeriesError(f"commit {short} says Ketta-Patch: {name}, which the series does not list; remove the "
                                  "trailer to export it as a new patch", path=series.series_file)
            if entries[name] not in selected:
                raise SeriesError(f"commit {short} carries {name}, which the series does not select for letta {version}",
                                  path=series.series_file, line=entries[name].line)
            seen[name] = commit.sha
            old = series.load(entries[name])
            base_text = trailer(parsed, "Base-Release")
            # The same change, and (on its own base release) index lines that still hold: keep the file.
            same = _same_change(tree, commit.sha, old) and (
                old.header.base_release != version or _index_lines_hold(tree, commit.sha, old))
            if same:
                base = Version(base_text) if base_text else old.header.base_release
                header = header_from_commit(parsed, commit.author_name, commit.author_email, base_release=base, where=short)
                diff = _diff_part(series_dir / name)
                status = "unchanged"
            else:
                header = header_from_commit(parsed, commit.author_name, commit.author_email, base_release=version, where=short)
                diff = canonical_diff(tree, f"{commit.sha}^", commit.sha, section_contexts(old.files)).encode(
                    "utf-8", errors="surrogateescape")
                status = "refreshed"
            content = render_header(header).encode() + diff
            parse_patch_text(content, series_dir / name, name)  # what export writes must read back
            plan.files[series_dir / name] = content
            note = None
            if status == "refreshed" and old.header.base_release != version:
                note = f"Base-Release {old.header.base_release} -> {version}: the change was made on this release"
            plan.patches.append(ExportedPatch(name, status, commit.sha, entries[name].guard_text, note))
            continue

        header = header_from_commit(parsed, commit.author_name, commit.author_email, base_release=version, where=short)
        name = f"{next_number:0{width}d}-{_slug(header.subject)}.diff"
        next_number += 1
        diff = canonical_diff(tree, f"{commit.sha}^", commit.sha).encode("utf-8", errors="surrogateescape")
        content = render_header(header).encode() + diff
        parse_patch_text(content, series_dir / name, name)
        plan.files[series_dir / name] = content
        guard = f"letta>={version}"
        new_entries.append((name, guard))
        plan.patches.append(ExportedPatch(name, "new", commit.sha, guard,
                                          f"guard [{guard}]: widen it in {series.series_file} if it serves older releases"))

    dropped = [e for e in selected if e.name not in seen]
    for entry in dropped:
        if prune:
            plan.files[series_dir / entry.name] = None
            plan.patches.append(ExportedPatch(entry.name, "pruned", None, entry.guard_text, "removed from the series"))
        else:
            plan.patches.append(ExportedPatch(entry.name, "dropped", None, entry.guard_text,
                                              "no commit carries it; --prune removes it from the series"))

    if new_entries or (prune and dropped):
        plan.files[series.series_file] = _new_series_text(series, new_entries, {e.name for e in dropped} if prune else set())
    return plan


def _new_series_text(series: Series, add: list[tuple[str, str]], remove: set[str]) -> bytes:
    lines = series.series_file.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        body = line.split("#", 1)[0].strip()
        if body and body.split()[0] in remove:
            continue
        kept.append(line)
    width = max((len(line.split("#", 1)[0].split()[0]) for line in kept if line.split("#", 1)[0].strip()), default=30)
    for name, guard in add:
        kept.append(f"{name:<{width}} [{guard}]")
    return ("\n".join(kept) + "\n").encode()


def write_plan(plan: ExportPlan) -> list[Path]:
    """Write what ``plan`` changes (each file through a temporary file and a rename); return those paths."""
    changed = plan.differences()
    staged: list[tuple[Path, Path | None]] = []
    try:
        for path in changed:
            content = plan.files[path]
            if content is None:
                staged.append((path, None))
                continue
            tmp = path.with_name(f".{path.name}.ketta-export-{os.getpid()}")
            tmp.write_bytes(content)
            staged.append((path, tmp))
    except BaseException:
        for _, tmp in staged:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        raise
    for path, tmp in staged:
        if tmp is None:
            path.unlink(missing_ok=True)
        else:
            os.replace(tmp, path)
    return changed


def report_json(plan: ExportPlan, written: list[Path], check: bool) -> dict:
    return {
        "schema": "ketta-build/export/1",
        "tree": str(plan.tree),
        "letta": str(plan.version),
        "check": check,
        "patches": [vars(p) for p in plan.patches],
        "differences" if check else "written": [str(p) for p in written],
    }
