"""Benchmark: ``ketta-build serve`` ready time, warm (target: at most 20 s).

Usage: python bench/serve.py [--letta 0.16.8] [--runs 3]

One cold-ish run first (wheel and environment from the cache if they are there, a new data
directory: initdb + full migration), then ``--runs`` warm runs on the same data directory. Each
run is timed from process start to the JSON state file appearing (the server answers
/v1/health/ by then), and the tool's own phase timings are printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ketta_build.letta.postgres import free_port  # noqa: E402

TARGET = 20.0


def one_run(version: str, data: Path) -> tuple[float, dict]:
    state = data.parent / "serve.json"
    state.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LETTA_", "KETTA_"))}
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "ketta_build", "serve", "--letta", version, "--data-dir", str(data),
                             "--port", str(free_port()), "--json", str(state)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        while not state.is_file():
            if proc.poll() is not None:
                raise SystemExit(f"serve exited with {proc.returncode}:\n{proc.stdout.read()}")
            time.sleep(0.1)
        elapsed = time.monotonic() - start
        return elapsed, json.loads(state.read_text())["timings"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--letta", default="0.16.8")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ketta-bench-serve-") as tmp:
        data = Path(tmp) / "data"
        phases = ["wheel and environment", "postgres", "migration", "server start"]
        print(f"{'run':10} {'ready s':>8} " + " ".join(f"{p:>22}" for p in phases))
        first, timings = one_run(args.letta, data)
        print(f"{'first':10} {first:8.1f} " + " ".join(f"{timings.get(p, 0):22.1f}" for p in phases))
        warm = []
        for n in range(args.runs):
            elapsed, timings = one_run(args.letta, data)
            warm.append(elapsed)
            print(f"{'warm ' + str(n + 1):10} {elapsed:8.1f} " + " ".join(f"{timings.get(p, 0):22.1f}" for p in phases))
    median = statistics.median(warm)
    print(f"warm ready: median {median:.1f} s (target <= {TARGET:.0f} s): {'met' if median <= TARGET else 'missed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
