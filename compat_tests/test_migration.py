"""migration: a database made by the unpatched release, upgraded by Ketta's revisions, and back to stock."""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from .letta_server import run_alembic

pytestmark = pytest.mark.migration

DEFAULT_ORG = "org-00000000-0000-4000-8000-000000000000"
_SAMPLE = {"boolean": False, "integer": 0, "bigint": 0, "double precision": 0.0, "json": "{}", "jsonb": "{}"}


def insert_row(conn, table: str, **values) -> None:
    """Insert with the given values, filling other NOT NULL columns without a default by type."""
    required = conn.run(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = :t"
        " AND is_nullable = 'NO' AND column_default IS NULL",
        t=table,
    )
    row = dict(values)
    for name, dtype in required:
        if name not in row:
            if dtype.startswith("timestamp"):
                row[name] = "2025-01-01T00:00:00+00:00"
            else:
                row[name] = _SAMPLE.get(dtype, f"ketta-{uuid.uuid4().hex[:6]}")
    cols = ", ".join(f'"{c}"' for c in row)
    params = ", ".join(f":{c}" for c in row)
    conn.run(f'INSERT INTO "{table}" ({cols}) VALUES ({params})', **row)


@pytest.fixture(scope="module")
def upstream_alembic(letta_build):
    """alembic/ and alembic.ini of the pristine release (tag upstream/<version> in the build tree)."""
    tmp = Path(tempfile.mkdtemp(prefix="ketta-upstream-alembic-"))
    tag = f"upstream/{letta_build.version}"
    archive = subprocess.run(["git", "-C", str(letta_build.tree), "archive", tag, "alembic", "alembic.ini"],
                             capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    return tmp


def fk(conn, table: str) -> tuple[str, str]:
    [(name, action)] = conn.run(
        "SELECT conname, confdeltype FROM pg_constraint WHERE contype = 'f' AND conrelid = CAST(:t AS regclass)"
        " AND confrelid = CAST('providers' AS regclass)",
        t=table,
    )
    return name, {"r": "RESTRICT", "n": "SET NULL", "a": "NO ACTION", "c": "CASCADE"}[action]


def test_upgrade_from_upstream_schema_and_remove(letta_build, pg, upstream_alembic):
    db = f"letta_mig_{uuid.uuid4().hex[:8]}"
    pg.create_database(db)
    uri = pg.alembic_uri(db)
    run_alembic(letta_build.python, upstream_alembic, uri, "upgrade", "head")
    conn = pg.connect(db)
    try:
        upstream_head = conn.run("SELECT version_num FROM alembic_version")
        stock_fks = {t: fk(conn, t) for t in ("steps", "step_metrics")}
        insert_row(conn, "organizations", id=DEFAULT_ORG, name="default_org", is_deleted=False)
        rows = {
            "provider-base": dict(name="openai", provider_category="base", organization_id=None, is_deleted=False),
            "provider-orphan": dict(name="Orphan", provider_category="byok", organization_id=None, is_deleted=False),
            "provider-gone": dict(name="Gone", provider_category="byok", organization_id=DEFAULT_ORG, is_deleted=True),
            "provider-live": dict(name="Live", provider_category="byok", organization_id=DEFAULT_ORG, is_deleted=False,
                                  api_key="sk-plain-live", api_key_enc="sk-plain-live"),
            "provider-old": dict(name="Old", provider_category="byok", organization_id=DEFAULT_ORG, is_deleted=False,
                                 api_key="sk-plain-old", api_key_enc=None),
        }
        for pid, fields in rows.items():
            insert_row(conn, "providers", id=pid, provider_type="openai", **fields)
        insert_row(conn, "provider_models", id="pm-base", provider_id="provider-base", handle="openai/gpt-4o",
                   name="gpt-4o", display_name="gpt-4o", model_type="llm", enabled=True, is_deleted=False)
        for pid in rows:
            insert_row(conn, "steps", id=f"step-{pid}", provider_id=pid, organization_id=DEFAULT_ORG, is_deleted=False)
        assert stock_fks["steps"][1] == "RESTRICT"
    finally:
        conn.close()

    log = run_alembic(letta_build.python, letta_build.tree, uri, "upgrade", "head")
    assert "ketta0002" in log, log[-3000:]

    conn = pg.connect(db)
    try:
        assert conn.run("SELECT version_num FROM alembic_version") == upstream_head, "alembic_version must stay upstream's"
        assert conn.run("SELECT version_num FROM ketta_alembic_version") == [["ketta0002"]]
        providers = {r[0]: r[1:] for r in conn.run("SELECT id, organization_id, provider_category, api_key, api_key_enc FROM providers")}
        assert set(providers) == {"provider-orphan", "provider-live", "provider-old"}
        assert providers["provider-orphan"][:2] == [DEFAULT_ORG, "byok"]
        # No key left in the plaintext column; one only found there moved to the _enc column
        # (the server encrypts it when it starts).
        assert providers["provider-live"][2:] == [None, "sk-plain-live"]
        assert providers["provider-old"][2:] == [None, "sk-plain-old"]
        assert conn.run("SELECT count(*) FROM provider_models WHERE provider_id = 'provider-base'") == [[0]]
        steps = dict(conn.run("SELECT id, provider_id FROM steps"))
        assert steps == {"step-provider-base": None, "step-provider-orphan": "provider-orphan",
                         "step-provider-gone": None, "step-provider-live": "provider-live",
                         "step-provider-old": "provider-old"}, steps
        for table, (name, _) in stock_fks.items():
            assert fk(conn, table) == (name, "SET NULL"), f"{table}: upstream's constraint name must be kept"
        # The freed names can be used again.
        insert_row(conn, "providers", id="provider-gone-2", name="Gone", provider_type="openai",
                   provider_category="byok", organization_id=DEFAULT_ORG, is_deleted=False)
    finally:
        conn.close()

    # Running it again changes nothing.
    again = run_alembic(letta_build.python, letta_build.tree, uri, "upgrade", "head")
    assert "Running upgrade" not in again, again[-2000:]

    # Back to stock: Ketta's revisions out, upstream's untouched.
    proc = subprocess.run([str(letta_build.python), "-m", "letta.ketta_migrations", "remove"], capture_output=True, text=True,
                          env={**os.environ, "LETTA_PG_URI": pg.server_uri(db)}, cwd=upstream_alembic, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "ketta0002, ketta0001" in proc.stdout, proc.stdout
    conn = pg.connect(db)
    try:
        assert fk(conn, "steps") == stock_fks["steps"]
        assert fk(conn, "step_metrics") == stock_fks["step_metrics"]
        assert conn.run("SELECT version_num FROM alembic_version") == upstream_head
        assert conn.run("SELECT count(*) FROM pg_tables WHERE tablename = 'ketta_alembic_version'") == [[0]]
    finally:
        conn.close()
