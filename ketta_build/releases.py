"""Which releases of the upstream distribution the series supports.

The list is data: ``releases.toml`` beside the series file (``patches/releases.toml``), read by
every command (apply, series --check, lint, matrix, tox.ini's generated lines) and extended by
``ketta-build port``. A release of the profile's other product (a different product that took the
name over) is never served (detected in :mod:`ketta_build.sources`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from datetime import date as Date
from pathlib import Path

from packaging.version import InvalidVersion, Version

from .atomic import write_atomic
from .cache import is_sha256
from .errors import NotAServerRelease, SeriesError, UnknownRelease
from . import suiteenv
from .profile import PROFILE_FILE, Profile, default_profile, load_profile

RELEASES_FILE = "releases.toml"
UNKNOWN_DATE = "unknown"  # a release whose index gave no upload time and whose sdist carries no date


@dataclass(frozen=True)
class ServerRelease:
    version: Version
    date: str  # release date, ISO 8601, or "unknown"
    sha256: str | None = None  # the pin: the sha256 of the release's sdist (None: not pinned yet)
    line: int | None = field(default=None, compare=False)  # of its [[release]] in releases.toml

    def __str__(self) -> str:
        return str(self.version)


@dataclass(frozen=True)
class SupportedReleases:
    """The supported releases, oldest first, as read from ``path``."""

    path: Path
    releases: tuple[ServerRelease, ...]
    profile: Profile = field(default_factory=default_profile, compare=False)  # the upstream the series is kept for (upstream.toml)

    def __iter__(self):
        return iter(self.releases)

    def __len__(self) -> int:
        return len(self.releases)

    @property
    def versions(self) -> list[Version]:
        return [r.version for r in self.releases]

    @property
    def newest(self) -> ServerRelease:
        return self.releases[-1]

    def find(self, version: Version) -> ServerRelease | None:
        return next((r for r in self.releases if r.version == version), None)

    def nearest(self, version: Version) -> list[Version]:
        """The supported releases on either side of ``version`` (two from one side at the ends)."""
        below = [r.version for r in self.releases if r.version < version]
        above = [r.version for r in self.releases if r.version > version]
        if below and above:
            return [below[-1], above[0]]
        return below[-2:] if below else above[:2]

    def range_text(self) -> str:
        return f"{self.releases[0].version}–{self.releases[-1].version}"


def default_series_dir() -> Path:
    """``$KETTA_PATCHES``, else ``./patches``, else the checkout this package runs from."""
    from_env = suiteenv.path("KETTA_PATCHES")
    if from_env is not None:
        return from_env
    here = Path("patches")
    if (here / RELEASES_FILE).is_file():
        return here
    return Path(__file__).resolve().parent.parent / "patches"


_loaded: dict[tuple, SupportedReleases] = {}


def load_releases(series_dir: Path | None = None) -> SupportedReleases:
    """Read ``series_dir/releases.toml`` (default: :func:`default_series_dir`)."""
    path = (series_dir or default_series_dir()) / RELEASES_FILE
    try:
        stat = path.stat()
    except OSError:
        raise SeriesError(f"{RELEASES_FILE} is missing: it lists the upstream releases the series supports", path=path) from None
    if path.resolve().parent != path.parent.resolve():  # read only from the series' own directory
        raise SeriesError(f"is a symlink to {path.resolve()}, outside {path.parent}: the supported releases are "
                          "read only from the series' own directory", path=path)
    profile_path = path.parent / PROFILE_FILE
    profile_stat = profile_path.stat() if profile_path.exists() else None
    key = (path.resolve(), stat.st_mtime_ns, stat.st_size,
           (profile_stat.st_mtime_ns, profile_stat.st_size) if profile_stat else None)
    if key not in _loaded:
        _loaded[key] = replace(_parse(path), profile=load_profile(path.parent))
    return _loaded[key]


def _parse(path: Path) -> SupportedReleases:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise SeriesError("not valid UTF-8 (TOML is UTF-8)", path=path, line=line) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SeriesError(f"not valid TOML: {exc}", path=path, line=getattr(exc, "lineno", None)) from None
    entries = data.get("release")
    if not isinstance(entries, list) or not entries:
        raise SeriesError("expected one or more [[release]] tables with version and date", path=path)
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if line.strip() == "[[release]]"]
    releases: list[ServerRelease] = []
    for number, entry in enumerate(entries):
        line = lines[number] if number < len(lines) else None
        if not isinstance(entry, dict) or not {"version", "date"} <= set(entry) <= {"version", "date", "sha256"}:
            raise SeriesError("each [[release]] has version, date and sha256 (the pin: the sha256 of the release's "
                              "sdist), and no other key", path=path, line=line)
        try:
            version = Version(str(entry["version"]))
        except InvalidVersion:
            raise SeriesError(f"version {entry['version']!r} is not a version number", path=path, line=line) from None
        try:
            if entry["date"] != UNKNOWN_DATE:
                Date.fromisoformat(str(entry["date"]))
        except ValueError:
            raise SeriesError(f"date {entry['date']!r} is neither an ISO date (YYYY-MM-DD) nor {UNKNOWN_DATE!r}",
                              path=path, line=line) from None
        pin = entry.get("sha256")
        if pin is not None and not is_sha256(pin):
            raise SeriesError(f"sha256 {pin!r} of release {version} is not a sha256 (64 lowercase hex digits)",
                              path=path, line=line)
        if releases and version <= releases[-1].version:
            raise SeriesError(f"releases must be listed oldest first without repeats ({version} after {releases[-1].version})",
                              path=path, line=line)
        releases.append(ServerRelease(version, str(entry["date"]), pin, line))
    return SupportedReleases(path, tuple(releases))


def with_release(series_dir: Path, version: Version, date: str, sha256: str | None = None) -> bytes | None:
    """``series_dir/releases.toml`` with ``version`` (pinned to ``sha256``, its sdist's) put in version
    order, to be written by the caller; None if it is listed already."""
    current = load_releases(series_dir)
    if current.find(version):
        return None
    if date != UNKNOWN_DATE:
        Date.fromisoformat(date)
    if sha256 is not None and not is_sha256(sha256):
        raise SeriesError(f"refusing to pin {current.profile.name} {version} to {sha256!r}, which is not a sha256", path=current.path)
    releases = sorted([*current.releases, ServerRelease(version, date, sha256)], key=lambda r: r.version)
    text = current.path.read_text(encoding="utf-8")
    head = text[: text.index("[[release]]")] if "[[release]]" in text else text
    body = "\n".join(f'[[release]]\nversion = "{r.version}"\ndate = "{r.date}"\n'
                     + (f'sha256 = "{r.sha256}"\n' if r.sha256 else "") for r in releases)
    return (head + body).encode("utf-8")


def add_release(series_dir: Path, version: Version, date: str, sha256: str | None = None) -> bool:
    """Put ``version`` into ``series_dir/releases.toml`` (see :func:`with_release`); False if it is listed already."""
    content = with_release(series_dir, version, date, sha256)
    if content is None:
        return False
    write_atomic(load_releases(series_dir).path, content)
    return True


def unpinned(release: ServerRelease, releases: SupportedReleases, published: str | None = None,
             filename: str | None = None) -> SeriesError:
    """The error for a supported release that has no pin; ``published`` is what the index says its sdist's
    sha256 is, when it could be asked (to be checked before it is written down)."""
    name = releases.profile.name
    how = f"e.g. pip download --no-deps --no-binary :all: {name}=={release.version} and sha256sum"
    if published:
        what = (f'sha256 = "{published}" to its [[release]] once you checked it is the sha256 of the real '
                f"{filename or 'sdist'} (what the index publishes; {how})")
    else:
        what = f'sha256 = "<the sha256 of the sdist of {name} {release.version}>" to its [[release]] ({how})'
    return SeriesError(f"{name} {release.version} has no pin: add {what}; a release is only fetched to match its pin",
                       path=releases.path, line=release.line)


def parse_version(text: str) -> Version:
    """Parse ``0.16.8`` or ``v0.16.8``; raise UnknownRelease on garbage."""
    raw = text.strip()
    if raw[:1] in ("v", "V"):
        raw = raw[1:]
    try:
        return Version(raw)
    except InvalidVersion:
        raise UnknownRelease(f"'{text}' is not a version number (expected e.g. 0.16.8 or v0.16.8)") from None


def unknown_release(version: Version, detail: str, releases: SupportedReleases | None = None) -> UnknownRelease:
    """The error for a release Ketta does not support, naming the nearest supported ones."""
    releases = releases or load_releases()
    near = ", ".join(str(v) for v in releases.nearest(version))
    return UnknownRelease(
        f"{releases.profile.name} {version} is not a supported {releases.profile.release_word} "
        f"({detail}); nearest supported: {near} "
        f"(all: {', '.join(str(v) for v in releases.versions)})"
    )


def require_served(version: Version, releases: SupportedReleases, detail: str) -> Version:
    """``version`` if the series serves it; else the error that says why not: a release of the profile's
    other product (a different product under the same name), or a release the series does not support (``detail``
    says what the verb needs it for)."""
    if releases.find(version) is not None:
        return version
    other = releases.profile.other_product
    if other is not None and version >= other.first:
        raise NotAServerRelease(f"{releases.profile.name} {version} is {other.name} (from {other.first} on the name "
                                f"ships it), not {releases.profile.what}: no series serves it")
    raise unknown_release(version, detail, releases)
