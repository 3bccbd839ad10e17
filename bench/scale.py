"""Benchmark: a long series. ``ketta-build apply --letta-dir`` against ``git am`` of the same patches.

Usage: python bench/scale.py [--sizes 100 300 1000] [--runs 3]

For each N a Letta-shaped tree is generated (pyproject, letta/server/, N module files and one
shared file), and N commits are made with git: commit i changes one line of its own module and
one line of its own block in the shared file, so the patches stack. ``git format-patch`` gives
the mbox files for ``git am``; ``git diff`` of each commit with a DEP-3 header gives Ketta's
series. Both sides start from the unpacked tree and include the base commit (ketta-build commits
the pristine tree; the git am side runs git init + add + commit first). Printed per N: median wall
time of each side and their ratio (target <= 1.0x), the median CPU time (user + system, every process
of the side, this one's copy of the tree included) of each side and their ratio, whether the two
trees are identical, the per-hunk report's counts, and ketta-build's peak RSS (target <= 200 MB at
N = 1000). The CPU ratio is the steadier one: on a shared disk the wall time of either side varies
threefold from run to run (git am of N = 100: 0.29-1.01 s), its CPU time hardly.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIT_ENV = {**os.environ, "GIT_AUTHOR_NAME": "Bench", "GIT_AUTHOR_EMAIL": "bench@example.org", "GIT_COMMITTER_NAME": "Bench",
           "GIT_COMMITTER_EMAIL": "bench@example.org", "GIT_AUTHOR_DATE": "@1700000000 +0000",
           "GIT_COMMITTER_DATE": "@1700000000 +0000", "GIT_CONFIG_NOSYSTEM": "1"}
HEADER = "Subject: Bench patch {i}\nAuthor: Bench <bench@example.org>\nUpstream-Status: Inappropriate [benchmark]\n" \
         "Base-Release: 0.16.8\nDescription: Changes module {i} and block {i} of the shared file.\n\n"


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "init.defaultBranch=main", "-c", "gc.auto=0", *args], cwd=cwd, env=GIT_ENV, capture_output=True,
                          text=True, check=True).stdout.strip()


def make_case(work: Path, n: int) -> tuple[Path, Path, Path]:
    """The upstream tree, Ketta's series directory and the mbox directory for ``n`` patches."""
    upstream = work / "upstream"
    files = {"pyproject.toml": '[project]\nname = "letta"\nversion = "0.16.8"\n', "letta/__init__.py": '__version__ = "0.16.8"\n',
             "letta/server/__init__.py": "", ".gitignore": "*.log\n"}
    for i in range(n):
        files[f"letta/mods/mod_{i:04d}.py"] = "".join(f"value_{i}_{k} = {k}\n" for k in range(20))
    files["letta/shared.py"] = "".join(f"# block {i}\n" + "".join(f"shared_{i}_{k} = {k}\n" for k in range(9)) for i in range(n))
    for rel, text in files.items():
        (upstream / rel).parent.mkdir(parents=True, exist_ok=True)
        (upstream / rel).write_text(text)
    maker = work / "maker"
    shutil.copytree(upstream, maker)
    git(maker, "init", "-q")
    git(maker, "add", "-A")
    git(maker, "commit", "-q", "-m", "base")
    base = git(maker, "rev-parse", "HEAD")
    shared = (maker / "letta/shared.py").read_text().splitlines(keepends=True)
    for i in range(n):
        mod = maker / f"letta/mods/mod_{i:04d}.py"
        mod.write_text(mod.read_text().replace(f"value_{i}_10 = 10\n", f"value_{i}_10 = 'patched {i}'\n"))
        shared[i * 10 + 5] = f"shared_{i}_4 = 'patched {i}'\n"
        (maker / "letta/shared.py").write_text("".join(shared))
        git(maker, "commit", "-q", "-a", "-m", f"Bench patch {i}")
    mbox = work / "mbox"
    git(maker, "format-patch", "-q", "-o", str(mbox), f"{base}..HEAD")
    series = work / "patches"
    series.mkdir()
    shutil.copy(ROOT / "patches" / "releases.toml", series / "releases.toml")
    commits = git(maker, "rev-list", "--reverse", f"{base}..HEAD").splitlines()
    names = []
    for i, commit in enumerate(commits):
        name = f"{i + 1:04d}-bench-{i}.diff"
        diff = git(maker, "diff", "--no-color", "--full-index", f"{commit}^", commit) + "\n"
        (series / name).write_text(HEADER.format(i=i) + diff)
        names.append(name)
    (series / "series").write_text("".join(n + "\n" for n in names))
    return upstream, series, mbox


def cpu_seconds() -> float:
    """User + system time of this process and of every child it has waited for, so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_ketta(upstream: Path, series: Path, out: Path) -> tuple[float, int, dict]:
    report = out.with_suffix(".json")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ketta_build", "apply", "--letta-dir", str(upstream), "--patches", str(series),
                             "--out", str(out), "--json", str(report)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"ketta-build apply failed: {proc.stderr.read().decode()[-2000:]}")
    return elapsed, usage.ru_maxrss * 1024, json.loads(report.read_text())


def run_git_am(upstream: Path, mbox: Path, out: Path) -> float:
    start = time.perf_counter()
    shutil.copytree(upstream, out)
    git(out, "init", "-q")
    git(out, "add", "-A")
    git(out, "commit", "-q", "-m", "base")
    subprocess.run(["git", "-c", "gc.auto=0", "am", "-q", *sorted(str(p) for p in mbox.iterdir())], cwd=out, env=GIT_ENV, check=True,
                   capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"{'N':>6} {'ketta s':>9} {'git am s':>9} {'ratio':>7} {'ketta cpu':>9} {'am cpu':>9} {'cpu ratio':>7} "
          f"{'same tree':>10} {'peak RSS MB':>12}  hunks")
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix=f"ketta-bench-scale-{n}-", ignore_cleanup_errors=True) as tmp:
            work = Path(tmp)
            upstream, series, mbox = make_case(work, n)
            k_times, g_times, k_cpu, g_cpu, rss = [], [], [], [], 0
            report: dict = {}
            for r in range(args.runs):  # interleaved, so both sides see the same machine load
                before = cpu_seconds()
                elapsed, peak, report = run_ketta(upstream, series, work / f"k{r}")
                k_cpu.append(cpu_seconds() - before)
                k_times.append(elapsed)
                rss = max(rss, peak)
                before = cpu_seconds()
                g_times.append(run_git_am(upstream, mbox, work / f"g{r}"))
                g_cpu.append(cpu_seconds() - before)
            same = git(work / "k0", "rev-parse", "HEAD^{tree}") == git(work / "g0", "rev-parse", "HEAD^{tree}")
            k, g = statistics.median(k_times), statistics.median(g_times)
            kc, gc = statistics.median(k_cpu), statistics.median(g_cpu)
            hunks = ", ".join(f"{v} {k2}" for k2, v in report["summary"]["hunks"].items() if v)
            print(f"{n:>6} {k:9.2f} {g:9.2f} {k / g:6.2f}x {kc:9.2f} {gc:9.2f} {kc / gc:6.2f}x {str(same):>10} "
                  f"{rss / 2**20:12.0f}  {hunks}", flush=True)
    print("targets: ratio <= 1.0x at every N (issue #33: <= 1.2x at N = 100); peak RSS <= 200 MB at N = 1000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
