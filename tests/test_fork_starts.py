"""Fork starts (issue #33). Network: real patched 0.16.8 and 0.14.0 servers forked from their environment's start
helper (compat_tests/fork_helper.py) on a real PostgreSQL. Each child has its own environment and
database, a wrong key is refused exactly as a cold start refuses it, a child killed with SIGKILL
leaves the helper serving, the helper takes its servers with it when its client goes away, and the
upgrade lab's servers, started from its worker threads, fork from the helper it made for their
environment before their start, and alembic forked from the helper migrates as a subprocess does. Offline: the upgrade lab starts an environment's helper before the
migration, fill or upgrade that precedes that environment's first server, never on the start's own path."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from compat_tests import api, letta_server, upgrade
from compat_tests.letta_server import LettaServer, ServerFailed, migrated_template, preload_list, run_alembic, start_helper, stop_helpers
from compat_tests.pgcluster import EmbeddedCluster
from compat_tests.schema import differences
from compat_tests.upgrade import Side, UpgradeLab
from compat_tests.vendor import FakeVendor
from ketta_build.letta.serverenv import prepare_server
from ketta_build.letta.upgradepairs import Pair

REPO = Path(__file__).resolve().parent.parent
network = pytest.mark.network
NEWEST, OLDEST = "0.16.8", "0.14.0"
GC_STRESS = REPO / "compat_tests" / "gc_stress"  # the agent suite's sitecustomize: a collection in every request
# One xdist worker runs the module: its fixtures build two releases' servers and start a PostgreSQL,
# which a second worker would do again.
pytestmark = [pytest.mark.xdist_group("fork-starts")]


# The helper's own mechanics (a child killed, the client gone, starts from worker threads) are
# the same code on every release: shown on the newest. What differs by release (a child's own
# environment, the refusal of a wrong key, alembic) is shown on the oldest too.
mechanics = pytest.mark.parametrize("build", [NEWEST], indirect=True)


@pytest.fixture(scope="module", params=[NEWEST, OLDEST])
def build(request, tmp_path_factory):
    # The environment is keyed by the wheel's hash: a reproducible wheel finds the one other runs built.
    built = prepare_server(request.param, patched=True, series_dir=REPO / "patches",
                           build_root=tmp_path_factory.mktemp("build"))
    preload_list(built.python, built.letta)  # measured (once per environment): its first start forks
    return built


@pytest.fixture(scope="module")
def pg():
    cluster = EmbeddedCluster()
    try:
        yield cluster.start()
    finally:
        stop_helpers()
        cluster.stop()


@pytest.fixture
def forked(monkeypatch):
    monkeypatch.setenv("KETTA_FORK_STARTS", "1")
    monkeypatch.delenv("COVERAGE_PROCESS_START", raising=False)


def _server(build, pg, database: str | None = None, home: Path | None = None, prepare: bool = True, **env: str) -> LettaServer:
    return LettaServer(letta=build.letta, python=build.python, tree=build.tree, pg=pg,
                       database=database or f"fork_{uuid.uuid4().hex[:8]}", extra_env=env, home=home,
                       prepare_database=prepare)


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@network
def test_two_forked_servers_each_have_their_own_environment(build, pg, forked):
    one, two = _server(build, pg), _server(build, pg)
    try:
        one.start()
        two.start()
        helper = start_helper(build.python, build.letta)
        assert (one.start_mode, two.start_mode) == ("forked", "forked")
        assert _ppid(one.process.pid) == _ppid(two.process.pid) == helper.process.pid, "not children of the helper"
        for server in (one, two):
            # (Not /proc/PID/environ: that shows the block the helper was started with, whatever
            # the child's os.environ and C environment hold since.) Letta read its settings (LETTA_PG_URI) after the fork: what it serves is in its own database.
            org, _ = api.create_org_user(server)
            assert server.sql("SELECT count(*) FROM organizations WHERE id = :i", i=org)[0][0] == 1
            other = two if server is one else one
            assert other.sql("SELECT count(*) FROM organizations WHERE id = :i", i=org)[0][0] == 0
        # Each generated its own key, in its own home (HOME read after the fork).
        keys = {s.key_file.read_text().strip() for s in (one, two)}
        assert len(keys) == 2
    finally:
        one.stop()
        two.stop()
    assert one.process.returncode == two.process.returncode and one.process.returncode is not None


@pytest.fixture(scope="module")
def keyed(build, pg):
    """A database whose provider key is encrypted with an explicit key (started cold)."""
    vendor = FakeVendor("forkkeys").start()
    key = "fork-test-key-" + uuid.uuid4().hex
    server = _server(build, pg, LETTA_ENCRYPTION_KEY=key)
    try:
        server.start()
        api.create_provider(server, api.unique("Keyed"), vendor.base_url, "sk-fork-provider")
    finally:
        server.stop()
        vendor.stop()
    return server.database, key


def _refusal(build, pg, database: str, monkeypatch, fork: str) -> tuple[int, str, str, float]:
    monkeypatch.setenv("KETTA_FORK_STARTS", fork)
    server = _server(build, pg, database=database, prepare=False,
                     home=Path(tempfile.mkdtemp(prefix="ketta-fork-refusal-")), LETTA_ENCRYPTION_KEY="not-the-key")
    start = time.monotonic()
    with pytest.raises(ServerFailed):
        server.start()
    seconds = time.monotonic() - start
    lines = [line for line in server.log_text().splitlines() if line.strip()]
    assert str(server.home) in lines[-1], lines[-1]  # the key file it names is in its own home
    return server.exit_code, lines[-1].replace(str(server.home), "HOME"), server.start_mode, seconds


@network
def test_a_wrong_key_is_refused_by_a_forked_start_as_by_a_cold_one(build, pg, keyed, monkeypatch):
    database, _ = keyed
    before = pg.data(database)
    cold = _refusal(build, pg, database, monkeypatch, "0")
    fork = _refusal(build, pg, database, monkeypatch, "1")
    assert (cold[2], fork[2]) == ("cold", "forked")
    assert fork[:2] == cold[:2], f"forked {fork[:2]} vs cold {cold[:2]}"
    assert cold[0] == 1 and cold[1].startswith("Ketta: ") and "does not decrypt" in cold[1], cold
    assert pg.data(database) == before, "a refused server wrote to the database"
    print(f"refusal: cold {cold[3]:.1f} s, forked {fork[3]:.1f} s")


@network
@mechanics
def test_a_child_killed_leaves_the_helper_serving(build, pg, forked):
    first = _server(build, pg)
    first.start()
    helper = start_helper(build.python, build.letta)
    os.killpg(first.process.pid, signal.SIGKILL)
    assert first.process.wait(timeout=20) == -signal.SIGKILL
    second = _server(build, pg)
    try:
        second.start()
        assert second.start_mode == "forked" and start_helper(build.python, build.letta) is helper and helper.alive()
        assert second.get("/v1/health/").status == 200
    finally:
        second.stop()
    assert second.process.returncode is not None


@network
@mechanics
def test_the_helper_stops_its_servers_when_its_client_goes(build, pg, forked):
    server = _server(build, pg)
    server.start()
    helper = start_helper(build.python, build.letta)
    pid = server.process.pid
    stop_helpers()  # what the session's end (or this process's exit) does
    assert helper.process.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the server and anything it started are gone



@network
@mechanics
def test_a_server_given_pythonpath_forks_and_runs_its_sitecustomize_as_a_cold_start_does(build, pg, forked):
    """The agent suite's gc stress (a sitecustomize on PYTHONPATH) started cold: interpreter variables differed."""
    server = _server(build, pg, PYTHONPATH=str(GC_STRESS))
    try:
        server.start()
        assert server.start_mode == "forked"
        assert "ketta-test: gc threshold 100" in server.log_text()
        assert server.get("/v1/health/").status == 200
    finally:
        server.stop()


def test_a_pythonpath_entry_that_would_shadow_an_imported_module_is_refused(tmp_path):
    from compat_tests.fork_helper import python_path_refusal

    clean, shadowing = tmp_path / "clean", tmp_path / "shadowing"
    clean.mkdir()
    shadowing.mkdir()
    (clean / "ketta_never_imported_here.py").write_text("")
    (clean / "sitecustomize.py").write_text("")
    (shadowing / "json").mkdir()  # a package named as a module this process imported
    assert python_path_refusal(f"{clean}{os.pathsep}{tmp_path / 'missing'}") is None
    assert "json" in python_path_refusal(f"{clean}{os.pathsep}{shadowing}")
    assert "not an absolute path" in python_path_refusal("relative/dir")
    assert "not an absolute path" in python_path_refusal(f"{clean}{os.pathsep}")


def test_a_child_puts_pythonpath_where_the_interpreter_does_and_runs_its_sitecustomize(tmp_path):
    import subprocess

    (tmp_path / "sitecustomize.py").write_text("import sys\nprint('site ran', file=sys.stderr)\n")
    probe = ("import sys; from compat_tests import fork_helper; sys.path[0] = '/script/dir'; "
             "assert 'sitecustomize' not in sys.modules; "
             f"fork_helper._python_path({str(tmp_path)!r}); print(sys.path[:2])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(["/script/dir", str(tmp_path)])
    assert done.stderr == "site ran\n"


# ------------------------------------------------------------------ the upgrade lab (issue #33)


def _lab_with_fake_builds(monkeypatch) -> tuple[UpgradeLab, dict, threading.Event]:
    """An upgrade lab whose builds are made up (one environment per release and flavour) and whose
    ``start_helper`` only records which environment asked: no server, no PostgreSQL."""
    monkeypatch.setenv("KETTA_FORK_STARTS", "1")
    monkeypatch.delenv("COVERAGE_PROCESS_START", raising=False)
    asked: dict[str, str] = {}
    called = threading.Event()

    def fake_start_helper(python, letta):
        asked[str(python)] = threading.current_thread().name
        called.set()

    monkeypatch.setattr(upgrade, "start_helper", fake_start_helper)

    def prepare(version, patched):
        env = Path(f"/envs/{'ketta' if patched else 'stock'}-{version}")
        return SimpleNamespace(python=env / "bin" / "python", letta=env / "bin" / "letta", tree=env / "tree")

    lab = UpgradeLab(pg=SimpleNamespace(clone_database=lambda *args: None), prepare=prepare, patched=True, keep=[], workers=1)
    return lab, asked, called


class _Stop(Exception):
    """Raised by a stub where the lab's real work (PostgreSQL, alembic) would begin."""


def test_the_lab_starts_a_start_sides_helper_before_migrating_for_its_fill(monkeypatch):
    lab, asked, called = _lab_with_fake_builds(monkeypatch)

    def migrated(side):
        raise _Stop  # the migration before the fill's server start: the helper preloads meanwhile

    monkeypatch.setattr(lab, "migrated", migrated)
    with pytest.raises(_Stop):
        lab._made(Side("0.16.5", "stock"))
    assert called.wait(10), "the fill's server would wait for its helper to be made and preload"
    assert list(asked) == ["/envs/stock-0.16.5/bin/python"]
    assert asked["/envs/stock-0.16.5/bin/python"].startswith("warm-helper-"), "made on the start's own path"


def test_the_lab_starts_an_end_sides_helper_before_the_fill_and_upgrade(monkeypatch):
    lab, asked, called = _lab_with_fake_builds(monkeypatch)

    def filled(side):
        raise _Stop  # the start side's fill and the upgrade come before the end side's server

    monkeypatch.setattr(lab, "filled", filled)
    with pytest.raises(_Stop):
        lab._upgraded(Pair(Side("0.16.5", "ketta"), Side("0.16.8", "stock"), "a test"))
    assert called.wait(10), "the upgraded database's server would wait for its helper to be made and preload"
    assert list(asked) == ["/envs/stock-0.16.8/bin/python"]


def test_the_lab_starts_no_helper_when_servers_start_cold(monkeypatch):
    lab, asked, _ = _lab_with_fake_builds(monkeypatch)
    monkeypatch.setenv("KETTA_FORK_STARTS", "0")
    assert lab.warm(Side("0.16.8", "ketta")) is None
    assert asked == {}


@network
@mechanics
def test_the_labs_servers_fork_from_the_helper_it_warmed_even_from_its_worker_threads(build, pg, forked):
    """The lab starts servers from its worker threads, for two environments a pair (here the patched
    build's only): each forks from the helper ``warm`` made (the helper's process forks, not the lab's)."""
    lab = UpgradeLab(pg, lambda version, patched: build, patched=True, keep=[], workers=2)
    side = Side(build.version, "ketta")
    try:
        lab.warm(side).join(timeout=600)
        helper = start_helper(build.python, build.letta)
        databases = []
        for _ in range(2):
            name = f"fork_lab_{uuid.uuid4().hex[:8]}"
            pg.clone_database(migrated_template(pg, build.python, build.tree), name)
            databases.append(name)
        with ThreadPoolExecutor(max_workers=2) as pool:
            servers = list(pool.map(lambda db: lab.start_server(side, db), databases))
        try:
            assert [s.start_mode for s in servers] == ["forked", "forked"]
            assert {_ppid(s.process.pid) for s in servers} == {helper.process.pid}
            assert start_helper(build.python, build.letta) is helper, "a second helper was made for the environment"
        finally:
            for server in servers:
                lab.stop_server(server)
        assert lab.timing_table().count("(forked;") == 2, lab.timing_table()
    finally:
        lab.close()


@network
def test_alembic_forked_from_the_helper_migrates_as_a_subprocess_does(build, pg, monkeypatch):
    """The suites' migrations run as children of the start helper (``python -m alembic`` with the
    third-party modules preloaded): the same schema and output as a subprocess, a failure reported."""
    from compat_tests import phases

    monkeypatch.setenv("KETTA_FORK_STARTS", "1")
    monkeypatch.delenv("COVERAGE_PROCESS_START", raising=False)
    stop_helpers()
    before = list(phases.MIGRATIONS)
    database = f"fork_alembic_{uuid.uuid4().hex[:8]}"
    pg.create_database(database)
    run_alembic(build.python, build.tree, pg.alembic_uri(database), "current")
    # No helper yet: not waited for (it may have to measure its preload list), but started for later.
    assert phases.MIGRATIONS[len(before):] == ["subprocess: the start helper was not ready yet"]
    pg.drop_database(database)
    start_helper(build.python, build.letta).request(op="info")  # made and done preloading

    dumps, outputs = {}, {}
    for fork in ("0", "1"):
        monkeypatch.setenv("KETTA_FORK_STARTS", fork)
        monkeypatch.delenv("COVERAGE_PROCESS_START", raising=False)
        before = list(phases.MIGRATIONS)
        database = f"fork_alembic_{uuid.uuid4().hex[:8]}"
        pg.create_database(database)
        outputs[fork] = run_alembic(build.python, build.tree, pg.alembic_uri(database), "upgrade", "head")
        dumps[fork] = pg.dump(database, "--schema-only")
        assert phases.MIGRATIONS[len(before):] == (["forked"] if fork == "1" else ["subprocess"])
        with pytest.raises(RuntimeError, match="no-such-revision"):
            run_alembic(build.python, build.tree, pg.alembic_uri(database), "upgrade", "no-such-revision")
        pg.drop_database(database)
    assert differences(dumps["0"], dumps["1"]) == []
    assert "Running upgrade" in outputs["1"] and outputs["1"].count("Running upgrade") == outputs["0"].count("Running upgrade")



def _server_of_a_made_up_environment(tmp_path, monkeypatch) -> tuple[LettaServer, list]:
    monkeypatch.setenv("KETTA_FORK_STARTS", "1")
    monkeypatch.delenv("COVERAGE_PROCESS_START", raising=False)
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    warmed: list = []
    monkeypatch.setattr(letta_server, "warm_helper", lambda python, letta: warmed.append(python))
    server = LettaServer(letta=env / "bin" / "letta", python=env / "bin" / "python", tree=tmp_path, pg=None,
                         database="unused", home=tmp_path, log_path=tmp_path / "server.log")
    return server, warmed


def test_a_start_does_not_wait_for_a_new_environments_preload_list_to_be_measured(tmp_path, monkeypatch):
    """Measured in a one-release run on a busy machine: three new environments' first starts waited
    70-96 s for their helper (its preload list measured first), where a cold start takes 35-45 s."""
    server, warmed = _server_of_a_made_up_environment(tmp_path, monkeypatch)
    monkeypatch.setattr(letta_server, "start_helper", lambda *a: pytest.fail("waited for the helper to be made"))
    assert server._fork(["letta", "server"], {}) is None
    assert server.start_mode == "cold: this environment's preload list is not measured yet (measured in the background now)"
    assert warmed == [server.python], "the list is not being measured for the next start"


def test_a_start_waits_for_a_helper_whose_preload_list_is_known(tmp_path, monkeypatch):
    server, warmed = _server_of_a_made_up_environment(tmp_path, monkeypatch)
    version, cached = letta_server._preload_file(server.python)
    cached.write_text(json.dumps({"helper": version, "modules": [], "reads": [], "excluded": {}}))
    helper = SimpleNamespace(request=lambda **body: {"pid": 4242})
    monkeypatch.setattr(letta_server, "start_helper", lambda *a: helper)
    process = server._fork(["letta", "server"], {})
    assert server.start_mode == "forked" and process.pid == 4242 and warmed == []


def test_a_servers_own_temporary_home_goes_when_the_process_exits_and_a_given_one_stays(tmp_path, monkeypatch):
    """Every server start made a ``ketta-letta-home-*`` directory that nothing removed: 246 of them
    (347 MB with their logs) were left in /tmp after a day of runs."""
    monkeypatch.setenv("KETTA_FORK_STARTS", "0")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    env = tmp_path / "env" / "bin"
    env.mkdir(parents=True)
    # A made-up `letta server`: answers /v1/health/ on the port it is given, as the real one does.
    (env / "letta").write_text(
        f"#!{sys.executable}\n"
        "import http.server, sys\n"
        "port = int(sys.argv[sys.argv.index('--port') + 1])\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers()\n"
        "        self.wfile.write(b'{}')\n"
        "http.server.HTTPServer(('127.0.0.1', port), H).serve_forever()\n")
    (env / "letta").chmod(0o755)
    pg = SimpleNamespace(server_uri=lambda database: f"postgresql://127.0.0.1:1/{database}")
    (tmp_path / "given").mkdir()
    own = LettaServer(letta=env / "letta", python=env / "python", tree=tmp_path, pg=pg, database="d",
                      prepare_database=False).start()
    given = LettaServer(letta=env / "letta", python=env / "python", tree=tmp_path, pg=pg, database="d",
                        prepare_database=False, home=tmp_path / "given").start()
    own.stop()
    given.stop()
    assert own.home.parent == tmp_path / "tmp" and own.home.name.startswith("ketta-letta-home-")
    assert own.log_path.is_file(), "the log must outlive the server for the failure reports"
    letta_server._remove_own_homes()  # what the process does at exit
    assert not own.home.exists()
    assert given.log_path.is_file(), "a home the caller gave is the caller's"
