"""Running the servers of ``matrix --coverage`` under coverage.py, and gathering what they ran.

How it works, end to end:

- ``matrix --coverage`` sets ``KETTA_COVERAGE`` to ``<report-dir>/coverage`` for its tox runs.
- The suites' session (``compat_tests/conftest.py``) then prepares the release under test with
  ``prepare_server(..., coverage=True)``: an environment of its own with coverage.py installed (through
  uv and the user's index configuration, like every other package) and a ``.pth`` start-up hook, and
  writes the release's configuration (:func:`write_rc`) and points ``COVERAGE_PROCESS_START`` at it.
- Every Python process of that environment the suites start (the server, its migrations, any
  script) then measures the files the release's patches touch and writes a data file of its own
  (``parallel``) under ``<report-dir>/coverage/<release>/data/``. A server that answers SIGTERM by
  shutting down and raising the signal again with the handler it found (uvicorn does) saves its data
  before it ends: ``sigterm = true`` makes that handler coverage's.
- After the runs, :func:`combine` merges a release's data files into ``<report-dir>/coverage/<release>/.coverage``
  (``coverage report --data-file`` reads it) and :func:`executed_lines` gives the executed lines by the
  file's path in the build tree, whether the process ran it from site-packages or from the tree.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .atomic import write_atomic
from .errors import KettaError
from .releases import parse_version
from .series import read_series

ENV_VAR = "KETTA_COVERAGE"  # the directory matrix --coverage collects into (tox passes it on)
REQUIREMENT = "coverage>=7.4"  # sigterm, and CoverageData/PythonParser as used here
STARTUP_PTH = "ketta-coverage-startup.pth"
_STARTUP = ('import os; exec("try:\\n import coverage\\nexcept ImportError:\\n pass\\nelse:\\n coverage.process_startup()") '
            'if os.environ.get("COVERAGE_PROCESS_START") else None\n')


class CoverageUnavailable(KettaError):
    """coverage.py is needed (matrix --coverage) and not installed."""


def require_coverage() -> None:
    """Fail early, in one line, when this environment lacks coverage.py."""
    try:
        import coverage  # noqa: F401
        from coverage.parser import PythonParser  # noqa: F401
    except ImportError:
        raise CoverageUnavailable("matrix --coverage reads coverage.py data, and coverage.py is not installed here: "
                                  "pip install 'ketta-build[coverage]'") from None


def release_dir(root: Path, version: str) -> Path:
    return root / str(parse_version(version))


def data_dir(root: Path, version: str) -> Path:
    """Where the processes of a release's servers write their data files."""
    return release_dir(root, version) / "data"


def combined_file(root: Path, version: str) -> Path:
    return release_dir(root, version) / ".coverage"


def rc_text(data_file: Path, paths: Iterable[str]) -> str:
    """A coverage.py configuration that measures only ``paths`` (files of the tree, relative to it) wherever a
    process imports them from, one data file per process, saved on exit and on SIGTERM."""
    include = "".join(f"    */{path}\n" for path in sorted(set(paths)))
    return ("# Written by ketta-build matrix --coverage; COVERAGE_PROCESS_START names this file.\n"
            "[run]\n"
            "parallel = true\n"
            f"data_file = {data_file}\n"
            "sigterm = true\n"
            "disable_warnings =\n    no-data-collected\n    module-not-measured\n    module-not-imported\n"
            f"include =\n{include}")


def write_rc(root: Path, version: str, paths: Iterable[str]) -> Path:
    """The release's configuration under ``root`` (the same text from every session of the run)."""
    path = release_dir(root, version) / "coveragerc"
    path.parent.mkdir(parents=True, exist_ok=True)
    data_dir(root, version).mkdir(parents=True, exist_ok=True)
    text = rc_text(data_dir(root, version) / ".coverage", paths)
    if not path.is_file() or path.read_text() != text:
        write_atomic(path, text.encode())
    return path


def touched_paths(series_dir: Path, version: str) -> list[str]:
    """The files the patches the series selects for ``version`` touch."""
    series = read_series(series_dir)
    return sorted({path for entry in series.select(parse_version(version)) for path in series.load(entry).touched_paths})


def install_startup_hook(env: Path) -> Path:
    """A ``.pth`` in ``env``'s site-packages that starts coverage in every process of that environment when
    ``COVERAGE_PROCESS_START`` is set (coverage.py 7.13 and later ship one of their own; ``process_startup``
    runs once either way)."""
    found = sorted(env.glob("lib/python3*/site-packages"))
    if not found:
        raise KettaError("no site-packages in the server environment; delete it to have it made again", path=env)
    path = found[0] / STARTUP_PTH
    path.write_text(_STARTUP)
    return path


def combine(root: Path, version: str) -> tuple[Path, int] | None:
    """Merge the release's data files into one (replacing an earlier combination); the combined file and how
    many process files went into it, or None when no process wrote any."""
    from coverage import CoverageData

    parts = sorted(p for p in data_dir(root, version).glob(".coverage.*") if p.is_file())
    if not parts:
        return None
    out = combined_file(root, version)
    out.unlink(missing_ok=True)
    combined = CoverageData(basename=str(out))
    for part in parts:
        data = CoverageData(basename=str(part))
        data.read()
        combined.update(data)
    combined.write()
    return out, len(parts)


def relative_path(measured: str, trees: Iterable[Path]) -> str | None:
    """A measured file's path relative to the tree it was built from: after ``site-packages/`` for the
    installed wheel, else relative to one of ``trees`` (alembic's migrations run from the build tree)."""
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in measured:
            return measured.rsplit(marker, 1)[1]
    for tree in trees:
        prefix = str(tree.resolve()) + os.sep
        if measured.startswith(prefix):
            return measured[len(prefix):]
    return None


def executed_lines(data_file: Path, trees: Iterable[Path] = ()) -> dict[str, set[int]]:
    """The lines each file ran, by its path in the tree (``pkg/module.py``)."""
    from coverage import CoverageData

    data = CoverageData(basename=str(data_file))
    data.read()
    out: dict[str, set[int]] = {}
    trees = list(trees)
    for measured in data.measured_files():
        rel = relative_path(measured, trees)
        if rel is not None:
            out.setdefault(rel, set()).update(data.lines(measured) or ())
    return out
