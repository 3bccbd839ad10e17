"""``ketta-build lint``: the series' headers, guards, base releases, canonical form and tox.ini."""

from __future__ import annotations

import sys

from ..tables import print_result
from .common import Context, Result, cache_flag, escape, index_flag, json_flag, patches_flag, verb_parser

NAME = "lint"
HELP = "check the series: headers, why, base release, variants, whitespace, canonical form, tox.ini"
EXAMPLES = (("ketta-build lint", "every check; exit 4 on a finding"),
            ("ketta-build lint --fix", "rewrite patch files into export's canonical form, and tox.ini"))


def register(sub) -> None:
    p = verb_parser(sub, NAME, help=HELP, examples=EXAMPLES)
    patches_flag(p)
    p.add_argument("--fix", action="store_true", help="rewrite patch files into export's canonical form and tox.ini "
                                                     "from releases.toml and the suite registry")
    index_flag(p)
    cache_flag(p)
    json_flag(p)


def run(ctx: Context, args) -> Result:
    from ..lint import exit_code, lint_series

    project = ctx.patches.absolute().parent
    with ctx.status("linting the series (base releases come from the cache or the index)") as status:
        findings, fixed = lint_series(ctx.patches, cache=ctx.cache, index_url=ctx.index_url,
                                      project=project, fix=args.fix,
                                      progress=status.update)

    def show(console) -> None:
        for path in fixed:
            console.print(f"rewrote {escape(str(path))}")
        for finding in findings:
            print(f"ketta-build: lint: {finding}", file=sys.stderr)
        if not findings:
            print_result(console, "lint: no findings")

    return Result(exit_code(findings), {"schema": "ketta-build/lint/1", "findings": [
        {"rule": f.rule, "path": str(f.path), "line": f.line, "message": f.message, "severity": f.severity}
        for f in findings], "fixed": [str(p) for p in fixed]}, show)
