"""``ketta-build completion``: a shell completion script made from the parser itself."""

from __future__ import annotations

import sys

from .common import Context, Result, patches_flag, verb_parser

NAME = "completion"
HELP = "print a shell completion script (verbs, flags, the supported releases of --patches) made from this parser"
EXAMPLES = (("ketta-build completion bash", "save as ~/.local/share/bash-completion/completions/ketta-build"),
            ("ketta-build completion zsh", "save as _ketta-build in a directory of $fpath"),
            ("ketta-build completion fish", "save as ~/.config/fish/completions/ketta-build.fish"))


def register(sub) -> None:
    p = verb_parser(sub, NAME, help=HELP, examples=EXAMPLES)
    p.add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell to complete in")
    patches_flag(p)
    # a script, not a report: no --json document
    p.set_defaults(json=None)


def run(ctx: Context, args) -> Result:
    from ..completion import script
    from ..releases import load_releases

    # without --patches, a missing ./patches only leaves the releases out (the script is often made
    # outside the checkout)
    if args.patches is None and not (ctx.patches / "releases.toml").exists():
        versions: list[str] = []
        print("ketta-build completion: warning: no ./patches/releases.toml here: release versions are not completed "
              "(--patches DIR names the series)", file=sys.stderr)
    else:
        versions = [str(r.version) for r in load_releases(ctx.patches)]
    text = script(ctx.parser, args.shell, versions)
    return Result(0, None, lambda console: sys.stdout.write(text))


