"""The compatibility matrix: plan and run tox environments (release x suite), one cell each.

A cell is a release and a suite (:mod:`ketta_build.suites` lists them). Per release, the suites the
registry marks ``shared`` run in one ``tox -e <project><NNNN>-shared`` session whose JUnit file is split
into their cells by the suite each test records; the others (or a suite asked for alone) run as
``tox -e <project><NNNN>-<suite>``. Each run's output is kept in ``logs/<env>.log`` and its results in
``<env>.xml``. What a cell's key depends on is :mod:`ketta_build.cellkeys`; the report
(``matrix.json``, ``matrix.md``, ``matrix.html``) is :mod:`ketta_build.matrixreport`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .affected import Affected
from .cache import Cache
from .cellstore import CellStore, Proof, cell_key
from .cellkeys import CellKeys
from .errors import KettaError
from .gitcmd import run as run_git
from .hunkcoverage import ALLOWED_FILE, measure_release
from . import suiteenv
from .suiteenv import FUZZ_EXAMPLES_THOROUGH
from .servercoverage import release_dir, require_coverage
from .toxini import SHARED_FACTOR, factor
from .releases import load_releases, parse_version, require_served
from .releasetree import server_tree
from .suites import SuiteRegistry, matrix_suites
from .upstreamtests import build_both, cell_inputs
from .upstreamtests import run_cell as run_upstream_cell


def env_name(version: str, suite: str, project: str) -> str:
    """A cell's name, the tox environment's: ``<project><NNNN>-<suite>``, e.g. ``idna310-upstream``."""
    return factor(parse_version(version), project) + "-" + suite


@dataclass
class Cell:
    version: str
    suite: str
    env: str
    status: str = "not-run"  # pass | fail | error
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    xfailed: int = 0
    duration: float = 0.0
    exit_code: int | None = None
    log: str = ""
    failures: list[str] = field(default_factory=list)
    session: str = ""  # the tox environment whose run this cell's results came from (its own, or <project><NNNN>-shared)
    key: str = ""  # the cell's input key (cellcache): same key, same result
    reused: bool = False  # not run: a stored pass with the same key stands for it
    proven: dict | None = None  # for a reused cell: the run that proved it (date, series commit, env)


@dataclass
class Task:
    """One tox run and the cells its results are split into."""

    env: str
    cells: list[Cell]
    marker: str | None = None  # a narrower -m than the environment's own (some of a shared session's suites)
    run: Callable[[Path, Path], int] | None = None  # instead of tox: run(log, junit) -> exit code (any upstream)


def _case_suite(case: ET.Element) -> str | None:
    for prop in case.iter("property"):
        if prop.get("name") == "ketta_suite":
            return prop.get("value")
    return None


def _read_junit(path: Path, cells: list[Cell]) -> None:
    """Count each test case into its cell: the one of its suite (the ``ketta_suite`` property the
    compatibility suites record), or the only cell."""
    by_suite = {c.suite: c for c in cells}
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        cell = by_suite.get(_case_suite(case) or "") or (cells[0] if len(cells) == 1 else None)
        if cell is None:
            continue
        if len(cells) > 1:
            cell.duration = round(cell.duration + float(case.get("time") or 0), 1)
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kinds = {child.tag for child in case}
        if "failure" in kinds:
            cell.failed += 1
            cell.failures.append(name)
        elif "error" in kinds:
            cell.errors += 1
            cell.failures.append(name + " (error)")
        elif "skipped" in kinds:
            skip = case.find("skipped")
            if skip is not None and (skip.get("type") or "").endswith("xfail"):
                cell.xfailed += 1
            else:
                cell.skipped += 1
        else:
            cell.passed += 1


def run_task(task: Task, report_dir: Path, tox: list[str], env: dict[str, str], project: Path) -> list[Cell]:
    """Run ``task``'s tox environment, keep its log, and fill its cells from the JUnit file.

    A cell of its own takes the run's wall time and exit code. Cells split from a shared session
    take the time of their own tests (the first test of a session also pays for what its fixtures
    start), and are judged by their own tests: a failure in one suite does not make another's
    cell fail; a session that wrote no JUnit file (it crashed or was killed) leaves every cell in error.
    """
    logs = report_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{task.env}.log"
    xml_path = report_dir / f"{task.env}.xml"
    xml_path.unlink(missing_ok=True)
    command = [*tox, "-e", task.env, *(["--", "-m", task.marker] if task.marker else [])]
    start = time.monotonic()
    if task.run is not None:
        returncode = task.run(log_path, xml_path)
    else:
        with open(log_path, "wb") as log:
            returncode = subprocess.run(command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = round(time.monotonic() - start, 1)
    alone = len(task.cells) == 1
    for cell in task.cells:
        cell.exit_code = returncode
        cell.log = f"logs/{task.env}.log"
        cell.session = task.env
        cell.duration = wall if alone else 0.0
    if xml_path.is_file():
        _read_junit(xml_path, task.cells)
    for cell in task.cells:
        if cell.failed:
            cell.status = "fail"
        elif cell.errors or cell.passed == 0 or not xml_path.is_file() or (alone and returncode != 0):
            cell.status = "error"
        else:
            cell.status = "pass"
    return task.cells


def shared_env(version: str, project: str) -> str:
    return f"{factor(parse_version(version), project)}-{SHARED_FACTOR}"


def plan_tasks(cells: list[Cell], registry: SuiteRegistry, project: str) -> list[Task]:
    """Per release, the shared suites asked for in one session (two or more of them), the rest alone;
    ``project`` names the tox environments (its factor)."""
    shared_suites = registry.shared
    tasks: list[Task] = []
    by_version: dict[str, list[Cell]] = {}
    for cell in cells:
        by_version.setdefault(cell.version, []).append(cell)
    for version, group in by_version.items():
        shared = [c for c in group if c.suite in shared_suites]
        if len(shared) >= 2:
            narrower = {c.suite for c in shared} != set(shared_suites)
            marker = " or ".join(c.suite for c in shared) if narrower else None
            tasks.append(Task(shared_env(version, project), shared, marker))
            group = [c for c in group if c not in shared]
        tasks.extend(Task(c.env, [c]) for c in group)
    return tasks


def run_matrix(
    versions: list[str],
    suites: list[str],
    *,
    report_dir: Path,
    parallel: int = 1,
    no_patches: bool = False,
    project: Path,
    index_url: str | None = None,
    upgrade_pairs: str = "all",
    fuzz_examples: int | None = None,
    on_cell=lambda cell: None,
    tox: list[str] | None = None,
    store: CellStore | None = None,
    cache: Cache | None = None,
    changed: Affected | None = None,
    keys: CellKeys | None = None,
    reuse: bool = True,
    coverage: bool = False,
    series_dir: Path | None = None,
    build_root: Path | None = None,
) -> list[Cell]:
    """Run the cells of ``versions`` x ``suites``. With a ``store``, a fresh pass is stored under its cell's
    input key and (unless ``reuse`` is off: ``--rerun``) a cell whose key has a stored pass is reused
    instead of run; with ``changed``, only the cells the change can affect run (the others are reused
    where stored, else reported as not affected). With ``coverage`` each release's patched server runs
    under coverage.py and ``report_dir/coverage/<release>.json`` says which hunks of its patches ran
    (:mod:`ketta_build.hunkcoverage`); no cell is reused then (a reused cell runs no server).
    ``series_dir`` (default ``project/patches``) is the series the wheels are built from; the suites
    get it as ``KETTA_PATCHES``. ``build_root`` (``--build-root``) is where the suites build the
    patched releases' trees (``KETTA_BUILD_ROOT``; default ``project/build``); an unpatched run builds
    under ``report_dir/build``."""
    series_dir = (series_dir or project / "patches").absolute()
    registry = matrix_suites(project, series_dir)
    registry.check(suites)
    if parallel < 1:
        raise KettaError("-p must be 1 or more")
    if not load_releases(series_dir).profile.has_suite_registry:
        return _run_any_upstream(versions, suites, report_dir=report_dir, parallel=parallel, no_patches=no_patches,
                                 series_dir=series_dir, build_root=build_root, project=project, cache=cache,
                                 index_url=index_url, on_cell=on_cell, registry=registry, coverage=coverage,
                                 changed=changed, store=store, reuse=reuse)
    if coverage:
        if no_patches:
            raise KettaError("--coverage measures the series' hunks; leave out --no-patches")
        require_coverage()
        reuse = False
    supported = load_releases(series_dir)
    for version in versions:  # tox.ini has environments for the supported releases only
        require_served(parse_version(version), supported, "the matrix has no cells for it")
    if not (project / "tox.ini").is_file():
        raise KettaError("no tox.ini here; run ketta-build matrix from the checkout that holds the suite registry", path=project / "tox.ini")
    if tox is None:
        tox_bin = shutil.which("tox", path=str(Path(sys.executable).parent)) or shutil.which("tox")
        tox = [tox_bin] if tox_bin else [sys.executable, "-m", "tox"]
    report_dir = report_dir.absolute()
    report_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **suiteenv.for_suites(
        KETTA_REPORT_DIR=str(report_dir), KETTA_PATCHES=str(series_dir), KETTA_INDEX_URL=index_url or None,
        KETTA_UPGRADE_PAIRS=upgrade_pairs,
        # the suites build and reuse in the cache the matrix was given (--cache-dir)
        KETTA_BUILD_CACHE=str(cache.root.absolute()) if cache is not None else None,
        # --rerun: the suites' stored stock runs (ketta_build.runstore) are run again too
        KETTA_RERUN="1" if not reuse else None,
        KETTA_FUZZ_EXAMPLES=str(fuzz_examples) if fuzz_examples is not None else None,
        KETTA_NO_PATCHES="1" if no_patches else None,
        KETTA_BUILD_ROOT=str(report_dir / "build") if no_patches else
        (str(build_root.absolute()) if build_root is not None else None),
        KETTA_COVERAGE=str(report_dir / "coverage") if coverage else None,
    )}
    if coverage:
        for version in versions:  # this run's data only
            shutil.rmtree(release_dir(report_dir / "coverage", version), ignore_errors=True)
            (report_dir / "coverage" / f"{parse_version(version)}.json").unlink(missing_ok=True)
    cells = [Cell(str(parse_version(v)), s, env_name(v, s, supported.profile.project)) for v in versions for s in suites]
    series_commit = _git(project, "rev-parse", "HEAD") or None
    if store is not None or changed is not None:
        keys = keys or CellKeys(project, cache or Cache(), not no_patches, _build_root(project, env), index_url, env,
                                series_dir=series_dir, registry=registry)
        for cell in cells:
            cell.key = keys.key(cell.version, cell.suite)
            proof = store.lookup(cell.key) if store is not None and reuse else None
            if proof is not None:
                _reuse(cell, proof, report_dir)
                on_cell(cell)
            elif changed is not None and not changed.cell(cell.version, cell.suite, keys.related(cell.version, cell.suite)):
                cell.status = "not-affected"
                on_cell(cell)
    to_run = [c for c in cells if c.status == "not-run"]
    # A release's shared suites run in one session (one PostgreSQL, one migrated template, one
    # default server); upgrade runs on its own. Up to ``parallel`` tox runs at once, the longest
    # first, whatever their release: a release's environment is built by whichever run gets there
    # first (prepare_server holds a lock per release and flavour, so the others wait for it and
    # reuse it), and the short runs fill the cores while the long ones go on.
    order = longest_first(plan_tasks(to_run, registry, supported.profile.project), previous_durations(report_dir), registry)

    def run_one(task: Task) -> None:
        for cell in run_task(task, report_dir, tox, env, project):
            if store is not None and cell.key:
                store.save(cell.key, cell, report_dir / cell.log, report_dir / f"{cell.session}.xml", series_commit)
            on_cell(cell)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(run_one, order))
    if coverage:
        build_root = _build_root(project, env)
        for version in dict.fromkeys(str(parse_version(v)) for v in versions):
            if server_tree(build_root, version).is_dir():
                measure_release(version, tree=server_tree(build_root, version), series_dir=series_dir,
                                data_root=report_dir / "coverage", allowed_file=project / ALLOWED_FILE)
    return cells


def _run_any_upstream(versions: list[str], suites: list[str], *, report_dir: Path, parallel: int, no_patches: bool,
                      series_dir: Path, build_root: Path | None, project: Path, cache: Cache | None, index_url: str | None,
                      on_cell, registry: SuiteRegistry, coverage: bool, changed: Affected | None,
                      store: CellStore | None = None, reuse: bool = True) -> list[Cell]:
    """The matrix of a series without a suite registry (``kind = "any"``): one cell per release, the ``upstream``
    suite (:func:`ketta_build.upstreamtests.run_cell`), run here rather than through tox: the cell
    builds and runs its own two environments, and the downstream's checkout needs no tox.ini, no
    compat_tests/ and no ketta-build inside an environment. A cell first builds both wheels (seconds:
    they are reproducible), whose hashes are most of its key (:func:`ketta_build.upstreamtests.cell_inputs`):
    with a ``store`` a cell whose key has a stored pass is reused (unless ``reuse`` is off), without
    making its environments or running a test; a fresh pass is stored."""
    profile = load_releases(series_dir).profile
    if coverage:
        raise KettaError(f"--coverage measures the hunks the registry's servers run; a series for {profile.name} has no "
                         "server: leave it out")
    if changed is not None:
        raise KettaError(f"--changed reads which cells the registry's suites depend on; a series for {profile.name} has "
                         "one cell per release, reused whenever its inputs have a stored pass: leave it out")
    supported = load_releases(series_dir)
    for version in versions:
        require_served(parse_version(version), supported, "the matrix has no cells for it")
    report_dir = report_dir.absolute()
    report_dir.mkdir(parents=True, exist_ok=True)
    root = report_dir / "build" if no_patches else (build_root or project / "build").absolute()
    cells = [Cell(str(parse_version(v)), s, env_name(v, s, profile.project)) for v in versions for s in suites]
    series_commit = _git(project, "rev-parse", "HEAD") or None
    cache = cache or Cache()

    def run_one(cell: Cell) -> None:
        built, steps = None, []
        try:  # the builds first: their hashes are the cell's key
            built = build_both(cell.version, series_dir=series_dir, build_root=root, cache=cache, index_url=index_url,
                               no_patches=no_patches, progress=steps.append)
            cell.key = cell_key(cell_inputs(cell.version, *built, series_dir))
        except (KettaError, OSError, subprocess.SubprocessError):
            built = None  # the cell's run builds again and says in its log why it has no verdict
        proof = store.lookup(cell.key) if store is not None and reuse and cell.key else None
        if proof is not None:
            _reuse(cell, proof, report_dir)
            on_cell(cell)
            return

        def run(log: Path, junit: Path) -> int:
            return run_upstream_cell(cell.version, series_dir=series_dir, build_root=root, report_dir=report_dir,
                                     log=log, junit=junit, cache=cache, index_url=index_url, no_patches=no_patches,
                                     built=built, steps=steps)
        for done in run_task(Task(cell.env, [cell], run=run), report_dir, [], dict(os.environ), project):
            if store is not None and done.key:
                store.save(done.key, done, report_dir / done.log, report_dir / f"{done.env}.xml", series_commit)
            on_cell(done)

    order = [task.cells[0] for task in longest_first([Task(c.env, [c]) for c in cells], previous_durations(report_dir),
                                                      registry)]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(run_one, order))
    return cells




def fuzz_examples(given: int | None, every_release: bool, suites_asked: list[str] | None) -> int | None:
    """The fuzz suite's examples per route for a run: ``given``, else thorough for a full or fuzz run,
    else None (the suite's default)."""
    if given is not None:
        return given
    return FUZZ_EXAMPLES_THOROUGH if every_release or "fuzz" in (suites_asked or []) else None


def need_tox() -> None:
    """The matrix runs tox with tox-uv: say so up front, not as a red cell whose log says it."""
    import importlib.util

    missing = [name for name, module in (("tox", "tox"), ("tox-uv", "tox_uv")) if importlib.util.find_spec(module) is None]
    if missing:
        raise KettaError(f"the matrix runs its cells with {' and '.join(missing)}, which this environment lacks: "
                         "pip install 'ketta-build[test]' (or pip install tox tox-uv)")


def _build_root(project: Path, env: dict[str, str]) -> Path:
    """Where the suites build their servers' trees and wheels (``KETTA_BUILD_ROOT``, else the checkout's build/)."""
    return (suiteenv.path("KETTA_BUILD_ROOT", env) or project / "build").absolute()


def _git(project: Path, *args: str) -> str:
    """What ``git args`` says in ``project`` ("" if it fails: the project need not be a repository)."""
    proc = run_git(project, *args)
    return proc.stdout.decode("utf-8", errors="replace").strip() if proc.returncode == 0 else ""


def _reuse(cell: Cell, proof: Proof, report_dir: Path) -> None:
    """Fill ``cell`` from the stored run that proved its key; its log and JUnit file come along."""
    logs = report_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    shutil.copy2(proof.log, logs / f"{cell.env}.reused.log")
    if proof.junit is not None:
        shutil.copy2(proof.junit, report_dir / f"{cell.env}.reused.xml")
    cell.status, cell.reused = "pass", True
    cell.passed, cell.skipped, cell.xfailed, cell.duration = proof.passed, proof.skipped, proof.xfailed, proof.duration
    cell.log, cell.session = f"logs/{cell.env}.reused.log", proof.env
    cell.proven = {"date": proof.date, "series_commit": proof.series_commit, "env": proof.env}


def previous_durations(report_dir: Path) -> dict[str, float]:
    """Each cell's duration in the report a previous run left in ``report_dir`` (none: empty)."""
    try:
        data = json.loads((report_dir / "matrix.json").read_text())
        return {c["env"]: float(c["duration"]) for c in data.get("cells", []) if c.get("duration")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def longest_first(tasks: list[Task], durations: dict[str, float], registry: SuiteRegistry) -> list[Task]:
    """The order to start ``tasks`` in: by their cells' measured durations (longest first), else by
    their suites' typical durations (the registry's), newer releases first (their upgrade cells
    have the most pairs)."""
    def measured(task: Task) -> float:
        return sum(durations.get(c.env, 0.0) for c in task.cells)

    def typical(task: Task) -> int:
        return sum(registry.get(c.suite).typical_seconds for c in task.cells)

    newest_first = sorted(tasks, key=lambda t: parse_version(t.cells[0].version), reverse=True)
    return sorted(newest_first, key=lambda t: (-measured(t), -typical(t)))


def default_versions(project: Path, series_dir: Path | None = None) -> list[str]:
    return [str(v) for v in load_releases(series_dir or project / "patches").versions]


