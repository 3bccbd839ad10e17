"""The contract between ``ketta-build matrix`` and the compatibility suites: every ``KETTA_*`` variable.

The matrix (and tox.ini, generated from :data:`PASS_ENV`) sets them; the suites read them through
:func:`get` and the typed readers below, never ``os.environ`` by hand, so a variable is named,
explained and defaulted once. ``docs/testing.md`` lists them from :data:`VARIABLES` (a test checks
that it does).

The core's variables are :data:`CORE_VARIABLES`; a built-in plugin adds its suites' own
(``SUITE_VARIABLES``). Not here: the settings a patched server reads itself (the switches a series
adds to its upstream). The tool's own knobs read by the library (``KETTA_BUILD_CACHE``,
``KETTA_BUILD_LOCK_TIMEOUT``, ``KETTA_DOWNLOAD_DEADLINE``) are listed too because the suites'
processes pass them on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import KettaError
from .profile import PLUGINS, plugin_module


@dataclass(frozen=True)
class Variable:
    name: str
    meaning: str
    default: str | None = None
    set_by: str = "matrix"  # matrix | tox | user | tool


#: The contract every suite registry has: set by the matrix (or tox), read by any project's suites.
CORE_VARIABLES: tuple[Variable, ...] = (
    Variable("KETTA_RELEASE", "the release a suite runs against", None, "tox"),
    Variable("KETTA_SUITE", "the pytest marker expression of the suites a tox run selects", None, "tox"),
    Variable("KETTA_REPORT_DIR", "the matrix's report directory: JUnit files, logs, per-release records", None),
    Variable("KETTA_PATCHES", "the series directory the servers' wheels are built from", None),
    Variable("KETTA_INDEX_URL", "the package index the releases come from (else pip's configuration)", None),
    Variable("KETTA_NO_PATCHES", "1: the suites run against the unpatched releases (matrix --no-patches)", "0"),
    Variable("KETTA_BUILD_ROOT", "where the servers' trees and wheels are built (build/servers/X)", None),
    Variable("KETTA_BUILD_CACHE", "the tool's cache directory (matrix --cache-dir)", None, "tool"),
    Variable("KETTA_RERUN", "1: stored stock runs and cells are made again (matrix --rerun)", "0"),
    Variable("KETTA_COVERAGE", "the directory hunk coverage is collected into (matrix --coverage)", None),
    Variable("KETTA_UPGRADE_PAIRS", "which upgrade pairs a cell runs: all, or ci (the default run's)", "all"),
    Variable("KETTA_BUILD_LOCK_TIMEOUT", "seconds to wait for another run's lock on the cache or series", None, "tool"),
    Variable("KETTA_DOWNLOAD_DEADLINE", "seconds a whole download may take", None, "tool"),
)


def _plugin_variables() -> tuple[tuple[Variable, ...], tuple[str, ...]]:
    """The variables the built-in plugins' suites add (``SUITE_VARIABLES``: name, meaning, default,
    set_by), and what else their tox environments pass on (``SUITE_PASS_ENV``)."""
    variables: list[Variable] = []
    passed: list[str] = []
    for kind in PLUGINS:
        plugin = plugin_module(kind)
        variables += [Variable(*item) for item in getattr(plugin, "SUITE_VARIABLES", ())]
        passed += list(getattr(plugin, "SUITE_PASS_ENV", ()))
    return tuple(variables), tuple(passed)


_PLUGIN_VARIABLES, _PLUGIN_PASS_ENV = _plugin_variables()

# Generated requests per route when the fuzz suite is the point of the run (matrix --all, or --suite
# fuzz); otherwise the suite's own default (KETTA_FUZZ_EXAMPLES) holds.
FUZZ_EXAMPLES_THOROUGH = 40
VARIABLES: tuple[Variable, ...] = CORE_VARIABLES + _PLUGIN_VARIABLES
_BY_NAME = {v.name: v for v in VARIABLES}

# What tox passes from the matrix's environment into a suite's: the contract's variables (KETTA_RELEASE
# and KETTA_SUITE tox sets itself), what the plugins' suites need (their database), and the index
# configuration of pip and uv.
PASS_ENV: tuple[str, ...] = (*_PLUGIN_PASS_ENV, *(v.name for v in VARIABLES if v.set_by != "tox"), "PIP_*", "UV_*",
                             "HOME")


def variable(name: str) -> Variable:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KettaError(f"{name} is not a suite variable; ketta_build/suiteenv.py lists them") from None


def get(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The value of contract variable ``name`` (its default when unset or empty)."""
    value = (os.environ if env is None else env).get(variable(name).name)
    return value if value else variable(name).default


def flag(name: str, env: Mapping[str, str] | None = None) -> bool:
    return get(name, env) == "1"


def number(name: str, env: Mapping[str, str] | None = None) -> float:
    text = get(name, env)
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise KettaError(f"{name} must be a number, got {text!r}") from None


def integer(name: str, env: Mapping[str, str] | None = None) -> int:
    text = get(name, env)
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise KettaError(f"{name} must be a whole number, got {text!r}") from None


def path(name: str, env: Mapping[str, str] | None = None) -> Path | None:
    text = get(name, env)
    return Path(text) if text else None


def for_suites(**values: str | None) -> dict[str, str]:
    """Variables for a suite run, by contract name; refuses a name the contract does not define."""
    return {variable(name).name: value for name, value in values.items() if value is not None}
