"""The upgrade suite's filled start databases, kept by their inputs (ketta_build.runstore, ``fills``).

A fill is a database migrated by one release and written through that release's real server
(``upgrade_data.write_fill``), with the server's home (a Ketta server's generated key lives there).
What it depends on: the side's wheel and the constraints its environment is installed under, the
release tree's migrations, the environment's Python, the PostgreSQL version and the suite's own
code that makes and reads fills. A stock side's fill never depends on the series, and a Ketta
side's only on its own release's wheel, so after a change to one patch most fills of an upgrade
cell are the same as before: they are restored (``pg_restore`` and the home unpacked, about two
seconds) instead of made (a migration, a server start and a conversation, about a minute).

The fill's providers point at its vendors' addresses, so a restored fill's vendors listen on the
ports they had when it was made; when one is taken the fill is made afresh. Nothing else of the
fill is rewritten: the database is the one the release's server wrote.
"""

from __future__ import annotations

import dataclasses
import tarfile
import tempfile
from pathlib import Path

from ketta_build.cache import sha256_file
from ketta_build.runstore import (
    FILL_KEY_SCHEMA,
    RunStore,
    StoredRun,
    digest_tree,
    run_key,
)

from .pgcluster import PgTarget
from .release_python import venv_python_version
from .upgrade_data import Fill, Written
from .vendor import FakeVendor

# The suite's code a fill's content depends on.
HARNESS = ("upgrade.py", "upgrade_data.py", "fill_store.py", "api.py", "vendor.py", "letta_server.py", "fork_helper.py", "pgcluster.py")


def fill_key(side_tag: str, by_handle: bool, patched: bool, build, pg: PgTarget) -> str:
    """The key of the fill of side ``side_tag`` made with ``build`` (a ketta_build ServerBuild)."""
    here = Path(__file__).parent
    return run_key(FILL_KEY_SCHEMA, {
        "side": side_tag, "by_handle": by_handle, "patched": patched,
        "wheel": build.wheel_sha256, "constraints": sha256_file(build.constraints),
        "alembic": digest_tree(build.tree / "alembic"), "alembic_ini": sha256_file(build.tree / "alembic.ini"),
        "python": venv_python_version(build.env), "postgres": pg.server_version(),
        "harness": {name: sha256_file(here / name) for name in HARNESS},
    })


def keep_fill(store: RunStore, key: str, fill: Fill, pg: PgTarget, work: Path) -> StoredRun:
    """Store ``fill``: its database (pg_dump), its server's home, what was written and where its vendors listen."""
    with tempfile.TemporaryDirectory(dir=work, prefix="keep-fill-") as tmp:
        dump, home = Path(tmp) / "database.dump", Path(tmp) / "home.tar"
        pg.save_database(fill.template, dump)
        with tarfile.open(home, "w") as tar:
            tar.add(fill.home, arcname=".")
        record = {
            "side": str(fill.side), "written": dataclasses.asdict(fill.written), "key": fill.key,
            "vendors": {name: int(vendor.base_url.rsplit(":", 1)[1].split("/", 1)[0]) for name, vendor in fill.vendors.items()},
        }
        return store.save(key, record, {"database.dump": dump, "home.tar": home})


def restore_fill(stored: StoredRun, side_tag: str, pg: PgTarget, database: str, home: Path) -> tuple[dict, Written, str | None]:
    """Start the stored fill's vendors on their ports, restore its database as ``database`` and its home
    into ``home``. Returns the vendors, what was written and the encryption key; OSError when a
    vendor's port is taken (nothing is left running then)."""
    vendors: dict[str, FakeVendor] = {}
    try:
        for name, port in stored.data["vendors"].items():
            vendors[name] = FakeVendor(f"{name}-{side_tag}").start(port=port)
    except OSError:
        for vendor in vendors.values():
            vendor.stop()
        raise
    try:
        written, key = Written(**stored.data["written"]), stored.data["key"]
        pg.restore_database(stored.files["database.dump"], database)
        home.mkdir(parents=True)
        with tarfile.open(stored.files["home.tar"]) as tar:
            tar.extractall(home, filter="data")
    except BaseException:
        for vendor in vendors.values():
            vendor.stop()
        raise
    return vendors, written, key
