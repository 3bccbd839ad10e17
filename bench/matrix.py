"""Benchmark: the compatibility matrix, time per phase, and what the cell cache saves.

Usage: python bench/matrix.py [--letta 0.16.8] [--suite unified handle ...] [--upgrade-pairs all|ci]
                              [--all-releases] [-p 2] [--keep DIR]
       python bench/matrix.py --scenario cold-all|warm-all|one-variant|one-patch|one-release|one-release-edit [-p 2] [--suite ...]

Scenarios (targets in the docs), each in a worktree of HEAD so nothing of yours changes:

* ``cold-all``: every release, a new ketta-build cache (no stored cells, no environments; uv's own
  download cache is what it is);
* ``warm-all``: every release again with the cache a previous run filled and nothing changed:
  every cell reused, no server started;
* ``one-variant``: a comment in an added line of ``0003-keys-from-database-0.14.diff`` changed (a real
  change confined to 0.14.0-0.16.1), ``--all --changed HEAD``;
* ``one-patch``: the same in ``0002`` (every release);
* ``one-release``: 0.16.8, every suite and upgrade pair, ``--rerun`` (environments already built;
  nothing kept is used: every stock run and fill is made again);
* ``one-release-edit``: 0.16.8, every suite and upgrade pair after the ``one-patch`` change: every
  cell runs, the stock runs and upgrade fills kept by an earlier run are used where their inputs match.

Per scenario: cells run / reused / not affected, server starts (servers that came up), refusals
(starts the key tests expect to be refused: a few seconds each), kept fills restored, stored stock
runs used, minutes.

Runs ``ketta-build matrix`` into a temporary report directory and prints, per tox run (a release's
shared session, or a suite on its own), what its fixtures spent on the environment, PostgreSQL,
migrations and server starts, and the rest (the tests themselves); then each cell's result and
the wall time against the target. Run it twice: the first run after a series change builds wheels
and environments, the second is the warm figure the targets are about.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ["wheel and environment", "postgres", "migration", "server start"]


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree_pss_kb(root: int) -> int:
    """Proportional set size of ``root``, its descendants and the embedded PostgreSQL (whose
    postmaster detaches from the process tree; it runs as its own system user)."""
    parents: dict[int, int] = {}
    postgres: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parents[int(entry.name)] = int(fields[1])
            if (entry / "comm").read_text().strip() in ("postgres", "postmaster") and entry.stat().st_uid != 0:
                postgres.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    ours = {root}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in ours and pid not in ours:
                ours.add(pid)
                changed = True
    return sum(_pss_kb(pid) for pid in ours | set(postgres))


class PeakMemory:
    """Samples the matrix run's memory twice a second; ``peak_mb`` is the highest sum seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kb = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.peak_kb = max(self.peak_kb, _tree_pss_kb(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


SCENARIO_EDITS = {  # the patch whose added comment a scenario changes
    "one-variant": "patches/0003-keys-from-database-0.14.diff",  # 0.14.0-0.16.1 only
    "one-patch": "patches/0002-handles-use-provider-name.diff",  # every release
    "one-release-edit": "patches/0002-handles-use-provider-name.diff",  # run on 0.16.8 only
}


def _edit(tree: Path, scenario: str) -> None:
    """The scenario's change: the first added line with a comment gets more words (the diff stays well formed)."""
    target = tree / SCENARIO_EDITS[scenario]
    lines = target.read_text().split("\n")
    body = next(i for i, ln in enumerate(lines) if ln.startswith("diff --git"))
    at = next(i for i in range(body, len(lines)) if lines[i].startswith("+") and not lines[i].startswith("+++") and "#" in lines[i])
    lines[at] += "  (bench edit)"
    target.write_text("\n".join(lines))


def scenario(name: str, parallel: int, cache: Path | None, suites: list[str] | None = None, keep: Path | None = None) -> int:
    """Run one scenario in a worktree of HEAD and print its table (``suites``: only those, default every suite)."""
    work = Path(tempfile.mkdtemp(prefix=f"ketta-bench-{name}-"))
    tree = work / "tree"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), "HEAD"], cwd=ROOT, check=True)
    try:
        if (ROOT / "build").is_dir():  # the build trees (and their wheels) of this checkout: warm
            subprocess.run(["cp", "-a", str(ROOT / "build"), str(tree / "build")], check=True)
        args = ["--all"]
        env_cache = []
        if name == "cold-all":
            # A new cache: a --cache-dir given must not hold anything yet (a later warm-all can then use it).
            if cache is not None and cache.exists() and any(cache.iterdir()):
                raise SystemExit(f"cold-all needs an empty cache; {cache} holds files")
            env_cache = ["--cache-dir", str(cache or work / "cache"), "--rerun"]
        elif name == "one-release":
            args, env_cache = ["--letta", "0.16.8"], ["--rerun"]
        elif name == "one-release-edit":
            _edit(tree, name)
            args = ["--letta", "0.16.8"]
        elif name in SCENARIO_EDITS:
            _edit(tree, name)
            args = ["--all", "--changed", "HEAD"]
        if cache is not None and "--cache-dir" not in env_cache:
            env_cache += ["--cache-dir", str(cache)]
        reports = work / "reports"
        start = time.monotonic()
        if suites:
            args += ["--suite", *suites]
        proc = subprocess.run([sys.executable, "-m", "ketta_build", "matrix", *args, *env_cache, "-p", str(parallel),
                               "--report-dir", str(reports)], check=False, cwd=tree, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(tree)})
        wall = time.monotonic() - start
        data = json.loads((reports / "matrix.json").read_text()) if (reports / "matrix.json").is_file() else {"cells": []}
        cells = data["cells"]
        ran = [c for c in cells if c["status"] in ("pass", "fail", "error") and not c.get("reused")]
        reused = [c for c in cells if c.get("reused")]
        idle = [c for c in cells if c["status"] == "not-affected"]
        starts = refusals = 0
        for path in (reports / "phases").glob("*.json") if (reports / "phases").is_dir() else []:
            counts = json.loads(path.read_text()).get("counts", {})
            starts += counts.get("server start", 0)
            refusals += counts.get("server start refused", 0)
        failed = [c["env"] for c in ran if c["status"] != "pass"]
        restored = sum(log.read_text(errors="replace").count("restore the kept fill of")
                       for log in (reports / "logs").glob("*-upgrade.log")) if (reports / "logs").is_dir() else 0
        stock_runs = sum(1 for xml in reports.glob("*.xml") if "stored run of" in xml.read_text(errors="replace"))
        print(f"{'scenario':16} {'cells':>5} {'run':>4} {'reused':>6} {'not affected':>12} {'server starts':>13} "
              f"{'refusals':>8} {'fills restored':>14} {'stock runs used':>15} {'minutes':>8}")
        print(f"{name:16} {len(cells):5} {len(ran):4} {len(reused):6} {len(idle):12} {starts:13} {refusals:8} {restored:14} "
              f"{stock_runs:15} {wall / 60:8.1f}")
        print("ran: " + (", ".join(c["env"] for c in ran) or "nothing"))
        if failed:
            print("not green: " + ", ".join(failed))
        if keep is not None and reports.is_dir():
            subprocess.run(["cp", "-a", f"{reports}/.", str(keep)], check=False)
            print(f"report kept in {keep}")
        if proc.returncode not in (0, 1):
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        return proc.returncode
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
        subprocess.run(["rm", "-rf", str(work)], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("cold-all", "warm-all", "one-variant", "one-patch", "one-release",
                                               "one-release-edit"))
    parser.add_argument("--cache-dir", type=Path, help="the ketta-build cache the scenarios use (default: the user's)")
    parser.add_argument("--letta", default="0.16.8")
    parser.add_argument("--suite", nargs="+", default=None, help="default: every suite")
    parser.add_argument("--upgrade-pairs", choices=("all", "ci"), default="all")
    parser.add_argument("--all-releases", action="store_true")
    parser.add_argument("-p", "--parallel", type=int, default=2)
    parser.add_argument("--keep", type=Path, metavar="DIR", help="write the matrix report into DIR and keep it")
    args = parser.parse_args()
    if args.scenario:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
        return scenario(args.scenario, args.parallel, args.cache_dir, args.suite, args.keep)
    with tempfile.TemporaryDirectory(prefix="ketta-bench-matrix-") as tmp:
        reports = args.keep.absolute() if args.keep else Path(tmp)
        where = ["--all"] if args.all_releases else ["--letta", args.letta]
        suites = ["--suite", *args.suite] if args.suite else []
        start = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "ketta_build", "matrix", *where, *suites, "-p", str(args.parallel),
                                 "--upgrade-pairs", args.upgrade_pairs, "--report-dir", str(reports)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        memory = PeakMemory(proc.pid)
        out, err = proc.communicate()
        peak_mb = memory.stop()
        wall = time.monotonic() - start
        cells = json.loads((reports / "matrix.json").read_text())["cells"] if (reports / "matrix.json").is_file() else []
        sessions = list(dict.fromkeys(c.get("session") or c["env"] for c in cells))
        print(f"{'tox run':22} " + " ".join(f"{p[:14]:>14}" for p in PHASES) + f" {'tests+rest':>11} {'total':>7}  servers")
        sums = dict.fromkeys(PHASES + ["tests and the rest"], 0.0)
        starts = 0
        for session in sessions:
            path = reports / "phases" / f"{session}.json"
            data = json.loads(path.read_text()) if path.is_file() else {"phases": {}, "tests and the rest": 0, "total": 0}
            row = [data["phases"].get(p, 0.0) for p in PHASES]
            for p, v in zip(PHASES, row):
                sums[p] += v
            sums["tests and the rest"] += data["tests and the rest"]
            count = data.get("counts", {}).get("server start", 0)
            starts += count
            print(f"{session:22} " + " ".join(f"{v:14.1f}" for v in row)
                  + f" {data['tests and the rest']:11.1f} {data.get('total', 0):7.1f}  {count}")
        print(f"{'sum':22} " + " ".join(f"{sums[p]:14.1f}" for p in PHASES) + f" {sums['tests and the rest']:11.1f}"
              f" {sum(sums.values()):7.1f}  {starts}")
        print()
        for c in cells:
            print(f"  {c['env']:24} {c['status']:5} {c['passed']:3} passed {c['failed']:2} failed {c['errors']:2} errors"
                  f"  {c['duration']:7.1f} s  (in {c.get('session') or c['env']})")
        per_start = sums["server start"] / starts if starts else 0
        print(f"\nwall time {wall / 60:.1f} min with -p {args.parallel}; {starts} server starts, {per_start:.1f} s each on "
              f"average ({sums['server start'] / 60:.1f} min of the {sum(sums.values()) / 60:.1f} min the runs spent); "
              f"target {'12 min for --all -p 2' if args.all_releases else '2.5 min per release'}")
        print(f"peak memory of the run (PSS of the tool, tox, pytest, servers and PostgreSQL together): {peak_mb:.0f} MB")
        if proc.returncode not in (0, 1):
            print(out[-2000:], err[-2000:], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
