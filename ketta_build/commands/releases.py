"""``ketta-build releases``: the supported releases (patches/releases.toml), e.g. for a CI job matrix."""

from __future__ import annotations

from ..tables import print_result
from .common import Context, Result, json_flag, patches_flag, verb_parser

NAME = "releases"
HELP = "the supported releases (patches/releases.toml), e.g. for a CI job matrix"
EXAMPLES = (("ketta-build releases", "one line per supported release"),
            ("ketta-build releases --json -", "for a CI job matrix"))


def register(sub) -> None:
    p = verb_parser(sub, NAME, help=HELP, examples=EXAMPLES)
    patches_flag(p)
    json_flag(p)


def run(ctx: Context, args) -> Result:
    from ..releases import load_releases

    releases = load_releases(ctx.patches)

    def show(console) -> None:
        for r in releases:
            print_result(console, f"{r.version}  {r.date}")

    return Result(0, {"schema": "ketta-build/releases/1", "versions": [str(r.version) for r in releases],
                      "releases": [{"version": str(r.version), "date": r.date, "sha256": r.sha256} for r in releases]},
                  show)
