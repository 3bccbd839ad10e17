"""Measure three ways to carry Ketta's database revisions across an upstream upgrade.

Usage: python bench/migration_designs.py [--from 0.16.5] [--to 0.16.7] [--json FILE]

For each design a database is migrated by the older release with Ketta's revisions and then
upgraded by the newer one with the command each design documents; the result is compared with a
fresh migration of the newer release (``pg_dump --schema-only``, ordering normalised). Also
measured: whether plain ``alembic upgrade head`` (what Letta's start-up script runs) does the whole
job, how many rows ``alembic_version`` holds (agent files record its first row), whether taking
Ketta out leaves stock Letta's schema, and the wall time of the upgrade.

- ``repointed``: builds 1-3: one revision whose ``down_revision`` is re-pointed at the release's
  head when alembic loads it (the file in compat_tests/fixtures).
- ``branch``: Ketta's revisions as an alembic branch of their own in upstream's version table
  (``branch_labels=("ketta",)``, ``down_revision=None``, ``depends_on`` the 0.14.0 head that
  every supported release has).
- ``own-table`` (chosen): Ketta's revisions in ``letta/ketta_migrations`` with their own version
  table, run by ``alembic/env.py`` after upstream's (patch 0006).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compat_tests.pgcluster import EmbeddedCluster  # noqa: E402
from compat_tests.schema import differences  # noqa: E402
from compat_tests.upgrade import OLD_MIGRATION  # noqa: E402
from ketta_build.letta.serverenv import prepare_server  # noqa: E402

EVERY_RELEASE_HAS = "b1c2d3e4f5a6"  # the 0.14.0 head


def alembic(python: Path, where: Path, uri: str, *args: str) -> tuple[int, str, float]:
    start = time.perf_counter()
    proc = subprocess.run([str(python), "-m", "alembic", *args], cwd=where, env={**os.environ, "LETTA_PG_URI": uri},
                          capture_output=True, text=True, timeout=900)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start


def stock_copy(stock_tree: Path, into: Path) -> Path:
    shutil.copytree(stock_tree / "alembic", into / "alembic")
    shutil.copy2(stock_tree / "alembic.ini", into / "alembic.ini")
    return into


def branch_copy(stock_tree: Path, ketta_tree: Path, into: Path) -> Path:
    """Upstream's scripts plus Ketta's revisions re-headed as a branch of upstream's version table."""
    stock_copy(stock_tree, into)
    for source in sorted((ketta_tree / "letta" / "ketta_migrations" / "versions").glob("ketta*.py")):
        text = source.read_text()
        if "down_revision: Union[str, None] = None" in text:
            text = text.replace('branch_labels: Union[str, Sequence[str], None] = None', 'branch_labels: Union[str, Sequence[str], None] = ("ketta",)')
            text = text.replace('depends_on: Union[str, Sequence[str], None] = None', f'depends_on: Union[str, Sequence[str], None] = "{EVERY_RELEASE_HAS}"')
        (into / "alembic" / "versions" / source.name).write_text(text)
    return into


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="old", default="0.16.5")
    ap.add_argument("--to", dest="new", default="0.16.7")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    builds = {(v, k): prepare_server(v, patched=k, series_dir=ROOT / "patches", build_root=ROOT / "build")
              for v in (args.old, args.new) for k in (True, False)}
    work = Path(tempfile.mkdtemp(prefix="ketta-designs-"))
    cluster = EmbeddedCluster()
    pg = cluster.start()
    results = []
    try:
        def fresh(name: str, python: Path, where: Path, *command: str) -> str:
            pg.create_database(name)
            rc, out, _ = alembic(python, where, pg.alembic_uri(name), *command)
            if rc:
                raise SystemExit(f"fresh migration {name} failed:\n{out[-3000:]}")
            return pg.dump(name, "--schema-only")

        old_py, new_py = builds[(args.old, True)].python, builds[(args.new, True)].python
        stock = {v: builds[(v, False)].tree for v in (args.old, args.new)}
        ketta = {v: builds[(v, True)].tree for v in (args.old, args.new)}
        stock_schema = fresh("stock_new", new_py, stock_copy(stock[args.new], work / "stock-new"), "upgrade", "head")

        designs = {}
        for version, label in ((args.old, "old"), (args.new, "new")):
            repointed = stock_copy(stock[version], work / f"repointed-{label}")
            shutil.copy2(OLD_MIGRATION, repointed / "alembic" / "versions" / "ketta0001_unified_providers.py")
            designs.setdefault("repointed", {})[label] = (repointed, ("upgrade", "head"), None)
            branch = branch_copy(stock[version], ketta[version], work / f"branch-{label}")
            designs.setdefault("branch", {})[label] = (branch, ("upgrade", "heads"), ("downgrade", "ketta@base"))
            designs.setdefault("own-table", {})[label] = (ketta[version], ("upgrade", "head"), None)

        for name, sides in designs.items():
            new_dir, command, remove = sides["new"]
            expected = fresh(f"{name.replace('-', '_')}_fresh", new_py, new_dir, *command)
            db = f"{name.replace('-', '_')}_up"
            pg.create_database(db)
            old_dir, old_command, _ = sides["old"]
            rc, out, _ = alembic(old_py, old_dir, pg.alembic_uri(db), *old_command)
            if rc:
                raise SystemExit(f"{name}: migrating with {args.old} failed:\n{out[-3000:]}")
            head_rc, head_out, seconds = alembic(new_py, new_dir, pg.alembic_uri(db), "upgrade", "head")
            if head_rc and command != ("upgrade", "head"):
                rc, out, seconds = alembic(new_py, new_dir, pg.alembic_uri(db), *command)
            conn = pg.connect(db)
            rows = [r[0] for r in conn.run("SELECT version_num FROM alembic_version")]
            conn.close()
            lost = differences(expected, pg.dump(db, "--schema-only"))
            if name == "own-table":
                proc = subprocess.run([str(new_py), "-m", "letta.ketta_migrations", "remove"], capture_output=True, text=True,
                                      env={**os.environ, "LETTA_PG_URI": pg.server_uri(db)}, cwd=work)
                removed_ok = proc.returncode == 0
            elif remove:
                removed_ok = alembic(new_py, new_dir, pg.alembic_uri(db), *remove)[0] == 0
            else:
                removed_ok = False  # no way to take the re-pointed revision out without taking upstream's with it
            removed_diff = len(differences(stock_schema, pg.dump(db, "--schema-only"))) if removed_ok else None
            first_line = next((line for line in head_out.splitlines() if "rror" in line or "Multiple head" in line), "")
            results.append({
                "design": name,
                "plain_upgrade_head": "ok" if head_rc == 0 else "fails: " + re.sub(r"\s+", " ", first_line.split(": ", 1)[-1])[:36] + "…",
                "command": "alembic " + " ".join(command),
                "schema_lines_lost": len(lost),
                "alembic_version_rows": rows,
                "back_to_stock_schema_diff": removed_diff,
                "upgrade_seconds": round(seconds, 1),
            })
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"Upgrade Ketta {args.old} -> Ketta {args.new}, compared with a fresh {args.new} migration\n")
    print(f"{'design':10} {'plain `alembic upgrade head`':44} {'lost':>5} {'alembic_version rows':32} {'to stock':>8} {'secs':>5}")
    for r in results:
        print(f"{r['design']:10} {r['plain_upgrade_head']:44} {r['schema_lines_lost']:>5} {','.join(r['alembic_version_rows']):32} "
              f"{'-' if r['back_to_stock_schema_diff'] is None else r['back_to_stock_schema_diff']:>8} {r['upgrade_seconds']:>5}")
    if args.json:
        args.json.write_text(json.dumps({"from": args.old, "to": args.new, "designs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
