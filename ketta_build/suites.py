"""The registry of compatibility suites: one definition per suite, read from ``compat_tests/suites.toml``.

Everything that needs to know the suites asks this module: :mod:`ketta_build.toxini` (tox.ini's
environments), :mod:`ketta_build.matrix` (which cells share a session, the first run's order),
:mod:`ketta_build.cellkeys` (what a cell's key depends on), :mod:`ketta_build.matrixreport` (the
per-release records a suite adds to the report) and the CLI (``--suite`` choices). A suite's tests
are the ``test_*.py`` files of the tests directory marked ``pytest.mark.<name>``; the registry is
data beside them, so ``ketta_build`` never imports the tests.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import KettaError
from .profile import load_profile

TESTS_DIR = "compat_tests"
REGISTRY_FILE = "suites.toml"
SESSIONS = ("shared", "own")
_NAME = re.compile(r"^[a-z][a-z0-9]*$")  # a tox factor and a pytest marker: lower-case letters and digits
_FIELDS = {"description", "typical_seconds", "session", "key_env", "pairs", "records"}


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    typical_seconds: int = 60
    session: str = "shared"  # shared: the release's one pytest session; own: a tox run of its own
    key_env: tuple[str, ...] = ()  # suite variables a cell's result depends on (they join its key)
    pairs: str | None = None  # upgrade pairs' data file (in the tests directory): the cell builds their start releases
    records: str | None = None  # the directory of per-release records the suite writes into the report directory

    @property
    def shared(self) -> bool:
        return self.session == "shared"


@dataclass(frozen=True)
class SuiteRegistry:
    tests: Path  # the tests directory (compat_tests/)
    suites: tuple[Suite, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.suites)

    @property
    def shared(self) -> tuple[str, ...]:
        """The suites that run in one pytest session per release (tox env ``<release>-shared``)."""
        return tuple(s.name for s in self.suites if s.shared)

    @property
    def records(self) -> tuple[str, ...]:
        return tuple(s.records for s in self.suites if s.records)

    def get(self, name: str) -> Suite:
        for suite in self.suites:
            if suite.name == name:
                return suite
        raise KettaError(f"unknown suite {name}; known: {', '.join(self.names)}", path=self.tests / REGISTRY_FILE)

    def check(self, names: list[str]) -> None:
        """Refuse names that are not suites (one line naming them and the known ones)."""
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise KettaError(f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(self.names)}")


def _line_of(text: str, name: str) -> int | None:
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(rf"^\s*(\[\s*)?{re.escape(name)}\s*[=\]]", line):
            return number
    return None


def load_suites(tests: Path) -> SuiteRegistry:
    """The registry in ``tests/suites.toml``; one-line errors name the file and the suite's line."""
    path = tests / REGISTRY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KettaError("no suite registry here; the compatibility suites are listed in it", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KettaError(f"cannot read it: {exc}", path=path) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KettaError(f"not TOML: {exc}", path=path) from None
    suites = []
    for name, raw in data.items():
        line = _line_of(text, name)
        if not _NAME.match(name):
            raise KettaError(f"suite name {name!r} must be lower-case letters and digits (a tox factor and a pytest mark)",
                             path=path, line=line)
        if name == "shared":
            raise KettaError("'shared' is the name of the shared session's tox environment, not a suite", path=path, line=line)
        if not isinstance(raw, dict):
            raise KettaError(f"suite {name} must be a table", path=path, line=line)
        unknown = set(raw) - _FIELDS
        if unknown:
            raise KettaError(f"suite {name}: unknown field(s) {', '.join(sorted(unknown))}; known: "
                             f"{', '.join(sorted(_FIELDS))}", path=path, line=line)
        try:
            suite = Suite(
                name=name,
                description=_typed(raw, "description", str, None),
                typical_seconds=_typed(raw, "typical_seconds", int, 60),
                session=_typed(raw, "session", str, "shared"),
                key_env=tuple(_typed(raw, "key_env", list, [])),
                pairs=_typed(raw, "pairs", str, None),
                records=_typed(raw, "records", str, None),
            )
        except (TypeError, ValueError) as exc:
            raise KettaError(f"suite {name}: {exc}", path=path, line=line) from None
        if suite.session not in SESSIONS:
            raise KettaError(f"suite {name}: session must be one of {', '.join(SESSIONS)}", path=path, line=line)
        if not all(isinstance(v, str) and v.startswith("KETTA_") for v in suite.key_env):
            raise KettaError(f"suite {name}: key_env lists KETTA_* variable names", path=path, line=line)
        suites.append(suite)
    if not suites:
        raise KettaError("the registry lists no suite", path=path)
    return SuiteRegistry(tests, tuple(suites))


def _typed(raw: dict, field: str, kind: type, default):
    value = raw.get(field, default)
    if value is None and default is None and field == "description":
        raise ValueError("needs a description")
    if value is not None and not isinstance(value, kind):
        raise TypeError(f"{field} must be a {kind.__name__}")
    return value


def project_suites(project: Path) -> SuiteRegistry:
    """The registry of the project checkout ``project`` (its ``compat_tests/``, as an absolute path: cell
    keys name the suites' files relative to the checkout)."""
    return load_suites((project / TESTS_DIR).absolute())


# The one suite of a series without a suite registry (wheel kind any): the release's own tests, stock and
# patched (:mod:`ketta_build.upstreamtests`); its per-release documents go to ``upstream/`` of the report.
UPSTREAM_SUITE = Suite("upstream", "the release's own tests, stock and patched", typical_seconds=60, session="own",
                       records="upstream")


def matrix_suites(project: Path, series_dir: Path) -> SuiteRegistry:
    """The suites of the matrix for the series in ``series_dir``: the checkout's registry (``project``'s
    ``compat_tests/suites.toml``) when its profile has one (a plugin's), or else (wheel kind ``any``) the
    ``upstream`` suite alone, which needs no registry and no tox.ini in the checkout."""
    if load_profile(series_dir).has_suite_registry:
        return project_suites(project)
    return SuiteRegistry(series_dir.absolute(), (UPSTREAM_SUITE,))
