"""Benchmark: ``ketta-build apply`` from a warm cache against a bare tar x + git init + git apply.

Usage: python bench/apply.py [--letta 0.16.8] [--runs 5] [--patches patches]

Both sides start from the same cached sdist and the same series and end with
a patched tree on disk; ketta-build also leaves a git repository with one
commit per patch and a full report.  Prints each side's median wall time and
the ratio (target: at most 1.5).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ketta_build.cache import Cache  # noqa: E402
from ketta_build.releases import parse_version  # noqa: E402
from ketta_build.series import read_series  # noqa: E402
from ketta_build.sources import IndexSource  # noqa: E402


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--letta", default="0.16.8")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--patches", type=Path, default=ROOT / "patches")
    ap.add_argument("--cache-dir", type=Path, default=None)
    args = ap.parse_args()

    cache = Cache(args.cache_dir)
    source = IndexSource(cache)
    release = source.resolve(parse_version(args.letta))
    sdist = source.sdist_path(release)
    series = read_series(args.patches)
    patch_files = [str(args.patches / e.name) for e in series.select(release.version)]
    tool = [sys.executable, "-m", "ketta_build.cli"]
    work = Path(tempfile.mkdtemp(prefix="ketta-bench-"))
    try:
        # Warm everything once (the pristine repository in the cache, the page cache).
        warm = subprocess.run(
            [*tool, "apply", "--letta", args.letta, "--patches", str(args.patches), "--out", str(work / "warm"),
             "--cache-dir", str(cache.root)],
            capture_output=True, text=True, cwd=ROOT,
        )
        if warm.returncode != 0:
            print(warm.stderr, file=sys.stderr)
            return 1

        def ketta(i: int) -> None:
            subprocess.run(
                [*tool, "apply", "--letta", args.letta, "--patches", str(args.patches), "--out", str(work / f"k{i}"),
                 "--cache-dir", str(cache.root)],
                check=True, capture_output=True, cwd=ROOT,
            )

        def bare(i: int) -> None:
            dest = work / f"b{i}"
            dest.mkdir()
            subprocess.run(["tar", "xzf", str(sdist), "-C", str(dest), "--strip-components=1"], check=True)
            subprocess.run(["git", "init", "-q", "."], cwd=dest, check=True)
            subprocess.run(["git", "apply", *patch_files], cwd=dest, check=True)

        k_times, b_times = [], []
        for i in range(args.runs):  # interleave so both see the same machine load
            k_times.append(_timed(lambda: ketta(i)))
            b_times.append(_timed(lambda: bare(i)))
            shutil.rmtree(work / f"k{i}")
            shutil.rmtree(work / f"b{i}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    k, b = statistics.median(k_times), statistics.median(b_times)
    ratio = k / b
    print(f"letta {args.letta}, {len(patch_files)} patch(es), {args.runs} runs each (median wall time)")
    print(f"  ketta-build apply (warm cache): {k:.3f} s   [{', '.join(f'{t:.3f}' for t in k_times)}]")
    print(f"  tar x + git init + git apply:   {b:.3f} s   [{', '.join(f'{t:.3f}' for t in b_times)}]")
    print(f"  ratio: {ratio:.2f}x (target <= 1.5x): {'OK' if ratio <= 1.5 else 'OVER TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
