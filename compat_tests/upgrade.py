"""The upgrade suite's machinery: databases made and filled by one release, upgraded by another.

A *side* is a release plus how its database was made: ``ketta`` (the patched release),
``stock`` (the unpatched release) or ``stale`` (a stock release's database migrated by the
migration Ketta builds 1-3 shipped, which stamped ``ketta0001`` over upstream's revision). A
*pair* is a start side and an end side (:mod:`ketta_build.letta.upgradepairs`; the extra pairs per
release are data, in ``upgrade-pairs.toml``). :class:`UpgradeLab` migrates and fills each start side
once per run into a template database (PostgreSQL ``CREATE DATABASE ... TEMPLATE``) and clones it
for every pair that starts there; each side is migrated from empty once, and that one migration
is both the fresh schema the upgraded databases are compared with and what the side's fill starts from. What a fill writes and what is read back live in ``upgrade_data``; jobs run
with a release's own Python in ``release_python``; once-per-key work and timings in ``once``.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ketta_build.releases import load_releases
from ketta_build.runstore import RunStore
from ketta_build.letta.upgradepairs import Pair, Side, UpgradePairs

from . import release_python
from .fill_store import fill_key, keep_fill, restore_fill
from .letta_server import LettaServer, fork_starts, run_alembic, start_helper
from .once import Once, Stopwatch
from .pgcluster import PgTarget
from .upgrade_data import Fill, Snapshot, read_fill, snapshot, write_fill
from .vendor import FakeVendor

RELEASES = tuple(str(v) for v in load_releases(Path(__file__).resolve().parent.parent / "patches").versions)
OLD_MIGRATION = Path(__file__).with_name("fixtures") / "ketta0001_build3.py"
# The pairs each release's cell runs: the standard ones and those listed in upgrade-pairs.toml.
PAIRS = UpgradePairs.load(RELEASES, Path(__file__).with_name("upgrade-pairs.toml"))


def selected_pairs(version: str, which: str = "all") -> list[Pair]:
    """``all`` pairs of a release's cell, or the ``ci`` ones (the default test run's)."""
    return PAIRS.selected(version, which)


def pairs_for(version: str) -> list[Pair]:
    return PAIRS.pairs_for(version)


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

    def __init__(self, pg: PgTarget, prepare, patched: bool, keep: list, workers: int = 2,
                 fills: RunStore | None = None, reuse: bool = True) -> None:
        self.pg = pg
        self.prepare = prepare  # (version, patched) -> ServerBuild
        self.patched = patched  # False (--no-patches): the "ketta" sides are the stock releases
        self.keep = keep  # the session's list of things to stop at exit
        self.fills = fills  # fills kept by their inputs (fill_store); None: every fill is made here
        self.reuse = reuse  # False (matrix --rerun): kept fills are made again (and kept anew)
        self.work = Path(tempfile.mkdtemp(prefix="ketta-upgrade-"))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upgrade-lab")
        self._lock = threading.Lock()
        self._once = Once()
        self._clock = Stopwatch()
        self.timed = self._clock.timed
        self._order: list[Pair] = []
        self._ahead = 0
        self._databases: list[str] = []
        self._vendors: list[FakeVendor] = []

    def timing_table(self) -> str:
        return self._clock.table()

    # ---------------------------------------------------------------- builds and trees

    def build(self, version: str, ketta: bool):
        patched = ketta and self.patched

        def make():
            with self.timed(f"build {'Ketta' if patched else 'stock'} {version}"):
                return self.prepare(version, patched)

        return self._once.get(("build", version, patched), make)

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

        return self._once.get(("stale-alembic", side.version), make)

    def _patched(self, side: Side) -> bool:
        """Whether ``side``'s server is Ketta's (with ``--no-patches`` no side is)."""
        return side.flavour == "ketta" and self.patched

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

    def migrated(self, side: Side) -> tuple[str, str]:
        """A template database migrated from empty by ``side``'s release (``ketta`` or ``stock``), made once,
        and its ``pg_dump --schema-only``: the fresh schema the upgraded ones are compared with, and what
        that side's fill starts from. (Dumped here, before anything clones it: CREATE DATABASE ... TEMPLATE
        refuses a template another session is connected to.)"""
        if side.flavour == "stale":
            raise ValueError(f"{side}: a stale database is made from the stock one, never migrated from empty")

        def make():
            db = self._new_database(f"fresh_{side.flavour}")
            self.pg.create_database(db)
            self.migrate(side, db, "migration")
            return db, self.pg.dump(db, "--schema-only")

        return self._once.get(("migrated", side), make)

    def fresh_schema(self, side: Side) -> str:
        """``pg_dump --schema-only`` of an empty database migrated by ``side``'s release."""
        return self.migrated(side)[1]

    # ---------------------------------------------------------------- servers

    def warm(self, side: Side) -> threading.Thread | None:
        """Start the start helper of ``side``'s server environment now, on a thread of its own, so its
        preloading overlaps the migration, fill or upgrade that comes before that server's start (the
        helper is one per environment: each pair's start and end side have theirs). Issue #33: made on
        the first start's own path, each of a cell's environments cost its first start 8-13 s of waiting.
        Returns the thread (None when servers start cold); a failure here is the first start's to report."""
        if not fork_starts():
            return None

        def make() -> None:
            try:
                build = self.build(side.version, side.flavour == "ketta")
                start_helper(build.python, build.letta)
            except Exception:  # noqa: BLE001 - the server start asks again and says why
                pass

        thread = threading.Thread(target=make, name=f"warm-helper-{side.tag}", daemon=True)
        thread.start()
        return thread

    def start_server(self, side: Side, database: str, home: Path | None = None, **env: str) -> LettaServer:
        build = self.build(side.version, side.flavour == "ketta")
        server = LettaServer(letta=build.letta, python=build.python, tree=build.tree, pg=self.pg, database=database,
                             extra_env=env, home=home, prepare_database=False)
        with self._lock:
            self.keep.append(server)
        with self.timed(f"server start {side} on {database}") as label:
            try:
                return server.start()
            finally:
                label[0] += f" ({server.start_mode}; {server.helper_wait:.1f} s waiting for the start helper)"

    def stop_server(self, server: LettaServer) -> None:
        server.stop()
        with self._lock:
            if server in self.keep:
                self.keep.remove(server)

    # ---------------------------------------------------------------- filled templates

    def filled(self, side: Side) -> Fill:
        """A template database migrated by ``side`` and filled through its own server."""
        return self._once.get(("fill", side), lambda: self._fill(side))

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
            return read_fill(self.pg, side, db, home, stock.vendors, stock.key, stock.written)
        key = None
        if self.fills is not None:
            build = self.build(side.version, side.flavour == "ketta")
            key = fill_key(side.tag, side.flavour == "ketta", self._patched(side), build, self.pg)
            kept = self._restored(side, key) if self.reuse else None
            if kept is not None:
                return kept
        fill = self._made(side)
        if key is not None:
            self._keep(side, key, fill)
        return fill

    def _keep(self, side: Side, key: str, fill: Fill) -> None:
        """Keep ``fill`` under ``key``, unless a kept one is there and this run may use it (it could not:
        another run holds its vendors' ports; replacing it would only move the clash to the next run).
        Best effort: a cache that cannot be written costs the next run time, not this one its fill."""
        try:
            with self.fills.locked(key), self.timed(f"keep the fill of {side}"):
                if self.reuse and self.fills.lookup(key) is not None:
                    return
                keep_fill(self.fills, key, fill, self.pg, self.work)
        except Exception as exc:  # noqa: BLE001 - reported, and the fill in hand is good
            print(f"{side}: the fill was not kept ({exc})")

    def _restored(self, side: Side, key: str) -> Fill | None:
        """The kept fill of ``side`` under ``key`` restored, or None (none kept, or it cannot be restored:
        a vendor's port is taken by another run, the dump or the home will not come back)."""
        home = self.work / f"home-{side.tag}"
        with self.fills.locked(key):
            stored = self.fills.lookup(key)
            if stored is None:
                return None
            db = self._new_database(f"tpl_{side.flavour}")
            try:
                with self.timed(f"restore the kept fill of {side} ({stored.date}, key {key[:12]})"):
                    vendors, written, encryption_key = restore_fill(stored, side.tag, self.pg, db, home)
            except Exception as exc:  # noqa: BLE001 - a fresh fill is always a correct answer
                print(f"{side}: the kept fill of {stored.date} could not be restored ({exc}); filling afresh")
                shutil.rmtree(home, ignore_errors=True)
                return None
        self._own_vendors(vendors)
        fill = read_fill(self.pg, side, db, home, vendors, encryption_key, written)
        fill.kept_from = f"{stored.date}, key {key[:12]}"
        return fill

    def _own_vendors(self, vendors: dict) -> None:
        with self._lock:
            self.keep.extend(vendors.values())
            self._vendors.extend(vendors.values())

    def _made(self, side: Side) -> Fill:
        self.warm(side)  # its server starts after the migration below
        db = self._new_database(f"tpl_{side.flavour}")
        self.pg.clone_database(self.migrated(side)[0], db)
        home = self.work / f"home-{side.tag}"
        home.mkdir()
        vendors = {name: FakeVendor(f"{name}-{side.tag}").start() for name in ("alpha", "beta")}
        self._own_vendors(vendors)
        server = self.start_server(side, db, home=home)
        try:
            with self.timed(f"fill {side}"):
                written = write_fill(server, vendors, by_handle=side.flavour == "ketta", stock=not self._patched(side))
        finally:
            self.stop_server(server)
        key = server.key_file.read_text().strip() if server.key_file.exists() else None
        return read_fill(self.pg, side, db, home, vendors, key, written)

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
        return self._once.get(("future", pair), lambda: self.pool.submit(self._upgraded, pair))

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
        self.warm(pair.end)  # its server starts after the fill and the upgrade below
        fill = self.filled(pair.start)
        db = self._new_database("up")
        self.pg.clone_database(fill.template, db)
        if pair.end.flavour == "ketta":
            log = self.migrate(pair.end, db, f"upgrade {pair.id} to")
        else:
            with self.timed(f"remove Ketta's revisions {pair.id}"):
                log = self.remove_ketta(self.build(pair.start.version, True).python, db)
        upgraded = Upgraded(pair, db, log, fill, snapshot(self.pg, db))
        if pair.end.flavour == "stock" and fill.key:
            upgraded.server_env["LETTA_ENCRYPTION_KEY"] = fill.key  # stock Letta reads the key from the environment
        home = self.work / f"home-{db}"
        shutil.copytree(fill.home, home)  # the same host: the start server's home, its generated key included
        upgraded.server = self.start_server(pair.end, db, home=home, **upgraded.server_env)
        return upgraded

    def remove_ketta(self, python: Path, db: str) -> str:
        return release_python.remove_ketta(python, self.pg.server_uri(db), self.work)

    def crypto(self, python: Path, key: str | None, values: list[str]) -> list[dict]:
        return release_python.crypto(python, key, values, self.work)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for future in self._once.made("future"):
            if future.done() and not future.exception():
                server = future.result().server
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

