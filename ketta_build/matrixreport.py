"""The matrix's report: ``matrix.json``, ``matrix.md`` and ``matrix.html``, and merging several runs' reports.

Also what the suites write into a report directory for it (:func:`write_build_record`, one record
per release and flavour). Cell statuses have one colour each, here (:data:`STATUS_STYLE` for the
terminal, :data:`STATUS_BACKGROUND` for the page).
"""

from __future__ import annotations

import html
import json
import shutil
from dataclasses import asdict
from pathlib import Path

from . import __version__
from .atomic import write_atomic
from .errors import KettaError
from .gitcmd import run as run_git
from .hunkcoverage import html_section as coverage_html
from .hunkcoverage import markdown_lines as coverage_markdown
from .hunkcoverage import records as coverage_records
from .matrix import Cell
from .releases import load_releases, parse_version
from .wheel import read_build_number

SCHEMA = "ketta-build/matrix-report/1"
# One colour per cell status: rich styles for the terminal, backgrounds for the HTML page.
STATUS_STYLE = {"pass": "green", "fail": "red", "error": "yellow", "not-run": "white", "not-affected": "dim"}
STATUS_BACKGROUND = {"pass": "#c8f0c8", "fail": "#f5c2c2", "error": "#f5dfa8", "not-run": "#e4e4e4",
                     "not-affected": "#f4f4f4", "reused": "#e6f7e6"}


def _title(context: dict, no_patches: bool, flag: str) -> str:
    """``Idna + Acme series`` (the upstream the run's series is kept for, and its label), or its unpatched releases."""
    name = context.get("title") or context.get("project") or "upstream"
    label = context.get("label")
    return f"unpatched {name}{flag}" if no_patches else f"{name} + {label.capitalize() + ' ' if label else 'the '}series"


def _git(project: Path, *args: str) -> str:
    """What ``git args`` says in ``project`` ("" if it fails: the project need not be a repository)."""
    proc = run_git(project, *args)
    return proc.stdout.decode("utf-8", errors="replace").strip() if proc.returncode == 0 else ""


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
    write_atomic(out, (json.dumps(record, indent=2) + "\n").encode())
    return out


def run_context(project: Path, report_dir: Path, *, started: float, finished: float,
                series_dir: Path | None = None) -> dict:
    """Where a matrix run came from: the series commit and build number, the tool, the date, the
    total time, and the per-release records the cells wrote."""
    from datetime import datetime, timezone

    series = (series_dir or project / "patches").absolute()
    try:
        number = read_build_number(series)
    except KettaError:
        number = None
    builds = {}
    for path in sorted((report_dir / "builds").glob("*.json")):
        record = json.loads(path.read_text())
        builds[path.stem] = record
    coverage = coverage_records(report_dir)
    try:
        profile = load_releases(series).profile
    except KettaError:
        profile = None
    return {**user_input_records(report_dir), **({"coverage": coverage} if coverage else {}),
        **({"project": profile.name, "title": profile.display, "label": profile.label} if profile else {}),
        "tool": f"ketta-build {__version__}",
        # the series' own repository and directory (--patches may point outside the checkout)
        "series_commit": _git(series, "rev-parse", "HEAD") or None,
        "series_dirty": bool(_git(series, "status", "--porcelain", "--", ".")),
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
    title = _title(context or {}, no_patches, " (--no-patches)")
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
    colours = STATUS_BACKGROUND
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
    title = _title(context or {}, no_patches, "")
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
    write_atomic(out["json"], (json.dumps(report_json(cells, no_patches, context), indent=2) + "\n").encode())
    write_atomic(out["markdown"], report_markdown(cells, no_patches, context).encode())
    write_atomic(out["html"], report_html(cells, no_patches, context, report_dir).encode())
    return out


def merge_reports(sources: list[Path], out_dir: Path, records: tuple[str, ...] = ()) -> tuple[list[Cell], bool, dict]:
    """One matrix from several runs' report directories (e.g. one CI job per release): cells,
    logs, build records and the suites' ``records`` directories (the registry's) are gathered into ``out_dir``. A release+suite reported twice, a
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
    kept = ("logs", "builds", "coverage", *records)
    for sub in kept[2:]:
        (staging / sub).mkdir(exist_ok=True)
    for src in sources:
        for sub in kept:
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
