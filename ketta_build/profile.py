"""The upstream profile: what is specific to the project a series is kept for, beside the series.

``patches/upstream.toml`` says which distribution the series patches and how to recognise a real
release of it; the core reads the profile, never a project's name. A series directory without the
file is kept for the first built-in plugin's upstream (:data:`PLUGINS`; the series this tool was
first written for), whose profile ``patches/upstream.toml`` of this repository spells out.
``ketta-build init`` writes one for any other project.

A profile whose ``[wheel] kind`` names a built-in plugin (a package of this tool listed in
:data:`PLUGINS`) gets what only that upstream needs: its wheel, its verbs, its suites, its flag
aliases. ``kind = "any"`` needs none. Only built-in plugins are imported: a series names one, it
cannot bring code of its own.

::

    [upstream]
    name = "tomli"                 # the distribution on the package index
    package = "tomli"              # its top-level import package (the provenance file goes in it)
    git = "https://github.com/hukkin/tomli"   # optional: where bisect and --git look
    tag = "{version}"              # the git tag of a release
    label = "acme"                 # the local version label: 2.2.1+acme.N
    must_contain = ["src/tomli/__init__.py"]  # a real release's tree has these paths
    title = "Tomli"                # how messages name the project (default: name)
    # optional: a different product took the name over from this version on
    # other_product = { name = "Other", from = "3.0.0", marks = ["other_pkg"] }

    [wheel]
    kind = "any"                   # any: the upstream's own backend, relabeled; a plugin's name: its wheel
    extras = []                    # extras whose locked dependencies go into the constraints (plugin wheels)

    [review]
    checklist = ["..."]            # what a port's review list asks of a maintainer
    watch = { "src/tomli/_parser.py" = ["loads"] }  # files (and functions) upstream check reviews always

    [tests]                        # the upstream suite: the release's own tests, stock and patched (kind any)
    paths = ["tests"]              # test files or directories inside the release's tree
    requirements = ["pytest"]      # what the tests need besides the wheel (pip requirements)
    args = []                      # extra pytest arguments
    expected_failures = "upstream-expected-failures.toml"  # the reviewed list, in the series directory
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from .errors import SeriesError

PROFILE_FILE = "upstream.toml"
#: The built-in plugins (packages of ketta_build); the first is the profile of a series without upstream.toml.
PLUGINS = ("letta",)
WHEEL_KINDS = ("any", *PLUGINS)
LABEL_PATTERN = _LABEL = re.compile(r"^[a-z][a-z0-9]*$")  # a PEP 440 local version segment we can parse back
PACKAGE_PATTERN = _PACKAGE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")  # dotted: a namespace package's


@dataclass(frozen=True)
class OtherProduct:
    """A different product that took the distribution name over from ``first`` on."""

    name: str
    first: Version
    marks: tuple[str, ...] = ()  # top-level names of its wheels or trees


@dataclass(frozen=True)
class UpstreamTests:
    """How the ``upstream`` suite runs a release's own tests (``[tests]``)."""

    paths: tuple[str, ...] = ("tests",)  # inside the release's tree
    requirements: tuple[str, ...] = ("pytest",)
    args: tuple[str, ...] = ()
    expected_failures: str = "upstream-expected-failures.toml"  # a file name in the series directory


@dataclass(frozen=True)
class Profile:
    name: str  # the distribution, as the index names it
    package: str  # the top-level import package
    label: str = "ketta"
    git: str | None = None
    tag: str = "v{version}"
    must_contain: tuple[str, ...] = ()
    other_product: OtherProduct | None = None
    wheel_kind: str = "any"
    extras: tuple[str, ...] = ()
    checklist: tuple[str, ...] = ()
    tests: UpstreamTests = UpstreamTests()
    product: str = ""  # how messages name what the series is kept for ("the X agent server"); default: the name
    title: str = ""  # how messages name the project ("Tomli"); default: the name
    release_word: str = "release"  # what one release is called in messages ("server release")
    watch: tuple[tuple[str, tuple[str, ...]], ...] = ()  # files (and functions) upstream check always reviews
    path: Path | None = field(default=None, compare=False)  # the file it was read from (None: built in)

    @property
    def project(self) -> str:
        """The normalised distribution name (PEP 503): how the index and the cache key it."""
        from packaging.utils import canonicalize_name  # packaging.utils loads packaging.tags: not at start-up

        return canonicalize_name(self.name)

    @property
    def what(self) -> str:
        return self.product or self.name

    @property
    def display(self) -> str:
        return self.title or self.name

    @property
    def plugin(self):
        """The built-in plugin module this profile's kind names, or None (``kind = "any"``)."""
        return plugin_module(self.wheel_kind) if self.wheel_kind in PLUGINS else None

    @property
    def has_suite_registry(self) -> bool:
        """Whether the matrix runs the checkout's suite registry (``compat_tests/suites.toml``, through
        tox: a plugin's suites against real servers); else the ``upstream`` suite, the release's own tests."""
        return self.plugin is not None

    def tag_for(self, version: Version | str) -> str:
        return self.tag.format(version=version)

    def local_version(self, version: str, build_number: int) -> str:
        return f"{version}+{self.label}.{build_number}"

    def sdist_top(self, version: Version | str) -> str:
        """The top directory of a release's sdist, ``name-version`` (compared as PEP 503/440 normalise them)."""
        return f"{self.name}-{version}"

    def release_name(self, version: Version | str) -> str:
        """How messages name a release: ``idna 3.10``."""
        return f"{self.name} {version}"

    @property
    def package_dir(self) -> str:
        """The import package as a path: ``jaraco/functools`` for ``jaraco.functools``."""
        return self.package.replace(".", "/")

    def missing_paths(self, tree: Path) -> list[str]:
        """The paths a real release must contain that ``tree`` lacks."""
        return [p for p in self.must_contain if not (tree / p).exists()]



def plugin_module(kind: str):
    """The built-in plugin ``kind`` (a name in :data:`PLUGINS`): a package of this tool, imported on use."""
    import importlib

    if kind not in PLUGINS:
        raise KeyError(kind)
    return importlib.import_module(f"{__package__}.{kind}")


def flag_aliases(flag: str) -> tuple[str, ...]:
    """The spellings the built-in plugins keep for the generic ``flag`` (``FLAG_ALIASES`` of each)."""
    return tuple(alias for kind in PLUGINS for alias in getattr(plugin_module(kind), "FLAG_ALIASES", {}).get(flag, ()))


def default_profile() -> Profile:
    """The profile of a series directory without ``upstream.toml``: the first built-in plugin's."""
    return plugin_module(PLUGINS[0]).PROFILE


def load_profile(series_dir: Path) -> Profile:
    """The profile in ``series_dir/upstream.toml``; :func:`default_profile` when the series has none."""
    import tomllib  # only a series with a profile file needs it

    path = series_dir / PROFILE_FILE
    if not path.exists():
        return default_profile()
    if path.is_symlink() or not path.is_file():
        raise SeriesError("must be a regular file in the series directory", path=path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SeriesError("not valid UTF-8 (TOML is UTF-8)", path=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise SeriesError(f"not valid TOML: {exc}", path=path, line=getattr(exc, "lineno", None)) from None
    return parse_profile(data, path)


def _line(path: Path, key: str, *, table: bool = False) -> int | None:
    """The line of ``key = ...`` (or of the ``[key]`` table header) in ``path``, for an error to name."""
    pattern = rf"^\s*\[\s*{re.escape(key)}\s*\]" if table else rf"^\s*{re.escape(key)}\s*="
    try:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.match(pattern, line):
                return number
    except OSError:
        pass
    return None


def parse_profile(data: dict, path: Path) -> Profile:
    """A :class:`Profile` from the TOML ``data`` of ``path``; one-line errors name the key's line."""
    unknown = set(data) - {"upstream", "wheel", "review", "tests"}
    if unknown:
        raise SeriesError(f"unknown table(s) {', '.join(sorted(unknown))}; known: upstream, wheel, review, tests",
                          path=path, line=_line(path, sorted(unknown)[0], table=True))
    up, wheel, review = data.get("upstream"), data.get("wheel", {}), data.get("review", {})
    if not isinstance(up, dict):
        raise SeriesError("needs an [upstream] table with at least name", path=path)
    known_keys = {"upstream": ("name", "package", "product", "title", "release_word", "git", "tag", "label",
                               "must_contain", "other_product"),
                  "wheel": ("kind", "extras"), "review": ("checklist", "watch")}
    for table, keys in known_keys.items():
        given = data.get(table, {})
        stray = sorted(set(given) - set(keys)) if isinstance(given, dict) else []
        if stray:  # a misspelt key would silently take its default (a wheel with the wrong label)
            raise SeriesError(f"[{table}]: unknown key(s) {', '.join(stray)}; known: {', '.join(keys)}", path=path,
                              line=_line(path, stray[0]))

    def text(table: dict, key: str, default: str | None = None) -> str | None:
        value = table.get(key, default)
        if value not in (None, "") and (not isinstance(value, str) or not value.strip()):
            raise SeriesError(f"{key} must be a non-empty string", path=path, line=_line(path, key))
        return value

    def strings(table: dict, key: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise SeriesError(f"{key} must be a list of strings", path=path, line=_line(path, key))
        return tuple(value)

    name = text(up, "name")
    if name is None or not re.match(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$", name):
        raise SeriesError("upstream.name must be a distribution name (letters, digits, . _ -)", path=path,
                          line=_line(path, "name"))
    package = text(up, "package", name.replace("-", "_").replace(".", "_").lower())
    if not _PACKAGE.match(package or ""):
        raise SeriesError(f"upstream.package {package!r} is not an import name", path=path, line=_line(path, "package"))
    label = text(up, "label", "ketta")
    if not _LABEL.match(label or ""):
        raise SeriesError(f"upstream.label {label!r} must be lower-case letters and digits, starting with a letter "
                          "(it becomes the local version: X+LABEL.N)", path=path, line=_line(path, "label"))
    tag = text(up, "tag", "v{version}")
    if "{version}" not in (tag or ""):
        raise SeriesError("upstream.tag must contain {version}", path=path, line=_line(path, "tag"))
    must_contain = strings(up, "must_contain")
    for item in must_contain:
        if item.startswith("/") or ".." in Path(item).parts:
            raise SeriesError(f"must_contain path {item!r} must stay inside the tree", path=path,
                              line=_line(path, "must_contain"))
    other = None
    if "other_product" in up:
        raw = up["other_product"]
        try:
            other = OtherProduct(str(raw["name"]), Version(str(raw["from"])), tuple(raw.get("marks", [])))
        except (TypeError, KeyError, InvalidVersion):
            raise SeriesError("other_product needs name, from (a version) and optional marks", path=path,
                              line=_line(path, "other_product")) from None
    if not isinstance(wheel, dict) or not isinstance(review, dict):
        raise SeriesError("[wheel] and [review] must be tables", path=path)
    kind = text(wheel, "kind", "any")
    if kind not in WHEEL_KINDS:
        raise SeriesError(f"wheel.kind must be one of {', '.join(WHEEL_KINDS)}", path=path, line=_line(path, "kind"))
    watch = review.get("watch", {})
    if not isinstance(watch, dict) or not all(isinstance(k, str) and k and not k.startswith("/") and ".." not in Path(k).parts
                                              and isinstance(v, list) and all(isinstance(f, str) and f for f in v)
                                              for k, v in watch.items()):
        raise SeriesError('review.watch must be a table of paths inside the tree to lists of function names '
                          '({ "pkg/mod.py" = ["func"] })', path=path, line=_line(path, "watch"))
    return Profile(name=name, package=package, label=label, git=text(up, "git"), tag=tag, must_contain=must_contain,
                   other_product=other, wheel_kind=kind, extras=strings(wheel, "extras"),
                   checklist=strings(review, "checklist"), tests=_parse_tests(data.get("tests", {}), path),
                   product=text(up, "product", "") or "", title=text(up, "title", "") or "",
                   release_word=text(up, "release_word", "release") or "release",
                   watch=tuple((k, tuple(v)) for k, v in watch.items()), path=path)


def _parse_tests(table, path: Path) -> UpstreamTests:
    """``[tests]``: every key optional (the defaults of :class:`UpstreamTests`)."""
    if not isinstance(table, dict):
        raise SeriesError("[tests] must be a table", path=path)
    known = ("paths", "requirements", "args", "expected_failures")
    unknown = set(table) - set(known)
    if unknown:
        raise SeriesError(f"[tests]: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(known)}", path=path,
                          line=_line(path, min(unknown)))
    default = UpstreamTests()

    def strings(key: str, empty_ok: bool) -> tuple[str, ...]:
        value = table.get(key, list(getattr(default, key)))
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value) \
                or (not value and not empty_ok):
            raise SeriesError(f"tests.{key} must be a {'' if empty_ok else 'non-empty '}list of strings", path=path,
                              line=_line(path, key))
        return tuple(value)

    paths = strings("paths", False)
    for item in paths:
        if item.startswith("/") or ".." in Path(item).parts:
            raise SeriesError(f"tests.paths entry {item!r} must stay inside the release's tree", path=path,
                              line=_line(path, "paths"))
    name = table.get("expected_failures", default.expected_failures)
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise SeriesError("tests.expected_failures must be a file name in the series directory", path=path,
                          line=_line(path, "expected_failures"))
    return UpstreamTests(paths=paths, requirements=strings("requirements", True), args=strings("args", True),
                         expected_failures=name)


def render_profile(profile: Profile) -> str:
    """``upstream.toml`` for ``profile`` (what ``init`` writes)."""
    def quoted(values) -> str:
        return "[" + ", ".join(f'"{v}"' for v in values) + "]"

    lines = ["# What is specific to the upstream this series is kept for: ketta-build reads it, never a name",
             "# of its own (docs/any-upstream.md).", "", "[upstream]", f'name = "{profile.name}"',
             f'package = "{profile.package}"']
    if profile.git:
        lines.append(f'git = "{profile.git}"')
    lines += [f'tag = "{profile.tag}"', f'label = "{profile.label}"', f"must_contain = {quoted(profile.must_contain)}",
              "", "[wheel]", f'kind = "{profile.wheel_kind}"', "", "[review]",
              f"checklist = {quoted(profile.checklist)}", "",
              "# the upstream suite (ketta-build matrix): the release's own tests, stock and patched",
              "[tests]", f"paths = {quoted(profile.tests.paths)}", f"requirements = {quoted(profile.tests.requirements)}",
              f"args = {quoted(profile.tests.args)}", f'expected_failures = "{profile.tests.expected_failures}"', ""]
    return "\n".join(lines)
