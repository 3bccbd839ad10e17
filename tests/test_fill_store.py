"""The upgrade suite's kept fills: a real embedded PostgreSQL, a real dump and restore, real vendor ports."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest

from compat_tests.fill_store import fill_key, keep_fill, restore_fill
from compat_tests.pgcluster import EmbeddedCluster
from compat_tests.upgrade import Side, UpgradeLab
from compat_tests.upgrade_data import Fill
from compat_tests.vendor import FakeVendor
from ketta_build.runstore import RunStore
from ketta_build.letta.serverenv import ServerBuild

# One xdist worker runs the module: its tests share one PostgreSQL (and reuse database names in it),
# as they do in a serial run.
pytestmark = pytest.mark.xdist_group("fill-store")


@pytest.fixture(scope="module")
def pg():
    cluster = EmbeddedCluster()
    target = cluster.start()
    yield target
    cluster.stop()


def _fill(pg, tmp_path: Path, vendors: dict) -> Fill:
    pg.create_database("tpl_stock_a")
    pg.run("CREATE TABLE providers (id text PRIMARY KEY, name text, base_url text, embedding vector(3))",
           *[f"INSERT INTO providers VALUES ('provider-{n}', '{n}', '{v.base_url}', '[1,2,3]')" for n, v in vendors.items()],
           database="tpl_stock_a")
    home = tmp_path / "home"
    (home / ".letta").mkdir(parents=True)
    (home / ".letta" / "ketta-encryption.key").write_text("generated-key\n")
    (home / ".letta" / "ketta-encryption.key").chmod(0o600)
    return Fill("stock 0.16.7", "tpl_stock_a", home, vendors, None, {"KeptAlpha": {"id": "provider-alpha", "key": "sk-a",
                "vendor": "alpha"}}, "provider-gone", "agent-1", "KeptAlpha", "gpt-4o-mini", [], 2, {}, ["abc"])


def _rows(pg, database: str) -> list:
    conn = pg.connect(database)
    try:
        return conn.run("SELECT id, name, base_url, embedding::text FROM providers ORDER BY id")
    finally:
        conn.close()


def test_a_kept_fill_comes_back_with_its_rows_home_and_vendor_ports(pg, tmp_path):
    vendors = {name: FakeVendor(f"{name}-stock0.16.7").start() for name in ("alpha", "beta")}
    try:
        fill = _fill(pg, tmp_path, vendors)
        store = RunStore(tmp_path / "fills")
        kept = keep_fill(store, "k" * 64, fill, pg, tmp_path)
        urls = {name: v.base_url for name, v in vendors.items()}
    finally:
        for vendor in vendors.values():
            vendor.stop()
    assert store.lookup("k" * 64) is not None and kept.data["written"]["agent_id"] == "agent-1"
    restored, written, key = restore_fill(store.lookup("k" * 64), "stock0.16.7", pg, "tpl_stock_b", tmp_path / "home-b")
    try:
        # The vendors listen where the stored providers point, and answer there.
        assert {name: v.base_url for name, v in restored.items()} == urls
        with urllib.request.urlopen(restored["alpha"].base_url + "/models", timeout=10) as resp:
            assert resp.status == 200
        assert _rows(pg, "tpl_stock_b") == _rows(pg, "tpl_stock_a")
        assert written == fill.written and key is None
        kept_key = tmp_path / "home-b" / ".letta" / "ketta-encryption.key"
        assert kept_key.read_text() == "generated-key\n" and kept_key.stat().st_mode & 0o077 == 0
    finally:
        for vendor in restored.values():
            vendor.stop()


def _port(vendor: FakeVendor) -> int:
    return int(vendor.base_url.rsplit(":", 1)[1].split("/")[0])


def _kept(pg, tmp_path: Path, key: str) -> tuple[RunStore, dict]:
    """A fill kept under ``key``, its vendors still running (the caller stops them)."""
    vendors = {name: FakeVendor(name).start() for name in ("alpha", "beta")}
    try:
        store = RunStore(tmp_path / "fills")
        keep_fill(store, key, _fill(pg, tmp_path, vendors), pg, tmp_path)
    except BaseException:
        for vendor in vendors.values():
            vendor.stop()
        raise
    return store, vendors


def test_a_taken_vendor_port_means_a_fresh_fill_and_nothing_left_running(pg, tmp_path):
    store, vendors = _kept(pg, tmp_path, "t" * 64)
    alpha_port = _port(vendors["alpha"])
    vendors["alpha"].stop()
    # beta is still listening: the restore cannot have its port.
    try:
        with pytest.raises(OSError):
            restore_fill(store.lookup("t" * 64), "x", pg, "tpl_never", tmp_path / "home-never")
        probe = socket.socket()
        probe.bind(("127.0.0.1", alpha_port))  # alpha, started before beta failed, was stopped again
        probe.close()
        assert not (tmp_path / "home-never").exists()
    finally:
        vendors["beta"].stop()


def test_the_fill_key_follows_the_wheel_the_migrations_and_postgres(pg, tmp_path):
    tree = tmp_path / "letta-0.16.7"
    (tree / "alembic" / "versions").mkdir(parents=True)
    (tree / "alembic" / "versions" / "a.py").write_text("revision = 'a'\n")
    (tree / "alembic.ini").write_text("[alembic]\n")
    constraints = tmp_path / "c.txt"
    constraints.write_text("x==1\n")
    env = tmp_path / "env"
    env.mkdir()
    (env / "pyvenv.cfg").write_text("version_info = 3.11.7\n")
    build = ServerBuild("0.16.7", False, tree, tmp_path / "w.whl", "0.16.7", "a" * 64, constraints, env, None)
    first = fill_key("stock0.16.7", False, False, build, pg)
    assert fill_key("stock0.16.7", False, False, build, pg) == first
    assert fill_key("ketta0.16.7", True, True, build, pg) != first
    (tree / "alembic" / "versions" / "b.py").write_text("revision = 'b'\n")
    migrations = fill_key("stock0.16.7", False, False, build, pg)
    other_wheel = ServerBuild("0.16.7", False, tree, tmp_path / "w.whl", "0.16.7", "b" * 64, constraints, env, None)
    assert len({first, migrations, fill_key("stock0.16.7", False, False, other_wheel, pg)}) == 3


def test_a_kept_fill_is_replaced_only_when_the_run_may_not_use_it(pg, tmp_path):
    # Two upgrade cells at once restore the same fill; the one whose vendor port is taken makes its
    # own. Its fill must not replace the kept one (the next run would clash the other way round);
    # a --rerun run (reuse off) makes everything again and keeps what it made.
    vendors = {name: FakeVendor(name).start() for name in ("alpha", "beta")}
    store = RunStore(tmp_path / "fills")
    side = Side("0.16.7", "stock")
    labs = [UpgradeLab(pg, prepare=None, patched=True, keep=[], fills=store, reuse=reuse) for reuse in (True, True, False)]
    try:
        fill = _fill(pg, tmp_path, vendors)
        labs[0]._keep(side, "r" * 64, fill)
        first = store.lookup("r" * 64)
        assert first is not None
        kept = tmp_path / "fills" / "rr" / ("r" * 64) / "run.json"
        before = kept.stat().st_mtime_ns
        labs[1]._keep(side, "r" * 64, fill)
        assert kept.stat().st_mtime_ns == before, "a run that may use the kept fill replaced it"
        labs[2]._keep(side, "r" * 64, fill)
        assert kept.stat().st_mtime_ns != before, "--rerun keeps its own fill"
    finally:
        for lab in labs:
            lab.close()
        for vendor in vendors.values():
            vendor.stop()


def test_a_damaged_kept_fill_raises_and_leaves_nothing_running(pg, tmp_path):
    # The lab then makes the fill afresh (UpgradeLab._restored catches it); here: the error and the clean-up.
    store, vendors = _kept(pg, tmp_path, "d" * 64)
    ports = [_port(v) for v in vendors.values()]
    for vendor in vendors.values():
        vendor.stop()
    stored = store.lookup("d" * 64)
    stored.files["database.dump"].write_bytes(b"not a dump")
    with pytest.raises(RuntimeError, match="pg_restore"):
        restore_fill(stored, "x", pg, "tpl_damaged", tmp_path / "home-damaged")
    for port in ports:  # both vendors were stopped again
        probe = socket.socket()
        probe.bind(("127.0.0.1", port))
        probe.close()
