"""Where a suite run's time goes: environment build, PostgreSQL, migration, server start, tests.

Fixtures and the server wrapper time their phases here; at the end of the session the totals go
to ``KETTA_REPORT_DIR/phases/<tox env>.json`` (read by bench/matrix.py) and the terminal summary.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

PHASES: dict[str, float] = {}
COUNTS: dict[str, int] = {}
STARTED = time.monotonic()
# How each server started (issue #33): "forked", or "cold: why"; and the seconds its start waited for
# its environment's start helper (made and preloading) before the fork. Any thread may add one.
STARTS: list[tuple[str, float]] = []
# How each alembic run went: "forked" (a child of the start helper), or "subprocess: why".
MIGRATIONS: list[str] = []
_STARTS_LOCK = threading.Lock()


@contextmanager
def phase(name: str):
    """Time the block under ``name``; the block may set ``label[0]`` to file it under another name
    (a server start that ends in the server's refusal is not a server start)."""
    label = [name]
    start = time.monotonic()
    try:
        yield label
    finally:
        PHASES[label[0]] = PHASES.get(label[0], 0.0) + time.monotonic() - start
        COUNTS[label[0]] = COUNTS.get(label[0], 0) + 1


def start_mode(mode: str, helper_wait: float) -> None:
    """Note how a server started (its ``LettaServer.start_mode``) and how long it waited for its helper."""
    with _STARTS_LOCK:
        STARTS.append((mode, helper_wait))


def migration_mode(mode: str) -> None:
    with _STARTS_LOCK:
        MIGRATIONS.append(mode)


def migration_modes() -> dict:
    with _STARTS_LOCK:
        runs = list(MIGRATIONS)
    why: dict[str, int] = {}
    for mode in runs:
        if mode != "forked":
            reason = mode.partition(": ")[2] or "KETTA_FORK_STARTS=0 or coverage"
            why[reason] = why.get(reason, 0) + 1
    return {"forked": runs.count("forked"), "subprocess": sum(why.values()), "subprocess because": why}


def start_modes() -> dict:
    """``{"forked": n, "cold": n, "cold because": {why: n}, "helper wait": seconds}`` of this process's starts."""
    with _STARTS_LOCK:
        starts = list(STARTS)
    why: dict[str, int] = {}
    for mode, _ in starts:
        if mode != "forked":
            reason = mode.partition(": ")[2] or "KETTA_FORK_STARTS=0 or coverage"
            why[reason] = why.get(reason, 0) + 1
    return {"forked": sum(1 for m, _ in starts if m == "forked"), "cold": sum(why.values()), "cold because": why,
            "helper wait": round(sum(w for _, w in starts), 1)}


def summary() -> dict:
    total = time.monotonic() - STARTED
    accounted = sum(PHASES.values())
    return {"total": round(total, 1), "phases": {k: round(v, 1) for k, v in PHASES.items()},
            "counts": dict(COUNTS), "tests and the rest": round(total - accounted, 1), "start modes": start_modes(),
            "alembic runs": migration_modes()}


def write(report_dir: Path, name: str) -> Path:
    out = report_dir / "phases" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary(), indent=2) + "\n")
    return out


def table() -> str:
    data = summary()
    lines = [f"{seconds:7.1f} s  {name} (x{data['counts'][name]})" for name, seconds in data["phases"].items()]
    lines.append(f"{data['tests and the rest']:7.1f} s  tests and the rest")
    lines.append(f"{data['total']:7.1f} s  total")
    modes = data["start modes"]
    if modes["forked"] or modes["cold"]:
        lines.append(f"server starts (refusals included): {modes['forked']} forked, {modes['cold']} cold; "
                     f"{modes['helper wait']:.1f} s of them waiting for a start helper")
        lines += [f"  cold ({n}x): {why}" for why, n in modes["cold because"].items()]
    runs = data["alembic runs"]
    if runs["forked"] or runs["subprocess"]:
        lines.append(f"alembic runs: {runs['forked']} forked from a start helper, {runs['subprocess']} as a subprocess")
        lines += [f"  subprocess ({n}x): {why}" for why, n in runs["subprocess because"].items()]
    return "\n".join(lines)


def env_name() -> str:
    return os.environ.get("TOX_ENV_NAME") or "pytest"
