"""``ketta-build serve``: a patched Letta server on this machine, now.

It builds (or reuses) the release's Ketta wheel and locked environment, starts PostgreSQL with
pgvector whose data persists in ``--data-dir`` (or uses ``--pg-uri``), migrates with the wheel's
own command (``python -m letta.ketta_migrations upgrade``), and runs ``letta server`` on
127.0.0.1. Ctrl-C (or SIGTERM) stops the server and PostgreSQL; nothing is left running. The next
``serve`` with the same data directory finds everything where it was, the encryption key too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from ..cache import Cache
from ..errors import KettaError
from .postgres import Postgres
from .serverenv import ServerBuild, prepare_server

DATABASE = "letta"
STARTUP_TIMEOUT = 180.0


def default_data_dir(version: str) -> Path:
    return Path(platformdirs.user_data_dir("ketta-build")) / "serve" / version


@dataclass(kw_only=True)
class ServeOptions:
    version: str
    data_dir: Path | None = None
    pg_uri: str | None = None
    host: str = "127.0.0.1"
    port: int = 8283
    patches: Path
    build_root: Path
    cache_dir: Path | None = None
    index_url: str | None = None


@dataclass
class Serving:
    """A running server (and the PostgreSQL it started, if any). ``stop()`` ends both."""

    url: str
    data_dir: Path
    key_file: Path | None  # None: LETTA_ENCRYPTION_KEY is set; the key lives with the operator
    log_file: Path
    build: ServerBuild
    process: subprocess.Popen
    postgres: Postgres | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def wait(self) -> int:
        return self.process.wait()

    def stop(self) -> None:
        try:
            if self.process.poll() is None:
                try:
                    os.killpg(self.process.pid, signal.SIGTERM)
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(timeout=10)
                except ProcessLookupError:
                    pass
        finally:
            if self.postgres is not None:
                self.postgres.stop("fast")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v1/health/", timeout=2) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


_REVISION = re.compile(r'^(down_revision|revision)\s*(?::[^=]*)?=\s*["\']?([\w]+|None)', re.MULTILINE)


def _heads(versions: Path) -> set[str]:
    """The head revisions of an alembic versions directory, read from the files (no import)."""
    revisions, parents = set(), set()
    for path in versions.glob("*.py"):
        for kind, value in _REVISION.findall(path.read_text(errors="replace")):
            (revisions if kind == "revision" else parents).add(value)
    return revisions - parents


def at_head(build: ServerBuild, postgres: Postgres) -> bool:
    """Whether the database already holds upstream's and Ketta's newest revisions (then the migration,
    which would do nothing, is skipped: it costs an import of Letta)."""
    site = next(build.env.glob("lib/python*/site-packages/letta"), None)
    if site is None:
        return False
    upstream, ketta = _heads(site / "ketta_alembic" / "versions"), _heads(site / "ketta_migrations" / "versions")
    if len(upstream) != 1 or len(ketta) != 1:
        return False
    try:
        rows = postgres.psql("SELECT (SELECT string_agg(version_num, ',') FROM alembic_version) || ' ' || "
                             "(SELECT string_agg(version_num, ',') FROM ketta_alembic_version)", database=DATABASE)
    except KettaError:  # no tables yet
        return False
    return rows == f"{upstream.pop()} {ketta.pop()}"


def start(opts: ServeOptions, progress=lambda _: None) -> Serving:
    """Everything up to a healthy server; on any failure, what was started is stopped again."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    build = prepare_server(opts.version, patched=True, series_dir=opts.patches, build_root=opts.build_root,
                           cache=Cache(opts.cache_dir), index_url=opts.index_url, progress=progress)
    timings["wheel and environment"] = time.monotonic() - t0
    data_dir = (opts.data_dir or default_data_dir(build.version)).absolute()
    home = data_dir / "home"  # the server's HOME: ~/.letta (and the generated key) live here
    home.mkdir(parents=True, exist_ok=True)
    postgres = None
    process = None
    try:
        t = time.monotonic()
        if opts.pg_uri:
            uri = opts.pg_uri
        else:
            progress(f"starting PostgreSQL in {data_dir / 'pg'}")
            postgres = Postgres(data_dir / "pg" / "data", data_dir / "pg")
            try:
                postgres.start()
            except Exception as exc:  # pg_ctl's own failure, with its log
                postgres.started = False
                raise KettaError(f"PostgreSQL did not start ({exc}); its log ends: {_tail(postgres.log_file, 5)}",
                                 path=postgres.data) from None
            postgres.ensure_database(DATABASE)
            uri = postgres.uri(DATABASE)
        timings["postgres"] = time.monotonic() - t
        env = {k: v for k, v in os.environ.items() if k not in ("LETTA_PG_URI", "HOME")}
        env.update({"HOME": str(home), "LETTA_PG_URI": uri})
        t = time.monotonic()
        progress("migrating (python -m letta.ketta_migrations upgrade)")
        if postgres is not None and at_head(build, postgres):
            migrate = None
        else:
            migrate = subprocess.run([str(build.python), "-m", "letta.ketta_migrations", "upgrade"], cwd=home, env=env,
                                     capture_output=True, text=True)
        if migrate is not None and migrate.returncode != 0:
            last = (migrate.stderr.strip() or migrate.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise KettaError(f"the migration failed: {last[0]}", path=home)
        timings["migration"] = time.monotonic() - t
        t = time.monotonic()
        log_file = data_dir / "server.log"
        url = f"http://{'127.0.0.1' if opts.host in ('0.0.0.0', '::') else opts.host}:{opts.port}"
        if _healthy(url):
            raise KettaError(f"something already answers on {url}; pick another --port")
        progress(f"starting letta server on {opts.host}:{opts.port}")
        with open(log_file, "ab") as log:
            process = subprocess.Popen([str(build.letta), "server", "--host", opts.host, "--port", str(opts.port)],
                                       cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _healthy(url):
            if process.poll() is not None:
                raise KettaError(f"letta server exited with {process.returncode} while starting: "
                                 f"{_tail(log_file, 1)}", path=log_file)
            if time.monotonic() > deadline:
                raise KettaError(f"letta server not healthy after {STARTUP_TIMEOUT:.0f} s", path=log_file)
            time.sleep(0.25)
        timings["server start"] = time.monotonic() - t
        timings["total"] = time.monotonic() - t0
        key_file = None if os.environ.get("LETTA_ENCRYPTION_KEY") else home / ".letta" / "ketta-encryption.key"
        return Serving(url=url, data_dir=data_dir, key_file=key_file, log_file=log_file, build=build,
                       process=process, postgres=postgres, timings=timings)
    except BaseException:
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        if postgres is not None:
            postgres.stop("fast")
        raise


def write_state(serving: Serving) -> Path:
    """``serve.json`` in the data directory: where the running server is (for scripts and benchmarks)."""
    path = serving.data_dir / "serve.json"
    path.write_text(json.dumps({"url": serving.url, "pid": serving.process.pid, "log": str(serving.log_file),
                                "key_file": str(serving.key_file) if serving.key_file else None,
                                "wheel": serving.build.wheel.name if hasattr(serving.build.wheel, "name") else str(serving.build.wheel),
                                "timings": {k: round(v, 2) for k, v in serving.timings.items()}}, indent=2) + "\n")
    return path
