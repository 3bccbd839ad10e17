"""migration: a database made by the unpatched release, upgraded by Ketta's migration, and back."""

from __future__ import annotations

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


def fk_action(conn, table: str) -> str:
    [(action,)] = conn.run(
        "SELECT confdeltype FROM pg_constraint WHERE contype = 'f' AND conrelid = CAST(:t AS regclass)"
        " AND confrelid = CAST('providers' AS regclass)",
        t=table,
    )
    return {"r": "RESTRICT", "n": "SET NULL", "a": "NO ACTION", "c": "CASCADE"}[action]


@pytest.fixture(scope="module")
def upstream_alembic(letta_build):
    """alembic/ and alembic.ini of the pristine release (tag upstream/<version> in the build tree)."""
    tmp = Path(tempfile.mkdtemp(prefix="ketta-upstream-alembic-"))
    tag = f"upstream/{letta_build.version}"
    archive = subprocess.run(["git", "-C", str(letta_build.tree), "archive", tag, "alembic", "alembic.ini"],
                             capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    return tmp


def test_upgrade_from_upstream_schema_and_downgrade(letta_build, pg, upstream_alembic):
    db = f"letta_mig_{uuid.uuid4().hex[:8]}"
    pg.create_database(db)
    uri = pg.alembic_uri(db)
    run_alembic(letta_build.python, upstream_alembic, uri, "upgrade", "head")
    conn = pg.connect(db)
    try:
        insert_row(conn, "organizations", id=DEFAULT_ORG, name="default_org", is_deleted=False)
        rows = {
            "provider-base": dict(name="openai", provider_category="base", organization_id=None, is_deleted=False),
            "provider-orphan": dict(name="Orphan", provider_category="byok", organization_id=None, is_deleted=False),
            "provider-gone": dict(name="Gone", provider_category="byok", organization_id=DEFAULT_ORG, is_deleted=True),
            "provider-live": dict(name="Live", provider_category="byok", organization_id=DEFAULT_ORG, is_deleted=False),
        }
        for pid, fields in rows.items():
            insert_row(conn, "providers", id=pid, provider_type="openai", **fields)
        insert_row(conn, "provider_models", id="pm-base", provider_id="provider-base", handle="openai/gpt-4o",
                   name="gpt-4o", display_name="gpt-4o", model_type="llm", enabled=True, is_deleted=False)
        for pid in rows:
            insert_row(conn, "steps", id=f"step-{pid}", provider_id=pid, organization_id=DEFAULT_ORG, is_deleted=False)
        assert fk_action(conn, "steps") == "RESTRICT"
    finally:
        conn.close()

    run_alembic(letta_build.python, letta_build.tree, uri, "upgrade", "head")
    current = run_alembic(letta_build.python, letta_build.tree, uri, "current")
    assert "ketta0001" in current, f"Ketta's migration is not the head after upgrade: {current}"

    conn = pg.connect(db)
    try:
        providers = {r[0]: r[1:] for r in conn.run("SELECT id, organization_id, provider_category FROM providers")}
        assert set(providers) == {"provider-orphan", "provider-live"}
        assert providers["provider-orphan"] == [DEFAULT_ORG, "byok"]
        assert conn.run("SELECT count(*) FROM provider_models WHERE provider_id = 'provider-base'") == [[0]]
        steps = dict(conn.run("SELECT id, provider_id FROM steps"))
        assert steps == {"step-provider-base": None, "step-provider-orphan": "provider-orphan",
                         "step-provider-gone": None, "step-provider-live": "provider-live"}, steps
        assert fk_action(conn, "steps") == "SET NULL"
        assert fk_action(conn, "step_metrics") == "SET NULL"
        # The freed names can be used again.
        insert_row(conn, "providers", id="provider-gone-2", name="Gone", provider_type="openai",
                   provider_category="byok", organization_id=DEFAULT_ORG, is_deleted=False)
    finally:
        conn.close()

    run_alembic(letta_build.python, letta_build.tree, uri, "downgrade", "-1")
    conn = pg.connect(db)
    try:
        assert fk_action(conn, "steps") == "RESTRICT"
        assert fk_action(conn, "step_metrics") == "RESTRICT"
    finally:
        conn.close()
    assert "ketta0001" not in run_alembic(letta_build.python, letta_build.tree, uri, "current")
