"""upgrade: a database made and filled by one release, upgraded by another, compared with a fresh one.

Per pair (see ``upgrade.pairs_for``): the schema equals a fresh migration of the end release; the
data survives as Ketta's rules say; the end release's server starts on it, lists the old providers,
and the agent created before the upgrade answers through its provider with its key.
"""

from __future__ import annotations

import pytest

from ketta_build import suiteenv

from . import api
from .schema import differences
from .upgrade import selected_pairs

pytestmark = pytest.mark.upgrade


def pytest_generate_tests(metafunc):
    if "pair" in metafunc.fixturenames:
        # KETTA_UPGRADE_PAIRS=ci (ketta-build matrix --upgrade-pairs ci): the default test run's pairs only.
        pairs = selected_pairs(metafunc.config.getoption("--letta"), suiteenv.get("KETTA_UPGRADE_PAIRS"))
        # Module scope groups the tests by pair: each pair's server lives only through its group.
        metafunc.parametrize("pair", pairs, ids=[p.id for p in pairs], scope="module")


def _name_the_start(upgraded, record_property) -> None:
    """Say in the report where the start database came from: made in this run, or a kept fill restored."""
    record_property("start_database", f"kept fill of {upgraded.fill.kept_from} restored" if upgraded.fill.kept_from
                    else "filled in this run")


def test_schema_equals_a_fresh_migration(lab, pair, record_property):
    upgraded = lab.upgraded(pair)
    _name_the_start(upgraded, record_property)
    found = differences(lab.fresh_schema(pair.end), upgraded.snapshot.schema)
    assert not found, (
        f"{pair.start} -> {pair.end}: the upgraded schema differs from a fresh {pair.end} migration "
        f"(- fresh only, + upgraded only):\n" + "\n".join(found[:80])
    )


def test_data_survives(lab, pair, record_property):
    upgraded = lab.upgraded(pair)
    _name_the_start(upgraded, record_property)
    fill, snap = upgraded.fill, upgraded.snapshot
    providers = snap.providers

    for name, facts in fill.live.items():
        assert facts["id"] in providers, f"provider {name} ({facts['id']}) was lost by the upgrade"
        assert providers[facts["id"]][0] == name
    conn = lab.pg.connect(fill.template)
    try:
        agents, messages = (conn.run(f"SELECT count(*) FROM {t}")[0][0] for t in ("agents", "messages"))
    finally:
        conn.close()
    assert snap.agents == agents, f"{agents} agents before the upgrade, {snap.agents} after"
    assert snap.messages == messages, f"{messages} messages before the upgrade, {snap.messages} after"
    assert set(snap.steps) == set(fill.steps), "steps were lost or made up by the upgrade"
    assert len(snap.revision) == 1, f"alembic_version holds {snap.revision}: agent files record its first row"

    if pair.end.flavour == "ketta":
        # Ketta's rules: no base or deleted provider left, their steps kept without the reference,
        # every provider in an organisation, no key in the plaintext columns.
        assert not set(fill.base) & set(providers), f"base providers survived: {set(fill.base) & set(providers)}"
        assert fill.deleted not in providers, "the provider deleted through the API is still a row"
        assert {p[1] for p in providers.values()} <= {"byok"}, providers
        assert all(p[2] for p in providers.values()), "a provider without an organisation survived"
        assert not [p for p in providers.values() if p[3]], "a soft-deleted provider survived"
        assert not [p for p in providers.values() if p[4]], "a key is left in the plaintext api_key column"
        for step, provider in fill.steps.items():
            expected = provider if provider in providers else None
            assert snap.steps[step] == expected, f"step {step}: provider {snap.steps[step]!r}, expected {expected!r}"
        assert snap.ketta == ["ketta0002"], f"Ketta's version table holds {snap.ketta}"
        assert snap.revision[0] not in ("ketta0001", "ketta0002"), "a Ketta revision stands in alembic_version"
        if pair.start.flavour == "stale":
            assert "Ketta: alembic_version said ketta0001" in upgraded.log, upgraded.log[-3000:]
    else:
        assert snap.ketta is None, "Ketta's version table survived the removal"
        assert fill.upstream_revision == snap.revision, f"upstream's revision moved: {fill.upstream_revision} -> {snap.revision}"


def test_server_runs_on_the_upgraded_database(lab, pair, record_property):
    upgraded = lab.upgraded(pair)
    _name_the_start(upgraded, record_property)
    fill, server = upgraded.fill, upgraded.server
    try:
        names = {p["name"] for p in api.list_providers(server)}
        assert set(fill.live) <= names, f"providers listed after the upgrade: {sorted(names)}"
        if pair.end.flavour == "ketta":
            assert names == set(fill.live), f"providers besides the ones created before the upgrade: {sorted(names - set(fill.live))}"

        facts = fill.live[fill.agent_provider]
        vendor = fill.vendors[facts["vendor"]]
        arrived = api.talk(server, fill.agent_id, vendor, "hello after the upgrade")
        assert {r.bearer for r in arrived} == {facts["key"]}, f"keys that reached the vendor: {[r.bearer for r in arrived]}"
        assert {r.model for r in arrived} == {fill.agent_model}

        conn = lab.pg.connect(upgraded.database)
        try:
            head = [r[0] for r in conn.run("SELECT version_num FROM alembic_version")]
            stored = dict(conn.run("SELECT id, api_key_enc FROM providers WHERE id = ANY(:ids)",
                                   ids=[f["id"] for f in fill.live.values()]))
        finally:
            conn.close()
        exported = api.ok(server.get(f"/v1/agents/{fill.agent_id}/export"))
        assert exported["metadata"]["revision_id"] == head[0], f"agent file records {exported['metadata']}, database at {head}"

        if pair.end.flavour == "ketta":
            key = server.key_file.read_text().strip() if server.key_file.exists() else None
            assert key, "a Ketta server ran without an encryption key"
            checked = lab.crypto(server.python, key, [stored[f["id"]] for f in fill.live.values()])
            for (name, facts), result in zip(fill.live.items(), checked):
                assert result["encrypted"], f"{name}'s key is stored in plaintext after the upgrade"
                assert result["plain"] == facts["key"], f"{name}'s stored key does not decrypt to the key it was created with"
    finally:
        lab.stop_server(server)
