"""The compatibility matrix: run tox environments (release x suite) and write the report.

Each cell is one ``tox -e letta<NNNN>-<suite>`` run, its output kept in ``logs/<env>.log`` and its
pytest results in ``<env>.xml`` (JUnit). The report (``matrix.json``, ``matrix.md``,
``matrix.html``) says pass/fail/error with counts and duration per cell and links each log.
"""

from __future__ import annotations

import html
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

from .errors import KettaError
from .releases import load_releases, parse_version
from .upstream import unknown_release

SUITES = ("unified", "handle", "harddelete", "agent", "migration", "upstream", "upgrade")
SCHEMA = "ketta-build/matrix-report/1"


def env_name(version: str, suite: str) -> str:
    from .toxini import factor

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


def _read_junit(path: Path, cell: Cell) -> None:
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
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


def run_cell(cell: Cell, report_dir: Path, tox: list[str], env: dict[str, str], project: Path) -> Cell:
    logs = report_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{cell.env}.log"
    xml_path = report_dir / f"{cell.env}.xml"
    xml_path.unlink(missing_ok=True)
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.run([*tox, "-e", cell.env], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    cell.duration = round(time.monotonic() - start, 1)
    cell.exit_code = proc.returncode
    cell.log = f"logs/{cell.env}.log"
    if xml_path.is_file():
        _read_junit(xml_path, cell)
    if cell.failed:
        cell.status = "fail"
    elif cell.errors or proc.returncode != 0 or cell.passed == 0:
        cell.status = "error"
    else:
        cell.status = "pass"
    return cell


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
    on_cell=lambda cell: None,
) -> list[Cell]:
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise KettaError(f"unknown suite(s) {', '.join(unknown)}; known: {', '.join(SUITES)}")
    if parallel < 1:
        raise KettaError("-p must be 1 or more")
    supported = load_releases(project / "patches")
    for version in versions:  # tox.ini has environments for the supported releases only
        parsed = parse_version(version)
        if supported.find(parsed) is None:
            raise unknown_release(parsed, "the matrix has no cells for it", supported)
    if not (project / "tox.ini").is_file():
        raise KettaError("no tox.ini here; run ketta-build matrix from the Ketta checkout", path=project / "tox.ini")
    tox_bin = shutil.which("tox", path=str(Path(sys.executable).parent)) or shutil.which("tox")
    tox = [tox_bin] if tox_bin else [sys.executable, "-m", "tox"]
    report_dir = report_dir.absolute()
    report_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KETTA_REPORT_DIR": str(report_dir)}
    if index_url:
        env["KETTA_INDEX_URL"] = index_url
    env["KETTA_UPGRADE_PAIRS"] = upgrade_pairs
    if no_patches:
        env["KETTA_NO_PATCHES"] = "1"
        env["KETTA_BUILD_ROOT"] = str(report_dir / "build")
    cells = [Cell(str(parse_version(v)), s, env_name(v, s)) for v in versions for s in suites]
    # The first cell of each release builds its tree, wheel and environment; the rest reuse them.
    # Releases run in parallel, the cells of one release one after another.
    by_version: dict[str, list[Cell]] = {}
    for cell in cells:
        by_version.setdefault(cell.version, []).append(cell)

    def run_release(group: list[Cell]) -> None:
        for cell in group:
            on_cell(run_cell(cell, report_dir, tox, env, project))

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        list(pool.map(run_release, by_version.values()))
    return cells


def default_versions(project: Path = Path(".")) -> list[str]:
    return [str(v) for v in load_releases(project / "patches").versions]


# --------------------------------------------------------------------------- reports


def report_json(cells: list[Cell], no_patches: bool) -> dict:
    return {
        "schema": SCHEMA,
        "patched": not no_patches,
        "cells": [asdict(c) for c in cells],
        "summary": {s: sum(1 for c in cells if c.status == s) for s in ("pass", "fail", "error", "not-run")},
    }


def _grid(cells: list[Cell]) -> tuple[list[str], list[str], dict[tuple[str, str], Cell]]:
    versions = list(dict.fromkeys(c.version for c in cells))
    suites = list(dict.fromkeys(c.suite for c in cells))
    return versions, suites, {(c.version, c.suite): c for c in cells}


def _label(c: Cell) -> str:
    counts = f"{c.passed}/{c.passed + c.failed + c.errors}"
    return f"{c.status} {counts} {c.duration:.0f}s"


def report_markdown(cells: list[Cell], no_patches: bool) -> str:
    versions, suites, grid = _grid(cells)
    title = "unpatched Letta (--no-patches)" if no_patches else "Letta + Ketta series"
    lines = [f"# Ketta compatibility matrix: {title}", "", "| release | " + " | ".join(suites) + " |",
             "|---|" + "---|" * len(suites)]
    for v in versions:
        row = [f"[{_label(grid[v, s])}]({grid[v, s].log})" if (v, s) in grid else "-" for s in suites]
        lines.append(f"| {v} | " + " | ".join(row) + " |")
    failing = [c for c in cells if c.failures]
    if failing:
        lines += ["", "## Failing checks", ""]
        for c in failing:
            lines += [f"- {c.env}: {name}" for name in c.failures]
    return "\n".join(lines) + "\n"


def report_html(cells: list[Cell], no_patches: bool) -> str:
    versions, suites, grid = _grid(cells)
    colours = {"pass": "#c8f0c8", "fail": "#f5c2c2", "error": "#f5dfa8", "not-run": "#e4e4e4"}
    head = "".join(f"<th>{html.escape(s)}</th>" for s in suites)
    rows = []
    for v in versions:
        tds = []
        for s in suites:
            c = grid.get((v, s))
            if c is None:
                tds.append("<td>-</td>")
                continue
            title = html.escape("\n".join(c.failures) or c.status)
            tds.append(
                f'<td style="background:{colours[c.status]}" title="{title}">'
                f'<a href="{html.escape(c.log)}">{html.escape(c.status)}</a><br>'
                f"{c.passed} passed, {c.failed} failed, {c.errors} errors<br>{c.duration:.0f} s</td>"
            )
        rows.append(f"<tr><th>{html.escape(v)}</th>{''.join(tds)}</tr>")
    title = "unpatched Letta" if no_patches else "Letta + Ketta series"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Ketta compatibility matrix</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #999;"
        "padding:6px 10px;text-align:center}</style></head><body>"
        f"<h1>Ketta compatibility matrix: {html.escape(title)}</h1>"
        f"<table><tr><th>release</th>{head}</tr>{''.join(rows)}</table></body></html>\n"
    )


def write_reports(cells: list[Cell], report_dir: Path, no_patches: bool) -> dict[str, Path]:
    out = {
        "json": report_dir / "matrix.json",
        "markdown": report_dir / "matrix.md",
        "html": report_dir / "matrix.html",
    }
    out["json"].write_text(json.dumps(report_json(cells, no_patches), indent=2) + "\n")
    out["markdown"].write_text(report_markdown(cells, no_patches))
    out["html"].write_text(report_html(cells, no_patches))
    return out
