"""Run one compatibility suite on several releases N times in a row and report every run.

Usage: python -m compat_tests.repeat --letta 0.14.0 0.15.0 --suite agent --runs 10

For intermittent failures: a cell counts as stable only when all its runs pass. Each run is a
fresh pytest process (its own PostgreSQL and servers); failing runs keep their output in
``<report-dir>/repeat/<release>-<suite>-<n>.log``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--letta", nargs="+", required=True)
    ap.add_argument("--suite", required=True)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--report-dir", type=Path, default=ROOT / "reports")
    args = ap.parse_args(argv)
    out = args.report_dir / "repeat"
    out.mkdir(parents=True, exist_ok=True)
    failed_cells = 0
    for version in args.letta:
        results = []
        for number in range(1, args.runs + 1):
            start = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "compat_tests", "-p", "no:cacheprovider", "-q", "-m", args.suite,
                 "--letta", version], cwd=ROOT, capture_output=True, text=True,
            )
            summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
            results.append(proc.returncode == 0)
            if proc.returncode:
                (out / f"{version}-{args.suite}-{number}.log").write_text(proc.stdout + proc.stderr)
            print(f"{version} {args.suite} run {number}/{args.runs}: {'pass' if proc.returncode == 0 else 'FAIL'} "
                  f"({time.monotonic() - start:.0f} s) {summary}", flush=True)
        passed = sum(results)
        failed_cells += passed != len(results)
        print(f"{version} {args.suite}: {passed}/{len(results)} runs passed", flush=True)
    return 1 if failed_cells else 0


if __name__ == "__main__":
    sys.exit(main())
