"""``ketta-build bisect PATCH --upstream-git REPO``: the upstream commit where a patch stops applying exactly.

A variant is made for a release; some later release needs another. Which upstream commit made the
difference? On the first-parent path from GOOD (default: the patch's ``Base-Release`` tag) to BAD
(default: the newest release tag of the repository), ``git rev-list --first-parent`` order, a
binary search finds the first commit where the patch, applied on top of the series' earlier
patches as selected for that commit's release (the version in its ``pyproject.toml``), no longer
applies exactly: a hunk fails (it would need a 3-way merge or a hand) or is already upstream. An
offset is still exact.

Each probe is the in-memory applier of :mod:`ketta_build.memapply` reading the commit's blobs
through one ``git cat-file --batch``; only the files the patch touches are read (and the commit's
``pyproject.toml``, which picks the earlier patches' variants), so a probe costs milliseconds.

Binary search assumes what ``git bisect`` assumes: once broken, the patch stays broken along the
path. That is checked, not trusted: the patch's outcome can only change at a commit that changes
one of those files against its first parent, and every such commit on the path is probed too. When
the patch broke, applied again and broke again, the report says so: ``found`` is the commit the
binary search landed on (git bisect's answer), ``first_break`` the earliest break on the path, and
``applies_again`` where it applied exactly again.

A project that merges each release (or any branch) with ``--no-ff`` has little on its first-parent
path: one merge per release, say. When the commit found is a merge whose first parent is an
ancestor of its second, the same search runs on the second parent's first-parent path (the branch
the merge brought in), and so on into nested merges, and ``inside`` says what it found there: the
commit that made the change, not only the release merge that shipped it.

``--until-applies`` asks the other way round (git bisect's ``old``/``new`` terms): the first commit
where a patch that did not apply exactly does: for a newer variant, the commit that made it
necessary while the older variant still applies.

JSON schema ``ketta-build/bisect/1`` (docs/json-schemas.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from .applying import Outcome, decode
from .memapply import tree_at
from .errors import KettaError, UpstreamError
from .gitcmd import Blobs, git, git_succeeds
from .patchfile import Hunk, Patch
from .series import Series, SeriesEntry, read_series
from .sources import GitSource, _literal_version

SCHEMA = "ketta-build/bisect/1"
EXIT_FOUND = 0
EXIT_NO_BREAK = 1


@dataclass
class Commit:
    sha: str
    short: str
    subject: str
    date: str  # author date, strict ISO 8601
    version: str | None  # the literal version of the commit's pyproject.toml


@dataclass
class HunkBreak:
    """A hunk that does not apply exactly at a commit (``hunk`` None: the whole file section)."""

    patch: str
    path: str
    hunk: int | None
    patch_line: int | None
    outcome: str  # failed | already-upstream
    reason: str


@dataclass
class Probe:
    commit: str
    version: str | None
    breaks: list[HunkBreak]
    earlier: list[HunkBreak]  # hunks of the earlier patches that did not apply exactly there

    @property
    def exact(self) -> bool:
        return not self.breaks


@dataclass
class BisectResult:
    patch: str
    repo: str
    good: str
    good_commit: str
    bad: str
    bad_commit: str
    path_commits: int  # commits on the first-parent path GOOD..BAD (BAD included, GOOD not)
    mode: str = "breaks"  # breaks: first commit where it stops applying exactly; applies: where it starts to
    steps: list[dict] = field(default_factory=list)  # the binary search's probes: commit, version, exact
    found: Commit | None = None
    breaks: list[HunkBreak] = field(default_factory=list)
    earlier: list[HunkBreak] = field(default_factory=list)
    checked: int = 0  # commits on the path that change the patch's files (all probed)
    monotone: bool = True
    first_break: Commit | None = None  # the earliest change on the path, when it is not `found`
    applies_again: list[Commit] = field(default_factory=list)  # after a change, where it changed back
    inside: BisectResult | None = None  # `found` is a merge: the same search on its second parent's path

    @property
    def exit_code(self) -> int:
        return EXIT_FOUND if self.found else EXIT_NO_BREAK

    def as_json(self) -> dict:
        return {"schema": SCHEMA, "exit_code": self.exit_code, **asdict(self)}


def _entry(series: Series, patch: str) -> SeriesEntry:
    name = Path(patch).name
    entry = next((e for e in series.entries if e.name == name), None)
    if entry is None:
        raise KettaError(f"{name} is not a patch of this series", path=series.series_file)
    return entry


def _commit_of(git_dir: Path, ref: str) -> str | None:
    out = git(git_dir, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)
    return out or None


def _tags(git_dir: Path) -> dict[Version, str]:
    found: dict[Version, str] = {}
    for tag in git(git_dir, "tag", "--list").splitlines():
        try:
            version = Version(tag[1:] if tag[:1] in "vV" else tag)
        except InvalidVersion:
            continue
        found.setdefault(version, tag)
    return found


def _ref(git_dir: Path, ref: str) -> tuple[str, str]:
    """(the name shown, its commit) for a ref, tag ``X`` or ``vX`` as the repository spells it."""
    commit = _commit_of(git_dir, ref)
    if commit:
        return ref, commit
    try:
        tag = _tags(git_dir).get(Version(ref.lstrip("vV")))
    except InvalidVersion:
        tag = None
    if tag and (commit := _commit_of(git_dir, tag)):
        return tag, commit
    raise KettaError(f"'{ref}' is neither a commit nor a release tag (X or vX) of {git_dir}")


def _commit_info(git_dir: Path, sha: str, blobs: Blobs) -> Commit:
    short, subject, date = git(git_dir, "log", "-1", "--format=%h%x00%s%x00%aI", sha).split("\x00")
    version = _version_at(blobs, sha)
    return Commit(sha, short, subject, date, str(version) if version else None)


def _version_at(blobs: Blobs, sha: str) -> Version | None:
    content = blobs.get(sha, "pyproject.toml")
    return _literal_version(decode(content)) if content is not None else None


def _old_line_numbers(hunk: Hunk) -> list[tuple[int, str]]:
    """(line in the patch file, text) of each old line of ``hunk`` (context and removed lines)."""
    out = []
    for offset, line in enumerate(hunk.text.splitlines(keepends=True)[1:], start=1):
        if line[:1] in (" ", "-"):
            out.append((hunk.patch_line + offset, line[1:]))
    return out


def _why(hunk: Hunk, lines: list[str] | None) -> str:
    """What upstream changed under the hunk: the first of its old lines the file lost, or where the
    longest run of its old lines the file still has together stops."""
    if lines is None:
        return "the file is gone"
    old = _old_line_numbers(hunk)
    present = {ln.rstrip("\r\n") for ln in lines}
    missing = [(n, text) for n, text in old if text.rstrip("\r\n") not in present]
    if missing:
        first_line, text = missing[0]
        more = f" (nor {len(missing) - 1} more of its {len(old)} old lines)" if len(missing) > 1 else ""
        return f"context not found: patch line {first_line} {text.strip()!r} is not in the file{more}"
    wanted = [text for _, text in old]
    best = (0, 0)  # (run length, position in the file)
    for pos, line in enumerate(lines):
        if line == wanted[0]:
            run = 0
            while run < len(wanted) and pos + run < len(lines) and lines[pos + run] == wanted[run]:
                run += 1
            best = max(best, (run, -pos))
    run, pos = best[0], -best[1]
    if run == 0 or run >= len(wanted):
        return "context not found: its old lines are all in the file, but not together"
    there = lines[pos + run].strip() if pos + run < len(lines) else "the end of the file"
    kept = f"patch line {old[0][0]} still matches" if run == 1 else f"patch lines {old[0][0]}-{old[run - 1][0]} still match"
    return (f"context not found: {kept} at line {pos + 1}, but patch line {old[run][0]} {old[run][1].strip()!r} does not "
            f"follow (the file has {there!r})")


class _Prober:
    """The patch's outcome at any commit of the repository; each commit probed once."""

    def __init__(self, git_dir: Path, series: Series, target: SeriesEntry, blobs: Blobs, fallback: Version) -> None:
        self.git_dir = git_dir
        self.series = series
        self.target = target
        self.patch: Patch = series.load(target)
        self.blobs = blobs
        self.fallback = fallback
        self.paths = {fp.path for fp in self.patch.files}
        self.first_line = min(e.line for e in series.entries if e.group == target.group)
        self.loaded: dict[str, Patch] = {}
        self.probes: dict[str, Probe] = {}

    def _load(self, entry: SeriesEntry) -> Patch:
        if entry.name not in self.loaded:
            self.loaded[entry.name] = self.series.load(entry)
        return self.loaded[entry.name]

    def __call__(self, sha: str) -> Probe:
        if sha in self.probes:
            return self.probes[sha]
        version = _version_at(self.blobs, sha)
        selected = self.series.select(version or self.fallback)
        earlier = [self._load(e) for e in selected if e.group != self.target.group and e.line < self.first_line]
        tree = tree_at(self.blobs, sha, version or self.fallback, earlier, paths=self.paths)
        before = {path: tree.current(path) for path in self.paths}
        before = {path: list(lines) if lines is not None else None for path, lines in before.items()}
        earlier_breaks = [HunkBreak(o.patch, o.path, o.hunk, o.patch_line, o.outcome.value, o.reason or o.outcome.value)
                          for o in tree.outcomes if not o.exact]
        seen = len(tree.outcomes)
        tree.apply(self.patch)
        hunks = {(fp.path, h.index): h for fp in self.patch.files for h in fp.hunks}
        breaks = []
        for o in tree.outcomes[seen:]:
            if o.exact:
                continue
            reason = o.reason or o.outcome.value
            hunk = hunks.get((o.path, o.hunk)) if o.hunk is not None else None
            if o.outcome is Outcome.FAILED and hunk is not None:
                reason = _why(hunk, before.get(o.path))
            breaks.append(HunkBreak(o.patch, o.path, o.hunk, o.patch_line, o.outcome.value, reason))
        probe = Probe(sha, str(version) if version else None, breaks, earlier_breaks)
        self.probes[sha] = probe
        return probe


def _first_parent_path(git_dir: Path, good: str, bad: str) -> list[tuple[str, str | None]]:
    """(commit, its first parent) on the first-parent path from ``good`` (excluded) to ``bad``, oldest first."""
    out = []
    for line in git(git_dir, "rev-list", "--first-parent", "--parents", "--reverse", f"{good}..{bad}").splitlines():
        parts = line.split()
        out.append((parts[0], parts[1] if len(parts) > 1 else None))
    return out


def _changing(git_dir: Path, path: list[tuple[str, str | None]], files: set[str]) -> list[str]:
    """The commits of ``path`` that change one of ``files`` against their first parent (one git process)."""
    pairs = "".join(f"{c} {p}\n" for c, p in path if p)
    if not pairs:
        return [c for c, _ in path]
    out = git(git_dir, "diff-tree", "--stdin", "-r", "--name-only", "--no-renames", "--", *sorted(files), input=pairs)
    shas = {c for c, _ in path}
    hit = {line.strip() for line in out.splitlines() if line.strip() in shas}  # diff-tree names each commit that changed
    return [c for c, p in path if c in hit or p is None]


def bisect(patch: str, upstream_git: str, *, series_dir: Path, good: str | None = None, bad: str | None = None,
           until_applies: bool = False, progress=lambda _: None) -> BisectResult:
    """Bisect ``patch`` of the series in ``series_dir`` on the first-parent path ``good``..``bad`` of ``upstream_git``.

    ``until_applies`` turns the question round (git bisect's own terms, old and new): the first commit where
    a patch that does not apply exactly at ``good`` does (a newer variant: the commit that made it necessary;
    ``bad`` defaults to its Base-Release tag then, and ``good`` must be given).
    """
    series = read_series(series_dir)
    target = _entry(series, patch)
    base = series.load(target).header.base_release
    source = GitSource(upstream_git, None, series.profile)
    try:
        git_dir = source.git_dir()
        tags = _tags(git_dir)
        if until_applies and good is None:
            raise KettaError("--until-applies needs --good: a commit where the patch does not apply exactly")
        if good is None or (until_applies and bad is None):
            if base not in tags:
                raise UpstreamError(f"{upstream_git} has no tag {base} or v{base} (the Base-Release of {target.name}): "
                                    f"say where to {'end with --bad' if until_applies else 'start with --good'}")
            if until_applies:
                bad = tags[base]
            else:
                good = tags[base]
        if bad is None:
            if not tags:
                raise UpstreamError(f"{upstream_git} has no release tags: say where to end with --bad")
            bad = tags[max(tags)]
        assert good is not None
        good_name, good_commit = _ref(git_dir, good)
        bad_name, bad_commit = _ref(git_dir, bad)
        if not git_succeeds(git_dir, "merge-base", "--is-ancestor", good_commit, bad_commit):
            raise KettaError(f"{good_name} is not an ancestor of {bad_name}: nothing to bisect between them")
        with Blobs(git_dir) as blobs:
            probe = _Prober(git_dir, series, target, blobs, base)
            result = BisectResult(target.name, upstream_git, good_name, good_commit, bad_name, bad_commit, 0,
                                  mode="applies" if until_applies else "breaks")
            start = probe(good_commit)
            if _changed(start, until_applies):
                if until_applies:
                    raise KettaError(f"{target.name} applies exactly at {good_name} already: GOOD must be a commit "
                                     "where it does not")
                first = start.breaks[0]
                raise KettaError(f"{target.name} does not apply exactly at {good_name} (hunk "
                                 f"#{first.hunk} of {first.path}: {first.reason}): GOOD must be a commit where it does")
            path = _first_parent_path(git_dir, good_commit, bad_commit)
            if not path:
                raise KettaError(f"{good_name} and {bad_name} are the same commit: nothing to bisect")
            _search(result, probe, git_dir, path, blobs, until_applies, progress)
            return result
    finally:
        source.close()


def _changed(probe: Probe, until_applies: bool) -> bool:
    """git bisect's "new": broken (or, with ``until_applies``, applying exactly)."""
    return probe.exact if until_applies else not probe.exact


MAX_DEPTH = 4  # merges descended into, one inside the other


def _search(result: BisectResult, probe: _Prober, git_dir: Path, path: list[tuple[str, str | None]], blobs: Blobs,
            until_applies: bool, progress, depth: int = 0) -> None:
    """Binary search on ``path`` (``result.good_commit`` is "old"), then the monotonicity check; when the
    commit found is a merge whose first parent is an ancestor of its second, the same inside it."""
    commits = [c for c, _ in path]
    result.path_commits = len(commits)
    progress(f"probing {result.bad}")
    if not _changed(probe(commits[-1]), until_applies):
        result.checked = _monotone(result, probe, until_applies, git_dir, path, blobs, None)
        return
    lo, hi = -1, len(commits) - 1  # commits[lo] is "old" (lo -1: GOOD), commits[hi] is "new"
    while hi - lo > 1:
        mid = (lo + hi) // 2
        progress(f"probing {commits[mid][:10]} ({hi - lo - 1} commits left)")
        verdict = probe(commits[mid])
        result.steps.append({"commit": commits[mid], "version": verdict.version, "exact": verdict.exact})
        if _changed(verdict, until_applies):
            hi = mid
        else:
            lo = mid
    # Breaking: the hunks that stopped applying there. Applying: those that did not apply just before.
    before = commits[hi - 1] if hi > 0 else result.good_commit
    shown = probe(before) if until_applies else probe(commits[hi])
    result.found = _commit_info(git_dir, commits[hi], blobs)
    result.breaks, result.earlier = shown.breaks, shown.earlier
    result.checked = _monotone(result, probe, until_applies, git_dir, path, blobs, hi)
    parents = git(git_dir, "rev-list", "--parents", "-n", "1", commits[hi]).split()[1:]
    if len(parents) < 2 or depth >= MAX_DEPTH or not git_succeeds(git_dir, "merge-base", "--is-ancestor", parents[0], parents[1]):
        return
    inner_path = _first_parent_path(git_dir, parents[0], parents[1])
    if not inner_path or _changed(probe(parents[0]), until_applies) or not _changed(probe(parents[1]), until_applies):
        return  # the merge itself made the difference (a conflict resolution, or an evil merge)
    inner = BisectResult(result.patch, result.repo, f"{result.found.short}^1", parents[0], f"{result.found.short}^2",
                         parents[1], 0, mode=result.mode)
    _search(inner, probe, git_dir, inner_path, blobs, until_applies, progress, depth + 1)
    result.inside = inner


def _monotone(result: BisectResult, probe: _Prober, until_applies: bool, git_dir: Path, path, blobs: Blobs,
              found: int | None) -> int:
    """Probe every commit on the path that can change the patch's outcome; record a first change before
    ``found`` (the binary search's answer) and every commit after a change where it changed back."""
    changing = set(_changing(git_dir, path, probe.paths | {"pyproject.toml"}))
    flipped = False
    for i, (sha, _parent) in enumerate(path):
        if sha not in changing and i != found:
            continue
        new = _changed(probe(sha), until_applies)
        if new and not flipped:
            flipped = True
            if i != found:
                result.monotone = False
                result.first_break = _commit_info(git_dir, sha, blobs)
        elif not new and flipped:
            result.monotone = False
            result.applies_again.append(_commit_info(git_dir, sha, blobs))
            flipped = False
    return len(changing)
