"""``ketta-build matrix``: the compatibility suites per release through tox, and the report."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import KettaError
from ..tables import print_result
from ..tables import result as printing_result
from .common import (Context, Result, build_root_flag, cache_flag, escape, index_flag, json_flag, patches_flag,
                     spellings, verb_parser)

NAME = "matrix"
HELP = "run the compatibility suites (tox) per release and write the report"
EXAMPLES = (("ketta-build matrix --release 0.16.8", "every suite on 0.16.8"),
            ("ketta-build matrix --all -p 2", "every release, two cells at a time"),
            ("ketta-build matrix --changed", "only the cells a change since main can affect"),
            ("ketta-build matrix --merge reports-0.16.7 reports-0.16.8", "one report from CI's jobs"))


def register(sub) -> None:
    from ..suiteenv import FUZZ_EXAMPLES_THOROUGH, variable

    p = verb_parser(sub, NAME, help=HELP, examples=EXAMPLES)
    p.add_argument(*spellings("--release"), dest="release", metavar="VERSION", action="extend", nargs="+",
                   help="release(s) to test (repeatable; default: the newest supported, from releases.toml)")
    p.add_argument("--all", action="store_true", help="every supported release (patches/releases.toml)")
    p.add_argument("--suite", action="extend", nargs="+", metavar="SUITE",
                   help="suite(s) to run (repeatable; default: every suite of compat_tests/suites.toml)")
    p.add_argument("-p", "--parallel", type=int, default=os.cpu_count() or 1, metavar="N",
                   help=f"cells to run at once, longest first (default: the number of CPUs, {os.cpu_count() or 1} here)")
    p.add_argument("--no-patches", action="store_true", help="test the unpatched releases (the suites must fail)")
    patches_flag(p)
    p.add_argument("--report-dir", type=Path, default=Path("reports"), metavar="DIR", help="default: ./reports")
    build_root_flag(p)
    p.add_argument("--rerun", action="store_true",
                   help="run every cell, even one whose inputs have a stored pass (fresh passes are still stored)")
    p.add_argument("--changed", nargs="?", const="", metavar="REF",
                   help="run only the cells a change since REF can affect (default: the merge base with main, "
                        "else the last report's series commit)")
    cache_flag(p)
    p.add_argument("--fuzz-examples", type=int, metavar="N",
                   help=f"generated requests per route in the fuzz suite (default "
                        f"{variable('KETTA_FUZZ_EXAMPLES').default}, {FUZZ_EXAMPLES_THOROUGH} with --all or --suite fuzz)")
    index_flag(p)
    p.add_argument("--upgrade-pairs", choices=("all", "ci"), default="all",
                   help="upgrade suite: every pair (default) or the default test run's ('ci')")
    p.add_argument("--merge", metavar="DIR", type=Path, nargs="+",
                   help="run nothing: merge these report directories (one per CI job) into --report-dir")
    p.add_argument("--coverage", action="store_true",
                   help="run the servers under coverage.py and report which hunks of each patch the suites ran "
                        "(docs/coverage.md; every cell runs)")
    json_flag(p)


def _table(console, cells) -> None:
    from ..matrixreport import STATUS_STYLE, cell_rows
    from ..tables import print_table

    suites, rows = cell_rows(cells)
    style = STATUS_STYLE.get

    def label(c) -> str:
        if c is None:
            return "-"
        if c.status == "not-affected":
            return "[dim]not affected[/]"
        return (f"[{style(c.status, 'white')}]{'pass (reused)' if c.reused else c.status}[/] "
                f"{c.passed}/{c.passed + c.failed + c.errors}")

    with printing_result(console):
        print_table(console, "compatibility matrix", ("release", *suites), [(v, *map(label, row)) for v, row in rows])


def run(ctx: Context, args) -> Result:
    from .. import matrix
    from ..matrixreport import STATUS_STYLE, merge_reports, report_json, run_context, write_reports
    from ..suites import matrix_suites

    registry = matrix_suites(ctx.project, ctx.patches)  # the checkout's registry, or the release's own tests
    if args.merge:
        if args.release or args.all or args.suite or args.no_patches:
            raise KettaError("--merge runs nothing; leave out --release, --all, --suite and --no-patches")
        cells, patched, context = merge_reports(args.merge, args.report_dir, registry.records)

        def show_merged(console) -> None:
            _table(console, cells)
            for name in ("matrix.json", "matrix.md", "matrix.html"):
                print_result(console, f"{name}: {args.report_dir.absolute() / name}")

        return Result(0 if all(c.status == "pass" for c in cells) else 1, report_json(cells, not patched, context),
                      show_merged)

    from ..affected import affected_cells, default_ref
    from ..cellstore import CellStore
    from ..releases import load_releases, parse_version

    supported = load_releases(ctx.patches)  # a missing or broken series is refused before anything runs
    versions = [str(v) for v in supported.versions] if args.all else (args.release or [str(supported.newest.version)])
    suites = args.suite or list(registry.names)
    registry.check(suites)
    report_dir = args.report_dir
    if args.no_patches and report_dir == Path("reports"):
        report_dir = Path("reports") / "no-patches"
    console = ctx.console

    def show_cell(cell) -> None:
        if cell.status == "not-affected":
            console.print(f"[dim]not affected[/] {cell.env} (no stored pass for its inputs; the change cannot affect it)")
            return
        if cell.reused:
            proven = cell.proven or {}
            console.print(f"[green]pass[/] {cell.env}: reused, proven {proven.get('date')} at "
                          f"{(proven.get('series_commit') or '?')[:10]} ({cell.passed} passed)")
            return
        console.print(f"[{STATUS_STYLE.get(cell.status, 'white')}]{cell.status:5}[/] {cell.env}: {cell.passed} passed, "
                      f"{cell.failed} failed, {cell.errors} errors in {cell.duration:.0f}s  ({report_dir / cell.log})")

    registry_suites = supported.profile.has_suite_registry
    if registry_suites:
        matrix.need_tox()
    store = CellStore(ctx.cache.root / "cells")
    changed = None
    if args.changed is not None and not registry_suites:
        raise KettaError(f"--changed reads which cells the registry's suites depend on; a series for {supported.profile.name} "
                         "has one cell per release, reused whenever its inputs have a stored pass: leave it out")
    if args.changed is not None:
        if ctx.patches.absolute() != (ctx.project / "patches").absolute():
            raise KettaError("--changed reads the history of ./patches; leave out --patches", path=ctx.patches)
        ref = args.changed or default_ref(ctx.project, report_dir.absolute())
        changed = affected_cells(ctx.project, ref, [parse_version(v) for v in versions], suites)
        console.print(f"--changed against {ref[:12]}: " + ("; ".join(changed.why) or "nothing that a cell reads changed"))
    console.print(f"{len(versions) * len(suites)} cell(s), {args.parallel} {'tox run(s)' if registry_suites else 'cell(s)'} at a time"
                  + ("; every cell runs (--rerun)" if args.rerun else "; every cell runs (--coverage)" if args.coverage else
                     "; cells whose inputs have a stored pass are reused (--rerun runs them)"))
    started = time.time()
    with ctx.status("matrix: starting") as status:
        done: list = []

        def on_cell(cell) -> None:
            done.append(cell)
            show_cell(cell)
            status.update(f"matrix: {len(done)}/{len(versions) * len(suites)} cells done, "
                          f"{sum(c.status == 'pass' for c in done)} passing")

        cells = matrix.run_matrix(
            versions, suites, report_dir=report_dir, parallel=args.parallel, no_patches=args.no_patches,
            project=ctx.project, index_url=ctx.index_url,
            fuzz_examples=matrix.fuzz_examples(args.fuzz_examples, args.all, args.suite), store=store, cache=ctx.cache,
            changed=changed, reuse=not args.rerun, upgrade_pairs=args.upgrade_pairs, on_cell=on_cell,
            coverage=args.coverage, series_dir=ctx.patches, build_root=ctx.build_root)
    context = run_context(ctx.project, report_dir.absolute(), started=started, finished=time.time(),
                          series_dir=ctx.patches)
    paths = write_reports(cells, report_dir.absolute(), args.no_patches, context)
    green = all(c.status in ("pass", "not-affected") for c in cells)
    found: list[str] = []
    if args.coverage:
        from ..hunkcoverage import gaps

        found = gaps(context.get("coverage") or {})
        green = green and not found

    def show(console) -> None:
        _table(console, cells)
        for kind, path in paths.items():
            print_result(console, f"{kind}: {path}")
        if args.coverage:
            for line in found:
                print_result(console, f"[red]coverage[/]: {escape(line)}")
            print_result(console, f"coverage: {len(found)} hunk(s) or allowance(s) to look at" if found else
                         "coverage: every hunk ran in a suite or is allowed with its reason")

    return Result(0 if green else 1, report_json(cells, args.no_patches, context), show)
