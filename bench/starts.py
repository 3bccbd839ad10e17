"""Benchmark: a Letta server's start, cold (``letta server``) against forked from the environment's
start helper (issue #33), side by side, per release.

Usage: python bench/starts.py [--letta 0.16.8 ...] [--rounds 5] [--refusals 3]

Per release: one embedded PostgreSQL, a migrated template database, then ``--rounds`` starts each
way, alternating (cold, forked, forked, cold, ...), each on a fresh copy of the template, from the
start request until ``/v1/health/`` answers (what the suites' "server start" phase times), and the
server stopped before the next. The helper's own start (its preloading, and the preload list's
measurement when the environment has none yet) is timed apart. ``--refusals`` then times a start
refused for a wrong encryption key each way. Printed: median, min and max in seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compat_tests import api  # noqa: E402
from compat_tests.letta_server import LettaServer, ServerFailed, migrated_template, start_helper, stop_helpers  # noqa: E402
from compat_tests.pgcluster import EmbeddedCluster  # noqa: E402
from compat_tests.vendor import FakeVendor  # noqa: E402
from ketta_build.letta.serverenv import prepare_server  # noqa: E402


def one_start(build, pg, template: str, fork: bool, **env: str) -> tuple[float, str]:
    os.environ["KETTA_FORK_STARTS"] = "1" if fork else "0"
    database = f"bench_start_{uuid.uuid4().hex[:8]}"
    pg.clone_database(template, database)
    server = LettaServer(letta=build.letta, python=build.python, tree=build.tree, pg=pg, database=database,
                         extra_env=env, prepare_database=False)
    start = time.monotonic()
    try:
        server._start()
        return time.monotonic() - start, server.start_mode
    finally:
        server.stop()
        pg.drop_database(database)


def refusal(build, pg, database: str, fork: bool) -> tuple[float, str]:
    os.environ["KETTA_FORK_STARTS"] = "1" if fork else "0"
    server = LettaServer(letta=build.letta, python=build.python, tree=build.tree, pg=pg, database=database,
                         extra_env={"LETTA_ENCRYPTION_KEY": "not-the-key"}, prepare_database=False,
                         home=Path(tempfile.mkdtemp(prefix="ketta-bench-refusal-")))
    start = time.monotonic()
    try:
        server._start()
    except ServerFailed:
        return time.monotonic() - start, server.start_mode
    server.stop()
    raise SystemExit("the server with a wrong key started")


def stats(values: list[float]) -> str:
    return f"{statistics.median(values):6.1f} s (min {min(values):.1f}, max {max(values):.1f}, n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--letta", nargs="+", default=["0.16.8"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--refusals", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for version in args.letta:
        build = prepare_server(version, patched=True, series_dir=ROOT / "patches", build_root=ROOT / "build")
        cluster = EmbeddedCluster()
        try:
            pg = cluster.start()
            template = migrated_template(pg, build.python, build.tree)
            t = time.monotonic()
            helper = start_helper(build.python, build.letta)
            info = helper.request(op="info")
            helper_seconds = time.monotonic() - t
            times: dict[bool, list[float]] = {False: [], True: []}
            for r in range(args.rounds):
                for fork in ((False, True) if r % 2 == 0 else (True, False)):
                    seconds, mode = one_start(build, pg, template, fork)
                    assert mode == ("forked" if fork else "cold"), mode
                    times[fork].append(seconds)
                    print(f"{version} {'forked' if fork else 'cold  '} {seconds:5.1f} s", flush=True)
            refused: dict[bool, list[float]] = {False: [], True: []}
            if args.refusals:
                vendor = FakeVendor("benchkeys").start()
                database = f"bench_keyed_{uuid.uuid4().hex[:8]}"
                pg.clone_database(template, database)
                os.environ["KETTA_FORK_STARTS"] = "1"
                keyed = LettaServer(letta=build.letta, python=build.python, tree=build.tree, pg=pg, database=database,
                                    extra_env={"LETTA_ENCRYPTION_KEY": "bench-" + uuid.uuid4().hex}, prepare_database=False)
                try:
                    keyed._start()
                    api.create_provider(keyed, "BenchKeyed", vendor.base_url, "sk-bench-keyed")
                finally:
                    keyed.stop()
                    vendor.stop()
                for r in range(args.refusals):
                    for fork in ((False, True) if r % 2 == 0 else (True, False)):
                        refused[fork].append(refusal(build, pg, database, fork)[0])
            rows.append((version, times, refused, helper_seconds, info))
        finally:
            stop_helpers()
            cluster.stop()
    print()
    for version, times, refused, helper_seconds, info in rows:
        print(f"letta {version}: helper ready in {helper_seconds:.1f} s ({len(info['preloaded'])} packages preloaded in "
              f"{info['preload_seconds']:.1f} s, {info['modules']} modules)")
        print(f"  start, cold:     {stats(times[False])}")
        print(f"  start, forked:   {stats(times[True])}")
        if refused[False]:
            print(f"  refusal, cold:   {stats(refused[False])}")
            print(f"  refusal, forked: {stats(refused[True])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
