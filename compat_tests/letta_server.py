"""A real ``letta server`` process of the build under test, on its own database and loopback port."""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
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


def base_env(home: Path) -> dict[str, str]:
    """What every server's environment starts from: this process's, without its Letta and Ketta
    settings, with the vendor keys above and no internet; ``home`` as HOME."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LETTA_", "KETTA_"))},
        **SERVER_ENV_KEYS,
        **NO_INTERNET,
        "HOME": str(home),
    }


# ------------------------------------------------------------------ fork starts (issue #33)
#
# A start helper per server environment (compat_tests/fork_helper.py, run by that environment's
# Python) imports the heavy third-party modules once and forks a child per server start; the child
# imports Letta with its own environment and runs `letta server` as the console script would.

HELPER_SCRIPT = Path(__file__).resolve().with_name("fork_helper.py")
PRELOAD_FILE = "ketta-fork-preload.json"  # beside the environment's bin/ and lib/, with the helper's version
log = logging.getLogger("ketta.forkstarts")


def fork_starts() -> bool:
    """KETTA_FORK_STARTS=1 (the default): servers are forked from a start helper. Not under coverage
    (every process of a measured environment starts coverage.py at its start-up, the helper too)."""
    return suiteenv.flag("KETTA_FORK_STARTS") and not os.environ.get("COVERAGE_PROCESS_START")


def _helper_run(python: Path, letta: Path, *args: str, timeout: float = 300) -> dict:
    home = Path(tempfile.mkdtemp(prefix="ketta-fork-measure-"))
    try:
        env = {**base_env(home), "LETTA_PG_URI": "postgresql://ketta:ketta@127.0.0.1:9/unreachable"}
        proc = subprocess.run([str(python), str(HELPER_SCRIPT), *args[:1], str(letta), *args[1:]], cwd=home, env=env,
                              capture_output=True, text=True, timeout=timeout)
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"fork_helper.py {args[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return json.loads(lines[-1])
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _preload_file(python: Path) -> tuple[str, Path]:
    """The helper's version and where an environment's preload list for it is kept. One file per
    helper version: checkouts with different helpers sharing the environment (another branch's
    worktree) would otherwise measure it anew, in turn, on every first start."""
    version = hashlib.sha256(HELPER_SCRIPT.read_bytes()).hexdigest()[:16]
    return version, python.parent.parent / PRELOAD_FILE.replace(".json", f"-{version}.json")


def preload_known(python: Path) -> bool:
    """Whether this environment's preload list has been measured for this helper (a helper then only
    has to preload: seconds; measuring takes three processes that import Letta's app, about a minute
    on a busy machine)."""
    version, cached = _preload_file(python)
    try:
        return json.loads(cached.read_text()).get("helper") == version
    except (OSError, ValueError):
        return False


def preload_list(python: Path, letta: Path) -> dict:
    """The third-party modules a start helper of this environment preloads, measured once per
    environment and helper version and kept beside the environment: the top-level packages importing
    Letta's app loads (not Letta), less those that read a per-server variable or start a thread at
    their import (each found by importing them in order in a fresh process, dropped, and again)."""
    version, cached = _preload_file(python)
    try:
        data = json.loads(cached.read_text())
        if data.get("helper") == version:
            return data
    except (OSError, ValueError):
        pass
    candidates = _helper_run(python, letta, "discover")
    excluded: dict[str, str] = {}
    for _ in range(len(candidates) + 1):
        result = _helper_run(python, letta, "measure", *candidates)
        if result["bad"] is None:
            break
        excluded[result["bad"]] = result["why"]
        candidates = [c for c in candidates if c != result["bad"]]
    reads = sorted({k for read in result["ok"].values() for k in read})
    data = {"helper": version, "modules": list(result["ok"]), "reads": reads, "excluded": excluded}
    tmp = cached.with_name(f"{PRELOAD_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, cached)
    return data


class HelperGone(RuntimeError):
    pass


class StartHelper:
    """The client of one start helper: requests go over a Unix socket pair, one at a time."""

    def __init__(self, python: Path, letta: Path) -> None:
        self.python, self.letta = python, letta
        preload = preload_list(python, letta)
        self.home = Path(tempfile.mkdtemp(prefix="ketta-fork-helper-"))
        (self.home / PRELOAD_FILE).write_text(json.dumps(preload))
        ours, theirs = socket.socketpair()
        self.sock = ours
        self.log_path = self.home / "helper.log"
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                [str(python), str(HELPER_SCRIPT), "serve", str(theirs.fileno()), str(letta), str(self.home / PRELOAD_FILE)],
                cwd=self.home, env=base_env(self.home), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),), start_new_session=True,
            )
        theirs.close()
        self.file = ours.makefile("rb")
        self.lock = threading.Lock()
        self.ready: dict | None = None

    def _answer(self) -> dict:
        line = self.file.readline()
        if not line:
            raise HelperGone(f"the start helper of {self.python} exited:\n{self.log_tail()}")
        return json.loads(line)

    def request(self, **body) -> dict:
        with self.lock:
            if self.ready is None:
                self.ready = self._answer()  # its preloading is done
            try:
                self.sock.sendall(json.dumps(body).encode() + b"\n")
            except OSError as exc:
                raise HelperGone(f"the start helper of {self.python} is gone: {exc}") from None
            answer = self._answer()
        if "error" in answer:
            raise RuntimeError(f"start helper: {answer['error']}")
        return answer

    def alive(self) -> bool:
        return self.process.poll() is None

    def ready_now(self) -> bool:
        """Whether its preloading is done, without waiting for it (nor for a request under way)."""
        if self.ready is not None:
            return True
        if not self.lock.acquire(blocking=False):
            return False
        try:
            if self.ready is None and select.select([self.sock], [], [], 0)[0]:
                self.ready = self._answer()  # nothing was read before the ready line: the buffer is empty
            return self.ready is not None
        except HelperGone:
            return False
        finally:
            self.lock.release()

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:]) if self.log_path.exists() else ""

    def stop(self) -> None:
        """Close the socket: the helper stops the servers it still runs and exits."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.file.close()
        self.sock.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.home, ignore_errors=True)


class ForkedProcess:
    """A server forked by a start helper, as much of a ``subprocess.Popen`` as LettaServer uses:
    ``pid``, ``poll()``, ``wait(timeout)``, ``returncode``. Its helper reaps it and tells its exit code."""

    def __init__(self, helper: StartHelper, pid: int) -> None:
        self.helper, self.pid = helper, pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.returncode = self.helper.request(op="poll", pid=self.pid)["returncode"]
            except HelperGone:
                # The helper stopped its children as it went: ours is gone, its exit code with it.
                if not _pid_alive(self.pid):
                    self.returncode = -signal.SIGTERM
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"forked server {self.pid}", timeout)
            time.sleep(0.05)
        return self.returncode  # type: ignore[return-value]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_HELPERS: dict[str, StartHelper] = {}
_HELPERS_LOCK = threading.Lock()


_ENV_LOCKS: dict[str, threading.Lock] = {}


def ready_helper(python: Path) -> StartHelper | None:
    """This environment's start helper if it is there and done preloading; never makes or waits for one."""
    with _HELPERS_LOCK:
        helper = _HELPERS.get(str(python))
    return helper if helper is not None and helper.alive() and helper.ready_now() else None


def start_helper(python: Path, letta: Path) -> StartHelper:
    """The start helper of this environment, started on first use (one per environment and process;
    environments measure and start theirs side by side)."""
    with _HELPERS_LOCK:
        env_lock = _ENV_LOCKS.setdefault(str(python), threading.Lock())
    with env_lock:
        with _HELPERS_LOCK:
            helper = _HELPERS.get(str(python))
        if helper is None or not helper.alive():
            helper = StartHelper(python, letta)
            with _HELPERS_LOCK:
                _HELPERS[str(python)] = helper
        return helper


def warm_helper(python: Path, letta: Path) -> None:
    """Start this environment's helper now, in the background (its preloading overlaps what the
    session does before its first server start)."""
    if fork_starts():
        threading.Thread(target=lambda: _quietly(start_helper, python, letta), daemon=True).start()


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 (the first start tries again and says why)
        log.warning("start helper of %s not started: %s", args[0], exc)


def stop_helpers() -> None:
    with _HELPERS_LOCK:
        while _HELPERS:
            _, helper = _HELPERS.popitem()
            try:
                helper.stop()
            except Exception:  # noqa: BLE001
                pass


# The temporary homes this process made for its servers (logs, generated key files, NLTK data):
# removed when it exits, after every report that quotes a log has been written.
_OWN_HOMES: list[Path] = []


def _remove_own_homes() -> None:
    while _OWN_HOMES:
        shutil.rmtree(_OWN_HOMES.pop(), ignore_errors=True)


atexit.register(_remove_own_homes)
atexit.register(stop_helpers)  # atexit runs the last registered first: servers stop, then homes go


def run_alembic(python: Path, tree: Path, uri: str, *args: str) -> str:
    """Run the tree's alembic (its migrations are not in the wheel) with the server env's python: a
    child of the environment's start helper when servers fork (``python -m alembic`` as a subprocess
    would run it, with the third-party modules already imported: about 1 s of imports instead of 4),
    else a subprocess. Returns its output (stdout and stderr)."""
    env = {**os.environ, "LETTA_PG_URI": uri}
    if not fork_starts():
        from .phases import migration_mode

        migration_mode("subprocess")
    forked = _forked_alembic(python, tree, env, args) if fork_starts() else None
    if forked is not None:
        code, output = forked
        if code != 0:
            raise RuntimeError(f"alembic {' '.join(args)} failed in {tree} (exit {code}):\n{output[-10000:]}")
        return output
    proc = subprocess.run(
        [str(python), "-m", "alembic", *args], cwd=tree, env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"alembic {' '.join(args)} failed in {tree}:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout + proc.stderr


def _forked_alembic(python: Path, tree: Path, env: dict[str, str], args: tuple[str, ...]) -> tuple[int, str] | None:
    """``python -m alembic ARGS`` in ``tree`` forked from the start helper of ``python``'s environment:
    its exit code and output; None when that helper is not ready (not made, or still preloading) or
    cannot fork it safely (the same rules as a server's)."""
    from .phases import migration_mode

    helper = ready_helper(python)
    if helper is None:
        # Not worth waiting for (making it may mean measuring its preload list, tens of seconds; the
        # migration's own imports take about 4): this one runs as a subprocess, the next may fork.
        warm_helper(python, python.with_name("letta"))  # the servers that follow want it
        migration_mode("subprocess: the start helper was not ready yet")
        return None
    out_dir = Path(tempfile.mkdtemp(prefix="ketta-alembic-"))
    try:
        log_path = out_dir / "alembic.log"
        try:
            answer = helper.request(op="start", module="alembic", argv=[str(python), *args], env=env, cwd=str(tree),
                                    log=str(log_path))
        except (HelperGone, RuntimeError, OSError) as exc:
            answer = {"cold": f"no start helper: {exc}"}
        if "pid" not in answer:
            migration_mode(f"subprocess: {answer['cold']}")
            return None
        migration_mode("forked")
        child = ForkedProcess(helper, int(answer["pid"]))
        try:
            code = child.wait(timeout=600)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            raise RuntimeError(f"alembic {' '.join(args)} in {tree} did not finish in 600 s") from None
        return code, log_path.read_text(errors="replace") if log_path.exists() else ""
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


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
    process: subprocess.Popen | ForkedProcess | None = None
    start_mode: str = ""  # "forked", or "cold" and why when forking was not possible
    helper_wait: float = 0.0  # seconds the start waited for its start helper (made, preloading) and the fork
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
            _OWN_HOMES.append(self.home)
        self.log_path = self.home / f"server-{uuid.uuid4().hex[:6]}.log"
        self.port = free_port()
        env = {
            **base_env(self.home),
            "LETTA_PG_URI": self.pg.server_uri(self.database),
            "NLTK_DATA": str(self.home / "nltk"),
            **self.extra_env,
        }
        if self.guarded:
            GUARD.watch(self.log_path)
        argv = [str(self.letta), "server", "--port", str(self.port), "--host", "127.0.0.1"]
        out = open(self.log_path, "wb")
        self.start_mode, self.helper_wait = "cold", 0.0
        self.process = self._fork(argv, env) if fork_starts() else None
        if self.process is None:
            self.process = subprocess.Popen(argv, cwd=self.home, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        out.close()
        from .phases import start_mode

        start_mode(self.start_mode, self.helper_wait)
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

    def _fork(self, argv: list[str], env: dict[str, str]) -> ForkedProcess | None:
        """The server forked by its environment's start helper; None (a cold start follows) when
        the helper cannot fork it safely or is not there, with the reason in ``start_mode``."""
        asked = time.monotonic()
        with _HELPERS_LOCK:
            helper = _HELPERS.get(str(self.python))
        if (helper is None or not helper.alive()) and not preload_known(self.python):
            # A new environment (or helper): its preload list is measured first. A start does not wait
            # for that (measuring costs more than forking saves one start); later starts fork.
            warm_helper(self.python, self.letta)
            answer = {"cold": "this environment's preload list is not measured yet (measured in the background now)"}
        else:
            try:
                helper = start_helper(self.python, self.letta)
                answer = helper.request(op="start", argv=argv, env=env, cwd=str(self.home), log=str(self.log_path))
            except (HelperGone, RuntimeError, OSError) as exc:
                answer = {"cold": f"no start helper: {exc}"}
        self.helper_wait = time.monotonic() - asked
        if "pid" in answer:
            self.start_mode = "forked"
            return ForkedProcess(helper, int(answer["pid"]))
        self.start_mode = f"cold: {answer['cold']}"
        log.warning("server on %s started cold: %s", self.database, answer["cold"])
        print(f"ketta: fork start not possible, starting cold: {answer['cold']}", file=sys.stderr)
        return None

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
            except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
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
