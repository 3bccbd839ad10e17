"""The compatibility matrix: run tox environments (release x suite) and write the report.

A cell is a release and a suite. Per release, the suites but ``upgrade`` run in one ``tox -e
letta<NNNN>-shared`` session whose JUnit file is split into their cells by the suite each test
records; ``upgrade`` (or a suite asked for alone) runs as ``tox -e letta<NNNN>-<suite>``. Each run's
output is kept in ``logs/<env>.log`` and its results in ``<env>.xml``. The report
(``matrix.json``, ``matrix.md``, ``matrix.html``) says pass/fail/error with counts and duration
per cell and links each log.
"""

from __future__ import annotations

import hashlib
import html
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__
from .affected import Affected
from .cache import Cache, sha256_file
from .cellcache import CellStore, Proof, cell_key, digest_files, suite_files
from .errors import KettaError
from .gitcmd import run as run_git
from .hunkcoverage import ALLOWED_FILE, measure_release
from .hunkcoverage import html_section as coverage_html
from .hunkcoverage import markdown_lines as coverage_markdown
from .hunkcoverage import records as coverage_records
from .releases import load_releases, parse_version, unknown_release
from .servercoverage import ENV_VAR, release_dir, require_coverage
from .serverenv import prepare_wheel
from .toxini import SHARED_FACTOR, SHARED_SUITES, SUITES, factor
from .upstream import IndexSource
from .wheel import read_build_number

SCHEMA = "ketta-build/matrix-report/1"


def env_name(version: str, suite: str) -> str:
    return factor(parse_version(version)) + "-" + suite


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
    session: str = ""  # the tox environment whose run this cell's results came from (its own, or letta<NNNN>-shared)
    key: str = ""  # the cell's input key (cellcache): same key, same result
    reused: bool = False  # not run: a stored pass with the same key stands for it
    proven: dict | None = None  # for a reused cell: the run that proved it (date, series commit, env)


@dataclass
class Task:
    """One tox run and the cells its results are split into."""

    env: str
    cells: list[Cell]
    marker: str | None = None  # a narrower -m than the environment's own (some of a shared session's suites)


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
    with open(log_path, "wb") as log:
        proc = subprocess.run(command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = round(time.monotonic() - start, 1)
    alone = len(task.cells) == 1
    for cell in task.cells:
        cell.exit_code = proc.returncode
        cell.log = f"logs/{task.env}.log"
        cell.session = task.env
        cell.duration = wall if alone else 0.0
    if xml_path.is_file():
        _read_junit(xml_path, task.cells)
    for cell in task.cells:
        if cell.failed:
            cell.status = "fail"
        elif cell.errors or cell.passed == 0 or not xml_path.is_file() or (alone and proc.returncode != 0):
            cell.status = "error"
        else:
            cell.status = "pass"
    return task.cells


def shared_env(version: str) -> str:
    return f"{factor(parse_version(version))}-{SHARED_FACTOR}"


def plan_tasks(cells: list[Cell]) -> list[Task]:
    """Per release, the shared suites asked for in one session (two or more of them), the rest alone."""
    tasks: list[Task] = []
    by_version: dict[str, list[Cell]] = {}
    for cell in cells:
        by_version.setdefault(cell.version, []).append(cell)
    for version, group in by_version.items():
        shared = [c for c in group if c.suite in SHARED_SUITES]
        if len(shared) >= 2:
            narrower = {c.suite for c in shared} != set(SHARED_SUITES)
            marker = " or ".join(c.suite for c in shared) if narrower else None
            tasks.append(Task(shared_env(version), shared, marker))
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
    project: Path = Path("."),
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
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise KettaError(f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(SUITES)}")
    if parallel < 1:
        raise KettaError("-p must be 1 or more")
    if coverage:
        if no_patches:
            raise KettaError("--coverage measures the series' hunks; leave out --no-patches")
        require_coverage()
        reuse = False
    series_dir = (series_dir or project / "patches").absolute()
    supported = load_releases(series_dir)
    for version in versions:  # tox.ini has environments for the supported releases only
        parsed = parse_version(version)
        if supported.find(parsed) is None:
            raise unknown_release(parsed, "the matrix has no cells for it", supported)
    if not (project / "tox.ini").is_file():
        raise KettaError("no tox.ini here; run ketta-build matrix from the Ketta checkout", path=project / "tox.ini")
    if tox is None:
        tox_bin = shutil.which("tox", path=str(Path(sys.executable).parent)) or shutil.which("tox")
        tox = [tox_bin] if tox_bin else [sys.executable, "-m", "tox"]
    report_dir = report_dir.absolute()
    report_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KETTA_REPORT_DIR": str(report_dir), "KETTA_PATCHES": str(series_dir)}
    if index_url:
        env["KETTA_INDEX_URL"] = index_url
    env["KETTA_UPGRADE_PAIRS"] = upgrade_pairs
    if cache is not None:  # the suites build and reuse in the cache the matrix was given (--cache-dir)
        env["KETTA_BUILD_CACHE"] = str(cache.root.absolute())
    if not reuse:  # --rerun: the suites' stored stock runs (ketta_build.runstore) are run again too
        env["KETTA_RERUN"] = "1"
    if fuzz_examples is not None:
        env["KETTA_FUZZ_EXAMPLES"] = str(fuzz_examples)
    if no_patches:
        env["KETTA_NO_PATCHES"] = "1"
        env["KETTA_BUILD_ROOT"] = str(report_dir / "build")
    elif build_root is not None:
        env["KETTA_BUILD_ROOT"] = str(build_root.absolute())
    if coverage:
        env[ENV_VAR] = str(report_dir / "coverage")
        for version in versions:  # this run's data only
            shutil.rmtree(release_dir(report_dir / "coverage", version), ignore_errors=True)
            (report_dir / "coverage" / f"{parse_version(version)}.json").unlink(missing_ok=True)
    cells = [Cell(str(parse_version(v)), s, env_name(v, s)) for v in versions for s in suites]
    series_commit = _git(project, "rev-parse", "HEAD") or None
    if store is not None or changed is not None:
        keys = keys or CellKeys(project, cache or Cache(), not no_patches,
                                Path(env.get("KETTA_BUILD_ROOT") or project / "build"), index_url, upgrade_pairs, env,
                                series_dir=series_dir)
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
    order = longest_first(plan_tasks(to_run), previous_durations(report_dir))

    def run_one(task: Task) -> None:
        for cell in run_task(task, report_dir, tox, env, project):
            if store is not None and cell.key:
                store.save(cell.key, cell, report_dir / cell.log, report_dir / f"{cell.session}.xml", series_commit)
            on_cell(cell)

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(run_one, order))
    if coverage:
        build_root = Path(env.get("KETTA_BUILD_ROOT") or project / "build").absolute()
        for version in dict.fromkeys(str(parse_version(v)) for v in versions):
            if (build_root / version).is_dir():
                measure_release(version, tree=build_root / version, series_dir=series_dir,
                                data_root=report_dir / "coverage", allowed_file=project / ALLOWED_FILE)
    return cells


# Rough warm seconds of a suite's cell on a 2-core machine: the order of a first run only (later
# runs go by the durations in the previous report).
TYPICAL_SECONDS = {"upgrade": 400, "upstream": 100, "unified": 60, "agent": 60, "harddelete": 30, "handle": 25, "migration": 20}


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


class CellKeys:
    """The input key of each cell (see :mod:`ketta_build.cellcache`), computing each release's wheel once."""

    def __init__(self, project: Path, cache: Cache, patched: bool, build_root: Path, index_url: str | None,
                 upgrade_pairs: str, env: dict[str, str], series_dir: Path | None = None) -> None:
        self.project, self.cache, self.patched = project.absolute(), cache, patched
        self.series_dir = (series_dir or self.project / "patches").absolute()
        self.build_root, self.index_url, self.upgrade_pairs, self.env = build_root, index_url, upgrade_pairs, env
        self._releases: dict[tuple[str, bool], dict] = {}
        self._suites: dict[str, str] = {}
        self.tox = hashlib.sha256((self.project / "tox.ini").read_bytes()).hexdigest()

    def release(self, version: str, patched: bool) -> dict:
        if (version, patched) not in self._releases:
            if patched or not self.patched:  # the wheel under test (a --no-patches run tests the unpatched one)
                built = prepare_wheel(version, patched=patched, series_dir=self.series_dir,
                                      build_root=self.build_root, cache=self.cache, index_url=self.index_url)
                found = {"wheel": built.wheel.sha256, "constraints": sha256_file(built.constraints)}
            else:  # a stock start side of an upgrade pair: made from the sdist alone
                source = IndexSource(self.cache, self.index_url, allow_unsupported=True,
                                     releases=load_releases(self.series_dir))
                found = {"sdist": source.resolve(parse_version(version)).sha256}
            self._releases[version, patched] = found
        return self._releases[version, patched]

    def related(self, version: str, suite: str) -> set[str]:
        """The other releases a cell builds: for ``upgrade``, those its pairs start from."""
        return {v for v, _ in self._sides(version)} - {version} if suite == "upgrade" else set()

    def _sides(self, version: str) -> set[tuple[str, bool]]:
        if str(self.project) not in sys.path:
            sys.path.insert(0, str(self.project))
        upgrade = importlib.import_module("compat_tests.upgrade")
        sides = set()
        for pair in upgrade.selected_pairs(version, self.upgrade_pairs):
            for side in (pair.start, pair.end):
                sides.add((side.version, side.flavour != "stock"))
        return sides

    def key(self, version: str, suite: str) -> str:
        if suite not in self._suites:
            tests = self.project / "compat_tests"
            self._suites[suite] = digest_files(suite_files(tests, suite), self.project)
        inputs = {"letta": version, "suite": suite, "patched": self.patched, "release": self.release(version, self.patched),
                  "suite_files": self._suites[suite], "tox": self.tox}
        if suite == "upgrade":
            inputs["pairs"] = self.upgrade_pairs
            inputs["sides"] = {f"{v}-{'ketta' if p else 'stock'}": self.release(v, p) for v, p in sorted(self._sides(version))}
        if suite == "fuzz":
            inputs["fuzz"] = {k: self.env.get(k) for k in ("KETTA_FUZZ_EXAMPLES", "KETTA_FUZZ_SEED", "KETTA_FUZZ_STEPS")}
        return cell_key(inputs)


def previous_durations(report_dir: Path) -> dict[str, float]:
    """Each cell's duration in the report a previous run left in ``report_dir`` (none: empty)."""
    try:
        data = json.loads((report_dir / "matrix.json").read_text())
        return {c["env"]: float(c["duration"]) for c in data.get("cells", []) if c.get("duration")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def longest_first(tasks: list[Task], durations: dict[str, float]) -> list[Task]:
    """The order to start ``tasks`` in: by their cells' measured durations (longest first), else by
    their suites' typical durations, newer releases first (their upgrade cells have the most pairs)."""
    def measured(task: Task) -> float:
        return sum(durations.get(c.env, 0.0) for c in task.cells)

    def typical(task: Task) -> int:
        return sum(TYPICAL_SECONDS.get(c.suite, 0) for c in task.cells)

    newest_first = sorted(tasks, key=lambda t: parse_version(t.cells[0].version), reverse=True)
    return sorted(newest_first, key=lambda t: (-measured(t), -typical(t)))


def write_build_record(report_dir: Path, build) -> Path:
    """What a cell tested (written by the suites' session fixture): the release's sdist and its
    sha256, the wheel, and each applied patch with its sha256. One file per release and flavour."""
    upstream = (build.apply_report or {}).get("upstream", {})
    patches = [{"name": p["name"], "sha256": p.get("sha256")} for p in (build.apply_report or {}).get("patches", [])]
    record = {
        "version": str(parse_version(build.version)), "patched": build.patched,
        "sdist": upstream.get("filename"), "sdist_sha256": upstream.get("sha256"),
        "wheel": Path(build.wheel).name, "wheel_sha256": build.wheel_sha256, "patches": patches,
    }
    out = report_dir / "builds" / f"{record['version']}{'' if build.patched else '-upstream'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out)
    return out


def run_context(project: Path, report_dir: Path, *, started: float, finished: float,
                series_dir: Path | None = None) -> dict:
    """Where a matrix run came from: the series commit and build number, the tool, the date, the
    total time, and the per-release records the cells wrote."""
    from datetime import datetime, timezone

    try:
        number = read_build_number(series_dir or project / "patches")
    except KettaError:
        number = None
    builds = {}
    for path in sorted((report_dir / "builds").glob("*.json")):
        record = json.loads(path.read_text())
        builds[path.stem] = record
    coverage = coverage_records(report_dir)
    return {**user_input_records(report_dir), **({"coverage": coverage} if coverage else {}),
        "tool": f"ketta-build {__version__}",
        "series_commit": _git(project, "rev-parse", "HEAD") or None,
        "series_dirty": bool(_git(project, "status", "--porcelain", "--", "patches")),
        "build_number": number,
        "date": datetime.fromtimestamp(finished, timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "total_seconds": round(finished - started, 1),
        "builds": builds,
    }


def user_input_records(report_dir: Path) -> dict:
    """What the fuzz and parity suites wrote per release (``fuzz/<release>.json``, ``parity/<release>.json``),
    reduced to what the report shows: calls, seed, allowed 5xx, failures; steps and differences."""
    fuzz, parity = {}, {}
    for path in sorted((report_dir / "fuzz").glob("*.json"), key=lambda p: parse_version(p.stem)):
        data = json.loads(path.read_text())
        fuzz[path.stem] = {k: data.get(k) for k in ("seed", "examples_per_route", "calls", "seconds", "names_reused",
                                                     "allowed", "failures", "notes")}
        fuzz[path.stem]["routes"] = len(data.get("routes", {}))
    for path in sorted((report_dir / "parity").glob("*.json"), key=lambda p: parse_version(p.stem)):
        data = json.loads(path.read_text())
        parity[path.stem] = {"steps": len(data.get("steps", [])), "allowed": data.get("allowed", []),
                             "differences": data.get("differences", []), "stale_allowances": data.get("stale_allowances", [])}
    return {"fuzz": fuzz, "parity": parity}


def _user_input_lines(context: dict) -> list[str]:
    """Markdown: per release, the fuzz run and the parity comparison."""
    fuzz, parity = context.get("fuzz") or {}, context.get("parity") or {}
    if not fuzz and not parity:
        return []
    lines = ["", "## What users send: fuzz and parity", "",
             "| release | fuzz calls (routes, per route, seed) | allowed upstream 5xx | fuzz failures | parity steps | "
             "differences from 0.16.8 allowed | not allowed |", "|---|---|---|---|---|---|---|"]
    for version in sorted(set(fuzz) | set(parity), key=parse_version):
        f, p = fuzz.get(version, {}), parity.get(version, {})
        fz = f"{f.get('calls')} ({f.get('routes')}, {f.get('examples_per_route')}, {f.get('seed')})" if f else "-"
        allowed = sum((f.get("allowed") or {}).values()) if f else "-"
        reasons = "; ".join(f"{a['step']} / {a['field']}: {a['reason']}" for a in p.get("allowed", [])) or "none"
        lines.append(f"| {version} | {fz} | {allowed} | {len(f.get('failures') or []) if f else '-'} | "
                     f"{p.get('steps', '-')} | {reasons if p else '-'} | {len(p.get('differences', [])) if p else '-'} |")
    return lines


def default_versions(project: Path = Path("."), series_dir: Path | None = None) -> list[str]:
    return [str(v) for v in load_releases(series_dir or project / "patches").versions]


# --------------------------------------------------------------------------- reports


def report_json(cells: list[Cell], no_patches: bool, context: dict | None = None) -> dict:
    return {
        "schema": SCHEMA,
        "patched": not no_patches,
        "context": context or {},
        "cells": [asdict(c) for c in cells],
        "summary": {**{s: sum(1 for c in cells if c.status == s) for s in ("pass", "fail", "error", "not-run", "not-affected")},
                    "reused": sum(1 for c in cells if c.reused)},
    }


def cell_rows(cells: list[Cell]) -> tuple[list[str], list[tuple[str, list[Cell | None]]]]:
    """The suites (columns) and, oldest release first, each release's cell per suite (None: not in the run)."""
    versions = sorted(dict.fromkeys(c.version for c in cells), key=parse_version)
    suites = list(dict.fromkeys(c.suite for c in cells))
    grid = {(c.version, c.suite): c for c in cells}
    return suites, [(v, [grid.get((v, s)) for s in suites]) for v in versions]


def _label(c: Cell) -> str:
    if c.status == "not-affected":
        return "not affected"
    counts = f"{c.passed}/{c.passed + c.failed + c.errors}"
    if c.reused:
        proven = c.proven or {}
        return f"pass (reused: proven {proven.get('date')} at {(proven.get('series_commit') or '?')[:10]}) {counts}"
    return f"{c.status} {counts} {c.duration:.0f}s"


def _context_lines(context: dict) -> list[str]:
    if not context:
        return []
    commit = context.get("series_commit") or "unknown"
    lines = [
        f"series {commit[:12]}{' (patches/ modified)' if context.get('series_dirty') else ''}, "
        f"build number {context.get('build_number')}, {context.get('tool')}, {context.get('date')}, "
        f"total {context.get('total_seconds', 0) / 60:.1f} min"
    ]
    for name, b in sorted(context.get("builds", {}).items()):
        lines.append(f"{name}: {b.get('sdist')} sha256 {b.get('sdist_sha256')}; wheel {b.get('wheel')} "
                     f"sha256 {b.get('wheel_sha256')}; {len(b.get('patches', []))} patch(es)")
    return lines


def log_tail(report_dir: Path, cell: Cell, lines: int = 30) -> str:
    path = report_dir / cell.log
    if not cell.log or not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def report_markdown(cells: list[Cell], no_patches: bool, context: dict | None = None) -> str:
    suites, rows = cell_rows(cells)
    title = "unpatched Letta (--no-patches)" if no_patches else "Letta + Ketta series"
    lines = [f"# Ketta compatibility matrix: {title}", ""]
    lines += [f"- {line}" for line in _context_lines(context or {})]
    lines += ["", "| release | " + " | ".join(suites) + " |", "|---|" + "---|" * len(suites)]
    for v, row in rows:
        lines.append(f"| {v} | " + " | ".join(f"[{_label(c)}]({c.log})" if c else "-" for c in row) + " |")
    lines += _user_input_lines(context or {})
    lines += coverage_markdown((context or {}).get("coverage") or {})
    failing = [c for c in cells if c.failures or c.status not in ("pass", "not-affected")]
    if failing:
        lines += ["", "## Failing cells", ""]
        for c in failing:
            lines.append(f"- {c.env} ({c.status}, exit {c.exit_code}): " + ("; ".join(c.failures) or "no test results"))
    return "\n".join(lines) + "\n"


def report_html(cells: list[Cell], no_patches: bool, context: dict | None = None, report_dir: Path | None = None) -> str:
    suites, table = cell_rows(cells)
    colours = {"pass": "#c8f0c8", "fail": "#f5c2c2", "error": "#f5dfa8", "not-run": "#e4e4e4", "not-affected": "#f4f4f4",
               "reused": "#e6f7e6"}
    head = "".join(f"<th>{html.escape(s)}</th>" for s in suites)
    rows = []
    for v, row in table:
        tds = []
        for c in row:
            if c is None:
                tds.append("<td>-</td>")
                continue
            if c.status == "not-affected":
                tds.append(f'<td style="background:{colours["not-affected"]}">not affected</td>')
                continue
            link = f"#{c.env}" if c.status != "pass" else html.escape(c.log)
            reused = ""
            if c.reused:
                proven = c.proven or {}
                reused = (f"<br><i>reused: proven {html.escape(str(proven.get('date')))} at "
                          f"{html.escape((proven.get('series_commit') or '?')[:10])}</i>")
            tds.append(
                f'<td style="background:{colours["reused" if c.reused else c.status] if c.status in colours else "#fff"}">'
                f'<a href="{link}">{html.escape(c.status)}</a><br>'
                f"{c.passed} passed, {c.failed} failed, {c.errors} errors<br>{c.duration:.0f} s{reused}</td>"
            )
        rows.append(f"<tr><th>{html.escape(v)}</th>{''.join(tds)}</tr>")
    title = "unpatched Letta" if no_patches else "Letta + Ketta series"
    summary = {st: sum(1 for c in cells if c.status == st) for st in ("pass", "fail", "error", "not-run", "not-affected")}
    reused = sum(1 for c in cells if c.reused)
    about = "".join(f"<li>{html.escape(line)}</li>" for line in _context_lines(context or {}))
    details = []
    for c in cells:
        if c.status in ("pass", "not-affected"):
            continue
        tests = "".join(f"<li><code>{html.escape(n)}</code></li>" for n in c.failures) or "<li>no test results</li>"
        tail = html.escape(log_tail(report_dir, c)) if report_dir else ""
        details.append(
            f'<section id="{html.escape(c.env)}"><h3>{html.escape(c.env)}: {html.escape(c.status)} '
            f"(exit {c.exit_code})</h3><ul>{tests}</ul>"
            f'<p><a href="{html.escape(c.log)}">whole log</a></p><pre>{tail}</pre></section>'
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Ketta compatibility matrix</title>"
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #999;"
        "padding:6px 10px;text-align:center}pre{background:#f4f4f4;padding:8px;overflow-x:auto;font-size:12px}"
        "li{font-size:13px}</style></head><body>"
        f"<h1>Ketta compatibility matrix: {html.escape(title)}</h1>"
        f"<p>{summary['pass']} passing ({reused} of them reused from an earlier run with the same inputs), "
        f"{summary['fail']} failing, {summary['error']} errors, {summary['not-run']} not run, "
        f"{summary['not-affected']} not affected by the change, of {len(cells)} cells.</p><ul>{about}</ul>"
        f"<table><tr><th>release</th>{head}</tr>{''.join(rows)}</table>"
        + _user_input_html(context or {})
        + coverage_html((context or {}).get("coverage") or {})
        + (f"<h2>Cells that did not pass</h2>{''.join(details)}" if details else "")
        + "</body></html>\n"
    )


def _user_input_html(context: dict) -> str:
    fuzz, parity = context.get("fuzz") or {}, context.get("parity") or {}
    if not fuzz and not parity:
        return ""
    rows = []
    for version in sorted(set(fuzz) | set(parity), key=parse_version):
        f, p = fuzz.get(version, {}), parity.get(version, {})
        allowed = "".join(f"<li>{html.escape(a['step'])} / {html.escape(a['field'])}: {html.escape(a['reason'])}</li>"
                          for a in p.get("allowed", []))
        rows.append(
            f"<tr><th>{html.escape(version)}</th>"
            f"<td>{f.get('calls', '-')} calls, {f.get('routes', '-')} routes, {f.get('examples_per_route', '-')} per route, "
            f"seed {f.get('seed', '-')}</td><td>{sum((f.get('allowed') or {}).values()) if f else '-'}</td>"
            f"<td>{len(f.get('failures') or []) if f else '-'}</td><td>{p.get('steps', '-')}</td>"
            f"<td style='text-align:left'><ul>{allowed or '<li>none</li>'}</ul></td>"
            f"<td>{len(p.get('differences', [])) if p else '-'}</td></tr>")
    return ("<h2>What users send: fuzz and parity</h2><table><tr><th>release</th><th>fuzz</th><th>allowed upstream 5xx</th>"
            "<th>fuzz failures</th><th>parity steps</th><th>differences from 0.16.8 allowed</th><th>not allowed</th></tr>"
            + "".join(rows) + "</table>")


def write_reports(cells: list[Cell], report_dir: Path, no_patches: bool, context: dict | None = None) -> dict[str, Path]:
    out = {
        "json": report_dir / "matrix.json",
        "markdown": report_dir / "matrix.md",
        "html": report_dir / "matrix.html",
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    out["json"].write_text(json.dumps(report_json(cells, no_patches, context), indent=2) + "\n")
    out["markdown"].write_text(report_markdown(cells, no_patches, context))
    out["html"].write_text(report_html(cells, no_patches, context, report_dir))
    return out


def merge_reports(sources: list[Path], out_dir: Path) -> tuple[list[Cell], bool, dict]:
    """One matrix from several runs' report directories (e.g. one CI job per release): cells,
    logs and build records are gathered into ``out_dir``. A release+suite reported twice, a
    directory without ``matrix.json``, or mixed patched/unpatched runs are errors."""
    cells: list[Cell] = []
    flavours: set[bool] = set()
    contexts: list[dict] = []
    seen: dict[tuple[str, str], Path] = {}
    for src in sources:
        path = src / "matrix.json"
        if not path.is_file():
            raise KettaError("no matrix report here", path=path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise KettaError(f"not JSON: {exc.msg}", path=path, line=exc.lineno) from None
        if data.get("schema") != SCHEMA:
            raise KettaError(f"not a {SCHEMA} report (schema {data.get('schema')!r})", path=path)
        flavours.add(bool(data.get("patched", True)))
        contexts.append(data.get("context") or {})
        for raw in data.get("cells", []):
            cell = Cell(**raw)
            key = (cell.version, cell.suite)
            if key in seen:
                raise KettaError(f"{cell.env} is in two reports ({seen[key]} and {path})", path=path)
            seen[key] = path
            cells.append(cell)
    if any(src.resolve() == out_dir.resolve() for src in sources):
        raise KettaError("the merged report cannot go into one of its sources; pick another --report-dir", path=out_dir)
    if len(flavours) > 1:
        raise KettaError("cannot merge patched and --no-patches reports into one matrix")
    if not cells:
        raise KettaError("the reports hold no cells", path=sources[0] if sources else None)
    staging = out_dir.parent / f".{out_dir.name}.merging"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "logs").mkdir(parents=True)
    (staging / "builds").mkdir()
    for sub in ("fuzz", "parity", "coverage"):
        (staging / sub).mkdir()
    for src in sources:
        for sub in ("logs", "builds", "fuzz", "parity", "coverage"):
            for f in sorted((src / sub).glob("*")) if (src / sub).is_dir() else []:
                if f.is_file():
                    shutil.copy2(f, staging / sub / f.name)
    commits = {c.get("series_commit") for c in contexts if c}
    coverage = {k: v for c in contexts for k, v in (c.get("coverage") or {}).items()}
    context = {
        "tool": next((c["tool"] for c in contexts if c.get("tool")), None),
        "series_commit": commits.pop() if len(commits) == 1 else ", ".join(sorted(filter(None, commits))),
        "series_dirty": any(c.get("series_dirty") for c in contexts),
        "build_number": next((c["build_number"] for c in contexts if c.get("build_number") is not None), None),
        "date": max((c.get("date") or "" for c in contexts), default=""),
        "total_seconds": round(sum(c.get("total_seconds", 0) for c in contexts), 1),
        "builds": {k: v for c in contexts for k, v in c.get("builds", {}).items()},
        "fuzz": {k: v for c in contexts for k, v in (c.get("fuzz") or {}).items()},
        "parity": {k: v for c in contexts for k, v in (c.get("parity") or {}).items()},
        **({"coverage": coverage} if coverage else {}),
        "merged_from": [str(s) for s in sources],
    }
    patched = flavours.pop()
    write_reports(cells, staging, not patched, context)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.replace(out_dir)
    return cells, patched, context
