"""Fork starts (issue #33, network): real patched 0.16.8 and 0.14.0 servers forked from their environment's start
helper (compat_tests/fork_helper.py) on a real PostgreSQL. Each child has its own environment and
database, a wrong key is refused exactly as a cold start refuses it, a child killed with SIGKILL
leaves the helper serving, and the helper takes its servers with it when its client goes away."""

from __future__ import annotations

import os
import signal
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from compat_tests import api
from compat_tests.letta_server import LettaServer, ServerFailed, start_helper, stop_helpers
from compat_tests.pgcluster import EmbeddedCluster
from compat_tests.vendor import FakeVendor
from ketta_build.serverenv import prepare_server

REPO = Path(__file__).resolve().parent.parent
# One xdist worker runs the module: its fixtures build two releases' servers and start a PostgreSQL,
# which a second worker would do again.
pytestmark = [pytest.mark.network, pytest.mark.xdist_group("fork-starts")]


@pytest.fixture(scope="module", params=["0.16.8", "0.14.0"])  # the newest and the oldest release
def build(request, tmp_path_factory):
    # The environment is keyed by the wheel's hash: a reproducible wheel finds the one other runs built.
    return prepare_server(request.param, patched=True, series_dir=REPO / "patches",
                          build_root=tmp_path_factory.mktemp("build"))


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


def test_the_helper_stops_its_servers_when_its_client_goes(build, pg, forked):
    server = _server(build, pg)
    server.start()
    helper = start_helper(build.python, build.letta)
    pid = server.process.pid
    stop_helpers()  # what the session's end (or this process's exit) does
    assert helper.process.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the server and anything it started are gone
