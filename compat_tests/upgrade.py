"""The upgrade suite's machinery: databases made and filled by one release, upgraded by another.

A *side* is a release plus how its database was made: ``ketta`` (the patched release),
``stock`` (the unpatched release) or ``stale`` (a stock release's database migrated by the
migration Ketta builds 1-3 shipped, which stamped ``ketta0001`` over upstream's revision). A
*pair* is a start side and an end side. :class:`UpgradeLab` migrates and fills each start side
once per run into a template database (PostgreSQL ``CREATE DATABASE ... TEMPLATE``) and clones it
for every pair that starts there; fresh migrations of each end side are dumped once for the
schema comparison.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ketta_build.releases import load_releases

from . import api
from .letta_server import LettaServer, run_alembic
from .pgcluster import PgTarget
from .vendor import FakeVendor

RELEASES = tuple(str(v) for v in load_releases(Path(__file__).resolve().parent.parent / "patches").versions)
OLD_MIGRATION = Path(__file__).with_name("fixtures") / "ketta0001_build3.py"
KETTA_VERSION_TABLE = "ketta_alembic_version"


@dataclass(frozen=True)
class Side:
    version: str
    flavour: str  # ketta | stock | stale

    def __str__(self) -> str:
        return {"ketta": "Ketta", "stock": "stock", "stale": "Ketta build 3"}[self.flavour] + f" {self.version}"

    @property
    def tag(self) -> str:
        return f"{self.flavour}{self.version}"


@dataclass(frozen=True)
class Pair:
    start: Side
    end: Side
    why: str
    ci: bool = False  # in the default test run (KETTA_UPGRADE_PAIRS=ci); every pair runs in the full matrix

    @property
    def id(self) -> str:
        return f"{self.start.tag}-to-{self.end.tag}"


def _previous(version: str) -> str | None:
    index = RELEASES.index(version)
    return RELEASES[index - 1] if index else None


# Pairs a cell runs besides the standard four (see pairs_for).
EXTRA_PAIRS = {
    "0.16.7": (
        Pair(Side("0.16.5", "stale"), Side("0.16.7", "ketta"),
             "the reported failure: build 3 on 0.16.5 hid 0.16.7's four revisions"),
    ),
    "0.16.8": (
        Pair(Side("0.16.5", "ketta"), Side("0.16.8", "ketta"), "crosses 0.16.7's four upstream revisions", ci=True),
        Pair(Side("0.16.2", "ketta"), Side("0.16.8", "ketta"), "long jump"),
        Pair(Side("0.14.0", "ketta"), Side("0.16.8", "ketta"), "long jump over every release"),
        Pair(Side("0.16.8", "stock"), Side("0.16.8", "ketta"), "a stock deployment moves to Ketta of the same release",
             ci=True),
        Pair(Side("0.16.5", "stale"), Side("0.16.8", "ketta"), "build 3's stamp that hid 0.16.7's revisions", ci=True),
    ),
}


def selected_pairs(version: str, which: str = "all") -> list[Pair]:
    """``all`` pairs of a release's cell, or the ``ci`` ones (the default test run's)."""
    if which not in ("all", "ci"):
        raise ValueError(f"KETTA_UPGRADE_PAIRS must be 'all' or 'ci', not {which!r}")
    pairs = pairs_for(version)
    return pairs if which == "all" else [p for p in pairs if p.ci]


def pairs_for(version: str) -> list[Pair]:
    """The pairs whose end is ``version``: from the previous release, Ketta to Ketta, stock to Ketta and
    the stale stamp of builds 1-3 repaired; Ketta back to stock on the same release; the cell's extras."""
    start = _previous(version) or version
    return [
        *([Pair(Side(start, "ketta"), Side(version, "ketta"), "consecutive releases")] if start != version else []),
        Pair(Side(start, "stock"), Side(version, "ketta"), "a stock Letta deployment moves to Ketta (and upgrades)"),
        Pair(Side(start, "stale"), Side(version, "ketta"), "the stamp of builds 1-3 repaired, hidden revisions run"),
        Pair(Side(version, "ketta"), Side(version, "stock"), "back to stock Letta (Ketta's revisions removed)", ci=True),
        *EXTRA_PAIRS.get(version, ()),
    ]


@dataclass
class Fill:
    """What a start side's server wrote, as read back before the upgrade."""

    side: Side
    template: str
    home: Path
    vendors: dict  # the fill's own vendors (name -> FakeVendor), which its providers point at
    key: str | None  # the encryption key the server used (None: it stored keys in plaintext)
    live: dict[str, dict]  # provider name -> {"id", "key", "vendor"}
    deleted: str  # id of the provider deleted through the API
    base: list[str]  # ids of base providers in the database
    agent_id: str
    agent_provider: str  # name of the provider the agent talks through
    agent_model: str
    messages: int  # messages of the agent
    steps: dict[str, str | None]  # step id -> provider id
    upstream_revision: list[str]


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


@dataclass
class Upgraded:
    pair: Pair
    database: str
    log: str
    fill: Fill
    snapshot: Snapshot
    server: LettaServer | None = None
    server_env: dict = field(default_factory=dict)


class UpgradeLab:
    """Builds, templates and upgraded databases for one run, made ahead on ``workers`` threads.

    Every phase is CPU-bound in a child process (alembic, a server starting), so two workers
    keep a 2-core machine busy while the tests read what is ready. Each start side gets its own
    vendors, so the conversations that fill it never reach a vendor a test is listening to.
    """

    def __init__(self, pg: PgTarget, prepare, patched: bool, keep: list, workers: int = 2) -> None:
        self.pg = pg
        self.prepare = prepare  # (version, patched) -> ServerBuild
        self.patched = patched  # False (--no-patches): the "ketta" sides are the stock releases
        self.keep = keep  # the session's list of things to stop at exit
        self.work = Path(tempfile.mkdtemp(prefix="ketta-upgrade-"))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upgrade-lab")
        self._lock = threading.Lock()
        self._memo: dict = {}
        self._order: list[Pair] = []
        self._ahead = 0
        self._databases: list[str] = []
        self._vendors: list[FakeVendor] = []
        self.timings: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def timed(self, what: str):
        start = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self.timings.append((what, time.monotonic() - start))

    def timing_table(self) -> str:
        return "\n".join(f"{seconds:7.1f} s  {what}" for what, seconds in self.timings)

    def _once(self, key, make):
        """``make()`` once per key, whichever thread asks first; a failure is kept and raised to all."""
        with self._lock:
            slot = self._memo.setdefault(key, [threading.Lock(), None, None])
        with slot[0]:
            if slot[1] is None and slot[2] is None:
                try:
                    slot[1] = make()
                except BaseException as exc:  # noqa: BLE001 - kept and raised to every caller
                    slot[2] = exc
        if slot[2] is not None:
            raise slot[2]
        return slot[1]

    # ---------------------------------------------------------------- builds and trees

    def build(self, version: str, ketta: bool):
        patched = ketta and self.patched

        def make():
            with self.timed(f"build {'Ketta' if patched else 'stock'} {version}"):
                return self.prepare(version, patched)

        return self._once(("build", version, patched), make)

    def alembic_dir(self, side: Side) -> Path:
        """Where ``alembic upgrade head`` runs for a side (stale: stock plus the build-3 migration)."""
        if side.flavour == "ketta":
            return self.build(side.version, True).tree
        stock = self.build(side.version, False).tree
        if side.flavour == "stock":
            return stock

        def make():
            target = self.work / f"alembic-stale-{side.version}"
            shutil.copytree(stock / "alembic", target / "alembic")
            shutil.copy2(stock / "alembic.ini", target / "alembic.ini")
            shutil.copy2(OLD_MIGRATION, target / "alembic" / "versions" / "ketta0001_unified_providers.py")
            return target

        return self._once(("stale-alembic", side.version), make)

    def _python(self, side: Side) -> Path:
        return self.build(side.version, side.flavour == "ketta").python

    def _new_database(self, prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with self._lock:
            self._databases.append(name)
        return name

    def migrate(self, side: Side, db: str, what: str) -> str:
        with self.timed(f"{what} {side}"):
            return run_alembic(self._python(side), self.alembic_dir(side), self.pg.alembic_uri(db), "upgrade", "head")

    # ---------------------------------------------------------------- fresh schemas

    def fresh_schema(self, side: Side) -> str:
        """``pg_dump --schema-only`` of an empty database migrated by ``side``'s release."""
        def make():
            db = self._new_database("fresh")
            self.pg.create_database(db)
            self.migrate(side, db, "fresh migration")
            dump = self.pg.dump(db, "--schema-only")
            self.pg.drop_database(db)
            return dump

        return self._once(("schema", side), make)

    # ---------------------------------------------------------------- servers

    def start_server(self, side: Side, database: str, home: Path | None = None, **env: str) -> LettaServer:
        build = self.build(side.version, side.flavour == "ketta")
        server = LettaServer(letta=build.letta, python=build.python, tree=build.tree, pg=self.pg, database=database,
                             extra_env=env, home=home, prepare_database=False)
        with self._lock:
            self.keep.append(server)
        with self.timed(f"server start {side} on {database}"):
            return server.start()

    def stop_server(self, server: LettaServer) -> None:
        server.stop()
        with self._lock:
            if server in self.keep:
                self.keep.remove(server)

    # ---------------------------------------------------------------- filled templates

    def filled(self, side: Side) -> Fill:
        """A template database migrated by ``side`` and filled through its own server."""
        return self._once(("fill", side), lambda: self._fill(side))

    def _fill(self, side: Side) -> Fill:
        if side.flavour == "stale":
            # What builds 1-3 left: a stock deployment that ran their migration (the data is the
            # stock side's; only the migration and the stamp are build 3's).
            stock = self.filled(Side(side.version, "stock"))
            db = self._new_database("tpl_stale")
            self.pg.clone_database(stock.template, db)
            self.migrate(side, db, "build 3's migration on")
            home = self.work / f"home-{side.tag}"
            shutil.copytree(stock.home, home)
            return self._read_back(side, db, home, stock.vendors, stock.key, stock.live, stock.deleted, stock.agent_id,
                                   stock.agent_provider, stock.agent_model)
        db = self._new_database(f"tpl_{side.flavour}")
        self.pg.create_database(db)
        self.migrate(side, db, "migration")
        home = self.work / f"home-{side.tag}"
        home.mkdir()
        vendors = {name: FakeVendor(f"{name}-{side.tag}").start() for name in ("alpha", "beta")}
        with self._lock:
            self.keep.extend(vendors.values())
            self._vendors.extend(vendors.values())
        server = self.start_server(side, db, home=home)
        try:
            with self.timed(f"fill {side}"):
                live, deleted, agent_id, provider, model = self._write(server, vendors, by_handle=side.flavour == "ketta")
        finally:
            self.stop_server(server)
        key = server.key_file.read_text().strip() if server.key_file.exists() else None
        return self._read_back(side, db, home, vendors, key, live, deleted, agent_id, provider, model)

    def _read_back(self, side, db, home, vendors, key, live, deleted, agent_id, provider, model) -> Fill:
        conn = self.pg.connect(db)
        try:
            base = [r[0] for r in conn.run("SELECT id FROM providers WHERE provider_category = 'base'")]
            messages = conn.run("SELECT count(*) FROM messages WHERE agent_id = :a", a=agent_id)[0][0]
            steps = dict(conn.run("SELECT id, provider_id FROM steps"))
            revision = [r[0] for r in conn.run("SELECT version_num FROM alembic_version")]
        finally:
            conn.close()
        return Fill(side, db, home, vendors, key, live, deleted, base, agent_id, provider, model, messages, steps, revision)

    @staticmethod
    def _write(server: LettaServer, vendors: dict, by_handle: bool) -> tuple[dict, str, str, str, str]:
        """Providers (two kept, one used and then deleted), an agent with a conversation.

        Agents are made as each side's users make them: by handle on Ketta, by a model
        configuration naming the provider on stock Letta (whose handles cannot tell two
        OpenAI-compatible providers apart).
        """
        def agent(provider: dict, vendor: str, model: str) -> dict:
            if by_handle:
                return api.create_agent_ok(server, f"{provider['name']}/{model}")
            return api.create_agent_on_provider(server, provider["name"], vendors[vendor].base_url, model)

        live = {}
        for vendor in ("alpha", "beta"):
            name, key = api.unique(f"Kept{vendor.title()}"), "sk-" + api.unique(f"{vendor}-")
            created = api.create_provider(server, name, vendors[vendor].base_url, key)
            live[name] = {"id": created["id"], "key": key, "vendor": vendor}
        gone = api.create_provider(server, api.unique("Gone"), vendors["alpha"].base_url, "sk-" + api.unique("gone-"))
        gone_agent = agent(gone, "alpha", "gpt-4o")
        api.ok(api.send_message(server, gone_agent["id"], "a step that references a provider about to go"))
        assert api.delete_provider(server, gone["id"]).status in (200, 204)
        name = next(iter(live))
        kept = agent({"name": name}, live[name]["vendor"], "gpt-4o-mini")
        api.ok(api.send_message(server, kept["id"], "hello before the upgrade"))
        return live, gone["id"], kept["id"], name, "gpt-4o-mini"

    # ---------------------------------------------------------------- pairs

    def plan(self, pairs: list[Pair], ahead: int = 2) -> None:
        """The order the tests will ask for pairs in; each request also starts the next ``ahead``.

        The window keeps the machine busy without a crowd of idle servers waiting for their test.
        """
        self._order = list(pairs)
        self._ahead = ahead
        if self._order:
            self._submit(self._order[0])

    def _submit(self, pair: Pair):
        return self._once(("future", pair), lambda: self.pool.submit(self._upgraded, pair))

    def upgraded(self, pair: Pair) -> Upgraded:
        """A clone of the start side's template brought to the end side by the documented command,
        with a snapshot taken before its server (started as well) touched it."""
        future = self._submit(pair)
        if pair in self._order:
            at = self._order.index(pair)
            for later in self._order[at + 1: at + 1 + self._ahead]:
                self._submit(later)
        return future.result()

    def _upgraded(self, pair: Pair) -> Upgraded:
        fill = self.filled(pair.start)
        db = self._new_database("up")
        self.pg.clone_database(fill.template, db)
        if pair.end.flavour == "ketta":
            log = self.migrate(pair.end, db, f"upgrade {pair.id} to")
        else:
            with self.timed(f"remove Ketta's revisions {pair.id}"):
                log = self.remove_ketta(self.build(pair.start.version, True).python, db)
        upgraded = Upgraded(pair, db, log, fill, self._snapshot(db))
        if pair.end.flavour == "stock" and fill.key:
            upgraded.server_env["LETTA_ENCRYPTION_KEY"] = fill.key  # stock Letta reads the key from the environment
        home = self.work / f"home-{db}"
        shutil.copytree(fill.home, home)  # the same host: the start server's home, its generated key included
        upgraded.server = self.start_server(pair.end, db, home=home, **upgraded.server_env)
        return upgraded

    def _snapshot(self, db: str) -> Snapshot:
        schema = self.pg.dump(db, "--schema-only")
        conn = self.pg.connect(db)
        try:
            providers = {r[0]: r[1:] for r in conn.run(
                "SELECT id, name, provider_category, organization_id, is_deleted, api_key FROM providers")}
            steps = dict(conn.run("SELECT id, provider_id FROM steps"))
            tables = {r[0] for r in conn.run("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
            ketta = ([r[0] for r in conn.run(f"SELECT version_num FROM {KETTA_VERSION_TABLE}")]
                     if KETTA_VERSION_TABLE in tables else None)
            revision = [r[0] for r in conn.run("SELECT version_num FROM alembic_version")]
            counts = {}
            for table in ("messages", "agents"):
                counts[table] = conn.run(f"SELECT count(*) FROM {table}")[0][0]
        finally:
            conn.close()
        return Snapshot(schema, providers, steps, counts["messages"], counts["agents"], revision, ketta)

    def remove_ketta(self, python: Path, db: str) -> str:
        proc = subprocess.run(
            [str(python), "-m", "letta.ketta_migrations", "remove"], capture_output=True, text=True, timeout=600,
            env={**_clean_env(), "LETTA_PG_URI": self.pg.server_uri(db)}, cwd=self.work,
        )
        if proc.returncode != 0:
            raise AssertionError(f"python -m letta.ketta_migrations remove failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
        return proc.stdout + proc.stderr

    def crypto(self, python: Path, key: str | None, values: list[str]) -> list[dict]:
        """For each stored value: does it look encrypted (upstream's test), and what it decrypts to."""
        script = (
            "import json, sys\n"
            "from letta.helpers.crypto_utils import CryptoUtils\n"
            "data = json.load(sys.stdin)\n"
            "out = []\n"
            "for v in data['values']:\n"
            "    try:\n"
            "        plain = CryptoUtils.decrypt(v, data['key']) if data['key'] else None\n"
            "    except ValueError:\n"
            "        plain = None\n"
            "    out.append({'encrypted': CryptoUtils.is_encrypted(v), 'plain': plain})\n"
            "print(json.dumps(out))\n"
        )
        proc = subprocess.run([str(python), "-c", script], input=json.dumps({"key": key, "values": values}),
                              capture_output=True, text=True, env=_clean_env(), cwd=self.work, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"decrypting with {python} failed: {proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for key, slot in list(self._memo.items()):
            if key[0] == "future" and slot[1] is not None and slot[1].done() and not slot[1].exception():
                server = slot[1].result().server
                if server is not None:
                    self.stop_server(server)
        for vendor in self._vendors:
            vendor.stop()
            with self._lock:
                if vendor in self.keep:
                    self.keep.remove(vendor)
        for name in self._databases:
            try:
                self.pg.drop_database(name)
            except Exception:
                pass
        shutil.rmtree(self.work, ignore_errors=True)


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("LETTA_", "KETTA_"))}
