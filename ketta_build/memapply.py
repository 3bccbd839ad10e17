"""Does the series apply on every release it claims?

A guard claims releases: ``0003-keys-from-database.diff [mypkg>=0.16.4]`` says that on 0.16.4 …
0.16.8 this file, on top of the patches before it, applies. :func:`check_claims` verifies that
for any set of releases without writing a tree: the files the selected patches touch are read
from each release's cached pristine repository (one ``git cat-file --batch`` per release) and the
hunks are applied in memory, exactly (clean or at an offset; an already-upstream hunk is fine,
a 3-way merge is not: the patch file itself must apply).

``lint`` reports every failure (rule ``applies``); ``export`` and ``port`` verify what they are
about to write before they write it, so no verb leaves the series broken on a release it claims.

The same in-memory applier reads any commit of any repository (:func:`tree_at`): ``bisect`` walks
upstream's history with it, one commit at a time, and wants every hunk's outcome, not only the
failures (a hunk that becomes already-upstream is a change too).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from packaging.version import Version

from .applying import Outcome, apply_hunks, decode, encode
from .buildtree import PristineRepos
from .errors import ClaimError, KettaError
from .gitcmd import Blobs
from .patchfile import Patch, split_lines
from .series import Series, SeriesEntry


@dataclass(frozen=True)
class ClaimFailure:
    """One hunk (or file) of a patch that does not apply to a release its guard claims."""

    version: Version
    patch: str
    path: str
    hunk: int | None
    patch_line: int | None
    reason: str

    def __str__(self) -> str:
        return describe(self, [self.version])


@dataclass(frozen=True)
class ClaimGap:
    """A release the check could not look at (its source is unavailable)."""

    version: Version
    reason: str


@dataclass(frozen=True)
class HunkOutcome:
    """How one hunk (or a whole file section, ``hunk`` None) of a patch applied in memory."""

    patch: str
    path: str
    hunk: int | None
    patch_line: int | None
    outcome: Outcome
    reason: str | None = None

    @property
    def exact(self) -> bool:
        return self.outcome in (Outcome.CLEAN, Outcome.OFFSET)


@dataclass(frozen=True)
class PatchOutcome:
    """How one patch applied in memory to one release, on top of the patches selected before it."""

    version: Version
    patch: str
    hunks: tuple[HunkOutcome, ...]

    @property
    def outcome(self) -> str:
        """``failed``, ``already-upstream`` (every hunk), ``offset`` (some hunk moved) or ``exact``."""
        if any(h.outcome not in (Outcome.CLEAN, Outcome.OFFSET, Outcome.ALREADY_UPSTREAM) for h in self.hunks):
            return "failed"
        if self.hunks and all(h.outcome is Outcome.ALREADY_UPSTREAM for h in self.hunks):
            return "already-upstream"
        return "offset" if any(h.outcome is Outcome.OFFSET for h in self.hunks) else "exact"


class InMemoryTree:
    """One tree's files as the series' patches leave them, read lazily from a repository: a release's
    pristine tag ``upstream/<version>`` by default, or any commit (``rev``). With ``paths`` only those
    files are followed (the sections of other files are skipped). ``outcomes`` records every hunk."""

    def __init__(self, version: Version, blobs: Blobs, *, rev: str | None = None,
                 paths: set[str] | None = None) -> None:
        self.version = version
        self.blobs = blobs
        self.rev = rev or f"upstream/{version}"
        self.paths = paths
        self.files: dict[str, list[str] | None] = {}
        self.created: dict[str, str] = {}  # path -> the patch that created it
        self.outcomes: list[HunkOutcome] = []

    def current(self, path: str) -> list[str] | None:
        if path not in self.files:
            content = self.blobs.get(self.rev, path)
            self.files[path] = None if content is None else split_lines(decode(content))
        return self.files[path]

    def content(self, path: str) -> bytes | None:
        lines = self.current(path)
        return None if lines is None else encode("".join(lines))

    def apply(self, patch: Patch) -> list[ClaimFailure]:
        """Apply ``patch`` to the files; what did not apply exactly."""
        return [f for fp in patch.files if self.paths is None or fp.path in self.paths
                for f in self.apply_section(patch, fp)]

    def _whole(self, patch: Patch, fp, outcome: Outcome, reason: str | None) -> None:
        self.outcomes.append(HunkOutcome(patch.name, fp.path, None, fp.hunks[0].patch_line if fp.hunks else fp.patch_line,
                                         outcome, reason))

    def apply_section(self, patch: Patch, fp) -> list[ClaimFailure]:
        version, files, created = self.version, self.files, self.created
        lines = self.current(fp.path)
        first_line = fp.hunks[0].patch_line if fp.hunks else None
        if fp.is_new:
            wanted = [line for h in fp.hunks for line in h.new_lines]
            if fp.path in created and lines is not None:
                why = f"the file exists already: {created[fp.path]} creates it too"
                self._whole(patch, fp, Outcome.FAILED, why)
                return [ClaimFailure(version, patch.name, fp.path, None, first_line, why)]
            if lines is not None and lines != wanted:
                self._whole(patch, fp, Outcome.FAILED, "the file exists already")
                return [ClaimFailure(version, patch.name, fp.path, None, first_line, "the file exists already")]
            if lines is not None:
                self._whole(patch, fp, Outcome.ALREADY_UPSTREAM, "the file already exists with this content")
            else:
                self._whole(patch, fp, Outcome.CLEAN, None)
            files[fp.path] = wanted
            created[fp.path] = patch.name
            return []
        if lines is None:
            if fp.is_deleted:
                self._whole(patch, fp, Outcome.ALREADY_UPSTREAM, "the file is already gone")
                return []
            self._whole(patch, fp, Outcome.FAILED, "no such file")
            return [ClaimFailure(version, patch.name, fp.path, None, first_line, "no such file")]
        new_lines, results = apply_hunks(lines, fp.hunks)
        self.outcomes += [HunkOutcome(patch.name, fp.path, r.index, r.patch_line, r.outcome, r.reason) for r in results]
        out = [ClaimFailure(version, patch.name, fp.path, r.index, r.patch_line, r.reason or r.outcome.value)
               for r in results if r.outcome not in (Outcome.CLEAN, Outcome.OFFSET, Outcome.ALREADY_UPSTREAM)]
        if fp.is_deleted and not out:
            if encode("".join(new_lines)):
                why = "the file has content the patch does not delete"
                self._whole(patch, fp, Outcome.FAILED, why)
                return [ClaimFailure(version, patch.name, fp.path, None, first_line, why)]
            files[fp.path] = None
            return []
        files[fp.path] = new_lines
        return out


def _walk(series: Series, versions: Iterable[Version], repos: PristineRepos, entries_of, load,
          on_patch=lambda version, name, outcomes: None, progress=lambda _: None) -> tuple[list[ClaimFailure], list[ClaimGap]]:
    """Apply, in memory, the entries ``entries_of(version)`` gives (None: leave the release out) to
    each release, calling ``on_patch`` with each patch's hunk outcomes there. Returns the failures
    and the releases that could not be read."""
    failures: list[ClaimFailure] = []
    gaps: list[ClaimGap] = []
    for version in versions:
        entries = entries_of(version)
        if entries is None:
            continue
        repo = repos.get(version)
        if isinstance(repo, str):
            gaps.append(ClaimGap(version, repo))
            continue
        progress(f"applying {len(entries)} patch(es) in memory to {series.profile.name} {version}")
        with Blobs(repo) as blobs:
            release = InMemoryTree(version, blobs)
            for entry in entries:
                before = len(release.outcomes)
                failures += release.apply(load(entry))
                on_patch(version, entry.name, tuple(release.outcomes[before:]))
    return failures, gaps


def _loader(series: Series, overrides: dict[str, Patch] | None = None):
    """Each entry's parsed patch, parsed once (``overrides`` by name first)."""
    loaded: dict[str, Patch] = dict(overrides or {})

    def load(entry: SeriesEntry) -> Patch:
        if entry.name not in loaded:
            loaded[entry.name] = series.load(entry)
        return loaded[entry.name]

    return load


def check_claims(series: Series, versions: Iterable[Version], repos: PristineRepos, *,
                 patches: dict[str, Patch] | None = None,
                 select=None, progress=lambda _: None) -> tuple[list[ClaimFailure], list[ClaimGap]]:
    """Apply the series in memory to each of ``versions``.

    ``patches`` overrides the parsed patch of an entry by name (what a verb is about to write);
    ``select(version)`` overrides which entries a release gets (default: the series' guards).
    Returns the failures, and the releases that could not be checked. ``progress`` gets a line per release.
    """
    return _walk(series, versions, repos, select or series.select, _loader(series, patches), progress=progress)


def patch_outcomes(series: Series, versions: Iterable[Version], repos: PristineRepos, progress=lambda _: None
                   ) -> tuple[dict[Version, list[PatchOutcome]], list[ClaimGap]]:
    """Per release, how each patch the series selects there applies in memory, hunk by hunk, in
    series order (a release whose variants overlap is left out: ``series --check`` says why)."""
    found: dict[Version, list[PatchOutcome]] = {}

    def entries_of(version: Version):
        try:
            return series.select(version)
        except KettaError:
            return None

    def record(version: Version, name: str, outcomes: tuple) -> None:
        found.setdefault(version, []).append(PatchOutcome(version, name, outcomes))

    _, gaps = _walk(series, versions, repos, entries_of, _loader(series), record, progress)
    return found, gaps


def images_at(series: Series, version: Version, repos: PristineRepos, name: str, *,
              patches: dict[str, Patch] | None = None) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The files patch ``name`` touches on release ``version`` before and after it applies, on top of
    the patches the series selects before it there (a file that does not exist is left out). Raises
    ClaimError if anything on the way does not apply exactly."""
    repo = repos.get(version)
    if isinstance(repo, str):
        raise ClaimError(f"cannot read {series.profile.name} {version}: {repo}")
    overrides = patches or {}
    entries = series.select(version)
    if name not in {e.name for e in entries}:
        raise ClaimError(f"{name} is not selected for {series.profile.name} {version}")
    with Blobs(repo) as blobs:
        release = InMemoryTree(version, blobs)
        for entry in entries:
            patch = overrides.get(entry.name) or series.load(entry)
            if entry.name == name:
                before = {fp.path: c for fp in patch.files if (c := release.content(fp.path)) is not None}
            problems = release.apply(patch)
            if problems:
                raise ClaimError(f"{problems[0].patch}: {problems[0]}")
            if entry.name == name:
                after = {fp.path: c for fp in patch.files if (c := release.content(fp.path)) is not None}
                return before, after
    raise AssertionError("unreachable")  # pragma: no cover


def tree_at(blobs: Blobs, rev: str, version: Version, patches: Iterable[Patch], *,
            paths: set[str] | None = None) -> InMemoryTree:
    """The tree of commit ``rev`` (any revision ``blobs``' repository knows; ``version`` is only a label)
    with ``patches`` applied in order, in memory, following only ``paths`` when given. Its ``outcomes``
    say how every hunk applied; apply more patches to it with ``apply``."""
    tree = InMemoryTree(version, blobs, rev=rev, paths=paths)
    for patch in patches:
        tree.apply(patch)
    return tree


def group_failures(failures: Iterable[ClaimFailure]) -> list[tuple[ClaimFailure, list[Version]]]:
    """Failures of the same hunk on several releases, as one (first failure, releases) each."""
    grouped: dict[tuple, tuple[ClaimFailure, list[Version]]] = {}
    for f in failures:
        key = (f.patch, f.path, f.hunk, f.reason)
        if key not in grouped:
            grouped[key] = (f, [])
        grouped[key][1].append(f.version)
    return list(grouped.values())


def describe(failure: ClaimFailure, versions: list[Version], name: str = "release") -> str:
    """``hunk #2 of pkg/x.py does not apply to mypkg 0.16.4, 0.16.5 (context not found)``: ``name`` is the
    upstream's (the series' profile), ``release`` when the caller does not know it."""
    what = f"hunk #{failure.hunk} of {failure.path}" if failure.hunk is not None else failure.path
    return f"{what} does not apply to {name} {', '.join(map(str, versions))} ({failure.reason})"
