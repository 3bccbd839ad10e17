"""Databases for the suites: a throw-away embedded PostgreSQL 18 + pgvector (ketta_build.letta.postgres,
in a temporary directory, removed on stop) or the user's own server (``LETTA_PG_URI``), reached
over TCP loopback with pg8000."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pg8000.native

from ketta_build import suiteenv
from ketta_build.letta.postgres import THROWAWAY_OPTIONS, Postgres, free_port, pg_bin  # noqa: F401 (free_port: for the tests)


@dataclass
class PgTarget:
    """Where databases are created: host, port, user, password (of a maintenance database)."""

    host: str
    port: int
    user: str
    password: str | None = None

    @classmethod
    def from_uri(cls, uri: str) -> "PgTarget":
        u = urllib.parse.urlparse(uri)
        return cls(u.hostname or "127.0.0.1", u.port or 5432, urllib.parse.unquote(u.username or "postgres"),
                   urllib.parse.unquote(u.password) if u.password else None)

    def connect(self, database: str = "postgres") -> pg8000.native.Connection:
        return pg8000.native.Connection(self.user, host=self.host, port=self.port, password=self.password, database=database)

    def _auth(self) -> str:
        user = urllib.parse.quote(self.user)
        return user + (":" + urllib.parse.quote(self.password) if self.password else "")

    def server_uri(self, database: str) -> str:
        """The form Letta's async engine needs (it asks for SSL unless told not to)."""
        return f"postgresql://{self._auth()}@{self.host}:{self.port}/{database}?sslmode=disable"

    def alembic_uri(self, database: str) -> str:
        """The form alembic's pg8000 accepts (it rejects ``sslmode``)."""
        return f"postgresql://{self._auth()}@{self.host}:{self.port}/{database}"

    def run(self, *statements: str, database: str = "postgres") -> None:
        """Run ``statements`` in order on one connection to ``database``."""
        conn = self.connect(database)
        try:
            for sql in statements:
                conn.run(sql)
        finally:
            conn.close()

    def server_version(self) -> str:
        conn = self.connect()
        try:
            return conn.run("SHOW server_version")[0][0]
        finally:
            conn.close()

    def create_database(self, name: str) -> None:
        self.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
        self.run("CREATE EXTENSION IF NOT EXISTS vector", database=name)

    def clone_database(self, template: str, name: str) -> None:
        """``name`` as a copy of ``template`` (PostgreSQL's CREATE DATABASE ... TEMPLATE; no alembic run)."""
        self.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}" TEMPLATE "{template}"')

    def drop_database(self, name: str) -> None:
        self.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def dump(self, database: str, *options: str) -> str:
        """``pg_dump`` of ``database`` (the embedded PostgreSQL's client, new enough for any server it runs)."""
        env = {**os.environ, **({"PGPASSWORD": self.password} if self.password else {})}
        proc = subprocess.run(
            [str(pg_bin() / "pg_dump"), "--no-owner", "--no-privileges", "-h", self.host, "-p", str(self.port),
             "-U", self.user, *options, database],
            capture_output=True, text=True, env=env, timeout=300,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"pg_dump {database} failed: {proc.stderr[-2000:]}")
        return proc.stdout

    def _client(self, tool: str, *args: str) -> None:
        env = {**os.environ, **({"PGPASSWORD": self.password} if self.password else {})}
        proc = subprocess.run([str(pg_bin() / tool), "-h", self.host, "-p", str(self.port), "-U", self.user, *args],
                              capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {proc.stderr[-2000:]}")

    def save_database(self, database: str, path: Path) -> None:
        """All of ``database`` into ``path`` (pg_dump's custom format), for :meth:`restore_database`."""
        self._client("pg_dump", "--no-owner", "--no-privileges", "--format=custom", "--file", str(path), database)

    def restore_database(self, path: Path, name: str) -> None:
        """``name`` as a new database holding what :meth:`save_database` wrote to ``path``."""
        self.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}" TEMPLATE template0')
        self._client("pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "--dbname", name, str(path))

    def data(self, database: str) -> str:
        """Every row of ``database`` (``pg_dump --data-only``), comparable between two dumps: pg_dump 18
        frames its output with ``\\restrict KEY`` lines whose key is new each time."""
        dump = self.dump(database, "--data-only")
        return "\n".join(line for line in dump.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))


class EmbeddedCluster:
    """A throw-away cluster in a temporary directory; stop() removes every trace."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ketta-pg-"))
        options = THROWAWAY_OPTIONS + (" " + suiteenv.get("KETTA_PG_OPTIONS") if suiteenv.get("KETTA_PG_OPTIONS") else "")
        self.cluster = Postgres(self.root / "data", self.root, extra_options=options)  # e.g. -c log_connections=on
        self.bin = self.cluster.bin
        self.port = self.cluster.port

    @property
    def started(self) -> bool:
        return self.cluster.started

    def start(self) -> PgTarget:
        self.cluster.start()
        return PgTarget("127.0.0.1", self.port, "postgres")

    def log(self) -> str:
        return self.cluster.log()

    def stop(self) -> None:
        try:
            self.cluster.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
