"""What every verb shares: the flags (one definition per meaning), the parser a verb gets, the
:class:`Context` the CLI builds once, and the :class:`Result` a verb returns.

A verb module (``ketta_build/commands/<verb>.py``) has ``NAME``, ``HELP``, ``EXAMPLES``,
``register(subparsers)`` and ``run(ctx, args) -> Result``; ``commands/__init__.py`` lists the
modules. A verb calls the library and returns its exit code, its JSON document (schema id included)
and how to print itself; the CLI prints it, writes ``--json`` and maps exceptions to exit codes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from ..errors import KettaError, exit_code_table

if TYPE_CHECKING:
    from rich.console import Console

    from ..cache import Cache

QUIET_HELP = "print only errors and the final result (no progress, no detail)"
Examples = tuple[tuple[str, str], ...]


# ----------------------------------------------------------------------------- flags: one definition per meaning


def patches_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--patches", metavar="DIR", type=Path, default=None, help="series directory (default: ./patches)")


def index_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index-url", metavar="URL", help="package index (default: what pip/uv are configured to use)")


def cache_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", metavar="DIR", type=Path, help="content-addressed cache (default: the user cache directory)")


def json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE ('-' for stdout; "
                                                  "schemas: docs/json-schemas.md)")


def build_root_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--build-root", metavar="DIR", type=Path, default=None, help="build trees (default: ./build)")


def spellings(flag: str) -> tuple[str, ...]:
    """``flag`` and the spellings a built-in plugin keeps for it (its users' habits: same meaning)."""
    from ..profile import flag_aliases

    return (flag, *flag_aliases(flag))


def release_flag(p, **kwargs) -> None:
    """``--release VERSION`` (and its plugins' spellings): ``dest="release"``."""
    kwargs.setdefault("metavar", "VERSION")
    p.add_argument(*spellings("--release"), dest="release", **kwargs)


def upstream_git_flag(p, **kwargs) -> None:
    """``--upstream-git PATH_OR_URL`` (and its plugins' spellings): ``dest="upstream_git"``."""
    kwargs.setdefault("metavar", "PATH_OR_URL")
    kwargs.setdefault("help", "the upstream's git repository")
    p.add_argument(*spellings("--upstream-git"), dest="upstream_git", **kwargs)


def source_flags(p: argparse.ArgumentParser) -> None:
    """Where the release comes from (one of): the index, a git repository, an unpacked tree."""
    src = p.add_argument_group("upstream source (one of)")
    release_flag(src, help="release from the package index, e.g. 0.16.8 or v0.16.8")
    upstream_git_flag(src)
    src.add_argument("--ref", metavar="TAG", help="tag or commit in --upstream-git (default: the profile's tag of VERSION)")
    src.add_argument(*spellings("--upstream-dir"), dest="upstream_dir", metavar="PATH", type=Path,
                     help="an unpacked tree of the upstream")
    index_flag(p)
    cache_flag(p)
    patches_flag(p)
    json_flag(p)


class DeprecatedAlias(argparse.Action):
    """An old spelling of a flag: it still works, says once on stderr what to type instead, and
    remembers the spelling so an error about the value names the flag the user typed."""

    def __init__(self, option_strings, dest, new: str, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated here; use {self.new} (same meaning)",
              file=sys.stderr)
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_flag", option_string)


def examples_text(examples: Examples) -> str:
    """The ``examples:`` block of a verb's --help (a long command gets its explanation on the next line)."""
    lines = [f"  {command:<52}  {why}" if len(command) <= 52 else f"  {command}\n      {why}" for command, why in examples]
    return "examples:\n" + "\n".join(lines) + "\n\n" if lines else ""


def verb_parser(sub, name: str, *, help: str, examples: Examples = (), leaf: bool = True) -> argparse.ArgumentParser:
    """A verb's parser: its help line doubles as the description, its examples and the exit codes are
    the epilog; every verb that does the work (``leaf``) takes -q and -v."""
    p = sub.add_parser(name, help=help, description=help, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.epilog = examples_text(examples) + exit_code_table()
    p.set_defaults(examples=examples)
    if leaf:
        # default SUPPRESS: the verb's -q leaves the top-level one (`ketta-build -q VERB`) as it was
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
        p.add_argument("-v", "--verbose", action="store_true",
                       help="print each step of the work on a line of its own (as a CI log wants) instead of one "
                            "changing status line" + ("; apply also says why each variant was chosen or skipped"
                                                      if name == "apply" else ""))
    return p


# ----------------------------------------------------------------------------- the context and the result


@dataclass
class Context:
    """What the CLI builds once per run and every verb reads: where things are, and how to print.

    The defaults of the paths live here and nowhere else: ``patches/`` and ``build/`` under the
    project root (the current directory), unless a flag names them."""

    console: Console
    parser: argparse.ArgumentParser
    project: Path
    patches: Path
    build_root: Path
    cache_dir: Path | None = None
    index_url: str | None = None
    verbose: bool = False
    _cache: Cache | None = field(default=None, repr=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace, console: Console, parser: argparse.ArgumentParser,
                  project: Path = Path(".")) -> Context:
        return cls(console=console, parser=parser, project=project,
                   patches=getattr(args, "patches", None) or project / "patches",
                   build_root=getattr(args, "build_root", None) or project / "build",
                   cache_dir=getattr(args, "cache_dir", None), index_url=getattr(args, "index_url", None),
                   verbose=bool(getattr(args, "verbose", False)))

    @property
    def cache(self) -> Cache:
        if self._cache is None:
            from ..cache import Cache

            self._cache = Cache(self.cache_dir)
        return self._cache

    def status(self, text: str):
        """A changing status line (rich) on a terminal, a line per step under -v; ``.update(step)``."""
        return self.console.status(text)


@dataclass
class Result:
    """What a verb did: its exit code, its JSON document (``schema`` included; None: the verb writes
    none) and how it prints itself for a person."""

    exit_code: int = 0
    document: dict | None = None
    show: Callable[[Console], None] | None = None

    def render(self, console: Console) -> None:
        if self.show is not None:
            self.show(console)

    def write_json(self, target: str | None) -> None:
        if target and self.document is not None:
            emit_json(target, self.document)


def emit_json(target: str | None, data: dict) -> None:
    if not target:
        return
    text = json.dumps(data, indent=2) + "\n"
    if target == "-":
        sys.stdout.write(text)
    else:
        Path(target).write_text(text)


def upstream_source(ctx: Context, args: argparse.Namespace, progress):
    """The upstream source the source flags name, and the version asked for (None: the source's own)."""
    from ..releases import load_releases, parse_version
    from ..sources import DirSource, GitSource, IndexSource

    chosen = [name for name in ("upstream_git", "upstream_dir") if getattr(args, name)]
    if len(chosen) > 1:
        raise KettaError("give only one of --upstream-git and --upstream-dir")
    version = parse_version(args.release) if args.release else None
    releases = load_releases(ctx.patches)
    if args.upstream_dir:
        return DirSource(args.upstream_dir, releases.profile), version
    if args.upstream_git:
        return GitSource(args.upstream_git, args.ref, releases.profile), version
    if version is None:
        raise KettaError("say which release: --release VERSION, --upstream-git PATH --ref TAG, or --upstream-dir PATH")
    return IndexSource(ctx.cache, ctx.index_url, progress=progress, releases=releases), version


def say(console: Console, text: str) -> None:
    """A line of the result that is plain text (no markup), kept whole in a log."""
    from ..tables import print_result

    print_result(console, text, markup=False, soft_wrap=True)


def hunk_counts_text(counts: dict[str, int]) -> str:
    """``2 clean, 1 offset`` (:func:`ketta_build.report.counts_text`)."""
    from ..report import counts_text

    return counts_text(counts)


def warn(verb: str, text: str) -> None:
    print(f"ketta-build: {verb}: {text}", file=sys.stderr)


__all__ = ["Context", "DeprecatedAlias", "Examples", "Result", "build_root_flag", "cache_flag", "emit_json", "escape",
           "examples_text", "hunk_counts_text", "index_flag", "json_flag", "patches_flag", "say", "source_flags",
           "upstream_source", "verb_parser", "warn"]
