"""Hunk coverage: which hunks of the series the compatibility suites make a real server run.

``matrix --coverage`` runs a release's servers under coverage.py (:mod:`ketta_build.servercoverage`);
this module maps the lines they ran back onto each patch's added lines:

1. **Placing** (:func:`place_hunks`): the patches the series selects for the release are applied again,
   in memory and in order, to the release's pristine files, with every line tagged by the hunk that
   added it. A later patch that moves a line (lines added or removed above it) moves its tag with it; a
   later patch that changes or removes a line takes its tag away. What is left are the final line numbers
   of each hunk's added lines, checked against the build tree's file (when the two differ, e.g. the
   build needed a 3-way merge, the hunk's new lines are looked up in the file instead, and the hunk says so).
2. **Executable lines** (:func:`python_statements`): coverage.py's own parser gives the statements of
   each patched Python file. An added line counts when it belongs to a statement (a line inside a
   multi-line statement counts as that statement); comments, blank lines, docstrings and files that are
   not Python do not.
3. **Status** per hunk: ``covered`` when one of its executable added lines ran (a ``def``/``class``
   line or a decorator runs when its module is imported, so when the hunk has other executable lines,
   one of those must have run), ``not-covered`` when none did, ``not-executable`` when it has no
   executable added line.
4. **Allowed** (:func:`load_allowed`, ``compat_tests/coverage-allowed.toml``): a hunk no suite reaches,
   listed with the reason. An entry that matches only hunks that ran (or cannot run) is stale, and an
   entry that names no patch, file or hunk of the series is a mistake; both are reported.
"""

from __future__ import annotations

import ast
import html
import json
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .applying import Outcome, _find, apply_hunks, decode
from .errors import KettaError
from .gitcmd import Blobs
from .servercoverage import combine, executed_lines
from .patchfile import Hunk, Patch, split_lines
from .releases import parse_version
from .series import read_series

SCHEMA = "ketta-build/hunk-coverage/1"
ALLOWED_FILE = Path("compat_tests") / "coverage-allowed.toml"
COVERED, NOT_COVERED, NOT_EXECUTABLE = "covered", "not-covered", "not-executable"
# coverage.py's default exclusion: a line so marked is not a statement in its reports either.
_EXCLUDE = r"#\s*(pragma|PRAGMA)[:\s]?\s*(no|NO)\s*(cover|COVER)"


class CoverageAllowedError(KettaError):
    """compat_tests/coverage-allowed.toml is malformed."""


class HunkPlacementError(KettaError):
    """A hunk's lines cannot be told apart (the patch text and its parsed lines disagree)."""


# --------------------------------------------------------------------------- placing


@dataclass
class PlacedHunk:
    """One hunk and where its added lines are in the patched file (1-based; those a later patch changed are gone)."""

    patch: str
    path: str
    index: int
    patch_line: int
    added: int
    lines: list[int] = field(default_factory=list)
    note: str | None = None


def hunk_kinds(hunk: Hunk) -> list[str]:
    """``' '``, ``'-'`` or ``'+'`` for each line of the hunk's body, in order."""
    body = hunk.text.split("\n")[1:]
    if body and body[-1] == "":
        body.pop()
    kinds = [line[:1] or " " for line in body if not line.startswith("\\")]
    if (sum(k in " -" for k in kinds) != len(hunk.old_lines) or sum(k in " +" for k in kinds) != len(hunk.new_lines)
            or any(k not in " -+" for k in kinds)):
        raise HunkPlacementError(f"hunk #{hunk.index} (patch line {hunk.patch_line}): its text does not match its lines")
    return kinds


def place_hunks(patches: Sequence[Patch], pristine: Callable[[str], bytes | None],
                final: Callable[[str], bytes | None]) -> list[PlacedHunk]:
    """Every hunk of ``patches`` (in series order) with the final line numbers of its added lines.

    ``pristine(path)`` reads a file of the unpatched release, ``final(path)`` the build tree's file (None:
    no such file)."""
    placed: list[PlacedHunk] = []
    hunks: list[Hunk] = []
    lines_of: dict[str, list[str] | None] = {}
    tags_of: dict[str, list[int | None]] = {}
    unsure: set[str] = set()

    def current(path: str) -> list[str] | None:
        if path not in lines_of:
            content = pristine(path)
            lines_of[path] = None if content is None else split_lines(decode(content))
            tags_of[path] = [None] * len(lines_of[path] or [])
        return lines_of[path]

    for patch in patches:
        for fp in patch.files:
            ids = []
            for hunk in fp.hunks:
                ids.append(len(placed))
                hunks.append(hunk)
                placed.append(PlacedHunk(patch.name, fp.path, hunk.index, hunk.patch_line, hunk_kinds(hunk).count("+")))
            lines = current(fp.path)
            if fp.is_new:
                lines_of[fp.path] = [line for hunk in fp.hunks for line in hunk.new_lines]
                tags_of[fp.path] = [hid for hid, hunk in zip(ids, fp.hunks) for _ in hunk.new_lines]
                continue
            if lines is None:
                for hid in ids:
                    placed[hid].note = "the file does not exist where the patch applies"
                continue
            new_lines, results = apply_hunks(lines, fp.hunks)
            tags = tags_of[fp.path]
            for result, hid, hunk in zip(results, ids, fp.hunks):
                kinds = hunk_kinds(hunk)
                pos = (result.applied_at or 1) - 1
                if result.outcome in (Outcome.CLEAN, Outcome.OFFSET):
                    old = iter(tags[pos:pos + len(hunk.old_lines)])
                    new: list[int | None] = []
                    for kind in kinds:
                        if kind != "+":
                            tag = next(old)
                            if kind == " ":
                                new.append(tag)
                        else:
                            new.append(hid)
                    tags[pos:pos + len(hunk.old_lines)] = new
                elif result.outcome is Outcome.ALREADY_UPSTREAM:
                    at = pos
                    for kind in kinds:
                        if kind == "+":
                            tags[at] = hid
                        if kind != "-":
                            at += 1
                    placed[hid].note = "already upstream: its lines are upstream's"
                else:  # the build needed more than an exact application (a 3-way merge)
                    unsure.add(fp.path)
            lines_of[fp.path] = None if fp.is_deleted else new_lines
            tags_of[fp.path] = [] if fp.is_deleted else tags

    for path, lines in lines_of.items():
        content = final(path)
        text = None if content is None else decode(content)
        if lines is not None and text is not None and path not in unsure and "".join(lines) == text:
            for number, tag in enumerate(tags_of[path], start=1):
                if tag is not None:
                    placed[tag].lines.append(number)
            continue
        if text is None:
            continue  # deleted (or never there): nothing of the path's hunks is left
        found = split_lines(text)
        for hid, hunk in enumerate(hunks):
            if placed[hid].path != path:
                continue
            at = _find(found, hunk.new_lines, max(hunk.old_start - 1, 0), 0)
            kinds = [k for k in hunk_kinds(hunk) if k != "-"]
            if at is None or not hunk.new_lines:
                placed[hid].lines, placed[hid].note = [], "its new lines are not in the build tree's file"
            else:
                placed[hid].lines = [at + 1 + k for k, kind in enumerate(kinds) if kind == "+"]
                placed[hid].note = "found by its new lines: the build tree's file is not an exact application of the patches"
    for hunk in placed:
        if hunk.note is None and len(hunk.lines) < hunk.added:
            hunk.note = f"{hunk.added - len(hunk.lines)} of its {hunk.added} added lines were changed by a later patch"
    return placed


# --------------------------------------------------------------------------- executable lines


@dataclass(frozen=True)
class Statements:
    """A Python file's statements by their first lines, and how any line maps to its statement's first line."""

    statements: frozenset[int]
    definitions: frozenset[int]  # def/class statements and decorators: they run when the module is imported
    first: dict[int, int]

    def statement_of(self, line: int) -> int | None:
        first = self.first.get(line, line)
        return first if first in self.statements else None


def python_statements(source: str) -> Statements | None:
    """The statements coverage.py sees in ``source`` (None: it does not parse as Python)."""
    from coverage.exceptions import NotPython
    from coverage.parser import PythonParser

    parser = PythonParser(text=source, exclude=_EXCLUDE)
    try:
        parser.parse_source()
        tree = ast.parse(source)
    except (NotPython, SyntaxError, ValueError):
        return None
    lines = range(1, source.count("\n") + 2)
    first = {n: parser.first_line(n) for n in lines if parser.first_line(n) != n}
    defs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs.add(parser.first_line(node.lineno))
            defs.update(parser.first_line(d.lineno) for d in node.decorator_list)
    return Statements(frozenset(parser.statements), frozenset(defs), first)


# --------------------------------------------------------------------------- status


@dataclass
class HunkCoverage:
    patch: str
    path: str
    index: int
    patch_line: int
    status: str  # covered | not-covered | not-executable
    added: int  # '+' lines in the patch
    executable: int  # of those in the patched file, the ones in a statement
    executed: int  # of those, the ones that ran
    not_run: list[int] = field(default_factory=list)  # patched-file lines of executable added lines that did not run
    note: str | None = None
    allowed: str | None = None  # the allow-list's reason, for a hunk not covered


def hunk_status(hunk: PlacedHunk, statements: Statements | None, executed: set[int]) -> HunkCoverage:
    """One hunk's status from the statements of its patched file and the lines that ran there (raw line numbers
    as coverage.py records them)."""
    out = HunkCoverage(hunk.patch, hunk.path, hunk.index, hunk.patch_line, NOT_EXECUTABLE, hunk.added, 0, 0, note=hunk.note)
    if statements is None:
        return out
    ran = {statements.first.get(n, n) for n in executed}
    body_ran = False
    has_body = False
    for line in hunk.lines:
        statement = statements.statement_of(line)
        if statement is None:
            continue
        out.executable += 1
        definition = statement in statements.definitions
        has_body = has_body or not definition
        if statement in ran:
            out.executed += 1
            body_ran = body_ran or not definition
        else:
            out.not_run.append(line)
    if out.executable:
        out.status = COVERED if (body_ran or (out.executed and not has_body)) else NOT_COVERED
        if out.status == NOT_COVERED and out.executed:
            out.note = "; ".join(filter(None, [out.note, "only its def/class lines ran (when the module was imported)"]))
    return out


# --------------------------------------------------------------------------- the allow-list


@dataclass(frozen=True)
class Allowance:
    """A hunk (or every hunk of a file in a patch) no suite reaches, and why."""

    patch: str
    file: str
    hunk: int | None
    reason: str
    releases: tuple[str, ...] = ()  # empty: every release

    def matches(self, hunk: HunkCoverage | PlacedHunk, version: str) -> bool:
        return (hunk.patch == self.patch and hunk.path == self.file and self.hunk in (None, hunk.index)
                and (not self.releases or str(parse_version(version)) in self.releases))

    def describe(self) -> str:
        return f"{self.patch} {self.file}" + (f" hunk #{self.hunk}" if self.hunk is not None else " (every hunk)")


def load_allowed(path: Path) -> list[Allowance]:
    """The entries of ``coverage-allowed.toml`` (none when there is no such file)."""
    if not path.is_file():
        return []
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise CoverageAllowedError(f"not TOML: {exc}", path=path) from None
    out = []
    for number, entry in enumerate(data.get("allowed", []), start=1):
        where = f"[[allowed]] entry {number}"
        if not isinstance(entry, dict):
            raise CoverageAllowedError(f"{where} is not a table", path=path)
        unknown = set(entry) - {"patch", "file", "hunk", "reason", "releases"}
        if unknown:
            raise CoverageAllowedError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; "
                                       "known: patch, file, hunk, reason, releases", path=path)
        for key in ("patch", "file", "reason"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise CoverageAllowedError(f"{where}: '{key}' must be a non-empty string", path=path)
        hunk = entry.get("hunk")
        if hunk is not None and (not isinstance(hunk, int) or isinstance(hunk, bool) or hunk < 1):
            raise CoverageAllowedError(f"{where}: 'hunk' is the hunk's number in its file (1, 2, ...)", path=path)
        releases = entry.get("releases", [])
        if not isinstance(releases, list) or not all(isinstance(r, str) for r in releases):
            raise CoverageAllowedError(f"{where}: 'releases' must be a list of release strings", path=path)
        out.append(Allowance(entry["patch"], entry["file"], hunk, entry["reason"].strip(),
                             tuple(str(parse_version(r)) for r in releases)))
    return out


def allowance_problems(allowed: Iterable[Allowance], patches: dict[str, Patch]) -> list[str]:
    """Entries that name no patch of the series, no file of the patch, or no hunk of the file."""
    problems = []
    for entry in allowed:
        patch = patches.get(entry.patch)
        section = next((fp for fp in patch.files if fp.path == entry.file), None) if patch else None
        if patch is None:
            problems.append(f"{entry.describe()}: no such patch in the series")
        elif section is None:
            problems.append(f"{entry.describe()}: the patch does not touch {entry.file}")
        elif entry.hunk is not None and entry.hunk > len(section.hunks):
            problems.append(f"{entry.describe()}: the patch has {len(section.hunks)} hunk(s) in {entry.file}")
    return problems


# --------------------------------------------------------------------------- a release's record


def release_coverage(version: str, placed: Sequence[PlacedHunk], read_final: Callable[[str], bytes | None],
                     executed: dict[str, set[int]], allowed: Sequence[Allowance], *,
                     patch_order: Sequence[str] | None = None) -> dict:
    """The ``coverage`` record of one release (schema ``ketta-build/hunk-coverage/1``)."""
    version = str(parse_version(version))
    statements: dict[str, Statements | None] = {}
    results: list[HunkCoverage] = []
    for hunk in placed:
        if hunk.path not in statements:
            content = read_final(hunk.path) if hunk.path.endswith(".py") else None
            statements[hunk.path] = python_statements(decode(content)) if content is not None else None
        result = hunk_status(hunk, statements[hunk.path], executed.get(hunk.path, set()))
        if result.status == NOT_COVERED:
            result.allowed = next((a.reason for a in allowed if a.matches(result, version)), None)
        results.append(result)
    stale = []
    for entry in allowed:
        matched = [r for r in results if entry.matches(r, version)]
        if matched and not any(r.status == NOT_COVERED for r in matched):
            stale.append({"patch": entry.patch, "file": entry.file, "hunk": entry.hunk, "reason": entry.reason,
                          "statuses": sorted({r.status for r in matched})})
    order = list(patch_order or dict.fromkeys(h.patch for h in placed))
    patches = []
    for name in order:
        mine = [r for r in results if r.patch == name]
        patches.append({"name": name, "hunks": len(mine), **_counts(mine), "detail": [asdict(r) for r in mine]})
    return {"schema": SCHEMA, "release": version, "summary": {"hunks": len(results), **_counts(results),
                                                              "stale_allowances": len(stale)},
            "patches": patches, "stale_allowances": stale}


def _counts(results: Sequence[HunkCoverage]) -> dict[str, int]:
    uncovered = [r for r in results if r.status == NOT_COVERED]
    return {"covered": sum(r.status == COVERED for r in results), "not_covered": len(uncovered),
            "not_executable": sum(r.status == NOT_EXECUTABLE for r in results),
            "allowed": sum(r.allowed is not None for r in uncovered),
            "unlisted": sum(r.allowed is None for r in uncovered)}


def measure_release(version: str, *, tree: Path, series_dir: Path, data_root: Path, allowed_file: Path) -> dict:
    """Combine a release's data files and write its record to ``<data_root>/<release>.json``; returns it."""
    version = str(parse_version(version))
    series = read_series(series_dir)
    entries = series.select(parse_version(version))
    patches = [series.load(e) for e in entries]
    allowed = load_allowed(allowed_file)
    everything = {e.name: series.load(e) for e in series.entries}
    combined = combine(data_root, version)
    executed = executed_lines(combined[0], [tree]) if combined else {}

    def final(path: str) -> bytes | None:
        target = tree / path
        return target.read_bytes() if target.is_file() else None

    with Blobs(tree) as blobs:
        placed = place_hunks(patches, lambda path: blobs.get(f"upstream/{version}", path), final)
    record = release_coverage(version, placed, final, executed, allowed, patch_order=[p.name for p in patches])
    record["processes"] = combined[1] if combined else 0
    record["data_file"] = str(combined[0].relative_to(data_root.parent)) if combined else None
    record["allowed_file"] = str(allowed_file)
    record["allowance_problems"] = allowance_problems(allowed, everything)
    if not combined:
        record["note"] = "no server process wrote coverage data: nothing ran, or the servers were killed before they could save it"
    out = data_root / f"{version}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    return record


def records(report_dir: Path) -> dict[str, dict]:
    """The per-release records a ``matrix --coverage`` run left in ``report_dir/coverage``."""
    found = {}
    for path in sorted((report_dir / "coverage").glob("*.json"), key=lambda p: parse_version(p.stem)):
        data = json.loads(path.read_text())
        if data.get("schema") == SCHEMA:
            found[path.stem] = data
    return found


def gaps(coverage: dict[str, dict]) -> list[str]:
    """What makes a ``matrix --coverage`` run's answer "no", one line each: a hunk no suite ran that
    the allow-list does not give a reason for, an allowance that no longer matches an uncovered hunk
    (stale), an allowance naming no patch, file or hunk of the series, and a release no server
    process reported for."""
    found = []
    for release, record in coverage.items():
        if not record.get("processes"):
            found.append(f"{release}: {record.get('note') or 'no coverage data'}")
        for h in _uncovered(record):
            if h.get("allowed") is None:
                found.append(f"{release}: {_hunk_name(h)} ran in no suite and is not in {record.get('allowed_file')}")
        for st in record.get("stale_allowances", []):
            found.append(f"{release}: stale allowance {st['patch']} {st['file']}"
                         + (f" hunk #{st['hunk']}" if st.get("hunk") is not None else "")
                         + f" (its hunks are {', '.join(st['statuses'])})")
        found.extend(f"{release}: {problem}" for problem in record.get("allowance_problems", []))
    return found


# --------------------------------------------------------------------------- report sections


def _uncovered(record: dict) -> list[dict]:
    return [h for p in record.get("patches", []) for h in p.get("detail", []) if h["status"] == NOT_COVERED]


def _hunk_name(h: dict) -> str:
    return f"{h['patch']} {h['path']} hunk #{h['index']} (patch line {h['patch_line']})"


def markdown_lines(coverage: dict[str, dict]) -> list[str]:
    """The Markdown section: per release, every patch's hunks covered, and each hunk no suite ran."""
    if not coverage:
        return []
    lines = ["", "## Hunk coverage (--coverage)"]
    for version in sorted(coverage, key=parse_version):
        r = coverage[version]
        s = r["summary"]
        lines += ["", f"### {version}: {s['covered']} of {s['covered'] + s['not_covered']} executable hunks covered "
                      f"({s['not_executable']} not executable; {s['allowed']} allowed, {s['unlisted']} not listed; "
                      f"{r.get('processes', 0)} measured processes)", ""]
        if r.get("note"):
            lines += [f"**{r['note']}**", ""]
        lines += ["| patch | hunks | covered | not covered (allowed) | not executable |", "|---|---|---|---|---|"]
        for p in r["patches"]:
            lines.append(f"| {p['name']} | {p['hunks']} | {p['covered']} | {p['not_covered']} ({p['allowed']}) | "
                         f"{p['not_executable']} |")
        uncovered = _uncovered(r)
        if uncovered:
            lines += ["", "Not covered by any suite:", ""]
            for h in uncovered:
                why = f"allowed: {h['allowed']}" if h["allowed"] else "**not listed in the allow-list**"
                lines.append(f"- {_hunk_name(h)}: {h['executed']}/{h['executable']} executable lines ran; {why}")
        for st in r.get("stale_allowances", []):
            lines.append(f"- **stale allowance** {st['patch']} {st['file']}"
                         f"{' hunk #' + str(st['hunk']) if st['hunk'] else ''}: now {', '.join(st['statuses'])} "
                         f"(listed because: {st['reason']})")
        for problem in r.get("allowance_problems", []):
            lines.append(f"- **allow-list entry names nothing**: {problem}")
    return lines


def html_section(coverage: dict[str, dict]) -> str:
    if not coverage:
        return ""
    parts = ["<h2>Hunk coverage (--coverage)</h2>"]
    for version in sorted(coverage, key=parse_version):
        r = coverage[version]
        s = r["summary"]
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(p['name'])}</th><td>{p['hunks']}</td><td>{p['covered']}</td>"
            f"<td>{p['not_covered']} ({p['allowed']} allowed)</td><td>{p['not_executable']}</td></tr>" for p in r["patches"])
        items = "".join(
            f"<li><code>{html.escape(_hunk_name(h))}</code>: {h['executed']}/{h['executable']} executable lines ran; "
            + (f"allowed: {html.escape(h['allowed'])}" if h["allowed"] else "<b>not listed in the allow-list</b>") + "</li>"
            for h in _uncovered(r))
        items += "".join(
            f"<li><b>stale allowance</b> <code>{html.escape(st['patch'])} {html.escape(st['file'])}"
            f"{' hunk #' + str(st['hunk']) if st['hunk'] else ''}</code>: now {html.escape(', '.join(st['statuses']))} "
            f"(listed because: {html.escape(st['reason'])})</li>" for st in r.get("stale_allowances", []))
        items += "".join(f"<li><b>allow-list entry names nothing</b>: {html.escape(p)}</li>"
                         for p in r.get("allowance_problems", []))
        note = f"<p><b>{html.escape(r['note'])}</b></p>" if r.get("note") else ""
        parts.append(
            f"<h3>{html.escape(version)}: {s['covered']} of {s['covered'] + s['not_covered']} executable hunks covered "
            f"({s['not_executable']} not executable; {s['allowed']} allowed, {s['unlisted']} not listed)</h3>{note}"
            "<table><tr><th>patch</th><th>hunks</th><th>covered</th><th>not covered</th><th>not executable</th></tr>"
            f"{rows}</table>" + (f"<ul>{items}</ul>" if items else ""))
    return "".join(parts)

