"""``ketta-build init``: a new series for any upstream Python project on the package index."""

from __future__ import annotations

from ..tables import print_result
from .common import Context, Result, cache_flag, escape, index_flag, json_flag, patches_flag, say, verb_parser

NAME = "init"
HELP = "start a series for an upstream project: its profile, the releases the index serves (pinned), an empty series"
EXAMPLES = (("ketta-build init --upstream tomli --patches tomli-patches", "the newest three releases of tomli"),
            ("ketta-build init --upstream tomli --releases '>=2.0.1' --label acme --patches p",
             "chosen releases; wheels will be X+acme.N"))


def register(sub) -> None:
    p = verb_parser(sub, NAME, help=HELP, examples=EXAMPLES)
    p.add_argument("--upstream", metavar="NAME", required=True, help="the distribution's name on the package index")
    p.add_argument("--git", metavar="URL", help="the upstream's git repository (for bisect and --upstream-git)")
    p.add_argument("--label", default="ketta", help="the local version label of your wheels: X+LABEL.N (default: ketta)")
    p.add_argument("--package", metavar="NAME", help="the import package, when init cannot tell it from the sdist "
                                                    "(e.g. jaraco.functools)")
    p.add_argument("--releases", metavar="SPEC", help="which releases to support, e.g. '>=2.0,<3' (default: the newest "
                                                     "three final releases)")
    patches_flag(p)
    index_flag(p)
    cache_flag(p)
    json_flag(p)


def run(ctx: Context, args) -> Result:
    from ..newseries import create_series

    with ctx.status(f"starting a series for {args.upstream}") as status:
        made = create_series(args.upstream, ctx.patches, git=args.git, label=args.label, releases_spec=args.releases, package=args.package,
                             cache=ctx.cache, index_url=ctx.index_url, progress=status.update)

    def show(console) -> None:
        for path in made.written:
            console.print(f"wrote {escape(str(path))}")
        versions = ", ".join(str(r.version) for r in made.releases)
        print_result(console, f"{escape(made.profile.name)}: {versions} supported (package {made.profile.package}, "
                              f"wheels {made.releases[-1].version}+{made.profile.label}.1); next:")
        newest = made.releases[-1].version
        say(console, f"  ketta-build apply --patches {args.patches or 'patches'} --release {newest}")
        say(console, f"  # commit your changes in build/{newest}, then:")
        say(console, f"  ketta-build export --patches {args.patches or 'patches'} --tree build/{newest}")

    return Result(0, made.as_json(), show)
