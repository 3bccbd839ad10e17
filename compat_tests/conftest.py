"""Fixtures of the compatibility suites: a built release, PostgreSQL, vendors and Letta servers.

Run ``pytest compat_tests --letta 0.16.8`` (or ``tox -e letta0168-handle``); ``--no-patches`` runs
the same suites against the unpatched release, where they must fail.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import uuid
from pathlib import Path

import pytest

from ketta_build import suiteenv
from ketta_build.cache import Cache
from ketta_build.matrixreport import write_build_record
from ketta_build.releases import load_releases
from ketta_build.runstore import RunStore, reuse_allowed
from ketta_build.servercoverage import ENV_VAR, touched_paths, write_rc
from ketta_build.letta.serverenv import prepare_server
from ketta_build.suites import load_suites

from . import api, phases
from .keyguard import GUARD
from .letta_server import LettaServer, drop_templates, stop_helpers, warm_helper
from .pgcluster import EmbeddedCluster, PgTarget
from .phases import phase
from .upgrade import UpgradeLab
from .vendor import FakeVendor

REPO = Path(__file__).resolve().parent.parent
NEWEST = str(load_releases(REPO / "patches").newest.version)
SUITES = load_suites(Path(__file__).resolve().parent).names  # compat_tests/suites.toml


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ketta")
    group.addoption("--letta", default=suiteenv.get("KETTA_RELEASE") or NEWEST,
                    help="Letta server release under test (default: the newest in patches/releases.toml)")
    group.addoption("--no-patches", action="store_true", default=suiteenv.flag("KETTA_NO_PATCHES"),
                    help="test the unpatched release (the suites must fail)")
    group.addoption("--patches", default=suiteenv.get("KETTA_PATCHES") or str(REPO / "patches"),
                    help="series directory (default: $KETTA_PATCHES, else the checkout's patches/)")
    group.addoption("--index-url", default=suiteenv.get("KETTA_INDEX_URL"),
                    help="package index for the releases (default: pip's configuration)")
    group.addoption("--build-root", default=suiteenv.get("KETTA_BUILD_ROOT") or str(REPO / "build"),
                    help="where build trees, wheels and constraints go")


def pytest_configure(config: pytest.Config) -> None:
    for suite in SUITES:
        config.addinivalue_line("markers", f"{suite}: the {suite} compatibility suite")
    # SIGTERM (a CI run cancelled, the matrix stopped) ends the session as Ctrl-C does: the fixtures'
    # teardown stops the servers, helpers and PostgreSQL clusters, which run in sessions of their own
    # that a signal to this process group does not reach. Left to its default, SIGTERM killed pytest
    # at once and left them all running.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM while tearing down is final
    raise KeyboardInterrupt("SIGTERM")


def pytest_collection_modifyitems(items) -> None:
    # The suite goes into the JUnit file with each test: when the matrix runs several suites in
    # one session it splits the results into cells by this property.
    for item in items:
        suites = [m.name for m in item.iter_markers() if m.name in SUITES]
        if suites:
            item.user_properties.append(("ketta_suite", suites[0]))


_live: list = []
SUMMARIES: list[str] = []  # printed at the end of the run (e.g. the upgrade suite's time per phase)


def pytest_terminal_summary(terminalreporter) -> None:
    report_dir = suiteenv.get("KETTA_REPORT_DIR")
    if report_dir and phases.PHASES:
        phases.write(Path(report_dir), phases.env_name())
    if phases.PHASES:
        terminalreporter.write_sep("-", "time per phase")
        terminalreporter.write_line(phases.table())
    for text in SUMMARIES:
        terminalreporter.write_sep("-", "ketta")
        terminalreporter.write_line(text)


def _stop_all() -> None:
    while _live:
        thing = _live.pop()
        try:
            thing.stop()
        except Exception:
            pass


atexit.register(_stop_all)  # a failing fixture or Ctrl-C must not leave processes behind


@pytest.fixture(scope="session")
def measured(pytestconfig):
    """Under ``matrix --coverage`` (``KETTA_COVERAGE`` set): which build runs under coverage.py, as
    ``measured(version, patched)``. Only the patched release under test does; its configuration is written
    and ``COVERAGE_PROCESS_START`` names it for every process this session starts (only environments
    prepared with ``coverage=True`` act on it)."""
    root = os.environ.get(ENV_VAR)
    release = pytestconfig.getoption("--letta")
    if not root or pytestconfig.getoption("--no-patches"):
        return lambda version, patched: False
    series_dir = Path(pytestconfig.getoption("--patches"))
    os.environ["COVERAGE_PROCESS_START"] = str(write_rc(Path(root), release, touched_paths(series_dir, release)))
    return lambda version, patched: patched and version == release


@pytest.fixture(scope="session")
def letta_build(pytestconfig, measured):
    version, with_patches = pytestconfig.getoption("--letta"), not pytestconfig.getoption("--no-patches")
    with phase("wheel and environment"):
        build = prepare_server(
            version,
            patched=with_patches,
            series_dir=Path(pytestconfig.getoption("--patches")),
            build_root=Path(pytestconfig.getoption("--build-root")),
            index_url=pytestconfig.getoption("--index-url"),
            coverage=measured(version, with_patches),
        )
    # Its start helper preloads while PostgreSQL starts and the template database is migrated.
    warm_helper(build.python, build.letta)
    report_dir = suiteenv.get("KETTA_REPORT_DIR")
    if report_dir:  # what was tested, for the matrix report: sdist and wheel hashes, patches
        write_build_record(Path(report_dir), build)
    return build


@pytest.fixture(scope="session", autouse=True)
def start_helpers():
    """The servers' start helpers (KETTA_FORK_STARTS) are stopped with the session, after its
    servers (a helper stops any server it still runs as it exits): no process outlives the run."""
    yield
    stop_helpers()


@pytest.fixture(scope="session")
def patched(pytestconfig) -> bool:
    return not pytestconfig.getoption("--no-patches")


@pytest.fixture(scope="session")
def pg():
    uri = os.environ.get("LETTA_PG_URI")
    if uri:
        target = PgTarget.from_uri(uri)
        yield target
        drop_templates(target)
        return
    cluster = EmbeddedCluster()
    _live.append(cluster)
    try:
        with phase("postgres"):
            target = cluster.start()
        yield target
    finally:
        cluster.stop()
        if cluster in _live:
            _live.remove(cluster)


@pytest.fixture(scope="session")
def vendors():
    """Two OpenAI-compatible vendors with identical model lists on different base URLs."""
    started = {name: FakeVendor(name).start() for name in ("alpha", "beta")}
    yield started
    for v in started.values():
        v.stop()


class ServerPool:
    """One server per distinct environment, started on first use and stopped at session end."""

    def __init__(self, build, pg: PgTarget) -> None:
        self.build = build
        self.pg = pg
        self.servers: dict[tuple, LettaServer] = {}

    def get(self, **env: str) -> LettaServer:
        key = tuple(sorted(env.items()))
        if key not in self.servers:
            server = LettaServer(
                letta=self.build.letta, python=self.build.python, tree=self.build.tree, pg=self.pg,
                database=f"letta_{uuid.uuid4().hex[:10]}", extra_env=dict(env),
            )
            _live.append(server)
            self.servers[key] = server.start()
        return self.servers[key]

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
            if server in _live:
                _live.remove(server)


@pytest.fixture(scope="session")
def servers(letta_build, pg):
    pool = ServerPool(letta_build, pg)
    yield pool
    pool.stop()
    fail_on_key_leaks("at the end of the session (the servers' shutdown)")


def fail_on_key_leaks(when: str) -> None:
    """Fail with every finding of the key guard (compat_tests/keyguard.py) since the last call."""
    GUARD.scan()
    found = GUARD.take()
    if found:
        shown = "\n".join(found[:20]) + (f"\n… and {len(found) - 20} more" if len(found) > 20 else "")
        pytest.fail(f"{len(found)} provider key(s) leaked {when}:\n{shown}", pytrace=False)


@pytest.fixture(autouse=True)
def no_provider_key_leaks():
    """Every test of every suite: no key it (or an earlier test) sent shows up in a response it received
    or in what a Ketta server logged meanwhile (issue #28)."""
    yield
    fail_on_key_leaks("during this test")


class InOrganisation:
    """A server as seen by the one user of an organisation made for it: a request that names no
    user acts as that user. Suites that share a server (one session per release in the matrix)
    each get their own organisation, so none sees another's providers, models or agents."""

    def __init__(self, server: LettaServer, user_id: str) -> None:
        self.server = server
        self.user_id = user_id

    def request(self, method: str, path: str, body: object | None = None, user_id: str | None = None, timeout: float = 120):
        return self.server.request(method, path, body, user_id=user_id or self.user_id, timeout=timeout)

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, body: object, **kw):
        return self.request("POST", path, body, **kw)

    def patch(self, path: str, body: object, **kw):
        return self.request("PATCH", path, body, **kw)

    def delete(self, path: str, **kw):
        return self.request("DELETE", path, **kw)

    def __getattr__(self, name: str):  # url, sql, log_text, ...: the server's own
        return getattr(self.server, name)


@pytest.fixture(scope="module")
def server(servers) -> InOrganisation:
    """The server with Ketta's default flags (and vendor keys in its environment), shared by every
    suite of the session, as a user of an organisation of this test module's own."""
    default = servers.get()
    _, user = api.create_org_user(default)
    return InOrganisation(default, user)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    # No key in a report: a failure's text (a response body in an assertion, say) is masked.
    if report.longrepr is not None and GUARD.keys:
        text = str(report.longrepr)
        if GUARD.mask(text) != text:
            report.longrepr = GUARD.mask(text)
    report.sections = [(title, GUARD.mask(content)) for title, content in report.sections]
    if report.failed and "servers" in item.fixturenames:
        pool = item.funcargs.get("servers")
        keep = Path(suiteenv.get("KETTA_REPORT_DIR") or REPO / "reports") / "server-logs"
        for number, (key, srv) in enumerate(pool.servers.items() if pool else []):
            report.sections.append((f"letta server log {dict(key) or 'default'} (tail)", GUARD.mask(srv.log_tail(300))))
            # The whole log outlives the server's temporary home, for failures a tail cannot explain.
            keep.mkdir(parents=True, exist_ok=True)
            name = "".join(c if c.isalnum() or c in "._-" else "_" for c in item.nodeid)
            (keep / f"{name}.server{number}.log").write_text(GUARD.mask(srv.log_text()))
    if report.failed:
        for thing in _live:
            if isinstance(thing, EmbeddedCluster):
                report.sections.append(("postgres log (tail)", "\n".join(thing.log().splitlines()[-60:])))


@pytest.fixture(scope="session")
def lab(pg, pytestconfig, patched, request, measured):
    """The upgrade suite's lab (compat_tests/upgrade.py), one per session: its filled start databases
    serve the upgrade pairs and the encryption-key tests alike (one fill, not one per module)."""
    def prepare(version: str, with_patches: bool):
        return prepare_server(version, patched=with_patches, series_dir=Path(pytestconfig.getoption("--patches")),
                              build_root=Path(pytestconfig.getoption("--build-root")),
                              index_url=pytestconfig.getoption("--index-url"),
                              coverage=measured(version, with_patches))

    lab = UpgradeLab(pg, prepare, patched, _live, workers=suiteenv.integer("KETTA_UPGRADE_WORKERS"),
                     fills=RunStore(Cache().root / "fills"), reuse=reuse_allowed())
    # Only what this run will test (-k and -m deselect), in the order the tests ask for it.
    selected = [item.callspec.params["pair"] for item in request.session.items
                if hasattr(item, "callspec") and "pair" in item.callspec.params]
    lab.plan(list(dict.fromkeys(selected)))
    yield lab
    lab.close()
    SUMMARIES.append("upgrade suite, time per phase (work runs on parallel threads):\n" + lab.timing_table())
    fail_on_key_leaks("at the end of the session (the upgrade lab's servers' shutdown)")
