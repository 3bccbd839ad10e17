"""A start helper for Letta servers: run with a server environment's own Python, it imports the
heavy third-party modules once, then forks a fresh child per request, and each child runs Letta's
command line exactly as the environment's ``letta`` console script would.

Self-contained on purpose (standard library only, neither ketta_build nor Letta imported): the
server environment runs it as a script, ``<env>/bin/python fork_helper.py serve FD LETTA PRELOAD``,
where FD is its end of a Unix socket pair, LETTA the environment's ``bin/letta`` and PRELOAD the
JSON file of what to preload. Letta itself is never imported here: its settings are read at its
import, so only a child, after the fork and with its own environment in place, imports it. Every server still does its own full start-up (key check,
migrations check, lifespan) on its own database.

Protocol: one JSON object a line each way, one answer per request, in order.

* ``{"op": "start", "argv": [...], "env": {...}, "cwd": "...", "log": "..."}`` →
  ``{"pid": N}`` (with ``"module": "alembic"`` the child runs ``python -m alembic`` instead of Letta's
  command line: the suites' migrations, whose imports are mostly the preloaded ones too), or ``{"cold": "why"}`` when forking is not safe (a thread runs in the helper, a
  variable a preloaded module read at its import differs in the request, an interpreter setting
  differs; a ``PYTHONPATH`` of the request's own is the one setting a child takes on as the
  interpreter would, unless an entry holds a module the helper has imported): the caller then
  starts the server the ordinary way.
* ``{"op": "poll", "pid": N}`` → ``{"returncode": null | int}`` (negative: killed by that signal,
  as subprocess reports it). The helper reaps its children itself.
* ``{"op": "info"}`` → what was preloaded, what was left out and why.

When the caller goes away (end of file on the socket) the helper stops the children still running
(SIGTERM to each one's process group, SIGKILL after 15 s) and exits.

``<env>/bin/python fork_helper.py discover LETTA`` and ``... measure LETTA CANDIDATE...`` is how the preload list is made: it imports
the candidates in order, each with the environment variables it reads and the threads it starts
recorded, and stops at the first one that must not be preloaded (see ``letta_server.preload_list``).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
import threading
import time

# Variables that differ from one server to the next: a module that reads one at its import must not
# be preloaded (its children would see the helper's value).
VARYING_PREFIXES = ("LETTA_", "KETTA_")
# HOME is read at import by the standard library's sysconfig (for the user site, off in a virtual
# environment) and so by most packages: allowed, as the helper runs in an empty home of its own,
# as every server does.
EXEMPT = {"HOME"}
VARYING = {"PWD", "NLTK_DATA", "OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GROQ_API_KEY", "COVERAGE_PROCESS_START"}

_reads: set[str] | None = None


def _record_environment_reads() -> None:
    """From now on, note every key of ``os.environ`` read (``*``: the whole of it was iterated)."""
    cls = type(os.environ)
    getitem, iterate = cls.__getitem__, cls.__iter__

    def __getitem__(self, key):
        if _reads is not None:
            _reads.add(str(key))
        return getitem(self, key)

    def __iter__(self):
        if _reads is not None:
            _reads.add("*")
        return iterate(self)

    cls.__getitem__, cls.__iter__ = __getitem__, __iter__


def varying(key: str) -> bool:
    return key == "*" or key in VARYING or key.startswith(VARYING_PREFIXES)


def measure(candidates: list[str]) -> dict:
    """Import ``candidates`` in order; stop at the first that reads a varying variable, starts a
    thread or fails to import. Returns what each read and, if it stopped, which and why."""
    global _reads
    _record_environment_reads()
    done: dict[str, list[str]] = {}
    for name in candidates:
        _reads = set()
        start = time.perf_counter()
        try:
            __import__(name)
        except BaseException as exc:  # noqa: BLE001 (a module that cannot load alone is simply not preloaded)
            return {"ok": done, "bad": name, "why": f"import failed: {type(exc).__name__}: {exc}"[:300]}
        read, _reads = sorted(_reads), None
        if threading.active_count() != 1:
            return {"ok": done, "bad": name, "why": f"started a thread: {[t.name for t in threading.enumerate()]}"}
        bad = [k for k in read if varying(k)]
        if bad:
            return {"ok": done, "bad": name, "why": f"read {', '.join(bad)} at import"}
        done[name] = read
        print(f"{name} {time.perf_counter() - start:.3f}", file=sys.stderr)
    return {"ok": done, "bad": None, "why": None}


# ----------------------------------------------------------------------------------------- serve


def _entry_point():
    """The ``letta`` console script's target (``letta.main:app``), from the installed metadata."""
    from importlib.metadata import entry_points

    [ep] = [ep for ep in entry_points(group="console_scripts") if ep.name == "letta"]
    return ep.value


def python_path_refusal(value: str) -> str | None:
    """Why a child cannot be given ``PYTHONPATH=value`` after the fork (None: it can). The interpreter
    puts its entries after the script's directory, before the standard library, then imports
    ``sitecustomize``; a child does the same, which is only what a cold start does if no entry holds
    a module the helper imported already (a preloaded one, or a ``sitecustomize`` of its own)."""
    for entry in value.split(os.pathsep):
        if not entry or not os.path.isabs(entry):
            return f"PYTHONPATH entry {entry!r} is not an absolute path"
        try:
            names = os.listdir(entry)
        except OSError:
            continue  # a missing entry is on a cold start's sys.path too, and finds nothing
        for name in names:
            top = name.split(".", 1)[0]
            if top in sys.modules or top == "usercustomize":
                return f"PYTHONPATH entry {entry} holds {name}, which the helper has imported from elsewhere"
    return None


def _python_path(value: str) -> None:
    """In a child: what the interpreter does with PYTHONPATH at its start-up (python_path_refusal allowed it)."""
    sys.path[1:1] = value.split(os.pathsep)
    if "sitecustomize" not in sys.modules:
        try:
            import sitecustomize  # noqa: F401 (run for its effect, as site.py runs it)
        except ImportError as exc:
            if exc.name != "sitecustomize":
                raise


def _run_child(request: dict, entry: str, keep_open: tuple[int, ...]) -> None:
    """In the forked child: become the server process the console script would have been. Never returns."""
    code = 1
    try:
        os.setsid()
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in any Python process
        for fd in keep_open:
            os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        os.chdir(request["cwd"])
        python_path = request["env"].get("PYTHONPATH") if "PYTHONPATH" not in os.environ else None
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        if python_path is not None:
            _python_path(python_path)
        if request.get("module"):
            # As ``python -m MODULE ARGS`` runs it: the working directory first on the path, the
            # module run as __main__ (a release's alembic: its tree's letta/, as a subprocess has it).
            import runpy

            sys.path[0] = os.getcwd()

            def target(name=request["module"]):
                runpy.run_module(name, run_name="__main__", alter_sys=True)
        else:
            module, _, attr = entry.partition(":")
            import importlib

            target = importlib.import_module(module)
            for part in attr.split("."):
                target = getattr(target, part)
        try:
            raise SystemExit(target())
        except SystemExit as exc:  # what the interpreter does with sys.exit(app())
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                sys.stderr.write(f"{exc.code}\n")
                code = 1
        except BaseException:
            sys.excepthook(*sys.exc_info())
            code = 1
        # The interpreter's own exit: wait for non-daemon threads, run atexit, flush.
        try:
            threading._shutdown()  # type: ignore[attr-defined]
        except BaseException:  # noqa: BLE001
            pass
        import atexit

        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001
                pass
        os._exit(code)


class Helper:
    def __init__(self, conn: socket.socket, letta: str, preload: list[str], reads: list[str]) -> None:
        self.conn = conn
        self.letta = letta
        self.entry = _entry_point()
        self.preloaded: list[str] = []
        self.skipped: dict[str, str] = {}
        self.reads = reads  # the variables the preloaded modules read at import
        started = time.perf_counter()
        for name in preload:
            try:
                __import__(name)
                self.preloaded.append(name)
            except BaseException as exc:  # noqa: BLE001
                self.skipped[name] = f"{type(exc).__name__}: {exc}"[:200]
        self.preload_seconds = time.perf_counter() - started
        self.environment = {k: os.environ.get(k) for k in reads}
        self.children: dict[int, int | None] = {}  # pid -> returncode (None: running)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.children:
                self.children[pid] = os.waitstatus_to_exitcode(status)

    def start(self, request: dict) -> dict:
        if threading.active_count() != 1:
            return {"cold": f"{threading.active_count()} threads run in the helper: forking is not safe"}
        env = request["env"]
        differ = [k for k in self.reads if k not in EXEMPT and env.get(k) != self.environment.get(k)]
        if differ:
            return {"cold": f"the preloaded modules read {', '.join(differ)} at import, and the request's differ"}
        # What the interpreter itself read at its start-up: its PYTHON* settings and the locale.
        python_vars = sorted(k for k in set(env) | set(os.environ) if (k.startswith(("PYTHON", "LC_")) or k == "LANG")
                             and env.get(k) != os.environ.get(k))
        if python_vars == ["PYTHONPATH"] and "PYTHONPATH" not in os.environ:
            why = python_path_refusal(env["PYTHONPATH"])
            if why:
                return {"cold": why}
        elif python_vars:
            return {"cold": f"interpreter variables differ: {', '.join(python_vars)}"}
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:
            _run_child(request, self.entry, (self.conn.fileno(),))
        self.children[pid] = None
        return {"pid": pid}

    def handle(self, request: dict) -> dict:
        self.reap()
        op = request.get("op")
        if op == "start":
            return self.start(request)
        if op == "poll":
            pid = int(request["pid"])
            if pid not in self.children:
                return {"error": f"{pid} is not a child of this helper"}
            return {"returncode": self.children[pid]}
        if op == "info":
            return {"pid": os.getpid(), "entry": self.entry, "preloaded": self.preloaded, "skipped": self.skipped,
                    "preload_seconds": round(self.preload_seconds, 2), "modules": len(sys.modules),
                    "children": {str(k): v for k, v in self.children.items()}}
        return {"error": f"unknown op {op!r}"}

    def stop_children(self) -> None:
        self.reap()
        running = [pid for pid, rc in self.children.items() if rc is None]
        for pid in running:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(self.children[p] is None for p in running):
            time.sleep(0.1)
            self.reap()
        for pid in running:
            if self.children[pid] is None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.2)
        self.reap()

    def serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.conn, selectors.EVENT_READ)
        buffer = b""
        self.send({"ready": True, "preloaded": len(self.preloaded), "skipped": self.skipped,
                   "preload_seconds": round(self.preload_seconds, 2)})
        try:
            while True:
                if not sel.select(timeout=1.0):
                    self.reap()
                    continue
                chunk = self.conn.recv(1 << 20)
                if not chunk:
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    try:
                        answer = self.handle(json.loads(line))
                    except Exception as exc:  # noqa: BLE001 (a bad request is answered, the helper goes on)
                        answer = {"error": f"{type(exc).__name__}: {exc}"}
                    self.send(answer)
        finally:
            self.stop_children()

    def send(self, answer: dict) -> None:
        self.conn.sendall(json.dumps(answer).encode() + b"\n")


def discover() -> list[str]:
    """The third-party packages importing Letta's app loads, in the order they are first imported.
    (Run in a throw-away process: the app module builds a server at import, which fails on the
    unreachable database it is given; the imports are done by then.)"""
    before = set(sys.modules)
    try:
        import letta.server.rest_api.app  # noqa: F401
    except BaseException:  # noqa: BLE001
        pass
    found: list[str] = []
    for name in list(sys.modules):
        top = name.partition(".")[0]
        if name in before or top in found or top == "letta" or top.startswith("_") or top in sys.stdlib_module_names:
            continue
        if not top.isidentifier():
            continue
        found.append(top)
    return found


def main(argv: list[str]) -> int:
    if argv[:1] in (["measure"], ["discover"]) and len(argv) >= 2:
        sys.path[0] = os.path.dirname(os.path.abspath(argv[1]))  # the console script's path, not this directory's
        result = measure(argv[2:]) if argv[0] == "measure" else discover()
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        os._exit(0)  # no interpreter shutdown of what was imported
    if len(argv) == 4 and argv[0] == "serve":
        fd, letta, preload_file = int(argv[1]), argv[2], argv[3]
        # What the console script's interpreter has first on its path: its own directory, not this one's.
        sys.path[0] = os.path.dirname(os.path.abspath(letta))
        with open(preload_file) as f:
            preload = json.load(f)
        conn = socket.socket(fileno=fd)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller's Ctrl-C is the caller's; its exit ends us
        helper = Helper(conn, letta, preload["modules"], preload["reads"])
        helper.serve()
        return 0
    sys.stderr.write(__doc__ + "\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
