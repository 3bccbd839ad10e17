"""A real ``letta server`` process of the build under test, on its own database and loopback port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ketta_build import suiteenv

from .keyguard import GUARD
from .pgcluster import PgTarget, free_port

STARTUP_TIMEOUT = suiteenv.number("KETTA_SERVER_STARTUP_TIMEOUT")

# Keys the server's own environment carries in every test: they must never show up as providers,
# models, or an Authorization header at a user-supplied URL.
SERVER_ENV_KEYS = {
    "OPENAI_API_KEY": "sk-server-env-openai",
    "ANTHROPIC_API_KEY": "sk-server-env-anthropic",
    "GROQ_API_KEY": "sk-server-env-groq",
}
GUARD.add(*SERVER_ENV_KEYS.values())


# No network but the loopback: anything the server would fetch from the internet (Letta fetches NLTK
# data at start-up) goes to a closed port instead; the fake vendors on 127.0.0.1 are reached directly.
NO_INTERNET = {
    "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1,localhost",
    "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "no_proxy": "127.0.0.1,localhost",
}


class ServerFailed(RuntimeError):
    pass


def run_alembic(python: Path, tree: Path, uri: str, *args: str) -> str:
    """Run the tree's alembic (its migrations are not in the wheel) with the server env's python."""
    env = {**os.environ, "LETTA_PG_URI": uri}
    proc = subprocess.run(
        [str(python), "-m", "alembic", *args], cwd=tree, env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"alembic {' '.join(args)} failed in {tree}:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout + proc.stderr


_TEMPLATES: dict[tuple, str] = {}
_TEMPLATE_LOCK = threading.Lock()


def migrated_template(pg: PgTarget, python: Path, tree: Path) -> str:
    """A database migrated by ``tree``'s alembic, made once per PostgreSQL and tree in this process;
    every server then gets its own copy (CREATE DATABASE ... TEMPLATE: well under a second, where
    alembic takes about nine). Each server still has a database of its own."""
    key = (pg.host, pg.port, str(python), str(tree.resolve()))
    with _TEMPLATE_LOCK:
        if key not in _TEMPLATES:
            name = f"ketta_template_{uuid.uuid4().hex[:10]}"
            pg.create_database(name)
            run_alembic(python, tree, pg.alembic_uri(name), "upgrade", "head")
            _TEMPLATES[key] = name
        return _TEMPLATES[key]


def drop_templates(pg: PgTarget) -> None:
    """Remove this process's template databases from ``pg`` (a user's server keeps nothing of ours)."""
    with _TEMPLATE_LOCK:
        for key in [k for k in _TEMPLATES if k[:2] == (pg.host, pg.port)]:
            pg.drop_database(_TEMPLATES.pop(key))


@dataclass
class Response:
    status: int
    body: object
    text: str


@dataclass
class LettaServer:
    letta: Path
    python: Path
    tree: Path
    pg: PgTarget
    database: str
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen | None = None
    home: Path | None = None  # given: the server runs there (its key file included); else a new one
    log_path: Path | None = None
    prepare_database: bool = True  # False: the database exists and is migrated already

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def guarded(self) -> bool:
        """A Ketta build: its log and responses must hold no provider key (compat_tests/keyguard.py)."""
        return (self.tree / "letta" / "ketta.py").is_file()

    @property
    def key_file(self) -> Path:
        """Where a Ketta server without LETTA_ENCRYPTION_KEY keeps its generated key."""
        assert self.home is not None
        return self.home / ".letta" / "ketta-encryption.key"

    def start(self) -> "LettaServer":
        from .phases import phase

        if self.prepare_database:
            with phase("migration"):
                self.pg.clone_database(migrated_template(self.pg, self.python, self.tree), self.database)
        with phase("server start") as label:
            try:
                return self._start()
            except ServerFailed:
                if self.exit_code is not None:  # it exited (a refusal the test may have asked for), not hung
                    label[0] = "server start refused"
                raise

    def _start(self) -> "LettaServer":
        if self.home is None:
            self.home = Path(tempfile.mkdtemp(prefix="ketta-letta-home-"))
        self.log_path = self.home / f"server-{uuid.uuid4().hex[:6]}.log"
        self.port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("LETTA_", "KETTA_"))},
            **SERVER_ENV_KEYS,
            **NO_INTERNET,
            "HOME": str(self.home),
            "LETTA_PG_URI": self.pg.server_uri(self.database),
            "NLTK_DATA": str(self.home / "nltk"),
            **self.extra_env,
        }
        if self.guarded:
            GUARD.watch(self.log_path)
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [str(self.letta), "server", "--port", str(self.port), "--host", "127.0.0.1"],
            cwd=self.home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(f"letta server exited with {self.process.returncode} during start-up:\n{self.log_tail()}")
            try:
                if self.get("/v1/health/").status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.5)
        raise ServerFailed(f"letta server not healthy after {STARTUP_TIMEOUT:.0f}s:\n{self.log_tail()}")

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=10)
        if self.guarded:
            GUARD.scan_log(self.log_path)  # what it wrote while shutting down

    # ----------------------------------------------------------------- HTTP

    def request(self, method: str, path: str, body: object | None = None, user_id: str | None = None,
                timeout: float = 120) -> Response:
        GUARD.learn(body)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if user_id:
            req.add_header("user_id", user_id)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        text = raw.decode("utf-8", "replace")
        if self.guarded:
            GUARD.check_response(method, path, status, text)
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = None
        return Response(status, parsed, text)

    def get(self, path: str, **kw) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: object, **kw) -> Response:
        return self.request("POST", path, body, **kw)

    def patch(self, path: str, body: object, **kw) -> Response:
        return self.request("PATCH", path, body, **kw)

    def delete(self, path: str, **kw) -> Response:
        return self.request("DELETE", path, **kw)

    def sql(self, query: str, **params):
        conn = self.pg.connect(self.database)
        try:
            return conn.run(query, **params)
        finally:
            conn.close()
