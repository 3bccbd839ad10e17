"""``ketta-build range-diff``: what changed between two versions of the series, patch by patch."""

from __future__ import annotations

import sys

from .common import Context, Result, cache_flag, index_flag, json_flag, patches_flag, spellings, verb_parser

NAME = "range-diff"
HELP = "what changed between two versions of the series (git refs or patch dirs), per patch"
EXAMPLES = (("ketta-build range-diff --release 0.16.8 main HEAD", "what a branch changed, patch by patch"),
            ("ketta-build range-diff --release 0.16.8 HEAD patches", "what the uncommitted patches/ change"))


def register(sub) -> None:
    p = verb_parser(sub, NAME, help=HELP, examples=EXAMPLES)
    p.add_argument("old", metavar="OLD", help="git ref of this repository, or a patch directory")
    p.add_argument("new", metavar="NEW", help="git ref of this repository, or a patch directory")
    p.add_argument(*spellings("--release"), dest="release", metavar="VERSION", required=True, help="release to apply both to")
    patches_flag(p)  # a git ref's series: DIR's path in DIR's repository at that ref
    index_flag(p)
    cache_flag(p)
    json_flag(p)


def run(ctx: Context, args) -> Result:
    from ..rangediff import class_lines, range_diff
    from ..releases import parse_version

    with ctx.status("applying both series") as status:
        result = range_diff(parse_version(args.release), args.old, args.new, repo=ctx.project, cache=ctx.cache,
                            index_url=ctx.index_url, progress=status.update, series_dir=ctx.patches)

    def show(console) -> None:
        # With --json - the JSON is alone on stdout; the text goes where the rest of the human output goes.
        out = sys.stderr if args.json == "-" else sys.stdout
        if not getattr(args, "quiet", False):  # -q: only the per-patch classes, the result
            out.write(result.text)
        out.write("\nper patch (old -> new, class):\n" + "".join(f"  {line}\n" for line in class_lines(result.pairs)))

    return Result(0, {"schema": "ketta-build/range-diff/2", "release": result.release, "old": result.old,
                      "new": result.new, "pairs": result.pairs}, show)
