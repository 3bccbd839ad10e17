"""``ketta-build series``: which variant of each patch a release gets, and why."""

from __future__ import annotations

from ..errors import EXIT_CHECK, KettaError
from ..tables import print_result
from .common import Context, Result, escape, source_flags, upstream_source, verb_parser

NAME = "series"
HELP = "show which patches apply to a release and why"
EXAMPLES = (("ketta-build series --release 0.15.1", "which variant of each patch 0.15.1 gets, and why"),
            ("ketta-build series --release 0.16.8 --check", "also: do variants overlap on any supported release?"))


def register(sub) -> None:
    p = verb_parser(sub, NAME, help=HELP, examples=EXAMPLES)
    source_flags(p)
    p.add_argument("--check", action="store_true", help="also check variant guards against every supported release")


def run(ctx: Context, args) -> Result:
    from ..releases import parse_version, require_served
    from ..series import read_series

    series = read_series(ctx.patches)
    if args.upstream_dir or args.upstream_git:
        source, version = upstream_source(ctx, args, lambda _: None)
        version = source.resolve(version).version
    elif args.release:
        version = require_served(parse_version(args.release), series.releases,
                                 "series answers for supported releases; port adds one")
    else:
        raise KettaError("say which release: --release VERSION (or --upstream-dir/--upstream-git)")
    rows = series.explain(version)
    data = {
        "schema": "ketta-build/series/2",
        "release": str(version),
        "entries": [{"name": s.entry.name, "line": s.entry.line, "guard": s.entry.guard_text, "selected": s.selected,
                     "reason": s.reason} for s in rows],
        "problems": series.coverage_problems() if args.check else [],
    }

    def show(console) -> None:
        for s in rows:
            mark = "[green]apply[/]" if s.selected else "[dim]skip [/]"
            print_result(console, f"{mark} {escape(s.entry.name)}  ({escape(s.reason)})")
        for problem in data["problems"]:
            print_result(console, f"[bold red]problem[/]: {escape(problem)}")

    return Result(EXIT_CHECK if data["problems"] else 0, data, show)
