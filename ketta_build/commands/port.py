"""``ketta-build port``: carry the series onto a release it does not serve yet (start, continue, skip, abort)."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from ..errors import EXIT_FAILED, KettaError
from ..tables import print_result
from .common import (Context, Result, build_root_flag, cache_flag, escape, hunk_counts_text, index_flag, json_flag,
                     patches_flag, say, spellings, verb_parser)

NAME = "port"
HELP = "carry the series onto an upstream release it does not serve yet"
EXAMPLES = (("ketta-build port --release 0.16.9", "carry the series onto 0.16.9 (build/0.16.9)"),
            ("ketta-build port --continue", "after resolving the conflict it stopped at"),
            ("ketta-build port --skip", "0.16.9 does not need the patch it stopped at"),
            ("ketta-build port --abort", "give up: build/0.16.9 removed, patches/ untouched"))
SCHEMA = "ketta-build/port/1"


def register(sub) -> None:
    p = verb_parser(sub, NAME, help=HELP, examples=EXAMPLES)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(*spellings("--release"), dest="release", metavar="VERSION", help="the new release (from the package index)")
    what.add_argument("--continue", dest="cont", action="store_true", help="go on after resolving a conflict")
    what.add_argument("--skip", action="store_true",
                      help="leave the patch the port stopped at out of the new release (it does not need it) and go on")
    what.add_argument("--abort", action="store_true", help="give up: remove the port's build tree (patches/ is untouched)")
    p.add_argument("--tree", type=Path, metavar="DIR", help="the port's build tree (default: build/VERSION, or the one in progress)")
    build_root_flag(p)
    p.add_argument("--in-place", action="store_true", help="rewrite changed patches for the new release instead of adding variants")
    p.add_argument("--force", action="store_true", help="replace an existing (clean) build tree; with --abort, remove a "
                                                       "tree holding work done since the stop (saved as a bundle first)")
    patches_flag(p)
    index_flag(p)
    cache_flag(p)
    json_flag(p)


def _tree(ctx: Context, args) -> Path:
    """The port's tree: --tree, else the one port in progress under the build root."""
    from ..port import ports_in_progress

    if args.tree:
        return args.tree
    found = ports_in_progress(ctx.patches, ctx.cache, (ctx.build_root,))
    if len(found) != 1:
        raise KettaError(f"no port in progress under {ctx.build_root}/ (say which tree with --tree)" if not found else
                         f"several ports in progress ({', '.join(str(t) for t, _ in found)}); say which with --tree")
    return found[0][0]


def run(ctx: Context, args) -> Result:
    from ..port import abort_port, continue_port, start_port
    from ..releases import load_releases, parse_version

    if args.abort:
        tree, saved = abort_port(_tree(ctx, args), force=args.force, cache=ctx.cache)

        def show_abort(console) -> None:
            if saved:
                say(console, f"the work done since the port stopped is saved in {saved}; get it back in any clone with:")
                say(console, f"  git fetch {saved} 'refs/ketta/*:refs/ketta/*'")
            print_result(console, f"port aborted: removed {escape(str(tree))}; patches/ was not changed")

        return Result(0, {"schema": SCHEMA, "aborted": str(tree), "saved": str(saved) if saved else None}, show_abort)
    with ctx.status("porting") as status:
        if args.cont or args.skip:
            result = continue_port(_tree(ctx, args), progress=status.update, cache=ctx.cache, skip=args.skip)
        else:
            result = start_port(parse_version(args.release), ctx.patches, out=args.tree, build_root=ctx.build_root,
                                cache=ctx.cache, index_url=ctx.index_url, in_place=args.in_place, force=args.force,
                                progress=status.update)

    def patches(console) -> None:
        for p in result.state.patches:
            counts = hunk_counts_text(p.hunks)
            action = f": {escape(p.action)}" if p.action else ""
            console.print(f"{p.outcome:16} {escape(p.name)}" + (f"  ({counts})" if counts else "") + action)

    if not result.finished:
        def show_stop(console) -> None:
            patches(console)
            for line in result.plan:
                print(f"ketta-build: port stopped: {line}", file=sys.stderr)

        return Result(EXIT_FAILED, {"schema": SCHEMA, "finished": False, **asdict(result.state), "plan": result.plan},
                      show_stop)

    profile = load_releases(ctx.patches).profile
    flag = "--release"

    def show(console) -> None:
        patches(console)
        for path in result.written:
            console.print(f"wrote {escape(str(path))}")
        print_result(console, f"{profile.name} {result.state.version} is now supported; next, lint the series and run "
                              "its suites:")
        say(console, "  ketta-build lint" + ("" if ctx.patches == ctx.project / "patches" else f" --patches {ctx.patches}"))
        say(console, f"  ketta-build matrix {flag} {result.state.version}")

    return Result(0, {"schema": SCHEMA, "finished": True, **asdict(result.state),
                      "written": [str(p) for p in result.written]}, show)
