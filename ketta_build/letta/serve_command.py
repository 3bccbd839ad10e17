"""``ketta-build serve``: a patched Letta server here and now, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from ..commands.common import (Context, Result, build_root_flag, cache_flag, emit_json, index_flag, json_flag,
                                patches_flag, spellings, verb_parser)
from ..errors import KettaError
from ..tables import print_result

NAME = "serve"
HELP = "a patched Letta server here and now: wheel, PostgreSQL (persistent), migration, server"
EXAMPLES = (("ketta-build serve", "the newest release on 127.0.0.1:8283"),
            ("ketta-build serve --letta 0.16.7 --port 8284", "another release beside it"))


def register(sub) -> None:
    p = verb_parser(sub, NAME, help=HELP, examples=EXAMPLES)
    p.add_argument(*spellings("--release"), dest="release", metavar="VERSION", help="release to serve (default: the newest supported, from releases.toml)")
    p.add_argument("--data-dir", metavar="DIR", type=Path, help="PostgreSQL data, the server's home and key "
                   "(default: the user data directory, ketta-build/serve/VERSION)")
    p.add_argument("--pg-uri", metavar="URI", help="your own PostgreSQL with pgvector instead of the embedded one")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 exposes it)")
    p.add_argument("--port", type=int, default=8283, help="port (default: 8283, Letta's)")
    patches_flag(p)
    build_root_flag(p)
    index_flag(p)
    cache_flag(p)
    json_flag(p)  # written once the server is ready


def run(ctx: Context, args) -> Result:
    from ..releases import load_releases
    from .serve import ServeOptions, start, write_state

    def terminate(signum, frame):  # SIGTERM ends a serve as Ctrl-C does: everything is stopped
        raise KeyboardInterrupt

    # SIGINT too: a process started in the background of a script inherits SIGINT ignored, and
    # Python then never turns Ctrl-C (or `kill -INT`) into KeyboardInterrupt.
    profile = load_releases(ctx.patches).profile
    if profile.plugin is None or profile.plugin.__name__ != __package__:
        raise KettaError(f"serve starts a Letta server with its PostgreSQL; the series in {ctx.patches} is kept for "
                         f"{profile.name} (wheel kind {profile.wheel_kind!r}): build its wheel with ketta-build wheel")
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    console = ctx.console
    opts = ServeOptions(version=args.release or str(load_releases(ctx.patches).newest.version), data_dir=args.data_dir,
                        pg_uri=args.pg_uri, host=args.host, port=args.port, patches=ctx.patches,
                        build_root=ctx.build_root, cache_dir=ctx.cache_dir, index_url=ctx.index_url)
    with ctx.status("preparing") as status:
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
        emit_json(args.json, json.loads(state.read_text()))  # now, while it serves: not when it stops
        code = serving.wait()
        print_result(console, f"letta server exited with {code}; see {serving.log_file}")
        return Result(1)
    except KeyboardInterrupt:
        console.print("stopping the server and PostgreSQL")
        return Result(0)
    finally:
        serving.stop()
