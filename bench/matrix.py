"""Benchmark: one release's compatibility suites, time per phase (targets: <= 2.5 min per release
warm, and ``ketta-build matrix --all -p 2`` <= 12 min).

Usage: python bench/matrix.py [--letta 0.16.8] [--suite unified handle ...] [--all-releases]

Runs ``ketta-build matrix`` for the release (by default every suite but ``upgrade``, which has its
own timing table) into a temporary report directory, then prints, per cell, the time the suites'
fixtures spent building the environment, starting PostgreSQL, migrating, starting servers, and
running tests, and the release's total. ``--all-releases`` times ``matrix --all -p 2`` instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = ["unified", "handle", "harddelete", "agent", "migration", "upstream"]
PHASES = ["wheel and environment", "postgres", "migration", "server start"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--letta", default="0.16.8")
    parser.add_argument("--suite", nargs="+", default=SUITES)
    parser.add_argument("--all-releases", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ketta-bench-matrix-") as tmp:
        reports = Path(tmp)
        where = ["--all", "-p", "2"] if args.all_releases else ["--letta", args.letta]
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "ketta_build", "matrix", *where, "--suite", *args.suite,
                               "--report-dir", str(reports)], cwd=ROOT, capture_output=True, text=True)
        wall = time.monotonic() - start
        cells = json.loads((reports / "matrix.json").read_text())["cells"] if (reports / "matrix.json").is_file() else []
        print(f"{'cell':24} {'status':6} " + " ".join(f"{p[:14]:>14}" for p in PHASES) + f" {'tests+rest':>11} {'cell s':>7}")
        sums = dict.fromkeys(PHASES + ["tests and the rest"], 0.0)
        for c in cells:
            path = reports / "phases" / f"{c['env']}.json"
            data = json.loads(path.read_text()) if path.is_file() else {"phases": {}, "tests and the rest": 0}
            row = [data["phases"].get(p, 0.0) for p in PHASES]
            for p, v in zip(PHASES, row):
                sums[p] += v
            sums["tests and the rest"] += data["tests and the rest"]
            servers = data.get("counts", {}).get("server start", 0)
            print(f"{c['env']:24} {c['status']:6} " + " ".join(f"{v:14.1f}" for v in row)
                  + f" {data['tests and the rest']:11.1f} {c['duration']:7.1f}  ({servers} server start(s))")
        print(f"{'sum':31} " + " ".join(f"{sums[p]:14.1f}" for p in PHASES) + f" {sums['tests and the rest']:11.1f}")
        overhead = wall - sum(c["duration"] for c in cells) / (2 if args.all_releases else 1)
        print(f"wall time {wall / 60:.1f} min (tox and the tool around the cells: about {max(overhead, 0):.0f} s); "
              f"target {'12 min for --all -p 2' if args.all_releases else '2.5 min per release'}")
        if proc.returncode not in (0, 1):
            print(proc.stderr[-2000:], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
