"""``ketta-build lint``: what a patch series must be before it is committed.

Rules (each finding names the file and line):

``header``        the patch parses: required fields, ``Upstream-Status`` value, ``Author``, diff shape;
``why``           the description says why the patch exists (more than its subject; Electron's rule);
``base-release``  ``Base-Release`` is a supported release, and there the patch applies *clean*
                  (not at an offset) on top of the earlier patches selected for it;
``variants``      for every supported release each logical patch has at most one variant, and the
                  variants of one patch leave no release uncovered between the first and last
                  release they serve;
``whitespace``    no added line ends in spaces or tabs;
``canonical``     the file is exactly what ``ketta-build export`` writes: canonical header, and the
                  diff git makes with fixed options from the ``Base-Release`` pre-image;
``applies``       on every supported release, the patches its guards select apply exactly, in order
                  (:mod:`ketta_build.memapply`): a guard claims nothing the patch cannot do;
``releases``      a ``Releases:`` field starts with the releases the guard really serves;
``line-endings``  the file has LF line endings (one finding for a converted file, not one per line);
``tox``           tox.ini is the one generated from ``releases.toml`` (``ketta-build port`` keeps it so);
``pin``           every release in ``releases.toml`` is pinned (``sha256`` of its sdist; a malformed one is a
                  parse error): a release without a pin is not fetched, so nothing about it is checked;
``source``        a supported release that cannot be had (index unreachable, not on it): nothing about it is
                  checked; the CLI exits 3 when these are the only errors;
``variant-drift`` (a warning) variants of one patch whose corresponding hunks add different lines:
                  an edit made to one variant and not carried to the others;
``status``        status and ownership: ``Forwarded`` (no, not-needed or a URL, agreeing with
                  ``Upstream-Status``) and ``Owner`` are required; ``Review-By`` is a date, and a passed
                  one is a warning; ``Applied-Upstream`` names a release or commit, and the patch's
                  guard serves no supported release from that release on (upstream has it there:
                  the patch should have been retired for them).

``fix=True`` rewrites the files whose only findings are ``canonical`` or ``releases`` into canonical form
(a ``status`` warning does not stop it).
Warnings are printed and reported but do not fail the run.
"""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from packaging.version import Version

from .applying import Outcome, apply_hunks, decode, encode
from .atomic import write_atomic
from .buildtree import PreimageFinder, series_lock
from .cache import Cache
from .memapply import check_claims, describe, group_failures, patch_outcomes
from .errors import EXIT_CHECK, EXIT_SOURCE, KettaError
from .gitcmd import blob, git
from .gitdiff import canonical_diff, section_contexts, tree_of_files
from .header import (applied_upstream, field_value, forwarded_problem, owner_problem, releases_range, render_header,
                     review_date, served_range_text, updated_releases, with_field)
from .patchfile import Hunk, Patch, parse_patch_text, split_lines
from .toxini import generated_files
from .series import Series, SeriesEntry, read_series
from .sources import IndexSource


@dataclass(frozen=True)
class Finding:
    rule: str
    path: Path
    line: int | None
    message: str
    severity: str = "error"  # error | warning

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where}: [{self.rule}]{' warning:' if self.severity == 'warning' else ''} {self.message}"


def _why(patch: Patch, path: Path) -> list[Finding]:
    text = " ".join(patch.header.description.split())
    subject = " ".join(patch.header.subject.split()).rstrip(".")
    if text.rstrip(".").lower() == subject.lower() or len(text.split()) < 8:
        return [Finding("why", path, None, "the description must say why the patch exists, not repeat the subject "
                                           "(a sentence or more)")]
    return []


def _whitespace(path: Path) -> list[Finding]:
    found = []
    in_diff = False
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if line.startswith("diff --git "):
            in_diff = True
        if in_diff and line.startswith("+") and not line.startswith("+++") and line != line.rstrip(" \t"):
            found.append(Finding("whitespace", path, number, "added line ends in whitespace"))
    return found


def _variants(series: Series, versions: list[Version]) -> list[Finding]:
    found = []
    for problem in series.coverage_problems(versions):
        found.append(Finding("variants", series.series_file, None, problem))
    for group, members in series.groups().items():
        if len(members) < 2:
            continue
        covered = [v for v in versions if any(e.matches(v) for e in members)]
        if not covered:
            continue
        inside = [v for v in versions if covered[0] <= v <= covered[-1]]
        holes = [v for v in inside if v not in covered]
        if holes:
            names = ", ".join(e.name for e in members)
            found.append(Finding("variants", series.series_file, members[0].line,
                                 f"no variant of patch {group} ({names}) serves {series.profile.name} {', '.join(map(str, holes))}, "
                                 "between releases they do serve"))
    return found


class _Canon:
    """Pre-images at each patch's Base-Release, and the canonical text of a patch made from them."""

    def __init__(self, series: Series, cache: Cache, index_url: str | None, progress=lambda _: None) -> None:
        self.series = series
        self.progress = progress
        self.source = IndexSource(cache, index_url, allow_unsupported=True, releases=series.releases, progress=progress)
        self.finder = PreimageFinder(series, {}, self.source, cache, progress)
        self.scratch = Path(tempfile.mkdtemp(prefix="ketta-lint-"))
        git(self.scratch, "init", "-q", ".")

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)

    def images(self, patch: Patch) -> tuple[dict, dict, list[str]]:
        """(before, after) files at the Base-Release, and why a hunk did not apply clean there."""
        before: dict[str, tuple[str, bytes]] = {}
        after: dict[str, tuple[str, bytes]] = {}
        problems = []
        for fp in patch.files:
            old_mode = fp.old_mode or "100644"
            mode = fp.new_mode or old_mode  # a mode the patch does not change stays as it was
            if fp.is_new:
                content = b""
            else:
                content, why = self.finder(patch, fp)
                if content is None:
                    problems.append(f"{fp.path}: {why}")
                    continue
                before[fp.path] = (old_mode, content)
            if fp.is_deleted:
                continue
            lines, results = apply_hunks(split_lines(decode(content)), fp.hunks)
            for r in results:
                if r.outcome is not Outcome.CLEAN:
                    problems.append(f"{fp.path} hunk {r.index} (line {r.patch_line}) applies {r.label} at "
                                    f"{self.series.profile.release_name(patch.header.base_release)}, not clean")
            after[fp.path] = (mode, encode("".join(lines)))
        return before, after, problems

    def text(self, patch: Patch, before: dict, after: dict) -> bytes:
        diff = canonical_diff(self.scratch, tree_of_files(self.scratch, before), tree_of_files(self.scratch, after),
                              section_contexts(patch.files))
        return render_header(patch.header).encode() + diff.encode("utf-8", errors="surrogateescape")


def today() -> date:
    """The date a passed ``Review-By`` is measured against (tests pass their own to lint_series)."""
    return date.today()


def lint_series(series_dir: Path, *, cache: Cache | None = None, index_url: str | None = None,
                project: Path | None = None, fix: bool = False, on: date | None = None,
                progress=lambda _: None) -> tuple[list[Finding], list[Path]]:
    """Every finding in ``series_dir`` (and ``project``'s tox.ini); with ``fix``, the files rewritten.
    ``on`` is the day a ``Review-By`` date is compared with (default: today); ``progress`` gets a
    line per step (a release read, a patch checked, the claims of each release). With ``fix`` the
    series lock is held from the first read to the last write, as export and a port's finish hold it:
    none of them rewrites a file another has just read."""
    cache = cache or Cache()
    with series_lock(cache, series_dir) if fix else nullcontext():
        return _lint_series(series_dir, cache, index_url, project, fix, on, progress)


def _lint_series(series_dir: Path, cache: Cache, index_url: str | None, project: Path | None, fix: bool,
                 on: date | None, progress) -> tuple[list[Finding], list[Path]]:
    findings: list[Finding] = []
    fixed: list[Path] = []
    series = read_series(series_dir)
    releases = series.releases
    versions = releases.versions
    findings += _variants(series, versions)
    canon = _Canon(series, cache, index_url, progress)
    unpinned = [r for r in releases if r.sha256 is None]
    for release in unpinned:
        findings.append(Finding("pin", releases.path, release.line,
                                f"{releases.profile.name} {release.version} has no pin: add sha256 = \"<the sha256 of its sdist>\" to its "
                                "[[release]] (ketta-build apply --release VERSION says what the index publishes)"))
    unavailable = {v: why for v in versions if isinstance(why := canon.finder.repos.get(v), str)}
    for version, why in unavailable.items():
        if not any(r.version == version for r in unpinned):  # said once above
            findings.append(Finding("source", series.series_file, None, f"cannot check {series.profile.name} {version}: {why}"))
    try:
        loaded: dict[str, Patch] = {}
        unreadable: set[str] = set()  # patches already reported; what depends on them is not judged
        for entry in series.entries:
            path = series_dir / entry.name
            progress(f"checking {entry.name}")
            if b"\r\n" in path.read_bytes() and _converted(path):
                findings.append(Finding("line-endings", path, _first_crlf(path),
                                        "the file has CRLF line endings: it was converted (run dos2unix on it)"))
                unreadable.add(str(path))
                continue
            try:
                patch = series.load(entry)
            except KettaError as exc:
                findings.append(Finding("header", Path(exc.path or path), exc.line, exc.message))
                unreadable.add(str(path))
                continue
            loaded[entry.name] = patch
            status = _status(series, entry, patch, path, on or today(), canon.finder.repos, unavailable)
            own = _why(patch, path) + _whitespace(path)  # findings --fix does not mend: it leaves the file alone
            own += [f for f in status if f.severity == "error"]
            findings += own + [f for f in status if f.severity != "error"]
            releases_finding = _releases_field(series, entry, patch, path)
            base = patch.header.base_release
            if base in unavailable:
                continue  # said once above
            if releases.find(base) is None:
                findings.append(Finding("base-release", path, _field_line(path, "Base-Release"),
                                        f"Base-Release {base} is not a supported release ({releases.range_text()})"))
                continue
            if not entry.matches(base):
                findings.append(Finding("base-release", path, _field_line(path, "Base-Release"),
                                        f"Base-Release {base} is outside the patch's own guard [{entry.guard_text}]"))
                continue
            try:
                before, after, problems = canon.images(patch)
            except KettaError as exc:  # an earlier patch that does not parse, a release that cannot be had
                if exc.path not in unreadable:
                    findings.append(Finding("base-release", path, None, f"cannot recreate the pre-image at {base}: {exc}"))
                continue
            for problem in problems:
                findings.append(Finding("base-release", path, None, problem))
            if problems:
                continue
            fix_this = fix and not own
            if releases_finding is not None and fix_this:
                patch = Patch(patch.name, patch.path, with_field(patch.header, "Releases", releases_finding[1]), patch.files)
                releases_finding = None
            if releases_finding is not None:
                findings.append(releases_finding[0])
            wanted = canon.text(patch, before, after)
            if wanted != path.read_bytes():
                if fix_this:
                    write_atomic(path, wanted)
                    fixed.append(path)
                else:
                    findings.append(Finding("canonical", path, _first_difference(path.read_bytes(), wanted),
                                            "not in export's canonical form (ketta-build lint --fix rewrites it)"))
        if len(loaded) == len(series.entries):  # every patch parses: try the series on every release
            findings += _applies(series, canon, [v for v in versions if v not in unavailable])
        findings += _drift(series, loaded)
    finally:
        canon.close()
    for path, wanted in (generated_files(project, series_dir) if project is not None else {}).items():
        if not path.is_file() or path.read_bytes() != wanted:  # the plugin's files in step with releases.toml
            if fix:
                write_atomic(path, wanted)
                fixed.append(path)
            else:
                findings.append(Finding("generated", path, None, f"{path.name} is not the one generated from "
                                        "releases.toml and the suite registry (ketta-build lint --fix writes it)"))
    return findings, fixed


def _converted(path: Path) -> bool:
    """Was the patch file as a whole converted to CRLF (its header and diff lines end in CRLF)?
    A diff of a CRLF file has CRLF only inside its content lines."""
    head = path.read_bytes().split(b"\n", 1)[0]
    return head.endswith(b"\r")


def _first_crlf(path: Path) -> int:
    return path.read_bytes().split(b"\r\n", 1)[0].count(b"\n") + 1


def _applies(series: Series, canon: "_Canon", versions: list[Version]) -> list[Finding]:
    """Rule ``applies``: every release's selected patches apply exactly, in order (releases whose
    variants overlap are left to rule ``variants``)."""
    def selectable(version: Version) -> bool:
        try:
            series.select(version)
        except KettaError:
            return False
        return True

    failures, gaps = check_claims(series, [v for v in versions if selectable(v)], canon.finder.repos,
                                  progress=canon.progress)
    findings = []
    entries = {e.name: e for e in series.entries}
    for failure, failed_on in group_failures(failures):
        entry = entries[failure.patch]
        findings.append(Finding("applies", series.directory / failure.patch, failure.patch_line,
                                f"{describe(failure, failed_on, series.profile.name)}, which its guard [{entry.guard_text or 'no guard: every release'}] "
                                "claims: fix the patch or give those releases a variant of their own"))
    for gap in gaps:
        findings.append(Finding("applies", series.series_file, None, f"cannot check {series.profile.name} {gap.version}: {gap.reason}"))
    return findings


def _status(series: Series, entry: SeriesEntry, patch: Patch, path: Path, day: date, repos, unavailable) -> list[Finding]:
    """Rule ``status``: Forwarded and Owner present and well-formed, Review-By a date (passed: a
    warning), and no supported release from the one Applied-Upstream names on served by this patch."""
    h = patch.header
    found = []

    def add(field: str, message: str, severity: str = "error") -> None:
        found.append(Finding("status", path, _field_line(path, field) or 1, message, severity))

    problem = forwarded_problem(field_value(h, "Forwarded"), h.upstream_status)
    if problem:
        add("Forwarded", problem)
    problem = owner_problem(field_value(h, "Owner"))
    if problem:
        add("Owner", problem)
    review = field_value(h, "Review-By")
    if review is not None:
        when = review_date(review)
        if when is None:
            add("Review-By", f"Review-By must be a date, YYYY-MM-DD, got {review.strip()[:40]!r}")
        elif when < day:
            add("Review-By", f"the review date {when} has passed (today is {day}): review the patch, then move the date",
                "warning")
    value = field_value(h, "Applied-Upstream")
    if value is not None:
        named = applied_upstream(value)
        if named is None:
            add("Applied-Upstream", f"Applied-Upstream must start with the release or commit that has the change, "
                                    f"got {value.strip()[:40]!r}")
        elif not isinstance(named, str):  # a release: from it on, upstream does what the patch does
            served = [v for v in series.releases.versions if v >= named and entry.matches(v)]
            if served:
                add("Applied-Upstream", f"Applied-Upstream says {series.profile.name} {named} has this change, but "
                                        f"the guard [{entry.guard_text or 'no guard: every release'}] still serves "
                                        f"{series.profile.name} "
                                        f"{', '.join(map(str, served))}{_still_changes(series, entry, served, repos, unavailable)}: "
                                        f"retire the patch there (guard <{named})")
    return found


def _still_changes(series: Series, entry: SeriesEntry, versions: list, repos, unavailable) -> str:
    """What the in-memory applier says the patch does on ``versions``: already there, or still a change."""
    outcomes, _ = patch_outcomes(series, [v for v in versions if v not in unavailable], repos)
    mine = [(v, o) for v, found in outcomes.items() for o in found if o.patch == entry.name]
    if not mine:
        return ""
    if all(o.outcome == "already-upstream" for _, o in mine):
        return " (where every hunk is already upstream)"
    changed = [str(v) for v, o in mine if o.outcome != "already-upstream"]
    return f" (and still changes {series.profile.name} {', '.join(changed)}: is Applied-Upstream right?)"


def _releases_field(series: Series, entry: SeriesEntry, patch: Patch, path: Path) -> tuple[Finding, str] | None:
    """Rule ``releases``: the finding and the corrected value, or None when the field is right (or absent)."""
    value = field_value(patch.header, "Releases")
    versions = series.releases.versions
    served = [v for v in versions if entry.matches(v)]
    corrected = updated_releases(value, served, versions) if value is not None and served else None
    if corrected is None:
        return None
    found = releases_range(value)
    return (Finding("releases", path, _field_line(path, "Releases"),
                    f"Releases says {value[:found[2]] if found else value[:40]!r}, the guard [{entry.guard_text or 'none'}] "
                    f"serves {served_range_text(served, served == versions)} (ketta-build lint --fix rewrites it)"), corrected)


def _added(hunk: Hunk) -> tuple[str, ...]:
    return tuple(hunk.new_lines[hunk.leading_context:len(hunk.new_lines) - hunk.trailing_context])


def _counterparts(hunks: list[Hunk], candidates: list[Hunk]) -> dict[int, Hunk]:
    """For each of ``hunks`` (one variant's, one file) the hunk among ``candidates`` (another variant's,
    same file) that does the same job: paired one to one by how alike their old lines (context and
    removed) are, the nearer in the file first on a tie (sync and async twins pair in order)."""
    scored = []
    for i, hunk in enumerate(hunks):
        for j, other in enumerate(candidates):
            ratio = difflib.SequenceMatcher(a=hunk.old_lines, b=other.old_lines, autojunk=False).ratio()
            if ratio > 0.5:
                scored.append((-ratio, abs(i - j), i, j))
    pairs: dict[int, Hunk] = {}
    used: set[int] = set()
    for _, _, i, j in sorted(scored):
        if i not in pairs and j not in used:
            pairs[i] = candidates[j]
            used.add(j)
    return pairs


def _drift_pairs(series: Series, loaded: dict[str, Patch]) -> list[tuple[str, str, str, Hunk, Hunk]]:
    """(variant, newest variant, file, hunk, its counterpart) where they add different lines; the
    newest variant is the one serving the newest release among those ``loaded``."""
    pairs = []
    versions = series.releases.versions
    for group, all_members in series.groups().items():
        members = [e for e in all_members if e.name in loaded]
        if len(members) < 2:
            continue
        newest = max(members, key=lambda e: max((v for v in versions if e.matches(v)), default=versions[0]))
        reference: dict[str, list[Hunk]] = {}
        for fp in loaded[newest.name].files:
            reference.setdefault(fp.path, []).extend(fp.hunks)
        for entry in members:
            if entry is newest:
                continue
            for fp in loaded[entry.name].files:
                for i, other in _counterparts(list(fp.hunks), reference.get(fp.path, [])).items():
                    hunk = fp.hunks[i]
                    if _added(other) != _added(hunk):
                        pairs.append((entry.name, newest.name, fp.path, hunk, other))
    return pairs


def _committed(series: Series) -> dict[str, Patch] | None:
    """The series' patches as committed (HEAD of the repository holding them); None outside git."""
    top = git(series.directory, "rev-parse", "--show-toplevel", check=False)
    if not top or not git(series.directory, "rev-parse", "-q", "--verify", "HEAD", check=False):
        return None
    out = {}
    for entry in series.entries:
        rel = os.path.relpath((series.directory / entry.name).resolve(), Path(top).resolve())
        raw = blob(Path(top), "HEAD", rel) if not rel.startswith("..") else None
        if raw is None:
            continue
        try:
            out[entry.name] = parse_patch_text(raw, series.directory / entry.name, entry.name)
        except KettaError:
            continue
    return out or None  # nothing of it committed (an untracked copy): no baseline


def _drift(series: Series, loaded: dict[str, Patch]) -> list[Finding]:
    """Rule ``variant-drift`` (warning): a hunk of one variant whose counterpart in the newest variant
    (the same place, by its context and removed lines) adds other lines: an edit made to one variant
    and not carried to the other. A difference the committed series already had is on purpose (the
    variants exist because the releases differ) and is not reported again; outside a git repository
    there is nothing to tell the two apart and the rule says nothing."""
    committed = _committed(series)
    if committed is None:
        return []
    known = {(name, path, _added(hunk), _added(other)) for name, _, path, hunk, other in _drift_pairs(series, committed)}
    findings = []
    for name, newest, path, hunk, other in _drift_pairs(series, loaded):
        if (name, path, _added(hunk), _added(other)) in known:
            continue
        findings.append(Finding(
            "variant-drift", series.directory / name, hunk.patch_line,
            f"hunk #{hunk.index} of {path} adds other lines than its counterpart, hunk #{other.index} of {newest}, "
            "and the committed series did not differ there: carry the edit to this variant too (or commit the "
            "difference if it is meant)", severity="warning"))
    return findings


def _field_line(path: Path, name: str) -> int | None:
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if line.startswith(f"{name}:"):
            return number
        if not line:
            return None
    return None


def _first_difference(have: bytes, want: bytes) -> int:
    a, b = have.split(b"\n"), want.split(b"\n")
    for number, (x, y) in enumerate(zip(a, b), 1):
        if x != y:
            return number
    return min(len(a), len(b)) + 1




def exit_code(findings: list[Finding]) -> int:
    """The exit code of a lint run: 0 with no errors, 3 when every error is about the upstream source
    (a release could not be fetched), else 4."""
    errors = [f for f in findings if f.severity == "error"]
    if errors and all(f.rule == "source" for f in errors):
        return EXIT_SOURCE
    return EXIT_CHECK if errors else 0
