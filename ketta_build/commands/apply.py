"""``ketta-build apply``: the series onto a release, one commit per patch, and how every hunk applied."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import KettaError
from .common import Context, Result, build_root_flag, source_flags, upstream_source, verb_parser

NAME = "apply"
HELP = "apply the series to an upstream release and report every hunk"
EXAMPLES = (("ketta-build apply --release 0.16.8", "build/0.16.8: the pristine release, then one commit per patch"),
            ("ketta-build apply --release 0.16.8 --force --keep-going", "replace the tree; apply what applies"),
            ("ketta-build apply --upstream-git ../upstream --ref v0.16.8 --tree build/git", "from a clone of upstream"))


def register(sub) -> None:
    p = verb_parser(sub, NAME, help=HELP, examples=EXAMPLES)
    source_flags(p)
    p.add_argument("--tree", "--out", dest="tree", metavar="DIR", type=Path,
                   help="build tree to write (default: build/VERSION; --out is the same flag)")
    build_root_flag(p)
    p.add_argument("--force", action="store_true", help="replace an existing (clean) build tree; its unexported commits, "
                                                        "other branches, tags and stashes are kept as backup refs and its "
                                                        "git-ignored files are carried over")
    p.add_argument("--fuzz", metavar="N", type=int, default=0, help="allow ignoring up to N context lines (reported loudly)")
    p.add_argument("--keep-going", action="store_true", help="do not stop at a failed patch; apply what can be")


def run(ctx: Context, args) -> Result:
    from ..buildtree import ApplyOptions, apply_series
    from ..report import failure_lines, print_report, report_json
    from ..series import read_series
    from ..sources import IndexSource

    if args.fuzz < 0:
        raise KettaError("--fuzz must be 0 or more")
    with ctx.status("resolving upstream") as status:
        say = status.update
        series = read_series(ctx.patches)
        source, version = upstream_source(ctx, args, say)
        release = source.resolve(version)
        report = apply_series(
            release, source, series, args.tree or ctx.build_root / str(release.version),
            options=ApplyOptions(fuzz=args.fuzz, keep_going=args.keep_going, force=args.force),
            cache=ctx.cache,
            # 3-way merges need the release each patch was made against: take it from the index (cached).
            base_source=IndexSource(ctx.cache, ctx.index_url, allow_unsupported=True, releases=series.releases),
            progress=say,
            on_patch=lambda r: say(f"applied {r.name}: {r.outcome.value}"),
        )

    def show(console) -> None:
        print_report(report, console, verbose=ctx.verbose)
        for line in failure_lines(report):
            print(f"ketta-build: failed: {line}", file=sys.stderr)

    return Result(report.exit_code, report_json(report), show)
