"""Where a pristine release of the upstream comes from.

Three sources, one interface (:class:`UpstreamSource`):

* :class:`IndexSource` – the release's sdist from the package index the user's
  pip/uv configuration names (or ``--index-url``), sha256-verified against
  what the index publishes (PEP 691 JSON, or PEP 503 HTML hash fragments), and
  kept in a content-addressed :class:`~ketta_build.cache.Cache` so that a
  second run needs no network.
* :class:`GitSource` – a tag or commit of the upstream's git repository (through :mod:`ketta_build.gitcmd`).
* :class:`DirSource` – an unpacked tree on disk.

Every source checks that what it found is a release of the profile's project (the paths its
``must_contain`` names, or its import package) and not the profile's ``other_product``, a different
product that took over the same distribution name.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import weakref
import time
import urllib.error
import urllib.parse
# urllib.request, html.parser and zipfile are imported where the index is read: ``apply`` from
# a cached sdist never reads it, and they are a tenth of its start-up (bench/scale.py).
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from packaging.version import InvalidVersion, Version

from .cache import Cache, sha256_file
from .errors import HashMismatch, IndexUnreachable, KettaError, NotAServerRelease, UnknownRelease, UpstreamError
from .gitcmd import blob, communicate, git, keep_bytes_as_they_are
from .gitcmd import popen as popen_git
from .gitcmd import run as run_git
from .index import (MAX_DOWNLOAD_BYTES, IndexFile, _open, _redact, _urllib_request, discover_index_urls,
                    download_deadline, list_project_files, transport_errors)
from .profile import Profile, default_profile
from .releases import SupportedReleases, load_releases, unknown_release, unpinned
from .safetree import check_member, extract_members, fresh_dir_beside, put_in_place, read_to_end, verify_tree

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class UpstreamRelease:
    """A pristine release, resolved but not yet written anywhere."""

    version: Version
    origin: str  # index | git | dir
    location: str  # URL, repository@ref or directory
    sha256: str | None = None  # of the sdist, for index releases
    filename: str | None = None

    def as_json(self) -> dict:
        return {
            "version": str(self.version),
            "origin": self.origin,
            "location": self.location,
            "sha256": self.sha256,
            "filename": self.filename,
        }


class UpstreamSource(Protocol):
    def resolve(self, version: Version | None) -> UpstreamRelease: ...

    def export(self, release: UpstreamRelease, dest: Path) -> None:
        """Write the pristine tree's files into the empty directory ``dest``."""
        ...


# --------------------------------------------------------------------------- other-product detection


class _RangeFile(io.RawIOBase):
    """A read-only file over HTTP range requests, enough for zipfile to list a wheel."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pos = 0
        with _open(url, method="HEAD") as resp:
            self.size = int(resp.headers["Content-Length"])

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        return self.pos

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self.pos >= self.size:
            return 0
        end = min(self.pos + len(buffer), self.size) - 1
        with _open(self.url, {"Range": f"bytes={self.pos}-{end}"}) as resp:
            if resp.status != 206:
                raise OSError("the index does not serve byte ranges")
            data = resp.read()
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def wheel_top_level(url: str) -> set[str]:
    """Top-level names inside a (remote or file://) wheel, reading only its zip directory."""
    import zipfile

    if url.startswith("file:"):
        raw: io.IOBase = open(_urllib_request().url2pathname(urllib.parse.urlsplit(url).path), "rb")  # noqa: SIM115
    else:
        raw = io.BufferedReader(_RangeFile(url), buffer_size=256 * 1024)
    with raw, zipfile.ZipFile(raw) as zf:
        return {name.split("/", 1)[0] for name in zf.namelist()}


def _not_server_message(version: Version, files: list[IndexFile], releases: SupportedReleases | None = None) -> str | None:
    """Why ``version`` is not the project the series is kept for but the profile's other product,
    judged from its artifacts; None if it may be."""
    import zipfile

    releases = releases or load_releases()
    profile = releases.profile
    if profile.other_product is None or any(f.is_sdist for f in files):
        return None
    wheels = [f for f in files if f.filename.endswith(".whl")]
    if not wheels:
        return None
    try:
        names = wheel_top_level(wheels[-1].url)
    except (*transport_errors(), zipfile.BadZipFile, KeyError, ValueError):
        names = set()
    if names:
        if profile.package.split(".")[0] in names:
            return None
        found = ", ".join(sorted(n for n in names if not n.endswith(".dist-info"))) or "no package"
        return (
            f"{profile.name} {version} is not {profile.what}: its wheel {wheels[-1].filename} holds "
            f"{found}/ and no {profile.package}/ package ({profile.other_product.name} took over the name from "
            f"{profile.other_product.first}); the newest release the series supports is {releases.newest}"
        )
    return (
        f"{profile.name} {version} has no sdist, only platform wheels ({wheels[0].filename}, ...): that is "
        f"{profile.other_product.name}, not {profile.what}; the newest release the series "
        f"supports is {releases.newest}"
    )


def check_server_tree(tree: Path, label: str, profile: Profile | None = None) -> None:
    """Refuse a tree that is not a release of the profile's project: it lacks a path every release has
    (``must_contain``), or it carries a mark of the profile's other product."""
    profile = profile or default_profile()
    missing = profile.missing_paths(tree)
    if not profile.must_contain:  # the import package, wherever the release keeps it
        where = profile.package_dir
        places = (f"{where}/__init__.py", f"src/{where}/__init__.py", f"{where}.py", f"src/{where}.py")
        if any((tree / place).is_file() for place in places):
            return
        missing = [f"{where}/ (or src/{where}/, {where}.py)"]
    elif not missing:
        return
    other = profile.other_product
    if other is not None and any((tree / mark).exists() for mark in other.marks):
        marks = ", ".join(f"{m}/" for m in other.marks if (tree / m).exists())
        raise NotAServerRelease(f"{label} is {other.name} ({marks} and no {', '.join(missing)}), not {profile.what}")
    what = ", ".join(profile.must_contain) if profile.must_contain else f"its import package {profile.package}"
    raise NotAServerRelease(f"{label} has no {', '.join(missing)}: not a release of {profile.name} "
                            f"({profile.path or f'the {profile.display} profile'} says every release has {what})")


# --------------------------------------------------------------------------- safe extraction


def safe_extract_sdist(archive: Path, dest: Path, name: str | None = None, top: str | None = None) -> None:
    """Extract a ``.tar.gz`` sdist into ``dest`` (missing or empty), dropping its top-level directory.

    The archive must hold exactly one top-level directory (``top``, when given: ``idna-3.10``), be
    read whole, and pass :mod:`ketta_build.safetree`'s checks: members that are absolute, contain
    ``..``, are devices/FIFOs, links leaving the tree (also through other links) or version-control
    metadata are refused, naming the archive and member. ``name`` is how errors call the archive
    (default: its path). On a refusal nothing is left in ``dest``.
    """
    label = name or str(archive)
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UpstreamError(f"cannot open the archive: {exc}", path=label) from None
    with tar:
        members = read_to_end(tar, label)
        if not members:
            raise UpstreamError("the archive is empty", path=label)
        tops = {PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts}
        for m in members:
            check_member(m, label)
        if len(tops) != 1:
            raise UpstreamError(f"expected one top-level directory, found {len(tops)} ({', '.join(sorted(tops)[:3])})",
                                path=label)
        found = tops.pop()
        if top is not None and not _same_sdist_name(found, top):
            raise UpstreamError(f"its top-level directory is '{found}', not '{top}' as the sdist of this release "
                                "must name it", path=label)
        kept = []
        for m in members:
            rel = PurePosixPath(m.name).relative_to(found)
            if str(rel) in ("", "."):
                if not m.isdir():
                    raise UpstreamError(f"member '{m.name}' is the top-level directory's name but not a directory",
                                        path=label)
                continue
            m = m.replace(name=str(rel), deep=False)
            if m.islnk():
                target = PurePosixPath(m.linkname)
                if not target.is_relative_to(found) or target == PurePosixPath(found):
                    raise UpstreamError(f"member '{rel}' is a hard link to '{m.linkname}', outside the top-level "
                                        "directory", path=label)
                m = m.replace(linkname=str(target.relative_to(found)), deep=False)
            kept.append(m)
        extract_members(tar, kept, dest, label)


def _same_sdist_name(found: str, wanted: str) -> bool:
    """Do two ``name-version`` directory names name the same release (names as PEP 503 normalises
    them, versions as PEP 440 does: ``IDNA-3.010`` is ``idna-3.10``)?"""
    from packaging.utils import canonicalize_name

    try:
        (a_name, a_version), (b_name, b_version) = (x.rsplit("-", 1) for x in (found, wanted))
        return canonicalize_name(a_name) == canonicalize_name(b_name) and Version(a_version) == Version(b_version)
    except (ValueError, InvalidVersion):
        return False


def check_version_inside(tree: Path, version: Version, label: str) -> None:
    """Refuse an unpacked sdist whose metadata names another release than ``version``: ``PKG-INFO``'s
    ``Version:`` and ``pyproject.toml``'s literal version must both say it where they are there, and one
    of them must be."""
    said = []
    pkg_info = tree / "PKG-INFO"
    if pkg_info.is_file():
        found = re.search(r"^Version:[ \t]*(\S+)[ \t]*$", pkg_info.read_text(errors="replace").split("\n\n", 1)[0], re.M)
        said.append(("PKG-INFO", found.group(1) if found else "no version"))
    pyproject = tree / "pyproject.toml"
    literal = _literal_version(pyproject.read_text(errors="replace")) if pyproject.is_file() else None
    if literal is not None:
        said.append(("pyproject.toml", str(literal)))
    if not said:
        raise UpstreamError(f"neither PKG-INFO nor pyproject.toml says which version it is; expected {version}", path=label)
    for where, text in said:
        try:
            same = Version(text) == version
        except InvalidVersion:
            same = False
        if not same:
            raise UpstreamError(f"its {where} says version {text}, not {version} as the index names it: refusing a "
                                "release that is not the one asked for", path=label)


# --------------------------------------------------------------------------- sources


def sdist_date(path: Path) -> str | None:
    """The day an sdist was made, from its newest member (None if its members carry no real date)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            newest = max((m.mtime for m in tar.getmembers()), default=0)
    except (tarfile.TarError, OSError):
        return None
    if newest < 1420070400:  # before 2015: a zeroed or reproducible-build date, not the release's
        return None
    return time.strftime("%Y-%m-%d", time.gmtime(newest))


def download_progress(name: str, done: int, total: int, seconds: float) -> str:
    """``downloading idna-3.10.tar.gz: 0.1 / 0.2 MB at 4.2 MB/s``."""
    rate = done / seconds / 1e6 if seconds > 0 else 0.0
    size = f"{done / 1e6:.1f} / {total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
    return f"downloading {name}: {size} at {rate:.1f} MB/s"


def _pinned_source(sha256: str) -> str:
    """The cache's record key for a pinned sdist, shared by every index that serves it."""
    return f"sha256:{sha256}"


class IndexSource:
    """Releases from the package index, through a content-addressed cache."""

    def __init__(self, cache: Cache, index_url: str | None = None, progress: Progress = _quiet,
                 releases: SupportedReleases | None = None, allow_unsupported: bool = False) -> None:
        self.cache = cache
        self.index_url = index_url
        self.progress = progress
        self.releases = releases  # None: the default series' releases.toml
        # port and upstream check take a server release the series does not support yet
        self.allow_unsupported = allow_unsupported
        self._urls: list[str] | None = None

    def _releases(self) -> SupportedReleases:
        return self.releases or load_releases()

    def _index_urls(self) -> list[str]:
        if self._urls is None:
            self._urls = discover_index_urls(self.index_url)
        return self._urls

    def _find_files(self, version: Version) -> tuple[str, list[IndexFile]] | None:
        """(index url, files of ``version``) from the first index that has the version."""
        errors = []
        for url in self._index_urls():
            try:
                files = list_project_files(url, self._releases().profile.project)
            except IndexUnreachable as exc:
                errors.append(exc)
                continue
            if files is None:
                continue
            mine = [f for f in files if f.version == version]
            if mine:
                return url, mine
        if errors:  # an index we could not ask may have had it
            raise errors[0]
        return None

    @property
    def source_id(self) -> str:
        """Which indexes this source asks (the cache keeps what each source resolved apart)."""
        return " ".join(self._index_urls())

    def resolve(self, version: Version | None) -> UpstreamRelease:
        """The sdist of ``version``, in the cache once this returns. A supported release must have a pin in
        ``releases.toml`` and is only ever the sdist with that sha256 (from the cache, whichever index it was
        fetched from, or from the index, which must publish that file); a release the series does not
        support yet (``port``, ``upstream check``) is the sdist with the sha256 the index publishes."""
        if version is None:
            raise UnknownRelease("--release VERSION is required with the package index as source")
        releases = self._releases()
        name = releases.profile.name
        listed = releases.find(version)
        if listed is not None and listed.sha256 is None:
            raise self._unpinned(listed, releases)
        pin = listed.sha256 if listed is not None else None
        cached = self._cached(version, pin)
        if cached is not None:
            return cached

        supported = listed or (self.allow_unsupported or None)
        try:
            found = self._find_files(version)
        except IndexUnreachable as exc:
            if supported is None:
                raise unknown_release(version, "and the index cannot be asked about it", releases) from None
            raise IndexUnreachable(
                f"{exc.message}; the cache at {self.cache.root} has no {name} {version} either: "
                "connect to the index, pass --index-url, or use --upstream-dir/--upstream-git"
            ) from None
        if found is None:
            if listed:
                raise UpstreamError(f"{name} {version} (a supported release) is not on {', '.join(map(_redact, self._index_urls()))}; "
                                    "pass --index-url for an index that has it")
            if self.allow_unsupported:  # port, upstream check: any release upstream has, supported or not
                raise UnknownRelease(f"{name} {version} is not on {', '.join(map(_redact, self._index_urls()))} "
                                     "(no such release upstream); ketta-build upstream check lists the newer ones")
            raise unknown_release(version, "no such version on the index", releases)
        index_url, files = found
        why_not = _not_server_message(version, files, releases)
        if why_not:
            raise NotAServerRelease(why_not)
        if supported is None:
            detail = "older than the supported range" if version < releases.versions[0] else "not a release the series supports"
            raise unknown_release(version, detail, releases)
        sdist = next((f for f in files if f.filename.endswith(".tar.gz")), None)
        if sdist is None:
            raise UpstreamError(f"{name} {version} on {_redact(index_url)} has no .tar.gz sdist")
        if pin is not None and sdist.sha256 is not None and sdist.sha256 != pin:
            raise HashMismatch(
                f"{name} {version} is pinned to sha256 {pin} ({releases.path}:{listed.line}), but {_redact(index_url)} "
                f"publishes {sdist.filename} with sha256 {sdist.sha256}: refusing a release that is not the pinned one"
            )
        expected = pin or sdist.sha256
        if not expected:
            raise UpstreamError(f"{_redact(index_url)} publishes no sha256 for {sdist.filename}: refusing an unverifiable download")
        self._download(sdist, expected, pinned=pin is not None)
        record = {"filename": sdist.filename, "sha256": expected, "url": _redact(sdist.url), "upload_time": sdist.upload_time}
        project = releases.profile.project
        self.cache.write_release(str(version), self.source_id, record, project)
        self.cache.write_release(str(version), _pinned_source(expected), record, project)
        return UpstreamRelease(version, "index", _redact(sdist.url), expected, sdist.filename)

    def _cached(self, version: Version, pin: str | None) -> UpstreamRelease | None:
        """The release from the cache alone, if it can be: a pinned one from whichever index it was fetched
        (the pin says which bytes it is); another one only as this source resolved it."""
        project = self._releases().profile.project
        record = self.cache.read_release(str(version), self.source_id, project)
        if pin is not None:
            if record is None or record["sha256"] != pin:
                record = self.cache.read_release(str(version), _pinned_source(pin), project)
            if record is None or record["sha256"] != pin or not self.cache.has_blob(pin):
                return None
        elif record is None or not self.cache.has_blob(record["sha256"]) or not self._still_published(version, record):
            return None
        return UpstreamRelease(version, "index", record["url"], record["sha256"], record["filename"])

    def _unpinned(self, listed, releases: SupportedReleases) -> KettaError:
        """The error for a supported release without a pin, with what the index publishes when it can say."""
        try:
            found = self._find_files(listed.version)
        except KettaError:
            found = None
        sdist = next((f for f in found[1] if f.filename.endswith(".tar.gz")), None) if found else None
        return unpinned(listed, releases, sdist.sha256 if sdist else None, sdist.filename if sdist else None)

    def _still_published(self, version: Version, record: dict) -> bool:
        """A package index does not change a published file, but a local directory index can: for a
        ``file://`` record, the index is read again (it costs nothing) and the record kept only if the
        index still publishes that file with that sha256."""
        if not str(record.get("url", "")).startswith("file:"):
            return True
        try:
            found = self._find_files(version)
        except IndexUnreachable:
            return True
        return found is not None and any(f.filename == record["filename"] and f.sha256 == record["sha256"] for f in found[1])

    def _download(self, item: IndexFile, expected: str, pinned: bool = False) -> None:
        with self.cache.lock(f"blob-{expected}"):
            if self.cache.has_blob(expected):
                return
            self.progress(f"downloading {item.filename}")
            fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=self.cache.ensure("blobs"))
            h = hashlib.sha256()
            try:
                with os.fdopen(fd, "wb") as out, _open(
                    item.url, deadline=download_deadline(), what=f"the download of {item.filename} from {_redact(item.url)}"
                ) if not item.url.startswith("file:") else open(
                    _urllib_request().url2pathname(urllib.parse.urlsplit(item.url).path), "rb"
                ) as resp:
                    total = int(resp.headers.get("Content-Length") or 0) if hasattr(resp, "headers") else 0
                    done, start = 0, time.monotonic()
                    for chunk in iter(lambda: resp.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
                        done += len(chunk)
                        if done > MAX_DOWNLOAD_BYTES:
                            raise IndexUnreachable(f"the download of {item.filename} from {_redact(item.url)} is larger "
                                                   f"than {MAX_DOWNLOAD_BYTES} bytes: no release is; nothing was cached")
                        self.progress(download_progress(item.filename, done, total, time.monotonic() - start))
                if total and done != total:  # http.client ends a read at an early close without a word
                    raise IndexUnreachable(f"the download of {item.filename} from {_redact(item.url)} ended after {done} "
                                           f"of {total} bytes; nothing was cached")
                got = h.hexdigest()
                if got != expected:
                    said = "the pin (releases.toml) says" if pinned and item.sha256 is None else "the index publishes"
                    raise HashMismatch(
                        f"sha256 mismatch for {item.filename} from {_redact(item.url)}: {said} "
                        f"{expected}, the download is {got}; nothing was cached"
                    )
                self.cache.add_blob(Path(tmp_name), got)
            except transport_errors() as exc:
                reason = getattr(exc, "reason", None) or f"{exc.__class__.__name__}: {exc}"
                raise IndexUnreachable(f"download of {item.filename} failed: {reason}") from None
            finally:
                if os.path.exists(tmp_name):
                    os.unlink(tmp_name)

    def upload_date(self, version: Version) -> str | None:
        """The day the sdist of ``version`` was uploaded, as the index said (None if it did not say, or said
        something that is not a date: it goes into ``releases.toml``)."""
        from datetime import date

        record = self.cache.read_release(str(version), self.source_id, self._releases().profile.project) or {}
        stamp = record.get("upload_time")
        if not isinstance(stamp, str) or len(stamp) < 10:
            return None
        try:
            return date.fromisoformat(stamp[:10]).isoformat()
        except ValueError:
            return None

    def sdist_path(self, release: UpstreamRelease) -> Path:
        assert release.sha256
        path = self.cache.blob_path(release.sha256)
        if not path.is_file():
            raise UpstreamError(f"cached sdist for {self._releases().profile.name} {release.version} is missing; run again to fetch it", path=path)
        got = sha256_file(path)
        if got != release.sha256:
            path.unlink()
            raise HashMismatch(
                f"cached sdist of {self._releases().profile.name} {release.version} is corrupt (sha256 {got}, expected {release.sha256}); "
                "it was removed, run again to fetch it",
                path=path,
            )
        return path

    def export(self, release: UpstreamRelease, dest: Path) -> None:
        profile = self._releases().profile
        label = release.filename or profile.release_name(release.version)
        safe_extract_sdist(self.sdist_path(release), dest, label, top=profile.sdist_top(release.version))
        try:
            check_server_tree(dest, f"{profile.release_name(release.version)} ({release.filename})", profile)
            check_version_inside(dest, release.version, label)
        except KettaError:
            shutil.rmtree(dest, ignore_errors=True)  # nothing half-made is left for a caller to take
            raise


class GitSource:
    """A release from a git repository (local path or URL) at a tag or commit, read through
    :mod:`ketta_build.gitcmd` (no configuration of the user's or the repository's runs anything)."""

    def __init__(self, repo: str, ref: str | None, profile: Profile | None = None) -> None:
        self.repo = repo
        self.ref = ref
        self.profile = profile or default_profile()
        self._dir: Path | None = None
        self._tmp: str | None = None

    def _repo(self) -> Path:
        """The repository's git directory; a URL is cloned, bare, into a temporary directory first."""
        if self._dir is None:
            path = Path(self.repo)
            if path.exists():
                # That directory's own repository, never one above it.
                proc = run_git(path, "rev-parse", "--absolute-git-dir",
                               env={"GIT_CEILING_DIRECTORIES": str(path.resolve().parent)})
            else:
                self._tmp = tempfile.mkdtemp(prefix="ketta-upstream-git-")
                # removed when the source is closed, or at the latest when the program ends
                self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmp, ignore_errors=True)
                try:
                    proc = run_git(Path(self._tmp), "clone", "-q", "--bare", "--", self.repo, self._tmp)
                except BaseException:  # interrupted: the half-made clone goes
                    self.close()
                    raise
                if proc.returncode != 0:
                    self.close()  # nothing of a failed clone is left behind
            if proc.returncode != 0:
                err = proc.stderr.decode(errors="replace")
                last = (err.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
                if "dubious ownership" in err:  # git's advice (a global safe.directory) does not apply here
                    last = ("it belongs to another user, and ketta-build reads no git configuration of yours "
                            "(safe.directory included): clone it and give the clone")
                raise UpstreamError(f"cannot open git repository {self.repo}: {last}")
            self._dir = Path(proc.stdout.decode(errors="surrogateescape").strip()) if path.exists() else Path(self._tmp)
        return self._dir

    def close(self) -> None:
        """Remove the temporary clone of a URL, if one was made."""
        if self._tmp is not None:
            self._finalizer()
            self._tmp = None
            self._dir = None

    def git_dir(self) -> Path:
        """The repository's git directory (a URL is cloned, bare, into a temporary directory first)."""
        return self._repo()

    def _commit_for(self, ref: str) -> str | None:
        if ref.startswith("-"):  # never an option of git's
            return None
        proc = run_git(self._repo(), "rev-parse", "--verify", "-q", f"{ref}^{{commit}}")
        sha = proc.stdout.decode(errors="replace").strip()
        return sha if proc.returncode == 0 and sha else None

    def resolve(self, version: Version | None) -> UpstreamRelease:
        ref = self.ref or (self.profile.tag_for(version) if version else None)
        if ref is None:
            raise UpstreamError(f"--upstream-git needs --ref TAG (or --release VERSION to use tag {self.profile.tag})")
        commit = self._commit_for(ref) or (self._commit_for(str(version)) if version and not self.ref else None)
        if commit is None:
            raise UpstreamError(f"ref '{ref}' not found in {self.repo}")
        pyproject = blob(self._repo(), commit, "pyproject.toml")
        tree_version = _literal_version(pyproject.decode(errors="replace")) if pyproject is not None else None
        if tree_version is None and version is not None and self.ref is None:
            tree_version = version  # a dynamic version (setuptools-scm, ...): the release tag says which it is
        if tree_version is None:
            raise NotAServerRelease(f"{self.repo}@{ref} has no pyproject.toml with a literal version: cannot tell "
                                    f"which release of {self.profile.name} it is")
        if version is not None and tree_version != version:
            raise UpstreamError(f"{self.repo}@{ref} is {self.profile.name} {tree_version}, not {version}")
        return UpstreamRelease(tree_version, "git", f"{self.repo}@{ref}", None, commit)

    def _reader(self, tmp: Path) -> Path:
        """A bare repository of the tool's own that reads the source's objects (an alternate) and
        nothing else of it: neither its config (filters, tar.umask) nor its attributes apply, and the
        commit's own .gitattributes cannot leave a file out or rewrite one (export-ignore, -subst)."""
        objects = Path(git(self._repo(), "rev-parse", "--git-path", "objects"))
        reader = tmp / "reader.git"
        git(tmp, "init", "-q", "--bare", str(reader))
        (reader / "objects" / "info" / "alternates").write_text(f"{(self._repo() / objects).resolve()}\n")
        keep_bytes_as_they_are(reader)
        return reader

    def export(self, release: UpstreamRelease, dest: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="ketta-upstream-git-") as tmp, tempfile.TemporaryFile() as fh:
            proc = popen_git(self._reader(Path(tmp)), "archive", "--format=tar", str(release.filename), stdout=fh,
                             stderr=subprocess.PIPE)
            _, err = communicate(proc)
            if proc.returncode != 0:
                last = (err.decode(errors="replace").strip().splitlines() or [f"exit {proc.returncode}"])[-1]
                raise UpstreamError(f"cannot read {release.location}: git archive: {last}")
            fh.seek(0)
            with tarfile.open(fileobj=fh) as tar:
                members = read_to_end(tar, release.location)
                for m in members:
                    check_member(m, release.location)
                extract_members(tar, members, dest, release.location)
        check_server_tree(dest, release.location, self.profile)


def _literal_version(pyproject_text: str) -> Version | None:
    in_project = False
    for line in pyproject_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            in_project = stripped == "[project]" or stripped == "[tool.poetry]"
        elif in_project:
            m = re.match(r'^version\s*=\s*"([^"]+)"', stripped)
            if m:
                try:
                    return Version(m.group(1))
                except InvalidVersion:
                    return None
    return None


class DirSource:
    """An unpacked tree of the upstream on disk (copied, never modified)."""

    def __init__(self, path: Path, profile: Profile | None = None) -> None:
        self.path = path
        self.profile = profile or default_profile()

    def resolve(self, version: Version | None) -> UpstreamRelease:
        if not self.path.is_dir():
            raise UpstreamError("--upstream-dir is not a directory", path=self.path)
        check_server_tree(self.path, str(self.path), self.profile)
        pyproject = self.path / "pyproject.toml"
        tree_version = None
        if pyproject.is_symlink() or (pyproject.exists() and not pyproject.is_file()):
            raise UpstreamError("is not a regular file of the tree (a link or special file): not read", path=pyproject)
        if pyproject.is_file():
            try:
                tree_version = _literal_version(pyproject.read_text(encoding="utf-8"))
            except UnicodeDecodeError as exc:
                raise UpstreamError(f"is not UTF-8 text (byte {exc.start}): not a release tree of {self.profile.name}", path=pyproject) from None
        if tree_version is None:
            raise UpstreamError("no literal version in pyproject.toml; cannot tell which release this is", path=pyproject)
        if version is not None and version != tree_version:
            raise UpstreamError(f"the tree is {self.profile.name} {tree_version}, not {version}", path=pyproject)
        return UpstreamRelease(tree_version, "dir", str(self.path.resolve()))

    def export(self, release: UpstreamRelease, dest: Path) -> None:
        """Copy the tree (its own ``.git`` left out) into a fresh directory, judge the copy as an archive's
        tree is judged (no link leaving it, no other version-control metadata, no special file), then
        rename it to ``dest``."""
        tmp = fresh_dir_beside(dest)
        try:
            top = os.path.abspath(self.path)

            def own_git_only(directory: str, names: list[str]) -> set[str]:  # a .git deeper down is refused below
                return {".git"} & set(names) if os.path.abspath(directory) == top else set()

            shutil.copytree(self.path, tmp, symlinks=True, dirs_exist_ok=True, ignore=own_git_only,
                            copy_function=_copy_regular_file)
            verify_tree(tmp, str(self.path))
            put_in_place(tmp, dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _copy_regular_file(src: str, dst: str) -> None:
    """copytree's copy of one file: a FIFO or device is refused, not opened (reading a FIFO would wait forever)."""
    if not stat.S_ISREG(os.lstat(src).st_mode):
        raise UpstreamError("is a special file (device, FIFO or socket), which a source tree may not hold", path=src)
    shutil.copy2(src, dst)
