"""The apply report: a documented JSON document and a human summary table.

JSON schema ``ketta-build/apply-report/1`` (documented in docs/json-schemas.md)::

    {
      "schema": "ketta-build/apply-report/1",
      "tool_version": "0.1.0",
      "exit_code": 0 | 1,
      "upstream": {"version", "origin", "location", "sha256", "filename", "tag"},
      "options": {"fuzz", "keep_going"},
      "series": {"directory", "entries": [{"name", "line", "guard", "selected", "reason", "variants"}]},
      "patches": [{"name", "subject", "outcome", "commit", "note",
                   "landed_upstream": {"hunks", "of", "proposal": "drop|shrink|null",
                                       "landed": [{"path", "index", "patch_line"}]},
                   "files": [{"path", "action", "outcome", "conflicts", "reject_file", "reason",
                              "hunks": [{"index", "outcome", "label", "patch_line", "old_start",
                                         "applied_at", "offset", "fuzz", "reason"}]}]}],
      "not_attempted": ["name", ...],
      "summary": {"patches": {<outcome>: n}, "hunks": {<outcome>: n}},
      "tree": {"path", "head", "tree_hash"},
      "backup_ref": "refs/ketta/backup/... or null"
    }
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .applying import Outcome, PatchResult
from .errors import KettaError
from .releases import load_releases
from .tables import print_result, print_table

if TYPE_CHECKING:
    from rich.console import Console

    from .buildtree import ApplyReport

SCHEMA = "ketta-build/apply-report/1"
_STYLE = {
    Outcome.CLEAN: "green",
    Outcome.OFFSET: "cyan",
    Outcome.FUZZ: "bold yellow",
    Outcome.MERGED: "yellow",
    Outcome.ALREADY_UPSTREAM: "magenta",
    Outcome.FAILED: "bold red",
}


def _patch_json(result: PatchResult, series_dir: Path | None = None) -> dict:
    path = series_dir / result.name if series_dir is not None else None
    return {
        "name": result.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest() if path is not None and path.is_file() else None,
        "subject": result.subject,
        "outcome": result.outcome.value,
        "commit": result.commit,
        "note": result.note,
        "landed_upstream": result.landing.as_json(),
        "files": [
            {
                "path": f.path,
                "action": f.action,
                "outcome": f.outcome.value,
                "conflicts": f.conflicts,
                "reject_file": f.reject_file,
                "reason": f.reason,
                "hunks": [
                    {
                        "index": h.index,
                        "outcome": h.outcome.value,
                        "label": h.label,
                        "patch_line": h.patch_line,
                        "old_start": h.old_start,
                        "applied_at": h.applied_at,
                        "offset": h.offset,
                        "fuzz": h.fuzz,
                        "reason": h.reason,
                    }
                    for h in f.hunks
                ],
            }
            for f in result.files
        ],
    }


def report_json(report: ApplyReport) -> dict:
    patch_counts = Counter(r.outcome.value for r in report.results)
    hunk_counts = Counter(h.outcome.value for r in report.results for h in r.hunks)
    return {
        "schema": SCHEMA,
        "tool_version": __version__,
        "exit_code": report.exit_code,
        "upstream": {**report.release.as_json(), "tag": f"upstream/{report.release.version}"},
        "options": {"fuzz": report.options.fuzz, "keep_going": report.options.keep_going},
        "series": {
            "directory": str(report.series_dir),
            "entries": [
                {
                    "name": s.entry.name,
                    "line": s.entry.line,
                    "guard": s.entry.guard_text,
                    "selected": s.selected,
                    "reason": s.reason,
                    "variants": list(s.variants),
                }
                for s in report.selections
            ],
        },
        "patches": [_patch_json(r, report.series_dir) for r in report.results],
        "not_attempted": list(report.not_attempted),
        "summary": {
            "patches": {o.value: patch_counts.get(o.value, 0) for o in Outcome},
            "hunks": {o.value: hunk_counts.get(o.value, 0) for o in Outcome},
        },
        "tree": {
            "path": str(report.out) if report.out else None,
            "head": report.head,
            "tree_hash": report.tree_hash,
        },
        "backup_ref": report.backup_ref,
        "backup_refs": list(report.backup_refs),
        "kept_ignored": list(report.kept_ignored),
    }


def failure_lines(report: ApplyReport) -> list[str]:
    """One line per failed file of each failed patch: ``patches/NAME:LINE: what went wrong``."""
    return result_failure_lines(report.series_dir, report.failed)


def result_failure_lines(series_dir: Path, results: list[PatchResult]) -> list[str]:
    """``patches/NAME:LINE: what went wrong``, one per failed file of each of ``results``."""
    lines = []
    for r in results:
        for f in r.files:
            bad = [h for h in f.hunks if h.outcome is Outcome.FAILED]
            if not bad:
                continue
            first = bad[0]
            where = series_dir / r.name
            what = f"{len(bad)} of {len(f.hunks)} hunk(s) of {f.path} failed (first #{first.index}): {first.reason}"
            if f.reason and all(h.reason == f.reason for h in bad):
                what = f.reason
            lines.append(f"{where}:{first.patch_line}: {what}")
    return lines


LONG_SERIES = 40  # patches; above this the table lists only those that did not apply clean


def print_report(report: ApplyReport, console: Console, verbose: bool = False) -> None:
    from rich.markup import escape

    release = report.release
    rows = []
    # A long series lists the patches that need a look; the clean ones are counted (-v lists all).
    brief = not verbose and len(report.results) > LONG_SERIES
    clean = 0
    for r in report.results:
        if brief and r.outcome is Outcome.CLEAN:
            clean += 1
            continue
        counts = Counter(h.label for h in r.hunks)
        hunks = ", ".join(f"{n}×{label}" for label, n in sorted(counts.items()))
        rows.append((escape(r.name), f"[{_STYLE[r.outcome]}]{r.outcome.value}[/]", hunks, (r.commit or "-")[:12]))
    if clean:
        rows.append((f"[dim]… {clean} more[/]", f"[{_STYLE[Outcome.CLEAN]}]clean[/]", "", "[dim]-v lists them[/]"))
    for name in report.not_attempted:
        rows.append((escape(name), "[dim]not attempted[/]", "", "-"))
    print_table(console, escape(f"{_upstream_name(report.series_dir)} {release.version} ({release.origin}: {release.location}) + {report.series_dir}"),
                ("patch", "outcome", "hunks", "commit"), rows)
    if verbose:
        for s in report.selections:
            if not s.selected:
                console.print(f"[dim]skipped {escape(s.entry.name)}: {escape(s.reason)}[/]")
            elif s.variants:
                console.print(f"variant {s.entry.name}: {s.reason}", markup=False)
    else:
        skipped = sum(1 for s in report.selections if not s.selected)
        chosen = sum(1 for s in report.selections if s.selected and s.variants)
        if skipped:
            console.print(f"[dim]{chosen} variant(s) chosen by guard, {skipped} series line(s) not for this release "
                          "(-v says why)[/]")
    for r in report.results:
        for f in r.files:
            for h in f.hunks:
                if h.outcome is Outcome.FUZZ:
                    console.print(
                        f"[bold yellow]FUZZ[/] {r.name}:{h.patch_line}: hunk #{h.index} of {f.path} applied at line "
                        f"{h.applied_at} with fuzz {h.fuzz}: {escape(h.reason or '')}"
                    )
                elif h.outcome in (Outcome.FAILED, Outcome.MERGED):
                    console.print(f"{h.outcome.value}: {r.name}:{h.patch_line}: hunk #{h.index} of {f.path}: {h.reason}", markup=False)
        if r.note:
            console.print(f"note: {r.name}: {r.note}", markup=False)
        landing = r.landing
        if landing.proposal == "shrink":  # one clickable line per hunk to remove
            for h in landing.landed:
                console.print(f"  landed upstream: {report.series_dir / r.name}:{h.patch_line}: hunk #{h.index} of {h.path}",
                              markup=False, soft_wrap=True)
    if report.failed and not report.options.keep_going:
        bad = report.failed[0]
        files = [f for f in bad.files if f.outcome is Outcome.FAILED]
        where = ", ".join(f.path + (f" ({f.conflicts} conflict(s))" if f.conflicts else f" (see {f.reject_file})" if f.reject_file else "") for f in files)
        console.print(f"[bold red]stopped at {escape(bad.name)}[/]: {escape(where)}")
        # Each command to copy is a line of its own, never wrapped.
        say = lambda text: console.print(text, markup=False, soft_wrap=True)  # noqa: E731
        say(f"next: resolve the markers / .rej hunks in {report.out}, then commit with the patch's message (prepared) and author:")
        say(f"  git -C {report.out} commit -a --no-edit --author '{bad.author}'")
        say("and write it back to the series:")
        say(f"  ketta-build export --tree {report.out}")
        say("The patches after it were not applied (apply again once it is fixed); rerun with --keep-going to see all failures.")
    if report.backup_ref:
        console.print(f"the replaced tree had commits that were never exported: kept in {report.out} as "
                      f"{report.backup_ref} (git log {report.backup_ref})", markup=False)
    if report.backup_refs:
        console.print(f"the replaced tree's other branches, tags and stashes: kept in {report.out} as "
                      f"{', '.join(report.backup_refs)} (git log REF; a stash: git stash apply REF)", markup=False)
    if report.kept_ignored:
        console.print(f"the replaced tree's git-ignored files are in the new tree as they were: "
                      f"{', '.join(report.kept_ignored)}", markup=False)
    summary = report_json(report)["summary"]["hunks"]
    parts = [f"{n} {k}" for k, n in summary.items() if n]
    print_result(console, f"hunks: {', '.join(parts) or 'none'}; tree {report.tree_hash} at {report.out}")


def _upstream_name(series_dir: Path) -> str:
    """The upstream's name in the series' profile; ``release`` for a series without releases.toml."""
    try:
        return load_releases(series_dir).profile.name
    except KettaError:
        return "release"


def counts_text(counts: dict[str, int]) -> str:
    """``2 clean, 1 offset``: a patch's hunks by outcome, as every report prints them."""
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
