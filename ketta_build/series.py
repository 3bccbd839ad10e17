"""The ordered patch series: ``patches/series`` plus the ``.diff`` files it names.

Series file format, one entry per line::

    # comment (also after an entry)
    0001-handles-use-provider-name.diff
    0004-hard-delete.diff          [mypkg>=0.16.2]
    0004-hard-delete-0.14.diff     [mypkg>=0.14,<0.16.2]

A guard is a PEP 508 requirement on the upstream (its profile's name) in square brackets.  Entries
whose file names share the leading number (``0004-``) are *variants* of one
logical patch: at most one may be selected for any release, and the report
says which one was.  A logical patch whose guards exclude a release is
skipped for it, with the reason.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from .errors import SeriesError
from .patchfile import Patch, parse_patch
from .profile import Profile, load_profile
from .releases import SupportedReleases, load_releases

SERIES_FILE = "series"
PATCH_SUFFIXES = (".diff", ".patch")
_ENTRY_RE = re.compile(r"^(?P<name>\S+)(?:\s+\[(?P<guard>[^\]]*)\])?\s*$")
_GROUP_RE = re.compile(r"^(\d+)-")
_VERSION_SUFFIX = re.compile(r"-\d+(?:\.\d+)+$")


def variant_name(name: str, version) -> str:
    """The file name of a variant of patch ``name`` that starts at ``version``:
    ``0003-keys-from-database.diff`` (or ``…-0.16.2.diff``) -> ``0003-keys-from-database-0.16.9.diff``."""
    stem = _VERSION_SUFFIX.sub("", name.rsplit(".", 1)[0])
    return f"{stem}-{version}.diff"


@dataclass(frozen=True)
class SeriesEntry:
    name: str
    guard: SpecifierSet | None
    guard_text: str | None
    line: int  # line in the series file
    group: str  # logical patch id: the leading number, or the name itself

    def matches(self, version: Version) -> bool:
        return self.guard is None or self.guard.contains(version, prereleases=True)


@dataclass(frozen=True)
class Selection:
    """What the series means for one release."""

    entry: SeriesEntry
    selected: bool
    reason: str
    variants: tuple[str, ...]  # other entries of the same logical patch


@dataclass(frozen=True)
class Series:
    directory: Path
    entries: tuple[SeriesEntry, ...]

    @property
    def series_file(self) -> Path:
        return self.directory / SERIES_FILE

    def groups(self) -> dict[str, list[SeriesEntry]]:
        return _group(self.entries)

    @property
    def profile(self) -> Profile:
        """The upstream profile beside the series (the default profile without one); needs no releases.toml."""
        return load_profile(self.directory)

    def explain(self, version: Version) -> list[Selection]:
        """For every entry: selected or not for ``version``, and why."""
        groups = self.groups()
        name = load_profile(self.directory).name
        result = []
        for entry in self.entries:
            siblings = groups[entry.group]
            others = tuple(e.name for e in siblings if e is not entry)
            matching = [e for e in siblings if e.matches(version)]
            if len(matching) > 1:
                names = ", ".join(f"{e.name} (line {e.line})" for e in matching)
                raise SeriesError(
                    f"variants of patch {entry.group} overlap for {name} {version}: {names}; make their guards disjoint",
                    path=self.series_file,
                    line=matching[1].line,
                )
            if entry.matches(version):
                why = "no guard" if entry.guard is None else f"{name} {version} matches [{entry.guard_text}]"
                if others:
                    why += f"; variant chosen over {', '.join(others)}"
                result.append(Selection(entry, True, why, others))
            else:
                why = f"{name} {version} is outside [{entry.guard_text}]"
                if matching:
                    why += f"; {matching[0].name} is used instead"
                elif others:
                    why += "; no variant of this patch serves this release"
                result.append(Selection(entry, False, why, others))
        return result

    def select(self, version: Version) -> list[SeriesEntry]:
        return [s.entry for s in self.explain(version) if s.selected]

    def load(self, entry: SeriesEntry) -> Patch:
        path = self.directory / entry.name
        _refuse_link(path, entry, self.series_file)
        return parse_patch(path, entry.name)

    @property
    def releases(self) -> SupportedReleases:
        """The releases this series supports (``releases.toml`` beside the series file)."""
        return load_releases(self.directory)

    def coverage_problems(self, releases: list[Version] | None = None) -> list[str]:
        """Overlapping variants for any supported release (each a one-line message)."""
        problems = []
        for version in releases or self.releases.versions:
            try:
                self.explain(version)
            except SeriesError as exc:
                problems.append(str(exc))
        return problems


def guard_name(directory: Path) -> str:
    """The name guards in ``directory``'s series are on: the upstream's normalised distribution name."""
    return load_profile(directory).project


def _parse_guard(text: str, *, source: Path, line: int, project: str) -> SpecifierSet:
    from packaging.requirements import InvalidRequirement, Requirement  # only a series with guards needs it

    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise SeriesError(f"bad version guard [{text}]: {exc}", path=source, line=line) from None
    if canonicalize_name(req.name) != project:
        raise SeriesError(f"version guard must be on '{project}', not '{req.name}' (e.g. [{project}>=1.2,<1.4])",
                          path=source, line=line)
    if req.extras or req.marker or req.url:
        raise SeriesError(f"version guard [{text}] may only hold version specifiers", path=source, line=line)
    if not str(req.specifier):
        raise SeriesError(f"version guard [{text}] has no version specifier", path=source, line=line)
    return req.specifier


def read_series(directory: Path) -> Series:
    """Parse and cross-check ``directory/series`` against the files on disk."""
    series_file = directory / SERIES_FILE
    if not directory.is_dir():
        raise SeriesError("patch directory does not exist", path=directory)
    if not series_file.is_file():
        raise SeriesError("series file is missing (one patch file name per line)", path=series_file)
    real = series_file.resolve()
    if real.parent != directory.resolve():
        raise SeriesError(f"is a symlink to {real}, outside {directory}: the series is read only from its own "
                          "directory", path=series_file)
    raw = series_file.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raise SeriesError("the file starts with a UTF-8 byte-order mark (an editor added it); save it without one",
                          path=series_file, line=1)
    if b"\r" in raw:
        raise SeriesError("CRLF line endings (the file was converted); convert it back to LF (dos2unix)",
                          path=series_file, line=raw[: raw.index(b"\r")].count(b"\n") + 1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SeriesError("series file is not valid UTF-8", path=series_file, line=raw[: exc.start].count(b"\n") + 1) from None
    series = parse_series(text, directory, present=lambda name: (directory / name).is_file())
    for entry in series.entries:
        _refuse_link(directory / entry.name, entry, series_file)
    listed = {e.name for e in series.entries}
    for candidate in sorted(directory.iterdir()):
        if candidate.is_file() and candidate.name.endswith(PATCH_SUFFIXES) and candidate.name not in listed:
            raise SeriesError(
                f"{candidate.name} is not listed in the series: add it to {series_file} or delete it",
                path=candidate,
            )
    return series


def _refuse_link(path: Path, entry: SeriesEntry, series_file: Path) -> None:
    """A patch file is read only as a regular file of the series directory: a symlink (which could
    lead anywhere, and whose target's lines an error would quote) is refused before it is read."""
    if path.is_symlink():
        raise SeriesError(f"'{entry.name}' is a symlink (to {os.readlink(path)}); a patch file must be a regular file "
                          f"in {series_file.parent}: copy it there", path=series_file, line=entry.line)


def parse_series(text: str, directory: Path, *, present=lambda name: True) -> Series:
    """The series ``text`` says, for patch files in ``directory``; ``present(name)`` tells whether a
    listed file exists (a verb checks the series it is about to write before the files are there)."""
    series_file = directory / SERIES_FILE
    project = load_profile(directory).project  # guards are on the upstream's distribution name
    entries: list[SeriesEntry] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        m = _ENTRY_RE.match(body)
        if not m:
            raise SeriesError(
                f"cannot read entry {body[:60]!r}: expected 'NAME.diff' or 'NAME.diff [{project}>=X,<Y]'",
                path=series_file,
                line=lineno,
            )
        name = m.group("name")
        pure = PurePosixPath(name)
        if not name.isprintable():
            raise SeriesError(f"entry {name!r} holds an invisible or control character", path=series_file, line=lineno)
        if name.startswith("/") or ".." in pure.parts or len(pure.parts) != 1 or "\\" in name:
            raise SeriesError(f"entry '{name}' must be a plain file name inside {directory}", path=series_file, line=lineno)
        if not name.endswith(PATCH_SUFFIXES):
            raise SeriesError(f"entry '{name}' must end in .diff or .patch", path=series_file, line=lineno)
        if name in seen:
            raise SeriesError(f"'{name}' is listed twice (first on line {seen[name]})", path=series_file, line=lineno)
        seen[name] = lineno
        if not present(name):
            raise SeriesError(f"'{name}' is listed but {directory / name} does not exist", path=series_file, line=lineno)
        guard_text = m.group("guard")
        guard = None
        if guard_text is not None:
            guard_text = guard_text.strip()
            guard = _parse_guard(guard_text, source=series_file, line=lineno, project=project)
        gm = _GROUP_RE.match(name)
        entries.append(SeriesEntry(name, guard, guard_text, lineno, gm.group(1) if gm else name))

    for group, members in _group(entries).items():
        if len(members) > 1:
            unguarded = [e for e in members if e.guard is None]
            if unguarded:
                raise SeriesError(
                    f"'{unguarded[0].name}' is one of {len(members)} variants of patch {group} and needs a version guard",
                    path=series_file,
                    line=unguarded[0].line,
                )
    return Series(directory, tuple(entries))


def edit_series_text(text: str, *, guards: dict[str, str | None] | None = None,
                     inserts: dict[str, tuple[str, str] | list[tuple[str, str]]] | None = None,
                     appends: list[tuple[str, str]] | None = None, removes: set[str] | None = None) -> str:
    """The series file ``text`` with entries' guards replaced (``guards``: name -> guard text, None for
    none), new entries put before another (``inserts``: before -> (name, guard) or a list of them),
    entries added at the end and entries removed. Comments, blank lines and the guards' column are kept."""
    guards, inserts, removes = guards or {}, inserts or {}, removes or set()
    lines = text.splitlines()
    columns = [line.index("[") for line in lines if "[" in line.split("#", 1)[0]]
    width = (max(set(columns), key=columns.count) if columns else 41) - 1  # where most guards start
    out = []
    for line in lines:
        body, hash_, comment = line.partition("#")
        name = body.split()[0] if body.strip() else None
        if name in removes:
            continue
        if name in inserts:
            for new_name, guard in inserts[name] if isinstance(inserts[name], list) else [inserts[name]]:
                out.append(f"{new_name:<{width}} [{guard}]")
        if name in guards:
            guard = guards[name]
            entry = f"{name:<{width}} [{guard}]" if guard else name
            out.append(entry + (f"  #{comment}" if hash_ else ""))
        else:
            out.append(line)
    for name, guard in appends or []:
        out.append(f"{name:<{width}} [{guard}]")
    return "\n".join(out) + "\n"


def _group(entries: "list[SeriesEntry] | tuple[SeriesEntry, ...]") -> dict[str, list[SeriesEntry]]:
    out: dict[str, list[SeriesEntry]] = {}
    for entry in entries:
        out.setdefault(entry.group, []).append(entry)
    return out
