"""``ketta-build status``: the series as an audit sees it, one row per patch file.

Per patch: who answers for it (``Owner``), whether it went upstream (``Upstream-Status``,
``Forwarded``, ``Applied-Upstream``), how old it is and when it last changed (from the git history
of the series directory), its size, the date it is due for review (``Review-By``), and how it
applies on every supported release: ``exact``, ``offset`` (some hunk moved), ``already-upstream``
(every hunk is in the release already), ``failed``, ``variant`` (another variant of the same patch
serves that release) or ``-`` (its guard leaves the release out and no variant serves it).

The outcomes come from the same in-memory application ``lint`` uses (rule ``applies``), on each
release's cached pristine repository; nothing is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

from packaging.version import Version

from .buildtree import PristineRepos
from .cache import Cache
from .memapply import patch_outcomes
from .errors import GitError
from .gitcmd import git, git_succeeds
from .header import applied_upstream, field_value, review_date
from .patchfile import Patch
from .series import Series, read_series
from .sources import IndexSource


@dataclass(frozen=True)
class History:
    """When the series' git history first and last saw a patch file (None: not committed)."""

    added: date | None
    changed: date | None
    commits: int


@dataclass(frozen=True)
class PatchStatus:
    name: str
    group: str
    guard: str
    owner: str | None
    upstream_status: str
    forwarded: str | None
    applied_upstream: str | None
    review_by: str | None
    review_passed: bool
    history: History
    hunks: int
    added: int
    removed: int
    outcomes: dict[str, str] = field(default_factory=dict)  # release -> exact/offset/.../variant/-

    def age_days(self, on: date) -> int | None:
        return (on - self.history.added).days if self.history.added else None

    def as_json(self, on: date) -> dict:
        return {"patch": self.name, "group": self.group, "guard": self.guard, "owner": self.owner,
                "upstream_status": self.upstream_status, "forwarded": self.forwarded,
                "applied_upstream": self.applied_upstream, "review_by": self.review_by,
                "review_passed": self.review_passed,
                "added": self.history.added.isoformat() if self.history.added else None,
                "last_changed": self.history.changed.isoformat() if self.history.changed else None,
                "commits": self.history.commits, "age_days": self.age_days(on),
                "size": {"hunks": self.hunks, "added": self.added, "removed": self.removed},
                "releases": self.outcomes}


@dataclass(frozen=True)
class SeriesStatus:
    on: date
    versions: list[Version]
    patches: list[PatchStatus]
    unavailable: dict[str, str]  # release -> why its outcomes could not be computed

    def as_json(self) -> dict:
        return {"schema": "ketta-build/status/1", "date": self.on.isoformat(),
                "releases": [str(v) for v in self.versions], "unavailable": self.unavailable,
                "patches": [p.as_json(self.on) for p in self.patches]}


def _history(series_dir: Path, path: Path) -> History:
    """First and last commit dates touching ``path`` (renames followed), from git; empty outside git."""
    if not git_succeeds(series_dir, "rev-parse", "--is-inside-work-tree"):
        return History(None, None, 0)
    try:
        dates = git(series_dir, "log", "--follow", "--format=%ct", "--", path.name).split()
    except GitError:
        return History(None, None, 0)
    if not dates:
        return History(None, None, 0)
    as_date = [datetime.fromtimestamp(int(d), tz=timezone.utc).date() for d in dates]
    return History(min(as_date), max(as_date), len(dates))


def _size(patch: Patch) -> tuple[int, int, int]:
    """Hunks, lines added, lines removed."""
    hunks = added = removed = 0
    for fp in patch.files:
        for h in fp.hunks:
            hunks += 1
            for line in h.text.splitlines()[1:]:
                if line.startswith("+"):
                    added += 1
                elif line.startswith("-"):
                    removed += 1
    return hunks, added, removed


def series_status(series_dir: Path, *, cache: Cache | None = None, index_url: str | None = None,
                  on: date | None = None, progress=lambda _: None) -> SeriesStatus:
    """The status of every patch in ``series_dir`` on every supported release."""
    day = on or date.today()
    series: Series = read_series(series_dir)
    versions = series.releases.versions
    repos = PristineRepos(IndexSource(cache or Cache(), index_url, allow_unsupported=True, releases=series.releases,
                                      progress=progress), cache or Cache(), progress)
    outcomes, gaps = patch_outcomes(series, versions, repos, progress)
    unavailable = {str(g.version): g.reason for g in gaps}
    by_release = {v: {o.patch: o.outcome for o in found} for v, found in outcomes.items()}
    groups = series.groups()
    rows: list[PatchStatus] = []
    for entry in series.entries:
        patch = series.load(entry)
        h = patch.header
        review = field_value(h, "Review-By")
        when = review_date(review) if review else None
        cells: dict[str, str] = {}
        for v in versions:
            if str(v) in unavailable:
                cells[str(v)] = "unavailable"
            elif entry.matches(v):
                cells[str(v)] = by_release.get(v, {}).get(entry.name, "unselectable")
            elif any(other.matches(v) for other in groups.get(entry.group, []) if other is not entry):
                cells[str(v)] = "variant"
            else:
                cells[str(v)] = "-"
        applied = field_value(h, "Applied-Upstream")
        if applied is not None and applied_upstream(applied) is None:
            applied = f"{applied} (unreadable)"
        hunks, added, removed = _size(patch)
        rows.append(PatchStatus(
            name=entry.name, group=entry.group, guard=entry.guard_text or "all", owner=field_value(h, "Owner"),
            upstream_status=h.upstream_status, forwarded=field_value(h, "Forwarded"), applied_upstream=applied,
            review_by=review, review_passed=bool(when and when < day),
            history=_history(series_dir, series_dir / entry.name), hunks=hunks, added=added, removed=removed,
            outcomes=cells))
    return SeriesStatus(day, list(versions), rows, unavailable)


def runs_text(outcomes: dict[str, str]) -> str:
    """``exact 0.16.4-0.16.8; variant 0.14.0-0.16.2``: consecutive releases with one outcome, joined."""
    runs: list[tuple[str, str, str]] = []
    for version, outcome in outcomes.items():
        if runs and runs[-1][0] == outcome:
            runs[-1] = (outcome, runs[-1][1], version)
        else:
            runs.append((outcome, version, version))
    return "; ".join(f"{o} {a}" + (f"-{b}" if b != a else "") for o, a, b in runs if o != "-")
