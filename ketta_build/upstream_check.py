"""``ketta-build upstream check``: is there a release newer than the series supports, and what would it take?

For every version of the profile's distribution on the index (or tag of ``--upstream-git``) newer
than the newest supported release, in PEP 440 order: pre-release and yanked flags, a release of the
project or of the profile's other product (the same detection ``apply`` uses), and for a release a
dry-run port (the carried series applied into a throw-away tree, every patch tried) and the review
list: for every file the series touches (and the files the profile's ``[review] watch`` names),
how much upstream changed it since the newest supported release, and which functions a patch
modifies that upstream changed.

Each patch of the dry run says how many of its hunks are already upstream in the new release, and
proposes dropping it (all of them) or shrinking it (some: which hunks, by file and patch line).

Exit codes: 0 nothing new (or only the other product's releases), 10 a new release onto which the
series carries over exactly, 11 a new release that needs porting (a hunk merged or failed,
or a whole patch already upstream; a patch only partly upstream still carries over, with the
proposal to shrink it), 2 an error (index unreachable, bad input).
"""

from __future__ import annotations

import ast
import difflib
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from packaging.version import Version

from .applying import Outcome, apply_hunks, decode
from .atomic import write_atomic
from .report import counts_text
from .buildtree import ApplyOptions, apply_series, ensure_pristine_repo
from .cache import Cache
from .errors import KettaError, UpstreamError
from .gitcmd import blob
from .gitcmd import run as run_git
from .index import IndexFile, discover_index_urls, list_project_files
from .patchfile import split_lines
from .port import carried_entries
from .profile import Profile
from .series import Series, read_series
from .sources import GitSource, IndexSource, _not_server_message, check_server_tree

EXIT_NOTHING_NEW = 0
EXIT_CARRIES_OVER = 10
EXIT_NEEDS_PORTING = 11

#: ``NewRelease.kind``: a release of the project, or of the profile's other product (never ported).
RELEASE, OTHER_PRODUCT = "release", "other-product"


@dataclass
class FunctionReview:
    name: str
    patched_by: list[str]
    changed_upstream: bool

    def who(self) -> str:
        """`` (0003, 0005)``: the patches that touch the function, or empty."""
        return f" ({', '.join(self.patched_by)})" if self.patched_by else ""


@dataclass
class FileReview:
    path: str
    touched_by: list[str]
    in_checklist: bool
    added: int
    removed: int
    functions: list[FunctionReview] = field(default_factory=list)

    def facts(self) -> str:
        """``+12 -3 (checklist), patched by 0001, 0003``: what changed and who cares, after the path."""
        mark = " (checklist)" if self.in_checklist else ""
        by = f", patched by {', '.join(self.touched_by)}" if self.touched_by else ""
        return f"+{self.added} -{self.removed}{mark}{by}"


@dataclass
class PatchDryRun:
    name: str
    outcome: str
    hunks: dict[str, int]
    # How many of its hunks are already upstream there; proposal "drop" (all) or "shrink" (some, listed).
    landed_upstream: dict = field(default_factory=lambda: {"hunks": 0, "of": 0, "proposal": None, "landed": []})

    def landing_text(self) -> str | None:
        """``3 of 5 hunks landed upstream: shrink (remove hunk #1 of pkg/x.py, patch line 12)``, or None."""
        landed = self.landed_upstream
        if not landed["hunks"]:
            return None
        text = f"{landed['hunks']} of {landed['of']} hunk{'s' if landed['of'] != 1 else ''} landed upstream"
        if landed["proposal"] == "drop":
            return f"{text}: drop the patch"
        which = "; ".join(f"hunk #{h['index']} of {h['path']}, patch line {h['patch_line']}" for h in landed["landed"])
        return f"{text}: shrink it (remove {which})"


@dataclass
class NewRelease:
    version: str
    prerelease: bool
    yanked: str | None
    kind: str  # release | other-product
    detail: str | None = None
    status: str | None = None  # carries-over | needs-porting (releases of the project)
    patches: list[PatchDryRun] = field(default_factory=list)
    review: list[FileReview] = field(default_factory=list)
    issue_title: str | None = None  # the tracking issue's title (releases of the project only)


@dataclass
class CheckReport:
    newest_supported: str
    source: str
    releases: list[NewRelease]

    @property
    def exit_code(self) -> int:
        servers = [r for r in self.releases if r.kind == RELEASE]
        if not servers:
            return EXIT_NOTHING_NEW
        return EXIT_NEEDS_PORTING if any(r.status == "needs-porting" for r in servers) else EXIT_CARRIES_OVER

    def as_json(self) -> dict:
        return {"schema": "ketta-build/upstream-check/2", "exit_code": self.exit_code, **asdict(self)}


def issue_title(version: str, profile: Profile) -> str:
    """The title of the one tracking issue per new release (the upstream workflow finds it by this)."""
    return f"Upstream {profile.display} {version}: {profile.label.capitalize()} port report"


def issue_markdown(report: CheckReport, release: NewRelease, profile: Profile) -> str:
    """The tracking issue's body for one new release: dry-run port and review list."""
    flags = [f for f, on in (("pre-release", release.prerelease), ("yanked", release.yanked is not None)) if on]
    verdict = {"carries-over": "the series carries over exactly", "needs-porting": "the series needs porting"}
    lines = [
        f"# {issue_title(release.version, profile)}",
        "",
        f"{profile.release_name(release.version)}{' (' + ', '.join(flags) + ')' if flags else ''} is newer than the newest "
        f"supported release {report.newest_supported} (source: {report.source}).",
        f"Dry-run port: **{verdict.get(release.status or '', release.status)}**.",
        "",
        "| patch | outcome | hunks | landed upstream |",
        "|---|---|---|---|",
    ]
    for p in release.patches:
        lines.append(f"| `{p.name}` | {p.outcome} | {counts_text(p.hunks)} | {p.landing_text() or '-'} |")
    lines += ["", "## Review list (files the series touches and the profile watches)", ""]
    for f in release.review:
        lines.append(f"- `{f.path}`: {f.facts()}")
        lines += [f"  - `{fn.name}`: {'**changed upstream**' if fn.changed_upstream else 'unchanged'}{fn.who()}"
                  for fn in f.functions]
    return "\n".join(lines) + "\n"


def write_issue_bodies(report: CheckReport, out_dir: Path, profile: Profile) -> list[Path]:
    """``<version>.md`` per new release of ``profile``'s project, written whole (temp file, then rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for release in report.releases:
        if release.kind != RELEASE:
            continue
        path = out_dir / f"{release.version}.md"
        write_atomic(path, issue_markdown(report, release, profile).encode())
        written.append(path)
    return written


def _index_versions(index_url: str | None, project: str) -> dict[Version, list[IndexFile]]:
    """Every version of ``project`` on every index asked (pip looks at them all, so does this), with its files."""
    found: dict[Version, list[IndexFile]] = {}
    urls = discover_index_urls(index_url)
    listed = False
    for url in urls:
        files = list_project_files(url, project)
        listed = listed or files is not None
        for f in files or []:
            if f.version is not None:
                found.setdefault(f.version, []).append(f)
    if not listed:  # "nothing newer" would be a lie: nobody was asked who knows the project
        raise UpstreamError(f"no index asked ({', '.join(urls)}) has a project called {project}: check --index-url "
                            "or pip's configuration")
    return found


def _git_versions(url: str) -> dict[Version, str]:
    proc = run_git(Path.cwd(), "ls-remote", "--tags", "--", url)
    if proc.returncode != 0:
        last = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or proc.returncode
        raise KettaError(f"cannot list the tags of {url}: {last}")
    out = {}
    for line in proc.stdout.decode("utf-8", errors="surrogateescape").splitlines():
        ref = line.split("\t", 1)[1]
        if ref.endswith("^{}"):
            continue
        tag = ref.removeprefix("refs/tags/")
        try:
            out[Version(tag.lstrip("vV"))] = tag
        except Exception:
            continue
    return out


def check_upstream(series_dir: Path, *, cache: Cache | None = None, index_url: str | None = None,
                   upstream_git: str | None = None, progress=lambda _: None) -> CheckReport:
    cache = cache or Cache()
    series = read_series(series_dir)
    newest = series.releases.newest.version
    profile = series.profile
    releases: list[NewRelease] = []
    if upstream_git:
        tags = {v: t for v, t in _git_versions(upstream_git).items() if v > newest}
        for version in sorted(tags):
            progress(f"reading {profile.name} {version} from {upstream_git} ({tags[version]})")
            source = GitSource(upstream_git, tags[version], profile)
            item = NewRelease(str(version), version.is_prerelease, None, RELEASE,
                              issue_title=issue_title(str(version), profile))
            work = Path(tempfile.mkdtemp(prefix="ketta-check-"))
            try:
                try:
                    release = source.resolve(version)
                    source.export(release, work / "tree")
                    check_server_tree(work / "tree", f"{upstream_git}@{tags[version]}", profile)
                except KettaError as exc:
                    item.kind, item.detail, item.issue_title = OTHER_PRODUCT, exc.message, None
                if item.kind == RELEASE:
                    tree = work / "tree"
                    _dry_run(item, series, release, source, cache, index_url, progress,
                             read_new=lambda path: (tree / path).read_text(errors="replace") if (tree / path).is_file() else None)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            releases.append(item)
        return CheckReport(str(newest), upstream_git, releases)

    progress(f"asking {index_url or 'the package index'} for {profile.name}'s releases")
    found = _index_versions(index_url, profile.project)
    for version in sorted(v for v in found if v > newest):
        files = found[version]
        yanked = next((f.yanked for f in files if f.yanked is not None), None)
        why = _not_server_message(version, files, series.releases)
        item = NewRelease(str(version), version.is_prerelease, yanked, OTHER_PRODUCT if why else RELEASE, why,
                          issue_title=None if why else issue_title(str(version), profile))
        other = profile.other_product.name if profile.other_product else "another product"
        kind = f"a {profile.release_word}"
        progress(f"{profile.name} {version}: {f'{other}, nothing to port' if why else kind}")
        if item.kind == RELEASE:
            source = IndexSource(cache, index_url, progress=progress, releases=series.releases, allow_unsupported=True)
            _dry_run(item, series, source.resolve(version), source, cache, index_url, progress)
        releases.append(item)
    return CheckReport(str(newest), index_url or ", ".join(discover_index_urls(None)), releases)


def _dry_run(item: NewRelease, series: Series, release, source, cache: Cache, index_url, progress, read_new=None) -> None:
    new = Version(item.version)
    entries = carried_entries(series, new)
    work = Path(tempfile.mkdtemp(prefix="ketta-check-"))
    try:
        progress(f"dry-run port onto {series.profile.name} {new}")
        report = apply_series(release, source, series, work / "tree",
                              options=ApplyOptions(keep_going=True, assume_resolved=True), cache=cache,
                              base_source=IndexSource(cache, index_url, allow_unsupported=True, releases=series.releases),
                              entries=entries, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    exact = True
    for r in report.results:
        item.patches.append(PatchDryRun(r.name, r.outcome.value, r.hunk_counts, r.landing.as_json()))
        if r.outcome not in (Outcome.CLEAN, Outcome.OFFSET):
            exact = False
    item.status = "carries-over" if exact else "needs-porting"
    if read_new is None:
        repo = ensure_pristine_repo(release, source, cache)
        read_new = (lambda path: _blob(repo, release.version, path)) if repo else (lambda path: None)
    item.review = review_list(series, entries, read_new, cache, index_url)


def _changed_old_lines(old: list[str], new: list[str]) -> list[tuple[int, int]]:
    """1-based [start, end] ranges of the old file that upstream replaced or deleted (insertions: the line before)."""
    out = []
    for tag, i1, i2, _j1, _j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        out.append((i1 + 1, max(i2, i1 + 1)))
    return out


def _functions(source: str) -> list[tuple[str, int, int]]:
    """(qualified name, first line, last line) of every def and class in a Python file."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    out = []

    def walk(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                out.append((name, child.lineno, child.end_lineno or child.lineno))
                walk(child, name + ".")

    walk(tree, "")
    return out


def _innermost(functions: list[tuple[str, int, int]], line: int) -> tuple[str, int, int] | None:
    inside = [f for f in functions if f[1] <= line <= f[2]]
    return min(inside, key=lambda f: f[2] - f[1]) if inside else None


def _blob(repo: Path, version: Version, path: str) -> str | None:
    content = blob(repo, f"upstream/{version}", path)
    return decode(content) if content is not None else None


def _natural(name: str) -> tuple:
    """Sort key: the numbers in a name compared as numbers (``lines 2-8`` before ``lines 12-18``)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part)


def review_list(series: Series, entries, read_new, cache: Cache, index_url) -> list[FileReview]:
    """Per file the series touches (and the files the profile watches): upstream's change and the patched functions it hit.

    ``read_new(path)`` gives a file of the new release (None if it has none).
    """
    newest = series.releases.newest.version
    old_source = IndexSource(cache, index_url, allow_unsupported=True, releases=series.releases)
    old_repo = ensure_pristine_repo(old_source.resolve(newest), old_source, cache)
    if old_repo is None:
        return []
    patches = {e.name: series.load(e) for e in entries}
    touched: dict[str, list[str]] = {}
    for name, patch in patches.items():
        for fp in patch.files:
            touched.setdefault(fp.path, []).append(name)
    reviews = []
    watch = dict(series.profile.watch)
    for path in sorted(set(touched) | set(watch)):
        old = _blob(old_repo, newest, path)
        new = read_new(path)
        if old is None and new is None:
            continue
        old_lines, new_lines = split_lines(old or ""), split_lines(new or "")
        changed = _changed_old_lines(old_lines, new_lines)
        added = sum(1 for line in difflib.ndiff(old_lines, new_lines) if line.startswith("+ "))
        removed = sum(1 for line in difflib.ndiff(old_lines, new_lines) if line.startswith("- "))
        review = FileReview(path, touched.get(path, []), path in watch, added, removed)
        functions = _functions(old or "") if path.endswith(".py") else []
        hit: dict[str, FunctionReview] = {}
        for name in touched.get(path, []):
            for fp in patches[name].files:
                if fp.path != path or fp.is_new:
                    continue
                _, results = apply_hunks(old_lines, fp.hunks)
                for hunk, result in zip(fp.hunks, results):
                    if result.applied_at is None:
                        continue
                    span = (result.applied_at, result.applied_at + max(len(hunk.old_lines), 1) - 1)
                    func = _innermost(functions, span[0]) if functions else None
                    label = func[0] if func else f"lines {span[0]}-{span[1]}"
                    rng = (func[1], func[2]) if func else span
                    entry = hit.setdefault(label, FunctionReview(label, [], False))
                    if name not in entry.patched_by:
                        entry.patched_by.append(name)
                    entry.changed_upstream |= any(a <= rng[1] and b >= rng[0] for a, b in changed)
        for wanted in watch.get(path, ()):
            for qual, first, last in functions:
                if qual.split(".")[-1] == wanted and qual not in hit:
                    hit[qual] = FunctionReview(qual, [], any(a <= last and b >= first for a, b in changed))
        review.functions = sorted(hit.values(), key=lambda f: _natural(f.name))
        reviews.append(review)
    return reviews
