"""``ketta-build wheel``: deployable wheels ``NAME-X+LABEL.N``, a plugin's constraints, and SHA256SUMS."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..tables import print_result
from .common import (Context, DeprecatedAlias, Result, cache_flag, escape, index_flag, json_flag, patches_flag,
                     spellings, verb_parser)

NAME = "wheel"
HELP = ("deployable wheels NAME-X+LABEL.N (and a plugin's constraints-X.txt) with SHA256SUMS, each built from patches/ applied to "
        "the pristine release in a tree of its own")
EXAMPLES = (("ketta-build wheel", "dist/: the newest release's wheel, constraints, SHA256SUMS"),
            ("ketta-build wheel --all --dist-dir dist", "every supported release"))


def register(sub) -> None:
    p = verb_parser(sub, NAME, help=HELP, examples=EXAMPLES)
    p.add_argument(*spellings("--release"), dest="release", metavar="VERSION", action="extend", nargs="+", help="release(s) (default: the newest supported)")
    p.add_argument("--all", action="store_true", help="every supported release")
    p.add_argument("--dist-dir", dest="dist_dir", type=Path, default=Path("dist"), metavar="DIR",
                   help="where the wheels, constraints and SHA256SUMS go (default: ./dist)")
    # --out is the build tree everywhere else (apply): on wheel it is only the old spelling of --dist-dir
    p.add_argument("--out", dest="dist_dir", type=Path, metavar="DIR", action=DeprecatedAlias, new="--dist-dir",
                   help=argparse.SUPPRESS)
    p.add_argument("--tree", type=Path, metavar="DIR", help="a build tree that must hold exactly what patches/ gives "
                   "(refused, exit 5, if it has commits or edits patches/ does not); the wheel is the same either way")
    patches_flag(p)
    index_flag(p)
    cache_flag(p)
    json_flag(p)


def run(ctx: Context, args) -> Result:
    from ..wheel import SUMS_FILE, check_dist_dir, release_wheels, releases_to_build, series_state

    versions = releases_to_build(ctx.patches, args.release, args.all, args.tree)
    check_dist_dir(args.dist_dir, getattr(args, "dist_dir_flag", "--dist-dir"))
    with ctx.status("building wheels") as status:
        made = release_wheels(versions, args.dist_dir, series_dir=ctx.patches, cache=ctx.cache,
                              index_url=ctx.index_url, tree=args.tree, progress=status.update)
    series = made[0].series if made else series_state(ctx.patches)

    def show(console) -> None:
        for item in made:
            print_result(console, f"{escape(str(item.wheel))}  sha256 {item.sha256}  (git tree {item.tree[:12]})")
            if item.constraints is not None:
                print_result(console, f"{escape(str(item.constraints))}")
        print_result(console, f"{escape(str(args.dist_dir / SUMS_FILE))}")
        if series["dirty"]:
            console.print(f"[yellow]{escape(str(ctx.patches))} has uncommitted changes: the wheels say so "
                          "(series.dirty in their provenance)[/]")

    return Result(0, {"schema": "ketta-build/wheels/2", "series": series, "wheels": [
        {"release": m.version, "wheel": str(m.wheel), "sha256": m.sha256, "constraints": str(m.constraints) if m.constraints else None, "tree": m.tree}
        for m in made]}, show)
