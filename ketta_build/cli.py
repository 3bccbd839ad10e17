"""ketta-build: carry a patch series across an upstream Python project's releases.

Apply the series to a pinned release and report every hunk, keep the patches in step with a build
tree (export, lint, range-diff), carry the series onto new releases (upstream check, port), test it
across releases (matrix: the upstream's own tests, or a project's suite registry against real patched
servers) and ship reproducible wheels with an SBOM pedigree. patches/upstream.toml says which project.

examples:
  ketta-build init --upstream idna --label acme     a new series (patches/) for any project on the index
  ketta-build apply --release 0.16.8                build/0.16.8: pristine release + one commit per patch
  ketta-build series --release 0.15.1 --check       which variant of each patch a release gets, and why
  ketta-build export --tree build/0.16.8 --check    are patches/ what the build tree's commits say?
  ketta-build lint                                  headers, guards, base releases, canonical form
  ketta-build status                                per patch: owner, forwarded, age, size, review date, outcome per release
  ketta-build range-diff --release 0.16.8 main HEAD what a refresh or port changed, patch by patch
  ketta-build upstream check                        new releases upstream, and what porting takes
  ketta-build port --release 0.16.9                 carry the series onto a new release
  ketta-build bisect 0004-no-base-providers-0.16.2.diff --upstream-git ../upstream
                                                    the upstream commit where a variant stopped applying
  ketta-build matrix --release 0.16.8               the compatibility suites on real servers (tox)
  ketta-build serve --release 0.16.8                a patched server on 127.0.0.1:8283 with a persistent PostgreSQL
  ketta-build releases --json -                     the supported releases (patches/releases.toml)
  ketta-build wheel --release 0.16.8                dist/NAME-0.16.8+LABEL.N-py3-none-any.whl, SHA256SUMS
  ketta-build cache prune --older-than 30           the cache's stores; remove what was not used for 30 days
  ketta-build completion bash                       tab completion of verbs, flags and releases (bash, zsh, fish)
"""
# The shared parser, the Context built once, dispatch to ketta_build/commands/, exceptions -> exit codes.

from __future__ import annotations

import argparse
import os
import signal
import sys


from . import __version__
from .commands import modules
from .commands.common import QUIET_HELP, Context, Result, emit_json
from .errors import EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, KettaError, exit_code_table
from .interrupts import Interrupted, sigterm_raises, signal_of


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ketta-build", description=__doc__, epilog=exit_code_table(),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in modules():
        module.register(sub)
        sub.choices[module.NAME].set_defaults(run=module.run)
    return parser


# verb name -> its run(ctx, args)
COMMANDS = {module.NAME: module.run for module in modules()}


class _PipeGuard:
    """``sys.stdout`` or ``sys.stderr`` for the length of a verb, outliving its reader: once the pipe is
    closed (``ketta-build upstream check | head -1``, or ``-v 2>&1 | head -3`` for the steps on
    stderr), the rest goes to /dev/null, as Python's documentation on SIGPIPE advises, and the verb
    runs on to its own exit code and its ``--json FILE``. (rich's own handling of a closed pipe exits
    with 1 on the spot.)"""

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
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageExit as exc:
        _usage_json(sys.argv[1:] if argv is None else argv, exc)
        raise
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _PipeGuard(stdout), _PipeGuard(stderr)
    try:
        with sigterm_raises():  # SIGTERM unwinds like Ctrl-C: the same clean-up, exit 143
            return _run(args, parser)
    finally:
        for guard in (sys.stdout, sys.stderr):
            guard.flush()  # what is still buffered meets a closed pipe here, not at interpreter exit
        sys.stdout, sys.stderr = stdout, stderr


def _console(stderr: bool, verbose: bool = False):
    from .progress import make_console

    return make_console(stderr, verbose)


def _run(args, parser: argparse.ArgumentParser) -> int:
    console = _console(stderr=args.json == "-", verbose=getattr(args, "verbose", False))
    console.quiet = args.quiet  # what a verb prints with print_result still shows
    try:
        result: Result = args.run(Context.from_args(args, console, parser), args)
        result.render(console)
        result.write_json(args.json)
        return result.exit_code
    except KettaError as exc:
        return _fail(args, f"ketta-build: error: {exc}", exc.exit_code)
    except KeyboardInterrupt as exc:
        term = signal_of(exc) == signal.SIGTERM
        what, code = ("terminated (SIGTERM)", EXIT_TERMINATED) if term else ("interrupted", EXIT_INTERRUPTED)
        if isinstance(exc, Interrupted):
            return _fail(args, f"ketta-build: {what}; the files being put in place were completed first, nothing is "
                               "half-written", code)
        return _fail(args, f"ketta-build: {what} before anything was put in place; nothing is half-written", code)
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
        emit_json(target, {"schema": "ketta-build/error/1", "command": command, "exit_code": EXIT_USAGE,
                           "error": exc.message})
    except OSError:
        pass


def _fail(args, line: str, code: int) -> int:
    """One line on stderr; with --json, a document saying the same (``ketta-build/error/1``)."""
    print(line, file=sys.stderr)
    try:
        emit_json(args.json, {"schema": "ketta-build/error/1", "command": args.command, "exit_code": code,
                              "error": line.removeprefix("ketta-build: ").removeprefix("error: ")})
    except OSError:
        pass
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
