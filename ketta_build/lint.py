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
``tox``           tox.ini is the one generated from ``releases.toml`` (``ketta-build port`` keeps it so).

``fix=True`` rewrites the files whose only findings are ``canonical`` into canonical form.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from .applying import Outcome, apply_hunks, decode, encode
from .buildtree import PreimageFinder
from .cache import Cache
from .errors import KettaError
from .gitdiff import canonical_diff, section_contexts, tree_of_files
from .header import render_header
from .patchfile import Patch, split_lines
from .series import Series, read_series
from .upstream import IndexSource

RULES = ("header", "why", "base-release", "variants", "whitespace", "canonical", "tox")


@dataclass(frozen=True)
class Finding:
    rule: str
    path: Path
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else str(self.path)
        return f"{where}: [{self.rule}] {self.message}"


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
                                 f"no variant of patch {group} ({names}) serves letta {', '.join(map(str, holes))}, "
                                 "between releases they do serve"))
    return found


class _Canon:
    """Pre-images at each patch's Base-Release, and the canonical text of a patch made from them."""

    def __init__(self, series: Series, cache: Cache, index_url: str | None) -> None:
        self.series = series
        self.source = IndexSource(cache, index_url, allow_unsupported=True)
        self.finder = PreimageFinder(series, {}, self.source, cache)
        self.scratch = Path(tempfile.mkdtemp(prefix="ketta-lint-"))
        subprocess.run(["git", "init", "-q", str(self.scratch)], check=True)

    def images(self, patch: Patch) -> tuple[dict, dict, list[str]]:
        """(before, after) files at the Base-Release, and why a hunk did not apply clean there."""
        before: dict[str, tuple[str, bytes]] = {}
        after: dict[str, tuple[str, bytes]] = {}
        problems = []
        for fp in patch.files:
            mode = fp.new_mode or "100644"
            if fp.is_new:
                content = b""
            else:
                content, why = self.finder(patch, fp)
                if content is None:
                    problems.append(f"{fp.path}: {why}")
                    continue
                before[fp.path] = (mode, content)
            if fp.is_deleted:
                continue
            lines, results = apply_hunks(split_lines(decode(content)), fp.hunks)
            for r in results:
                if r.outcome is not Outcome.CLEAN:
                    problems.append(f"{fp.path} hunk {r.index} (line {r.patch_line}) applies {r.label} at "
                                    f"letta {patch.header.base_release}, not clean")
            after[fp.path] = (mode, encode("".join(lines)))
        return before, after, problems

    def text(self, patch: Patch, before: dict, after: dict) -> bytes:
        diff = canonical_diff(self.scratch, tree_of_files(self.scratch, before), tree_of_files(self.scratch, after),
                              section_contexts(patch.files))
        return render_header(patch.header).encode() + diff.encode("utf-8", errors="surrogateescape")


def lint_series(series_dir: Path, *, cache: Cache | None = None, index_url: str | None = None,
                project: Path | None = None, fix: bool = False) -> tuple[list[Finding], list[Path]]:
    """Every finding in ``series_dir`` (and ``project``'s tox.ini); with ``fix``, the files rewritten."""
    findings: list[Finding] = []
    fixed: list[Path] = []
    series = read_series(series_dir)
    releases = series.releases
    versions = releases.versions
    findings += _variants(series, versions)
    canon = _Canon(series, cache or Cache(), index_url)
    for entry in series.entries:
        path = series_dir / entry.name
        try:
            patch = series.load(entry)
        except KettaError as exc:
            findings.append(Finding("header", Path(exc.path or path), exc.line, exc.message))
            continue
        findings += _why(patch, path)
        findings += _whitespace(path)
        base = patch.header.base_release
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
            findings.append(Finding("base-release", path, None, f"cannot recreate the pre-image at {base}: {exc}"))
            continue
        for problem in problems:
            findings.append(Finding("base-release", path, None, problem))
        if problems:
            continue
        wanted = canon.text(patch, before, after)
        if wanted != path.read_bytes():
            if fix:
                tmp = path.with_name(f".{path.name}.ketta-lint")
                tmp.write_bytes(wanted)
                tmp.replace(path)
                fixed.append(path)
            else:
                findings.append(Finding("canonical", path, _first_difference(path.read_bytes(), wanted),
                                        "not in export's canonical form (ketta-build lint --fix rewrites it)"))
    if project is not None:
        from .toxini import expected

        tox = project / "tox.ini"
        if not tox.is_file() or tox.read_text() != expected(project):
            findings.append(Finding("tox", tox, None, "tox.ini is not the one generated from releases.toml "
                                                      "(python -c 'from ketta_build import toxini; toxini.write(Path(\".\"))')"))
    return findings, fixed


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


