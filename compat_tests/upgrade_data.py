"""What the upgrade suite writes into a start database and reads back from it and from the upgraded one.

:func:`write_fill` is the conversation a start side's server has before the upgrade (providers kept and
deleted, an agent that talks); :func:`read_fill` and :func:`snapshot` read a database with plain SQL,
so the facts are the database's, not a server's view of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import api
from .letta_server import LettaServer
from .pgcluster import PgTarget

KETTA_VERSION_TABLE = "ketta_alembic_version"


@dataclass
class Written:
    """What :func:`write_fill` did through the API."""

    live: dict[str, dict]  # provider name -> {"id", "key", "vendor"}
    deleted: str  # id of the provider deleted through the API
    agent_id: str
    agent_provider: str  # name of the provider the agent talks through
    agent_model: str


@dataclass
class Fill:
    """What a start side's server wrote, as read back before the upgrade."""

    side: object  # upgrade.Side
    template: str
    home: Path
    vendors: dict  # the fill's own vendors (name -> FakeVendor), which its providers point at
    key: str | None  # the encryption key the server used (None: it stored keys in plaintext)
    live: dict[str, dict]  # provider name -> {"id", "key", "vendor"}
    deleted: str  # id of the provider deleted through the API
    agent_id: str
    agent_provider: str  # name of the provider the agent talks through
    agent_model: str
    base: list[str]  # ids of base providers in the database
    messages: int  # messages of the agent
    steps: dict[str, str | None]  # step id -> provider id
    upstream_revision: list[str]
    kept_from: str | None = None  # a stored fill (ketta_build.runstore) this one was restored from: its date and key

    @property
    def written(self) -> Written:
        return Written(self.live, self.deleted, self.agent_id, self.agent_provider, self.agent_model)


@dataclass
class Snapshot:
    """The upgraded database as the upgrade left it, before any server touched it."""

    schema: str
    providers: dict[str, list]  # id -> [name, category, organization_id, is_deleted, api_key]
    steps: dict[str, str | None]
    messages: int
    agents: int
    revision: list[str]
    ketta: list[str] | None  # Ketta's version table, None when absent


def write_fill(server: LettaServer, vendors: dict, by_handle: bool, stock: bool = False) -> Written:
    """Providers (two kept, one used and then deleted), an agent with a conversation.

    Agents are made as each side's users make them: by handle on Ketta, by a model configuration
    naming the provider on stock Letta (whose handles cannot tell two OpenAI-compatible providers apart).

    ``stock``: the server is unpatched Letta, which is not under test here but makes the start
    database. From 0.16.2 on, stock Letta's key check leaves an HTTP client for the garbage collector
    (what patch 0012 fixes), whose late close can cost a request a 60-second database timeout and
    an HTTP 500. A stock fill sends such a message once more (and says so); a Ketta fill never does.
    """
    def agent(provider: dict, vendor: str, model: str) -> dict:
        if by_handle:
            return api.create_agent_ok(server, f"{provider['name']}/{model}")
        return api.create_agent_on_provider(server, provider["name"], vendors[vendor].base_url, model)

    def send(agent_id: str, text: str) -> None:
        resp = api.send_message(server, agent_id, text)
        if resp.status == 500 and stock:
            print(f"stock fill on {server.database}: HTTP 500 on a message (upstream's unclosed client, "
                  f"see patch 0012); sent again: {resp.text[:200]}")
            resp = api.send_message(server, agent_id, text)
        api.ok(resp)

    live = {}
    for vendor in ("alpha", "beta"):
        name, key = api.unique(f"Kept{vendor.title()}"), "sk-" + api.unique(f"{vendor}-")
        created = api.create_provider(server, name, vendors[vendor].base_url, key)
        live[name] = {"id": created["id"], "key": key, "vendor": vendor}
    gone = api.create_provider(server, api.unique("Gone"), vendors["alpha"].base_url, "sk-" + api.unique("gone-"))
    gone_agent = agent(gone, "alpha", "gpt-4o")
    send(gone_agent["id"], "a step that references a provider about to go")
    assert api.delete_provider(server, gone["id"]).status in (200, 204)
    name = next(iter(live))
    kept = agent({"name": name}, live[name]["vendor"], "gpt-4o-mini")
    send(kept["id"], "hello before the upgrade")
    return Written(live, gone["id"], kept["id"], name, "gpt-4o-mini")


def read_fill(pg: PgTarget, side, db: str, home: Path, vendors: dict, key: str | None, written: Written) -> Fill:
    conn = pg.connect(db)
    try:
        base = [r[0] for r in conn.run("SELECT id FROM providers WHERE provider_category = 'base'")]
        messages = conn.run("SELECT count(*) FROM messages WHERE agent_id = :a", a=written.agent_id)[0][0]
        steps = dict(conn.run("SELECT id, provider_id FROM steps"))
        revision = [r[0] for r in conn.run("SELECT version_num FROM alembic_version")]
    finally:
        conn.close()
    return Fill(side, db, home, vendors, key, written.live, written.deleted, written.agent_id, written.agent_provider,
                written.agent_model, base, messages, steps, revision)


def snapshot(pg: PgTarget, db: str) -> Snapshot:
    schema = pg.dump(db, "--schema-only")
    conn = pg.connect(db)
    try:
        providers = {r[0]: r[1:] for r in conn.run(
            "SELECT id, name, provider_category, organization_id, is_deleted, api_key FROM providers")}
        steps = dict(conn.run("SELECT id, provider_id FROM steps"))
        tables = {r[0] for r in conn.run("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
        ketta = ([r[0] for r in conn.run(f"SELECT version_num FROM {KETTA_VERSION_TABLE}")]
                 if KETTA_VERSION_TABLE in tables else None)
        revision = [r[0] for r in conn.run("SELECT version_num FROM alembic_version")]
        counts = {table: conn.run(f"SELECT count(*) FROM {table}")[0][0] for table in ("messages", "agents")}
    finally:
        conn.close()
    return Snapshot(schema, providers, steps, counts["messages"], counts["agents"], revision, ketta)
