"""``ketta-build export``: the build tree's commits written back to the patch files."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import EXIT_CHECK
from ..tables import print_result
from .common import (Context, Result, build_root_flag, cache_flag, escape, index_flag, json_flag, patches_flag,
                     verb_parser)

NAME = "export"
HELP = "write the build tree's commits back to the patch files (refresh)"
EXAMPLES = (("ketta-build export", "refresh patches/ from build/<newest release>"),
            ("ketta-build export --tree build/0.16.8 --check", "write nothing; exit 4 if patches/ differ"),
            ("ketta-build export --prune", "also drop patches no commit carries any more"))
STYLE = {"unchanged": "dim", "reworded": "green", "refreshed": "green", "new": "cyan", "dropped": "yellow",
         "pruned": "yellow", "not-applied": "yellow", "split": "cyan", "newer": "yellow"}


def register(sub) -> None:
    p = verb_parser(sub, NAME, help=HELP, examples=EXAMPLES)
    p.add_argument("--tree", type=Path, default=None, metavar="DIR", help="build tree (default: build/<newest supported release>)")
    build_root_flag(p)
    patches_flag(p)
    p.add_argument("--check", action="store_true", help="write nothing; exit 4 naming the files export would change "
                                                       "and those newer in patches/ than in the tree")
    p.add_argument("--prune", action="store_true", help="remove patches that no commit carries any more from the series")
    p.add_argument("--split", action="store_true",
                   help="a refreshed patch that no longer applies to releases its guard claims: keep the file as it was "
                        "as a variant for those releases (else nothing is written)")
    index_flag(p)
    cache_flag(p)
    json_flag(p)


def run(ctx: Context, args) -> Result:
    from ..buildtree import series_lock

    with series_lock(ctx.cache, ctx.patches):  # one export (or port finish) at a time reads and writes patches/
        return _locked(ctx, args)


def _locked(ctx: Context, args) -> Result:
    from ..buildtree import PristineRepos
    from ..export import plan_export, report_json, verify_plan, write_plan
    from ..releases import load_releases
    from ..sources import IndexSource

    patches = ctx.patches
    tree = args.tree or ctx.build_root / str(load_releases(patches).newest.version)
    plan = plan_export(tree, patches, prune=args.prune)
    if not args.check:
        with ctx.status("checking the releases the changed patches claim") as status:
            source = IndexSource(ctx.cache, ctx.index_url, progress=status.update, allow_unsupported=True,
                                 releases=load_releases(patches))
            verify_plan(plan, PristineRepos(source, ctx.cache, status.update), split=args.split, progress=status.update)
    dropped = [p for p in plan.patches if p.status == "dropped"]

    def rows(console) -> None:
        for p in plan.patches:
            note = f"  ({escape(p.note)})" if p.note else ""
            console.print(f"[{STYLE[p.status]}]{p.status:9}[/] {escape(p.name)}{note}")

    if args.check:
        differ = plan.differences()
        newer = [p for p in plan.patches if p.status == "newer"]

        def show_check(console) -> None:
            rows(console)
            for path in differ:
                print(f"ketta-build: export --check: {path} differs from what export would write", file=sys.stderr)
            for p in dropped:
                print(f"ketta-build: export --check: {patches / p.name} has no commit in {tree}", file=sys.stderr)
            for p in newer:  # export writes nothing for them, but the tree and the series differ
                print(f"ketta-build: export --check: {patches / p.name} is {p.note}", file=sys.stderr)

        return Result(EXIT_CHECK if differ or dropped or newer else 0,
                      report_json(plan, differ + [patches / p.name for p in newer], check=True), show_check)
    rows(ctx.console)  # what will be written, before it is
    for line in plan.unchecked:
        print(f"ketta-build: export: warning: not checked against {line}; ketta-build lint checks it later", file=sys.stderr)
    written = write_plan(plan)

    def show(console) -> None:
        if written:
            print_result(console, f"{len(written)} file(s) written in {patches}")
        elif dropped:
            print_result(console, f"nothing written; {len(dropped)} patch(es) have no commit in the tree "
                                  f"({', '.join(p.name for p in dropped)}): --prune removes them from the series")
        else:
            print_result(console, "nothing to write: the series matches the tree")

    return Result(0, report_json(plan, written, check=False), show)
