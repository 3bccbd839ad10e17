"""ketta-build: carry the Ketta patch series across Letta server releases.

Apply the series to a pinned release and report every hunk, keep the patches in step with a build
tree (export, lint, range-diff), carry the series onto new releases (upstream check, port), and
run the compatibility matrix against real patched servers.

examples:
  ketta-build apply --letta 0.16.8                  build/0.16.8: pristine release + one commit per patch
  ketta-build series --letta 0.15.1 --check         which variant of each patch a release gets, and why
  ketta-build export --tree build/0.16.8 --check    are patches/ what the build tree's commits say?
  ketta-build lint                                  headers, guards, base releases, canonical form
  ketta-build status                                per patch: owner, forwarded, age, size, review date, outcome per release
  ketta-build range-diff --letta 0.16.8 main HEAD   what a refresh or port changed, patch by patch
  ketta-build upstream check                        new releases upstream, and what porting takes
  ketta-build port --letta 0.16.9                   carry the series onto a new release
  ketta-build bisect 0004-no-base-providers-0.16.2.diff --letta-git ../letta
                                                    the upstream commit where a variant stopped applying
  ketta-build matrix --letta 0.16.8                 the compatibility suites on real servers (tox)
  ketta-build serve --letta 0.16.8                  a patched server on 127.0.0.1:8283 with a persistent PostgreSQL
  ketta-build releases --json -                     the supported releases (patches/releases.toml)
  ketta-build wheel --letta 0.16.8                  dist/letta-0.16.8+ketta.N-py3-none-any.whl, constraints, SHA256SUMS
  ketta-build cache prune --older-than 30           the cache's stores; remove what was not used for 30 days
  ketta-build completion bash                       tab completion of verbs, flags and releases (bash, zsh, fish)
"""
# The command line parses arguments, calls the library and prints; nothing else lives here.

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from rich.markup import escape

from . import __version__
from .errors import (EXIT_CHECK, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_SOURCE, EXIT_TERMINATED, EXIT_USAGE, KettaError,
                     exit_code_table)
from .interrupts import Interrupted, sigterm_raises, signal_of
from .tables import print_result
from .tables import result as printing_result


# One definition per flag shared between verbs: the same name means the same thing, with one help text.
def _patches_flag(p) -> None:
    p.add_argument("--patches", metavar="DIR", type=Path, default=Path("patches"), help="series directory (default: ./patches)")


def _index_flag(p) -> None:
    p.add_argument("--index-url", metavar="URL", help="package index (default: what pip/uv are configured to use)")


def _cache_flag(p) -> None:
    p.add_argument("--cache-dir", metavar="DIR", type=Path, help="content-addressed cache (default: the user cache directory)")


def _json_flag(p) -> None:
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON to FILE ('-' for stdout; "
                                                  "schemas: docs/json-schemas.md)")


def _build_root_flag(p) -> None:
    p.add_argument("--build-root", metavar="DIR", type=Path, default=Path("build"), help="build trees (default: ./build)")


def _add_source_args(p: argparse.ArgumentParser, *, required_version: bool = False) -> None:
    src = p.add_argument_group("upstream source (one of)")
    src.add_argument("--letta", metavar="VERSION", help="server release from the package index, e.g. 0.16.8 or v0.16.8")
    src.add_argument("--letta-git", metavar="PATH_OR_URL", help="a Letta git repository")
    src.add_argument("--ref", metavar="TAG", help="tag or commit in --letta-git (default: vVERSION)")
    src.add_argument("--letta-dir", metavar="PATH", type=Path, help="an unpacked Letta tree")
    _index_flag(p)
    _cache_flag(p)
    _patches_flag(p)
    _json_flag(p)


class _UsageExit(SystemExit):
    """A usage error: exit 2 after its one line on stderr; ``main`` also writes the ``--json`` error document."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(EXIT_USAGE)
        self.message = f"{message} (see {prog} --help)"


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line, like every other error of the tool."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """As argparse's, but an argument no parser knows is reported by the verb it was given to,
        so the message points to that verb's --help."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self._verb_parser(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _verb_parser(self, parsed) -> argparse.ArgumentParser:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and getattr(parsed, action.dest, None) in action.choices:
                sub = action.choices[getattr(parsed, action.dest)]
                return sub._verb_parser(parsed) if isinstance(sub, _Parser) else sub
        return self

    def error(self, message: str):  # type: ignore[override]
        exc = _UsageExit(self.prog, message)
        self._print_message(f"{self.prog}: error: {exc.message}\n", sys.stderr)
        raise exc


class _DeprecatedAlias(argparse.Action):
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


QUIET_HELP = "print only errors and the final result (no progress, no detail)"
FUZZ_EXAMPLES_DEFAULT = 10  # compat_tests/test_fuzz.py's own default: the default run's 0.16.8 cell
FUZZ_EXAMPLES_THOROUGH = 40


# Each verb's examples, at the end of its --help above the exit codes: (command, what it does).
# tests/test_cli_edges.py parses every command with the real parser.
EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "apply": (("ketta-build apply --letta 0.16.8", "build/0.16.8: the pristine release, then one commit per patch"),
              ("ketta-build apply --letta 0.16.8 --force --keep-going", "replace the tree; apply what applies"),
              ("ketta-build apply --letta-git ../letta --ref v0.16.8 --tree build/git", "from a Letta clone")),
    "series": (("ketta-build series --letta 0.15.1", "which variant of each patch 0.15.1 gets, and why"),
               ("ketta-build series --letta 0.16.8 --check", "also: do variants overlap on any supported release?")),
    "export": (("ketta-build export", "refresh patches/ from build/<newest release>"),
               ("ketta-build export --tree build/0.16.8 --check", "write nothing; exit 4 if patches/ differ"),
               ("ketta-build export --prune", "also drop patches no commit carries any more")),
    "lint": (("ketta-build lint", "every check; exit 4 on a finding"),
             ("ketta-build lint --fix", "rewrite patch files into export's canonical form")),
    "status": (("ketta-build status", "one row per patch file"),
               ("ketta-build status --json status.json", "every field, and the outcome per release")),
    "range-diff": (("ketta-build range-diff --letta 0.16.8 main HEAD", "what a branch changed, patch by patch"),
                   ("ketta-build range-diff --letta 0.16.8 HEAD patches", "what the uncommitted patches/ change")),
    "upstream": (("ketta-build upstream check", "new releases upstream, and what porting takes"),),
    "upstream check": (("ketta-build upstream check", "exit 0 nothing new, 10 carries over, 11 needs porting"),
                       ("ketta-build upstream check --issue-dir issues --json check.json", "the tracking issues' bodies")),
    "port": (("ketta-build port --letta 0.16.9", "carry the series onto 0.16.9 (build/0.16.9)"),
             ("ketta-build port --continue", "after resolving the conflict it stopped at"),
             ("ketta-build port --skip", "0.16.9 does not need the patch it stopped at"),
             ("ketta-build port --abort", "give up: build/0.16.9 removed, patches/ untouched")),
    "bisect": (("ketta-build bisect 0004-no-base-providers-0.16.2.diff --letta-git ../letta --bad 0.16.7",
                "where the variant stopped applying"),
               ("ketta-build bisect 0003-keys-from-database.diff --letta-git ../letta --good 0.16.2 --bad 0.16.4 "
                "--until-applies", "where the newer variant became necessary")),
    "wheel": (("ketta-build wheel", "dist/: the newest release's wheel, constraints, SHA256SUMS"),
              ("ketta-build wheel --all --dist-dir dist", "every supported release")),
    "serve": (("ketta-build serve", "the newest release on 127.0.0.1:8283"),
              ("ketta-build serve --letta 0.16.7 --port 8284", "another release beside it")),
    "cache": (("ketta-build cache", "each store of the cache: entries and size"),
              ("ketta-build cache prune --older-than 30 --dry-run", "what a prune would remove, removing nothing"),
              ("ketta-build cache prune --max-size 5G", "the least recently used entries until 5 GiB are left")),
    "completion": (("ketta-build completion bash", "save as ~/.local/share/bash-completion/completions/ketta-build"),
                   ("ketta-build completion zsh", "save as _ketta-build in a directory of $fpath"),
                   ("ketta-build completion fish", "save as ~/.config/fish/completions/ketta-build.fish")),
    "releases": (("ketta-build releases", "one line per supported release"),
                 ("ketta-build releases --json -", "for a CI job matrix")),
    "matrix": (("ketta-build matrix --letta 0.16.8", "every suite on 0.16.8"),
               ("ketta-build matrix --all -p 2", "every release, two cells at a time"),
               ("ketta-build matrix --changed", "only the cells a change since main can affect"),
               ("ketta-build matrix --merge reports-0.16.7 reports-0.16.8", "one report from CI's jobs")),
}


def _examples(verb: str) -> str:
    """The ``examples:`` block of a verb's --help (a long command gets its explanation on the next line)."""
    lines = []
    for command, why in EXAMPLES.get(verb, ()):
        lines.append(f"  {command:<52}  {why}" if len(command) <= 52 else f"  {command}\n      {why}")
    return "examples:\n" + "\n".join(lines) + "\n\n" if lines else ""


def _verb(sub, name: str, *, help: str, leaf: bool = True) -> argparse.ArgumentParser:
    """A verb's parser: its help line doubles as the description, its examples and the exit codes are
    the epilog; every verb that does the work (``leaf``) takes -v."""
    p = sub.add_parser(name, help=help, description=help, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.epilog = _examples(p.prog.removeprefix("ketta-build ")) + exit_code_table()
    if leaf:
        # default SUPPRESS: the verb's -q leaves the top-level one (`ketta-build -q VERB`) as it was
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
        p.add_argument("-v", "--verbose", action="store_true",
                       help="print each step of the work on a line of its own (as a CI log wants) instead of one "
                            "changing status line" + ("; apply also says why each variant was chosen or skipped"
                                                      if name == "apply" else ""))
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ketta-build", description=__doc__, epilog=exit_code_table(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    ap = _verb(sub, "apply", help="apply the series to a Letta release and report every hunk")
    _add_source_args(ap)
    ap.add_argument("--tree", "--out", dest="tree", metavar="DIR", type=Path,
                    help="build tree to write (default: build/VERSION; --out is the same flag)")
    _build_root_flag(ap)
    ap.add_argument("--force", action="store_true", help="replace an existing (clean) build tree; its unexported commits, "
                                                         "other branches, tags and stashes are kept as backup refs and its "
                                                         "git-ignored files are carried over")
    ap.add_argument("--fuzz", metavar="N", type=int, default=0, help="allow ignoring up to N context lines (reported loudly)")
    ap.add_argument("--keep-going", action="store_true", help="do not stop at a failed patch; apply what can be")

    sp = _verb(sub, "series", help="show which patches apply to a release and why")
    _add_source_args(sp)
    sp.add_argument("--check", action="store_true", help="also check variant guards against every supported release")
    ep = _verb(sub, "export", help="write the build tree's commits back to the patch files (refresh)")
    ep.add_argument("--tree", type=Path, default=None, metavar="DIR", help="build tree (default: build/<newest supported release>)")
    _build_root_flag(ep)
    _patches_flag(ep)
    ep.add_argument("--check", action="store_true", help="write nothing; exit 4 naming the files export would change "
                                                         "and those newer in patches/ than in the tree")
    ep.add_argument("--prune", action="store_true", help="remove patches that no commit carries any more from the series")
    ep.add_argument("--split", action="store_true",
                    help="a refreshed patch that no longer applies to releases its guard claims: keep the file as it was "
                         "as a variant for those releases (else nothing is written)")
    _index_flag(ep)
    _cache_flag(ep)
    _json_flag(ep)
    pp = _verb(sub, "port", help="carry the series onto a Letta release it does not serve yet")
    what = pp.add_mutually_exclusive_group(required=True)
    what.add_argument("--letta", metavar="VERSION", help="the new release (from the package index)")
    what.add_argument("--continue", dest="cont", action="store_true", help="go on after resolving a conflict")
    what.add_argument("--skip", action="store_true",
                      help="leave the patch the port stopped at out of the new release (it does not need it) and go on")
    what.add_argument("--abort", action="store_true", help="give up: remove the port's build tree (patches/ is untouched)")
    pp.add_argument("--tree", type=Path, metavar="DIR", help="the port's build tree (default: build/VERSION, or the one in progress)")
    _build_root_flag(pp)
    pp.add_argument("--in-place", action="store_true", help="rewrite changed patches for the new release instead of adding variants")
    pp.add_argument("--force", action="store_true", help="replace an existing (clean) build tree; with --abort, remove a "
                                                         "tree holding work done since the stop (saved as a bundle first)")
    _patches_flag(pp)
    _index_flag(pp)
    _cache_flag(pp)
    _json_flag(pp)
    up = _verb(sub, "upstream", help="look at upstream: new releases and what porting to them takes", leaf=False)
    upsub = up.add_subparsers(dest="upstream_command", required=True)
    uc = _verb(upsub, "check", help="releases newer than the newest supported one, classified, with a dry-run port "
                                        "and the review list (exit 0 nothing new, 10 carries over, 11 needs porting, 2 usage, "
                                        "3 upstream source)")
    _index_flag(uc)
    uc.add_argument("--letta-git", metavar="PATH_OR_URL", help="look at the tags of a Letta git repository instead")
    _patches_flag(uc)
    _cache_flag(uc)
    uc.add_argument("--issue-dir", metavar="DIR", type=Path,
                    help="write DIR/<version>.md per new server release: the tracking issue's body")
    _json_flag(uc)
    rd = _verb(sub, "range-diff", help="what changed between two versions of the series (git refs or patch dirs), per patch")
    rd.add_argument("old", metavar="OLD", help="git ref of this repository, or a patch directory")
    rd.add_argument("new", metavar="NEW", help="git ref of this repository, or a patch directory")
    rd.add_argument("--letta", metavar="VERSION", required=True, help="release to apply both to")
    _patches_flag(rd)  # a git ref's series: DIR's path in DIR's repository at that ref
    _index_flag(rd)
    _cache_flag(rd)
    _json_flag(rd)
    bp = _verb(sub, "bisect", help="the first upstream commit (first-parent path GOOD..BAD) where a patch stops applying "
                                     "exactly or is already upstream, and the hunk it broke")
    bp.add_argument("patch", metavar="PATCH", help="a patch of the series (its file name)")
    bp.add_argument("--letta-git", metavar="PATH_OR_URL", required=True, help="a Letta git repository")
    bp.add_argument("--good", metavar="REF", help="where the patch applies exactly (default: its Base-Release tag, X or vX)")
    bp.add_argument("--bad", metavar="REF", help="where to stop (default: the newest release tag of the repository)")
    bp.add_argument("--until-applies", action="store_true",
                    help="the other way round: the first commit where a patch that does not apply exactly at GOOD "
                         "does (a newer variant: the commit that made it necessary; --bad defaults to its Base-Release)")
    _patches_flag(bp)
    _json_flag(bp)
    wp = _verb(sub, "wheel", help="deployable wheels letta-X+ketta.N with constraints-X.txt and SHA256SUMS, each built "
                                   "from patches/ applied to the pristine release in a tree of its own")
    wp.add_argument("--letta", metavar="VERSION", action="extend", nargs="+", help="release(s) (default: the newest supported)")
    wp.add_argument("--all", action="store_true", help="every supported release")
    wp.add_argument("--dist-dir", dest="dist_dir", type=Path, default=Path("dist"), metavar="DIR",
                    help="where the wheels, constraints and SHA256SUMS go (default: ./dist)")
    # --out is the build tree everywhere else (apply): on wheel it is only the old spelling of --dist-dir
    wp.add_argument("--out", dest="dist_dir", type=Path, metavar="DIR", action=_DeprecatedAlias, new="--dist-dir",
                    help=argparse.SUPPRESS)
    wp.add_argument("--tree", type=Path, metavar="DIR", help="a build tree that must hold exactly what patches/ gives "
                    "(refused, exit 5, if it has commits or edits patches/ does not); the wheel is the same either way")
    _patches_flag(wp)
    _index_flag(wp)
    _cache_flag(wp)
    _json_flag(wp)
    vp = _verb(sub, "serve", help="a patched Letta server here and now: wheel, PostgreSQL (persistent), migration, server")
    vp.add_argument("--letta", metavar="VERSION", help="release to serve (default: the newest supported, from releases.toml)")
    vp.add_argument("--data-dir", metavar="DIR", type=Path, help="PostgreSQL data, the server's home and key "
                    "(default: the user data directory, ketta-build/serve/VERSION)")
    vp.add_argument("--pg-uri", metavar="URI", help="your own PostgreSQL with pgvector instead of the embedded one")
    vp.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 exposes it)")
    vp.add_argument("--port", type=int, default=8283, help="port (default: 8283, Letta's)")
    _patches_flag(vp)
    _build_root_flag(vp)
    _index_flag(vp)
    _cache_flag(vp)
    _json_flag(vp)  # written once the server is ready
    rp = _verb(sub, "releases", help="the supported releases (patches/releases.toml), e.g. for a CI job matrix")
    _patches_flag(rp)
    _json_flag(rp)
    lp = _verb(sub, "lint", help="check the series: headers, why, base release, variants, whitespace, canonical form, tox.ini")
    _patches_flag(lp)
    lp.add_argument("--fix", action="store_true", help="rewrite patch files into export's canonical form")
    _index_flag(lp)
    _cache_flag(lp)
    _json_flag(lp)
    sp = _verb(sub, "status", help="per patch: owner, upstream status, age, size, review date and how it applies on every release")
    _patches_flag(sp)
    _index_flag(sp)
    _cache_flag(sp)
    _json_flag(sp)
    mp = _verb(sub, "matrix", help="run the compatibility suites (tox) per release and write the report")
    mp.add_argument("--letta", metavar="VERSION", action="extend", nargs="+", help="release(s) to test (repeatable; default: the newest supported, from releases.toml)")
    mp.add_argument("--all", action="store_true", help="every supported release (patches/releases.toml)")
    mp.add_argument("--suite", action="extend", nargs="+", metavar="SUITE", help="suite(s) to run (repeatable; default: all)")
    mp.add_argument("-p", "--parallel", type=int, default=os.cpu_count() or 1, metavar="N",
                    help=f"cells to run at once, longest first (default: the number of CPUs, {os.cpu_count() or 1} here)")
    mp.add_argument("--no-patches", action="store_true", help="test the unpatched releases (the suites must fail)")
    _patches_flag(mp)
    mp.add_argument("--report-dir", type=Path, default=Path("reports"), metavar="DIR", help="default: ./reports")
    _build_root_flag(mp)
    mp.add_argument("--rerun", action="store_true",
                    help="run every cell, even one whose inputs have a stored pass (fresh passes are still stored)")
    mp.add_argument("--changed", nargs="?", const="", metavar="REF",
                    help="run only the cells a change since REF can affect (default: the merge base with main, "
                         "else the last report's series commit)")
    _cache_flag(mp)
    mp.add_argument("--fuzz-examples", type=int, metavar="N",
                    help=f"generated requests per route in the fuzz suite (default {FUZZ_EXAMPLES_DEFAULT}, "
                         f"{FUZZ_EXAMPLES_THOROUGH} with --all or --suite fuzz)")
    _index_flag(mp)
    mp.add_argument("--upgrade-pairs", choices=("all", "ci"), default="all",
                    help="upgrade suite: every pair (default) or the default test run's ('ci')")
    mp.add_argument("--merge", metavar="DIR", type=Path, nargs="+",
                    help="run nothing: merge these report directories (one per CI job) into --report-dir")
    mp.add_argument("--coverage", action="store_true",
                    help="run the servers under coverage.py and report which hunks of each patch the suites ran "
                         "(docs/coverage.md; every cell runs)")
    _json_flag(mp)
    cp = _verb(sub, "cache", help="what the cache holds, per store (entries, size); prune it by age or size, "
                                  "least recently used first, never an entry in use")
    cp.add_argument("action", nargs="?", choices=("info", "prune"), default="info",
                    help="info (the default): each store's entries and size; prune: remove entries")
    cp.add_argument("--older-than", metavar="DAYS", type=float, help="prune: entries not used for DAYS days")
    cp.add_argument("--max-size", metavar="SIZE", help="prune: the least recently used entries until the cache holds "
                                                     "at most SIZE (bytes, or e.g. 500M, 2G)")
    cp.add_argument("--dry-run", action="store_true", help="prune: say what would be removed; remove nothing")
    _cache_flag(cp)
    _json_flag(cp)
    op = _verb(sub, "completion", help="print a shell completion script (verbs, flags, the supported releases of "
                                        "--patches) made from this parser")
    op.add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell to complete in")
    _patches_flag(op)
    # a script, not a report: no --json document; without --patches, a missing ./patches only
    # leaves the releases out (the script is often made outside the checkout)
    op.set_defaults(json=None, patches=None)
    return parser


def _cmd_matrix(args, console) -> int:
    import time

    from .matrix import default_versions, run_matrix
    from .matrixreport import merge_reports, report_json, run_context, write_reports
    from .releases import load_releases
    from .suites import project_suites

    if args.merge:
        if args.letta or args.all or args.suite or args.no_patches:
            raise KettaError("--merge runs nothing; leave out --letta, --all, --suite and --no-patches")
        cells, patched, context = merge_reports(args.merge, args.report_dir, project_suites(Path(".")).records)
        _matrix_table(console, cells)
        for name in ("matrix.json", "matrix.md", "matrix.html"):
            print_result(console, f"{name}: {args.report_dir.absolute() / name}")
        _emit_json(args.json, report_json(cells, not patched, context))
        return 0 if all(c.status == "pass" for c in cells) else 1

    supported = load_releases(args.patches)  # a missing or broken series is refused before anything runs
    versions = default_versions(series_dir=args.patches) if args.all else (args.letta or [str(supported.newest.version)])
    suites = args.suite or list(project_suites(Path(".")).names)
    report_dir = args.report_dir
    if args.no_patches and report_dir == Path("reports"):
        report_dir = Path("reports") / "no-patches"
    from .matrixreport import STATUS_STYLE as colour

    def show(cell) -> None:
        if cell.status == "not-affected":
            console.print(f"[dim]not affected[/] {cell.env} (no stored pass for its inputs; the change cannot affect it)")
            return
        if cell.reused:
            proven = cell.proven or {}
            console.print(f"[green]pass[/] {cell.env}: reused, proven {proven.get('date')} at "
                          f"{(proven.get('series_commit') or '?')[:10]} ({cell.passed} passed)")
            return
        console.print(
            f"[{colour.get(cell.status, 'white')}]{cell.status:5}[/] {cell.env}: {cell.passed} passed, "
            f"{cell.failed} failed, {cell.errors} errors in {cell.duration:.0f}s  ({report_dir / cell.log})"
        )

    _need_tox()
    from .affected import affected_cells, default_ref
    from .cache import Cache
    from .cellcache import CellStore
    from .releases import parse_version

    cache = Cache(args.cache_dir)
    store = CellStore(cache.root / "cells")
    changed = None
    if args.changed is not None:
        if args.patches.absolute() != Path("patches").absolute():
            raise KettaError("--changed reads the history of ./patches; leave out --patches", path=args.patches)
        ref = args.changed or default_ref(Path("."), report_dir.absolute())
        changed = affected_cells(Path("."), ref, [parse_version(v) for v in versions], suites)
        console.print(f"--changed against {ref[:12]}: " + ("; ".join(changed.why) or "nothing that a cell reads changed"))
    console.print(f"{len(versions) * len(suites)} cell(s), {args.parallel} tox run(s) at a time"
                  + ("; every cell runs (--rerun)" if args.rerun else "; every cell runs (--coverage)" if args.coverage else
                     "; cells whose inputs have a stored pass are reused (--rerun runs them)"))
    started = time.time()
    with console.status("matrix: starting") as status:
        done: list = []

        def on_cell(cell) -> None:
            done.append(cell)
            show(cell)
            status.update(f"matrix: {len(done)}/{len(versions) * len(suites)} cells done, "
                          f"{sum(c.status == 'pass' for c in done)} passing")

        fuzz_examples = args.fuzz_examples or (FUZZ_EXAMPLES_THOROUGH if args.all or "fuzz" in (args.suite or []) else None)
        cells = run_matrix(versions, suites, report_dir=report_dir, parallel=args.parallel,
                           no_patches=args.no_patches, project=Path("."), index_url=args.index_url,
                           fuzz_examples=fuzz_examples, store=store, cache=cache, changed=changed, reuse=not args.rerun,
                           upgrade_pairs=args.upgrade_pairs, on_cell=on_cell, coverage=args.coverage,
                           series_dir=args.patches, build_root=args.build_root)
    context = run_context(Path("."), report_dir.absolute(), started=started, finished=time.time(),
                          series_dir=args.patches)
    paths = write_reports(cells, report_dir.absolute(), args.no_patches, context)
    _matrix_table(console, cells)
    for kind, path in paths.items():
        print_result(console, f"{kind}: {path}")
    _emit_json(args.json, report_json(cells, args.no_patches, context))
    green = all(c.status in ("pass", "not-affected") for c in cells)
    if args.coverage:
        from .hunkcoverage import gaps

        found = gaps(context.get("coverage") or {})
        for line in found:
            print_result(console, f"[red]coverage[/]: {escape(line)}")
        print_result(console, f"coverage: {len(found)} hunk(s) or allowance(s) to look at" if found else
                      "coverage: every hunk ran in a suite or is allowed with its reason")
        green = green and not found
    return 0 if green else 1


def _need_tox() -> None:
    """The matrix runs tox with tox-uv: say so up front, not as a red cell whose log says it."""
    import importlib.util

    missing = [name for name, module in (("tox", "tox"), ("tox-uv", "tox_uv")) if importlib.util.find_spec(module) is None]
    if missing:
        raise KettaError(f"the matrix runs its cells with {' and '.join(missing)}, which this environment lacks: "
                         "pip install 'ketta-build[test]' (or pip install tox tox-uv)")


def _matrix_table(console, cells) -> None:
    from .matrixreport import STATUS_STYLE as colour
    from .matrixreport import cell_rows
    from .tables import print_table

    suites, rows = cell_rows(cells)

    def label(c) -> str:
        if c is None:
            return "-"
        if c.status == "not-affected":
            return "[dim]not affected[/]"
        return (f"[{colour.get(c.status, 'white')}]{'pass (reused)' if c.reused else c.status}[/] "
                f"{c.passed}/{c.passed + c.failed + c.errors}")

    with printing_result(console):
        print_table(console, "compatibility matrix", ("release", *suites), [(v, *map(label, row)) for v, row in rows])


class _PrintedStatus:
    """What ``console.status`` gives under -v: each step printed on a line of its own, on stderr
    (``steps``), so stdout holds only the results; ``-q`` (the verb's console) silences them."""

    def __init__(self, console, text: str, steps=None) -> None:
        self.console = console
        self.steps = steps or console
        self.update(text)

    def update(self, status=None, **_: object) -> None:
        if status is not None and not self.console.quiet:
            self.steps.print(f"[dim]{escape(str(status))}[/]")

    def __enter__(self) -> _PrintedStatus:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _console(stderr: bool, verbose: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    # Without a terminal (a CI log, a pipe) no line is broken: a log keeps each message, path and command whole.
    console.soft_wrap = not console.is_terminal
    if verbose:
        steps = console if stderr else Console(stderr=True, highlight=False)
        steps.soft_wrap = not steps.is_terminal
        console.status = lambda status, **_: _PrintedStatus(console, str(status), steps)  # type: ignore[method-assign]
    return console


def _emit_json(target: str | None, data: dict) -> None:
    if not target:
        return
    text = json.dumps(data, indent=2) + "\n"
    if target == "-":
        sys.stdout.write(text)
    else:
        Path(target).write_text(text)


def _source(args, cache, status):
    from .releases import parse_version
    from .upstream import DirSource, GitSource, IndexSource

    chosen = [name for name in ("letta_git", "letta_dir") if getattr(args, name)]
    if len(chosen) > 1:
        raise KettaError("give only one of --letta-git and --letta-dir")
    version = parse_version(args.letta) if args.letta else None
    if args.letta_dir:
        return DirSource(args.letta_dir), version
    if args.letta_git:
        return GitSource(args.letta_git, args.ref), version
    if version is None:
        raise KettaError("say which release: --letta VERSION, --letta-git PATH --ref TAG, or --letta-dir PATH")
    from .releases import load_releases

    return IndexSource(cache, args.index_url, progress=status, releases=load_releases(args.patches)), version


def _cmd_apply(args, console) -> int:
    from .buildtree import ApplyOptions, apply_series
    from .cache import Cache
    from .report import failure_lines, print_report, report_json
    from .series import read_series
    from .upstream import IndexSource

    if args.fuzz < 0:
        raise KettaError("--fuzz must be 0 or more")
    cache = Cache(args.cache_dir)
    with console.status("resolving upstream") as status:
        say = status.update
        series = read_series(args.patches)
        source, version = _source(args, cache, say)
        release = source.resolve(version)
        out = args.tree or args.build_root / str(release.version)
        report = apply_series(
            release,
            source,
            series,
            out,
            options=ApplyOptions(fuzz=args.fuzz, keep_going=args.keep_going, force=args.force),
            cache=cache,
            # 3-way merges need the release each patch was made against: take it from the index (cached).
            base_source=IndexSource(cache, args.index_url, allow_unsupported=True, releases=series.releases),
            progress=say,
            on_patch=lambda r: say(f"applied {r.name}: {r.outcome.value}"),
        )
    print_report(report, console, verbose=args.verbose)
    for line in failure_lines(report):
        print(f"ketta-build: failed: {line}", file=sys.stderr)
    _emit_json(args.json, report_json(report))
    return report.exit_code


def _cmd_series(args, console) -> int:
    from .cache import Cache
    from .series import read_series

    series = read_series(args.patches)
    cache = Cache(args.cache_dir)
    if args.letta_dir or args.letta_git:
        source, version = _source(args, cache, lambda _: None)
        version = source.resolve(version).version
    elif args.letta:
        from .errors import NotAServerRelease
        from .releases import FIRST_LETTA_CODE, parse_version
        from .releases import unknown_release

        version = parse_version(args.letta)
        if series.releases.find(version) is None:
            if version >= FIRST_LETTA_CODE:
                raise NotAServerRelease(f"letta {version} is Letta Code (from {FIRST_LETTA_CODE} on the name ships it), "
                                        "not the Letta agent server: no series serves it")
            raise unknown_release(version, "series answers for supported releases; port adds one", series.releases)
    else:
        raise KettaError("say which release: --letta VERSION (or --letta-dir/--letta-git)")
    rows = series.explain(version)
    data = {
        "schema": "ketta-build/series/1",
        "letta": str(version),
        "entries": [
            {"name": s.entry.name, "line": s.entry.line, "guard": s.entry.guard_text, "selected": s.selected, "reason": s.reason}
            for s in rows
        ],
        "problems": series.coverage_problems() if args.check else [],
    }
    for s in rows:
        mark = "[green]apply[/]" if s.selected else "[dim]skip [/]"
        print_result(console, f"{mark} {escape(s.entry.name)}  ({escape(s.reason)})")
    for problem in data["problems"]:
        print_result(console, f"[bold red]problem[/]: {escape(problem)}")
    _emit_json(args.json, data)
    return EXIT_CHECK if data["problems"] else 0


def _cmd_export(args, console) -> int:
    from .buildtree import series_lock
    from .cache import Cache

    cache = Cache(args.cache_dir)
    with series_lock(cache, args.patches):  # one export (or port finish) at a time reads and writes patches/
        return _export_locked(args, console, cache)


def _export_locked(args, console, cache) -> int:
    from .buildtree import PristineRepos
    from .export import plan_export, report_json, verify_plan, write_plan
    from .releases import load_releases
    from .upstream import IndexSource

    tree = args.tree or args.build_root / str(load_releases(args.patches).newest.version)
    plan = plan_export(tree, args.patches, prune=args.prune)
    if not args.check:
        with console.status("checking the releases the changed patches claim") as status:
            source = IndexSource(cache, args.index_url, progress=status.update, allow_unsupported=True,
                                 releases=load_releases(args.patches))
            verify_plan(plan, PristineRepos(source, cache, status.update), split=args.split, progress=status.update)
    colour = {"unchanged": "dim", "reworded": "green", "refreshed": "green", "new": "cyan", "dropped": "yellow", "pruned": "yellow",
              "not-applied": "yellow", "split": "cyan", "newer": "yellow"}
    for p in plan.patches:
        note = f"  ({escape(p.note)})" if p.note else ""
        console.print(f"[{colour[p.status]}]{p.status:9}[/] {escape(p.name)}{note}")
    dropped = [p for p in plan.patches if p.status == "dropped"]
    if args.check:
        differ = plan.differences()
        for path in differ:
            print(f"ketta-build: export --check: {path} differs from what export would write", file=sys.stderr)
        for p in dropped:
            print(f"ketta-build: export --check: {args.patches / p.name} has no commit in {tree}", file=sys.stderr)
        newer = [p for p in plan.patches if p.status == "newer"]
        for p in newer:  # export writes nothing for them, but the tree and the series differ
            print(f"ketta-build: export --check: {args.patches / p.name} is {p.note}", file=sys.stderr)
        _emit_json(args.json, report_json(plan, differ + [args.patches / p.name for p in newer], check=True))
        return EXIT_CHECK if differ or dropped or newer else 0
    for line in plan.unchecked:
        print(f"ketta-build: export: warning: not checked against {line}; ketta-build lint checks it later", file=sys.stderr)
    written = write_plan(plan)
    if written:
        print_result(console, f"{len(written)} file(s) written in {args.patches}")
    elif dropped:
        print_result(console, f"nothing written; {len(dropped)} patch(es) have no commit in the tree "
                      f"({', '.join(p.name for p in dropped)}): --prune removes them from the series")
    else:
        print_result(console, "nothing to write: the series matches the tree")
    _emit_json(args.json, report_json(plan, written, check=False))
    return 0


def _port_tree(args) -> Path:
    from .cache import Cache
    from .port import ports_in_progress

    if args.tree:
        return args.tree
    found = ports_in_progress(args.patches, Cache(args.cache_dir), (args.build_root,))
    if len(found) != 1:
        raise KettaError(f"no port in progress under {args.build_root}/ (say which tree with --tree)" if not found else
                         f"several ports in progress ({', '.join(str(t) for t, _ in found)}); say which with --tree")
    return found[0][0]


def _cmd_port(args, console) -> int:
    from dataclasses import asdict

    from .cache import Cache
    from .port import abort_port, continue_port, start_port
    from .releases import parse_version

    if args.abort:
        tree, saved = abort_port(_port_tree(args), force=args.force, cache=Cache(args.cache_dir))
        if saved:
            print_result(console, f"the work done since the port stopped is saved in {saved}; get it back in any clone with:",
                          markup=False, soft_wrap=True)
            print_result(console, f"  git fetch {saved} 'refs/ketta/*:refs/ketta/*'", markup=False, soft_wrap=True)
        print_result(console, f"port aborted: removed {escape(str(tree))}; patches/ was not changed")
        _emit_json(args.json, {"schema": "ketta-build/port/1", "aborted": str(tree), "saved": str(saved) if saved else None})
        return 0
    with console.status("porting") as status:
        if args.cont or args.skip:
            result = continue_port(_port_tree(args), progress=status.update, cache=Cache(args.cache_dir), skip=args.skip)
        else:
            result = start_port(parse_version(args.letta), args.patches, out=args.tree, build_root=args.build_root,
                                cache=Cache(args.cache_dir),
                                index_url=args.index_url, in_place=args.in_place, force=args.force, progress=status.update)
    for p in result.state.patches:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(p.hunks.items()))
        action = f": {escape(p.action)}" if p.action else ""
        console.print(f"{p.outcome:16} {escape(p.name)}" + (f"  ({counts})" if counts else "") + action)
    if not result.finished:
        for line in result.plan:
            print(f"ketta-build: port stopped: {line}", file=sys.stderr)
        _emit_json(args.json, {"schema": "ketta-build/port/1", "finished": False, **asdict(result.state), "plan": result.plan})
        return EXIT_FAILED
    for path in result.written:
        console.print(f"wrote {escape(str(path))}")
    print_result(console, f"letta {result.state.version} is now supported; next, lint the series and run its suites:")
    print_result(console, "  ketta-build lint", markup=False, soft_wrap=True)
    print_result(console, f"  ketta-build matrix --letta {result.state.version}", markup=False, soft_wrap=True)
    _emit_json(args.json, {"schema": "ketta-build/port/1", "finished": True, **asdict(result.state),
                           "written": [str(p) for p in result.written]})
    return 0


def _cmd_upstream(args, console) -> int:
    from .cache import Cache
    from .upstream_check import check_upstream

    with console.status("asking upstream") as status:
        report = check_upstream(args.patches, cache=Cache(args.cache_dir), index_url=args.index_url,
                                letta_git=args.letta_git, progress=status.update)
    if not report.releases:
        print_result(console, f"nothing newer than {report.newest_supported} on {escape(report.source)}")
    code = [r for r in report.releases if r.kind != "server"]
    if code:
        console.print(f"{len(code)} Letta Code release(s) ({code[0].version} … {code[-1].version}): not the Letta server; "
                      "noted, nothing to port")
    for r in report.releases:
        if r.kind != "server":
            continue
        flags = [f for f, on in (("pre-release", r.prerelease), (f"yanked: {r.yanked or 'no reason'}", r.yanked is not None)) if on]
        print_result(console, f"[bold]letta {r.version}[/] server" + (f" ({', '.join(flags)})" if flags else ""))
        print_result(console, f"  dry-run port: {r.status}")
        for p in r.patches:
            counts = ", ".join(f"{n} {k}" for k, n in sorted(p.hunks.items()))
            console.print(f"    {p.outcome:16} {escape(p.name)}  ({counts})")
            if p.landing_text():
                console.print(f"      {p.landing_text()}", markup=False, soft_wrap=True)
        console.print("  review list (upstream changes since the newest supported release):")
        for f in r.review:
            console.print(f"    {escape(f.path)}: {escape(f.facts())}")
            for fn in f.functions:
                state = "[red]changed upstream[/]" if fn.changed_upstream else "unchanged"
                console.print(f"      {escape(fn.name)}: {state}{escape(fn.who())}")
    if args.issue_dir:
        from .upstream_check import write_issue_bodies

        for path in write_issue_bodies(report, args.issue_dir):
            print_result(console, f"issue body: {path}")
    _emit_json(args.json, report.as_json())
    return report.exit_code


def _cmd_range_diff(args, console) -> int:
    from .cache import Cache
    from .rangediff import range_diff
    from .releases import parse_version

    with console.status("applying both series") as status:
        result = range_diff(parse_version(args.letta), args.old, args.new, cache=Cache(args.cache_dir),
                            index_url=args.index_url, progress=status.update, series_dir=args.patches)
    # With --json - the JSON is alone on stdout; the text goes where the rest of the human output goes.
    out = sys.stderr if args.json == "-" else sys.stdout
    if not getattr(args, "quiet", False):  # -q: only the per-patch classes, the result
        out.write(result.text)
    from .rangediff import class_lines

    out.write("\nper patch (old -> new, class):\n" + "".join(f"  {line}\n" for line in class_lines(result.pairs)))
    _emit_json(args.json, {"schema": "ketta-build/range-diff/1", "letta": result.letta, "old": result.old,
                           "new": result.new, "pairs": result.pairs})
    return 0


def _cmd_bisect(args, console) -> int:
    from .bisect import bisect

    with console.status("bisecting") as status:
        result = bisect(args.patch, args.letta_git, series_dir=args.patches, good=args.good, bad=args.bad,
                        until_applies=args.until_applies, progress=status.update)

    def commit(c) -> str:
        release = f", letta {c.version}" if c.version else ""
        return f"{c.short} {c.subject} ({c.date}{release})"

    say = lambda text: print_result(console, text, markup=False, soft_wrap=True)  # noqa: E731
    applies = result.mode == "applies"

    def show(r, indent: str) -> None:
        if r.found is None:
            say(f"{indent}does not apply exactly at {r.bad} either: no commit to find" if applies else
                f"{indent}applies exactly at {r.bad}: no break to find")
        else:
            say(f"{indent}first commit where it {'applies exactly' if applies else 'stops applying exactly'}: "
                f"{commit(r.found)}")
            if applies and r.breaks:
                say(f"{indent}  the hunks that did not apply exactly at the commit before it:")
            for b in r.breaks:
                what = f"hunk #{b.hunk} of {b.path}" if b.hunk is not None else b.path
                say(f"{indent}  {b.outcome}: {args.patches / r.patch}:{b.patch_line}: {what}: {b.reason}")
            for b in r.earlier:
                what = f"hunk #{b.hunk} of {b.path}" if b.hunk is not None else b.path
                say(f"{indent}  (there, earlier patch {b.patch} did not apply exactly either: {what}: {b.reason})")
        if r.monotone:
            state = ("it never applied" if applies else "it never broke") if r.found is None else \
                f"once {'applying' if applies else 'broken'}, it stays so"
            say(f"{indent}monotone: the {r.checked} commit(s) on the path that change its files (or pyproject.toml) were "
                f"all probed; {state}")
        else:
            first = r.first_break or r.found
            again = ", ".join(commit(c) for c in r.applies_again) or "nowhere"
            say(f"{indent}not monotone: the first {'commit where it applies' if applies else 'break'} on the path is "
                f"{commit(first) if first else '-'}; it changed back at {again}"
                + (" (the binary search, as git bisect, found the commit above)" if r.found else ""))
        if r.inside is not None:
            say(f"{indent}{r.found.short} is a merge: inside it, on the first-parent path {r.inside.good}..{r.inside.bad} "
                f"({r.inside.path_commits} commit(s), {len(r.inside.steps)} probe(s)):")
            show(r.inside, indent + "  ")

    say(f"{result.patch}: {result.good}..{result.bad} of {result.repo}, {result.path_commits} commit(s) on the "
        f"first-parent path, {len(result.steps)} probe(s) by binary search")
    show(result, "")
    _emit_json(args.json, result.as_json())
    return result.exit_code


def _cmd_wheel(args, console) -> int:
    from .cache import Cache
    from .releases import load_releases, parse_version, unknown_release
    from .wheel import SUMS_FILE, release_wheels, series_state

    releases = load_releases(args.patches)
    # Parsed once, here; the library takes the release numbers as text from now on.
    parsed = list(releases.versions) if args.all else [parse_version(v) for v in args.letta or []] or [releases.newest.version]
    if args.tree is not None:
        from .buildtree import read_tree_state

        if args.all:
            raise KettaError("--tree builds the one release of that tree; not with --all")
        version = read_tree_state(args.tree).version
        if args.letta and set(parsed) != {version}:
            raise KettaError(f"--tree {args.tree} is letta {version}, not {', '.join(args.letta)}")
        parsed = [version]
    unsupported = next((v for v in parsed if releases.find(v) is None), None)
    if unsupported is not None:
        raise unknown_release(unsupported, "no wheel without a series for it", releases)
    versions = [str(v) for v in parsed]
    flag = getattr(args, "dist_dir_flag", "--dist-dir")
    blocker = next((p for p in (args.dist_dir, *args.dist_dir.absolute().parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise KettaError(f"{flag} {args.dist_dir}: {blocker} is a file, not a directory")
    with console.status("building wheels") as status:
        made = release_wheels(versions, args.dist_dir, series_dir=args.patches, cache=Cache(args.cache_dir),
                              index_url=args.index_url, tree=args.tree, progress=status.update)
    series = made[0].series if made else series_state(args.patches)
    for item in made:
        print_result(console, f"{escape(str(item.wheel))}  sha256 {item.sha256}  (git tree {item.tree[:12]})")
        print_result(console, f"{escape(str(item.constraints))}")
    print_result(console, f"{escape(str(args.dist_dir / SUMS_FILE))}")
    if series["dirty"]:
        console.print(f"[yellow]{escape(str(args.patches))} has uncommitted changes: the wheels say so "
                      "(series.dirty in their provenance)[/]")
    _emit_json(args.json, {"schema": "ketta-build/wheels/1", "series": series, "wheels": [
        {"letta": m.version, "wheel": str(m.wheel), "sha256": m.sha256, "constraints": str(m.constraints), "tree": m.tree}
        for m in made]})
    return 0


def _cmd_lint(args, console) -> int:
    from .cache import Cache
    from .lint import lint_series

    project = args.patches.absolute().parent
    with console.status("linting the series (base releases come from the cache or the index)") as status:
        findings, fixed = lint_series(args.patches, cache=Cache(args.cache_dir), index_url=args.index_url,
                                      project=project if (project / "tox.ini").exists() else None, fix=args.fix,
                                      progress=status.update)
    for path in fixed:
        console.print(f"rewrote {escape(str(path))} in canonical form")
    for finding in findings:
        print(f"ketta-build: lint: {finding}", file=sys.stderr)
    if not findings:
        print_result(console, "lint: no findings")
    _emit_json(args.json, {"schema": "ketta-build/lint/1", "findings": [
        {"rule": f.rule, "path": str(f.path), "line": f.line, "message": f.message, "severity": f.severity} for f in findings],
        "fixed": [str(p) for p in fixed]})
    errors = [f for f in findings if f.severity == "error"]
    if errors and all(f.rule == "source" for f in errors):
        return EXIT_SOURCE
    return EXIT_CHECK if errors else 0


def _runs(outcomes: dict[str, str]) -> str:
    """``exact 0.16.4-0.16.8; variant 0.14.0-0.16.2``: consecutive releases with one outcome, joined."""
    runs: list[tuple[str, str, str]] = []
    for version, outcome in outcomes.items():
        if runs and runs[-1][0] == outcome:
            runs[-1] = (outcome, runs[-1][1], version)
        else:
            runs.append((outcome, version, version))
    return "; ".join(f"{o} {a}" + (f"-{b}" if b != a else "") for o, a, b in runs if o != "-")


def _cmd_status(args, console) -> int:
    from .cache import Cache
    from .status import series_status
    from .tables import print_table

    with console.status("applying the series in memory to every release") as progress:
        status = series_status(args.patches, cache=Cache(args.cache_dir), index_url=args.index_url,
                               progress=progress.update)
    rows = []
    for p in status.patches:
        upstream = f"{p.upstream_status.split()[0]}, {p.forwarded.split()[0] if p.forwarded else '[red]not forwarded?[/]'}"
        if p.applied_upstream:
            upstream += f", upstream in {p.applied_upstream.split()[0]}"
        age = p.age_days(status.on)
        review = p.review_by or "-"
        owner = p.owner.split("<")[0].strip() if p.owner else "[red]none[/]"
        rows.append((escape(p.name), owner if not p.owner else escape(owner), upstream,
                     f"{age} d" if age is not None else "uncommitted",
                     f"{p.hunks} {'hunk' if p.hunks == 1 else 'hunks'} +{p.added} -{p.removed}",
                     f"[red]{escape(review)} passed[/]" if p.review_passed else escape(review),
                     escape(_runs(p.outcomes))))
    with printing_result(console):
        print_table(console, escape(f"{args.patches}: {len(status.patches)} patch files on {len(status.versions)} "
                                    f"releases, {status.on}"),
                    ("patch", "owner", "upstream", "age", "size", "review by", "releases"), rows)
    for version, why in status.unavailable.items():
        print(f"ketta-build: status: letta {version} not checked: {why}", file=sys.stderr)
    _emit_json(args.json, status.to_json())
    return EXIT_SOURCE if status.unavailable else 0


def _cmd_serve(args, console) -> int:
    import signal

    from .serve import ServeOptions, start, write_state

    def terminate(signum, frame):  # SIGTERM ends a serve as Ctrl-C does: everything is stopped
        raise KeyboardInterrupt

    # SIGINT too: a process started in the background of a script inherits SIGINT ignored, and
    # Python then never turns Ctrl-C (or `kill -INT`) into KeyboardInterrupt.
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    from .releases import load_releases

    opts = ServeOptions(version=args.letta or str(load_releases(args.patches).newest.version), data_dir=args.data_dir, pg_uri=args.pg_uri, host=args.host, port=args.port,
                        patches=args.patches, build_root=args.build_root, cache_dir=args.cache_dir, index_url=args.index_url)
    with console.status("preparing") as status:
        serving = start(opts, progress=status.update)
    try:
        state = write_state(serving)
        print_result(console, f"[bold green]Ketta {serving.build.wheel_version}[/] ready at [bold]{serving.url}[/] "
                      f"in {serving.timings['total']:.1f} s")
        if serving.key_file:
            console.print(f"encryption key: {serving.key_file} (generated on first start, for this host only; "
                          "set LETTA_ENCRYPTION_KEY for more than one server)")
        else:
            console.print("encryption key: from LETTA_ENCRYPTION_KEY")
        console.print(f"data: {serving.data_dir}" + (" (PostgreSQL, home)" if serving.postgres else " (home; database: --pg-uri)"))
        console.print(f"server log: {serving.log_file}")
        console.print("Ctrl-C stops the server and PostgreSQL")
        _emit_json(args.json, json.loads(state.read_text()))
        code = serving.wait()
        print_result(console, f"letta server exited with {code}; see {serving.log_file}")
        return 1
    except KeyboardInterrupt:
        console.print("stopping the server and PostgreSQL")
        return 0
    finally:
        serving.stop()


def _cmd_releases(args, console) -> int:
    from .releases import load_releases

    releases = load_releases(args.patches)
    for r in releases:
        print_result(console, f"{r.version}  {r.date}")
    _emit_json(args.json, {"schema": "ketta-build/releases/1", "versions": [str(r.version) for r in releases],
                           "releases": [{"version": str(r.version), "date": r.date, "sha256": r.sha256} for r in releases]})
    return 0


def _cmd_cache(args, console) -> int:
    from .cache import Cache
    from .cacheadmin import human, inspect, parse_size, prune, report_json
    from .tables import print_table

    cache = Cache(args.cache_dir)
    pruned = max_bytes = None
    if args.action == "info":
        given = [flag for flag, value in (("--older-than", args.older_than), ("--max-size", args.max_size),
                                          ("--dry-run", args.dry_run)) if value not in (None, False)]
        if given:
            raise KettaError(f"{', '.join(given)} only go with cache prune")
    else:
        max_bytes = parse_size(args.max_size) if args.max_size is not None else None
        with console.status("pruning the cache") as status:
            pruned = prune(cache, older_than_days=args.older_than, max_bytes=max_bytes, dry_run=args.dry_run,
                           progress=status.update)
        verb = "would remove" if args.dry_run else "removed"
        for entry in pruned.removed:
            console.print(f"{verb} {escape(str(entry.path))} ({human(entry.bytes)})")
        for entry in pruned.in_use:
            print(f"ketta-build: cache prune: kept {entry.path}: in use", file=sys.stderr)
    stores = inspect(cache)
    with printing_result(console):
        print_table(console, escape(f"cache {cache.root}"), ("store", "entries", "size", "holds"),
                    [*((s.store.name, str(len(s.entries)), human(s.bytes), escape(s.store.what)) for s in stores),
                     ("total", str(sum(len(s.entries) for s in stores)), human(sum(s.bytes for s in stores)), "")])
    if pruned is not None:
        print_result(console, f"{len(pruned.removed)} entr{'y' if len(pruned.removed) == 1 else 'ies'} "
                      f"{'would be ' if args.dry_run else ''}removed, {human(pruned.freed)} "
                      f"{'would be ' if args.dry_run else ''}freed" +
                      (f"; {len(pruned.in_use)} in use, kept" if pruned.in_use else ""))
    _emit_json(args.json, report_json(cache, stores, pruned, args.older_than, max_bytes))
    return 0


def _cmd_completion(args, console) -> int:
    from .completion import script
    from .releases import load_releases

    if args.patches is None and not Path("patches", "releases.toml").exists():
        versions = []
        print("ketta-build completion: warning: no ./patches/releases.toml here: release versions are not completed "
              "(--patches DIR names the series)", file=sys.stderr)
    else:
        versions = [str(r.version) for r in load_releases(args.patches or Path("patches"))]
    sys.stdout.write(script(build_parser(), args.shell, versions))
    return 0


COMMANDS = {
    "apply": _cmd_apply, "series": _cmd_series, "export": _cmd_export, "lint": _cmd_lint, "port": _cmd_port,
    "upstream": _cmd_upstream, "range-diff": _cmd_range_diff, "wheel": _cmd_wheel, "matrix": _cmd_matrix,
    "releases": _cmd_releases, "serve": _cmd_serve, "bisect": _cmd_bisect,
    "status": _cmd_status, "cache": _cmd_cache, "completion": _cmd_completion,
}


class _StdoutGuard:
    """``sys.stdout`` for the length of a verb, outliving its reader: once the pipe is closed
    (``ketta-build upstream check | head -1``), the rest goes to /dev/null, as Python's documentation
    on SIGPIPE advises, and the verb runs on to its own exit code and its ``--json FILE``. (rich's
    own handling of a closed pipe exits with 1 on the spot.)"""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self) -> None:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except _UsageExit as exc:
        _usage_json(sys.argv[1:] if argv is None else argv, exc)
        raise
    stdout = sys.stdout
    sys.stdout = _StdoutGuard(stdout)
    try:
        with sigterm_raises():  # SIGTERM unwinds like Ctrl-C: the same clean-up, exit 143
            return _run(args)
    finally:
        sys.stdout.flush()  # what is still buffered meets a closed pipe here, not at interpreter exit
        sys.stdout = stdout


def _run(args) -> int:
    console = _console(stderr=args.json == "-", verbose=getattr(args, "verbose", False))
    console.quiet = args.quiet  # what a verb prints with print_result still shows
    try:
        return COMMANDS[args.command](args, console)
    except KettaError as exc:
        return _fail(args, f"ketta-build: error: {exc}", exc.exit_code)
    except KeyboardInterrupt as exc:
        term = signal_of(exc) == signal.SIGTERM
        what, code = ("terminated (SIGTERM)", EXIT_TERMINATED) if term else ("interrupted", EXIT_INTERRUPTED)
        if isinstance(exc, Interrupted):
            return _fail(args, f"ketta-build: {what}; the files being put in place were completed first, nothing is "
                               "half-written", code)
        return _fail(args, f"ketta-build: {what} before anything was put in place; nothing is half-written",
                     code)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(args, f"ketta-build: error: {where}{exc.strerror or exc}", EXIT_USAGE)


def _usage_json(argv: list[str], exc: _UsageExit) -> None:
    """The error document of a usage error, when the command line asked for ``--json`` (read from the
    words themselves: the arguments did not parse)."""
    target = None
    for i, word in enumerate(argv):
        if word.startswith("--json="):
            target = word.removeprefix("--json=")
        elif word == "--json" and i + 1 < len(argv):
            target = argv[i + 1]
    if not target or (target.startswith("-") and target != "-"):
        return
    command = next((word for word in argv if word in COMMANDS), None)
    try:
        _emit_json(target, {"schema": "ketta-build/error/1", "command": command, "exit_code": EXIT_USAGE,
                            "error": exc.message})
    except OSError:
        pass


def _fail(args, line: str, code: int) -> int:
    """One line on stderr; with --json, a document saying the same (``ketta-build/error/1``)."""
    print(line, file=sys.stderr)
    try:
        _emit_json(args.json, {"schema": "ketta-build/error/1", "command": args.command, "exit_code": code,
                               "error": line.removeprefix("ketta-build: ").removeprefix("error: ")})
    except OSError:
        pass
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


