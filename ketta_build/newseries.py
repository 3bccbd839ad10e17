"""A new series for an upstream project: ``ketta-build init``.

It asks the package index (through the user's pip/uv configuration) which releases of the
distribution there are, picks those ``--releases`` selects (default: the newest three final, not
yanked, with an sdist), pins each to the sha256 the index publishes for its sdist, fetches the newest
one to learn the project's top-level package (what every release must contain), and writes the
series directory whole or not at all: ``upstream.toml`` (the profile), ``releases.toml``, an empty
``series`` and ``build-number`` 1.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from .atomic import replacing
from .cache import Cache
from .errors import BuildTreeError, KettaError, NotAServerRelease, UpstreamError
from .index import IndexFile, discover_index_urls, list_project_files
from .profile import LABEL_PATTERN, PACKAGE_PATTERN, PROFILE_FILE, Profile, render_profile
from .releases import RELEASES_FILE, UNKNOWN_DATE, load_releases
from .series import SERIES_FILE
from .sources import IndexSource

BUILD_NUMBER_FILE = "build-number"
DEFAULT_COUNT = 3  # releases taken when --releases does not say


@dataclass(frozen=True)
class PickedRelease:
    version: Version
    date: str
    sha256: str
    filename: str


@dataclass(frozen=True)
class NewSeries:
    directory: Path
    profile: Profile
    releases: tuple[PickedRelease, ...]
    written: tuple[Path, ...]

    def as_json(self) -> dict:
        return {"schema": "ketta-build/init/1", "directory": str(self.directory), "upstream": self.profile.name,
                "package": self.profile.package, "label": self.profile.label,
                "releases": [{"version": str(r.version), "date": r.date, "sha256": r.sha256} for r in self.releases],
                "written": [str(p) for p in self.written]}


def pick_releases(files: list[IndexFile], spec: str | None) -> list[PickedRelease]:
    """The releases to support: those with a pinned sdist that ``spec`` (a PEP 440 specifier, e.g.
    ``>=2.0``) admits, or the newest :data:`DEFAULT_COUNT` final ones; yanked ones never."""
    try:
        wanted = SpecifierSet(spec) if spec else None
    except InvalidSpecifier:
        raise KettaError(f"--releases {spec!r} is not a version specifier (e.g. '>=2.0,<3')") from None
    by_version: dict[Version, IndexFile] = {}
    for f in files:
        if f.version is not None and f.filename.endswith(".tar.gz") and f.sha256 and f.yanked is None:
            by_version.setdefault(f.version, f)
    versions = sorted(v for v in by_version if (wanted is None and not v.is_prerelease) or (wanted and v in wanted))
    if wanted is None:
        versions = versions[-DEFAULT_COUNT:]
    return [PickedRelease(v, (by_version[v].upload_time or "")[:10] or UNKNOWN_DATE, by_version[v].sha256 or "",
                          by_version[v].filename) for v in versions]


def _releases_text(picked: list[PickedRelease]) -> str:
    head = ("# The releases the series supports, oldest first, each pinned to its sdist's sha256\n"
            "# (ketta-build init read them from the index; ketta-build port adds one).\n\n")
    return head + "\n".join(f'[[release]]\nversion = "{r.version}"\ndate = "{r.date}"\nsha256 = "{r.sha256}"\n'
                            for r in picked)


_SERIES_TEXT = ("# The patch series: one patch per line, applied in order.\n"
                "# Optional guard: NAME.diff [{name}>=X,<Y]; the same leading number = variants of one patch.\n")


def _namespace_package(tree: Path, name: str) -> tuple[str, str] | None:
    """``jaraco.functools``: a package inside a namespace directory (no ``__init__.py`` above it)."""
    parts = [p.replace("-", "_") for p in re.split(r"[.]", name.lower())]
    if len(parts) < 2:
        return None
    for base in (tree / "src", tree):
        init = base.joinpath(*parts) / "__init__.py"
        if init.is_file():
            return ".".join(parts), str(init.relative_to(tree))
    return None


def _package_of(tree: Path, name: str) -> tuple[str, str]:
    """The top-level import package of an unpacked release and where it is: ``src/<pkg>/__init__.py``
    or ``<pkg>/__init__.py`` (the one named like the distribution if several), or a single-module
    project's ``<module>.py``."""
    namespace = _namespace_package(tree, name)
    if namespace is not None:
        return namespace
    candidates = []
    for base in (tree / "src", tree):
        if base.is_dir():
            candidates += [p for p in sorted(base.iterdir()) if (p / "__init__.py").is_file()
                           and p.name not in ("tests", "test", "docs", "examples", "benchmarks")]
    wanted = canonicalize_name(name).replace("-", "_")
    chosen = next((p for p in candidates if p.name.lower() == wanted), candidates[0] if len(candidates) == 1 else None)
    if chosen is not None:
        return chosen.name, str((chosen / "__init__.py").relative_to(tree))
    module = next((p for p in (tree / "src", tree) if (p / f"{wanted}.py").is_file()), None)
    if module is not None:
        return wanted, str((module / f"{wanted}.py").relative_to(tree))
    raise UpstreamError(f"cannot tell the import package of {name} from its sdist (no {wanted}/ or src/{wanted}/ "
                        "package): say which with --package NAME (e.g. --package jaraco.functools)")


def _tests_of(tree: Path) -> tuple[str, ...]:
    """Where an unpacked release keeps its tests: a ``tests``/``test``/``testing`` directory, else its
    top-level ``test_*.py`` files (six's ``test_six.py``); empty if it ships none."""
    for name in ("tests", "test", "testing"):
        if (tree / name).is_dir():
            return (name,)
    return tuple(sorted(p.name for p in tree.glob("test_*.py") if p.is_file()))


#: What ketta-build makes beside the series that is not for git: build trees, wheels, matrix reports.
IGNORED = ("build/", "dist/", "reports/")


def _gitignore(project: Path) -> bytes | None:
    """``project/.gitignore`` with :data:`IGNORED` added where it lacks them (None: nothing to add, or a
    link or special file there, which is never written through)."""
    path = project / ".gitignore"
    if path.is_symlink() or (path.exists() and not path.is_file()):
        return None
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    have = {line.strip() for line in text.splitlines()}
    missing = [entry for entry in IGNORED if entry not in have and entry.rstrip("/") not in have
               and "/" + entry not in have]
    if not missing:
        return None
    head = text if not text or text.endswith("\n") else text + "\n"
    return (head + "# ketta-build: build trees, wheels, matrix reports\n" + "".join(f"{m}\n" for m in missing)).encode()


def create_series(name: str, directory: Path, *, git: str | None = None, label: str = "ketta",
                  releases_spec: str | None = None, cache: Cache | None = None, index_url: str | None = None,
                  package: str | None = None, progress=lambda _: None) -> NewSeries:
    """Write a new series directory for the distribution ``name`` (see the module's docstring);
    ``package`` names the import package when the sdist does not make it plain."""
    cache = cache or Cache()
    if not LABEL_PATTERN.match(label):
        raise KettaError(f"--label {label!r} must be lower-case letters and digits, starting with a letter "
                         "(it becomes the local version: X+LABEL.N)")
    if package is not None and not PACKAGE_PATTERN.match(package):
        raise KettaError(f"--package {package!r} is not an import name (e.g. idna, jaraco.functools)")
    directory = directory.absolute()
    taken = [directory / f for f in (PROFILE_FILE, RELEASES_FILE, SERIES_FILE, BUILD_NUMBER_FILE) if (directory / f).exists()]
    if taken:
        raise BuildTreeError(f"{', '.join(p.name for p in taken)} already here: init writes a new series only "
                             "(edit the files, or pick another --patches)", path=directory)
    progress(f"asking the index about {name}")
    files = None
    for url in discover_index_urls(index_url):
        files = list_project_files(url, canonicalize_name(name))
        if files:
            break
    if not files:
        raise UpstreamError(f"no index asked ({', '.join(discover_index_urls(index_url))}) has a project called {name}")
    picked = pick_releases(files, releases_spec)
    if not picked:
        raise UpstreamError(f"no release of {name} with a pinned sdist matches {releases_spec or 'the default'}; "
                            "pass --releases SPEC (e.g. '>=1.0')")
    profile = Profile(name=name, package=canonicalize_name(name).replace("-", "_"), label=label, git=git,
                      tag="{version}" if git is None else "v{version}", wheel_kind="any",
                      checklist=("Does each patch still do what its Description says on the new release?",
                                 "Did upstream change a function a patch touches (the review list names them)?"))
    with tempfile.TemporaryDirectory(prefix="ketta-init-") as tmp_name:
        staging = Path(tmp_name) / "series"
        staging.mkdir()
        (staging / PROFILE_FILE).write_text(render_profile(profile))
        (staging / RELEASES_FILE).write_text(_releases_text(picked))
        newest = picked[-1]
        progress(f"fetching {newest.filename} to learn the project's package")
        source = IndexSource(cache, index_url, progress=progress, releases=load_releases(staging))
        release = source.resolve(newest.version)
        unpacked = Path(tmp_name) / "release"
        try:
            source.export(release, unpacked)
        except NotAServerRelease:  # the guessed package is not where the profile looks: learn it below
            source = IndexSource(cache, index_url, progress=progress, releases=replace(
                load_releases(staging), profile=replace(profile, must_contain=("PKG-INFO",))))
            source.export(release, unpacked)
        package = package or _package_of(unpacked, name)[0]
        test_paths = _tests_of(unpacked)
        shutil.rmtree(unpacked, ignore_errors=True)
    # every release must hold the package; where it lives (src/ or not) may change between releases
    profile = replace(profile, package=package,
                      tests=replace(profile.tests, paths=test_paths or profile.tests.paths))
    if not test_paths:
        progress(f"{newest.filename} ships no tests: the upstream suite will say so until [tests] paths names them")
    contents = {
        directory / PROFILE_FILE: render_profile(profile).encode(),
        directory / RELEASES_FILE: _releases_text(picked).encode(),
        directory / SERIES_FILE: _SERIES_TEXT.format(name=canonicalize_name(name)).encode(),
        directory / BUILD_NUMBER_FILE: b"1\n",
    }
    ignore = _gitignore(directory.parent)
    if ignore is not None:
        contents[directory.parent / ".gitignore"] = ignore
    directory.mkdir(parents=True, exist_ok=True)
    with replacing(contents):  # all the files or none
        pass
    return NewSeries(directory, profile, tuple(picked), tuple(contents))
