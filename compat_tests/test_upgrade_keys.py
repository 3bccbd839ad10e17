"""upgrade (moves): the encryption key follows the database.

A second server on the same database (another replica, or the database restored on a new host)
must use the key the stored secrets were written with. A server with no key, with a key it
generated itself, or with a wrong explicit key refuses to start with one line and writes nothing;
``python -m letta.ketta rotate-key`` moves every stored secret to a new key in one transaction.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import api
from .conftest import _live
from .letta_server import LettaServer, ServerFailed
from .upgrade import Side

pytestmark = pytest.mark.upgrade


@dataclass
class Keyed:
    database: str
    home: Path
    key: str  # the key the first server generated
    provider_key: str
    vendor: object  # the FakeVendor the agent's provider points at
    agent_id: str


def _server(letta_build, pg, database: str, home: Path | None, prepare: bool = False, **env: str) -> LettaServer:
    return LettaServer(letta=letta_build.letta, python=letta_build.python, tree=letta_build.tree, pg=pg,
                       database=database, extra_env=env, home=home, prepare_database=prepare)


@pytest.fixture(scope="module")
def keyed(lab, pg, pytestconfig):
    """A database whose provider keys were encrypted with the key its first server generated: a copy of
    the upgrade lab's database filled by this release's Ketta server (its home, key file included),
    so the key tests start no server of their own to make it. (With --no-patches the lab's "Ketta"
    side is stock Letta, which generates no key: the fixture fails, and the cells are red as they must be.)"""
    fill = lab.filled(Side(pytestconfig.getoption("--letta"), "ketta"))
    assert fill.key, "the Ketta server that filled the database generated no key"
    database = f"letta_key_{uuid.uuid4().hex[:8]}"
    pg.clone_database(fill.template, database)
    home = _new_home()
    shutil.copytree(fill.home / ".letta", home / ".letta")
    facts = fill.live[fill.agent_provider]
    yield Keyed(database, home, fill.key, facts["key"], fill.vendors[facts["vendor"]], fill.agent_id)
    pg.drop_database(database)


def _refused(letta_build, pg, database: str, home: Path | None, **env: str) -> str:
    """Start a server that must refuse; return its last log line."""
    server = _server(letta_build, pg, database, home, **env)
    try:
        server.start()
    except ServerFailed:
        pass
    else:
        server.stop()
        pytest.fail("the server started")
    assert server.exit_code not in (None, 0), f"exit code {server.exit_code}"
    lines = [line for line in server.log_text().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Ketta: "), "the refusal is not one Ketta line at the end:\n" + "\n".join(lines[-20:])
    return lines[-1]


def _answers(letta_build, pg, keyed: Keyed, database: str, home: Path | None, **env: str) -> None:
    server = _server(letta_build, pg, database, home, **env)
    _live.append(server)
    try:
        server.start()
        assert {r.bearer for r in api.talk(server, keyed.agent_id, keyed.vendor, "after the move")} == {keyed.provider_key}
    finally:
        server.stop()
        _live.remove(server)


def _new_home() -> Path:
    return Path(tempfile.mkdtemp(prefix="ketta-letta-home-"))


def _with_key_file(key: str) -> Path:
    home = _new_home()
    (home / ".letta").mkdir()
    path = home / ".letta" / "ketta-encryption.key"
    path.write_text(key + "\n")
    path.chmod(0o600)
    return home


def test_no_key_on_a_database_with_keys_is_refused(letta_build, pg, keyed):
    before = pg.data(keyed.database)
    home = _new_home()
    line = _refused(letta_build, pg, keyed.database, home)
    assert "holds encrypted secrets" in line and "LETTA_ENCRYPTION_KEY" in line, line
    assert not (home / ".letta" / "ketta-encryption.key").exists(), "a key was generated for a database with secrets"
    assert pg.data(keyed.database) == before, "the refused server wrote to the database"


def test_another_generated_key_is_refused(letta_build, pg, keyed):
    before = pg.data(keyed.database)
    other = secrets.token_urlsafe(48)
    home = _with_key_file(other)
    line = _refused(letta_build, pg, keyed.database, home)
    assert "does not decrypt" in line and str(home / ".letta" / "ketta-encryption.key") in line, line
    assert (home / ".letta" / "ketta-encryption.key").read_text().strip() == other
    assert pg.data(keyed.database) == before, "the refused server wrote to the database"


def test_wrong_explicit_key_is_refused(letta_build, pg, keyed):
    before = pg.data(keyed.database)
    line = _refused(letta_build, pg, keyed.database, keyed.home, LETTA_ENCRYPTION_KEY="not-the-key-" + uuid.uuid4().hex)
    assert "from LETTA_ENCRYPTION_KEY does not decrypt" in line, line
    assert pg.data(keyed.database) == before, "the refused server wrote to the database"


def test_the_key_set_explicitly_serves_a_second_host(letta_build, pg, keyed):
    home = _new_home()
    _answers(letta_build, pg, keyed, keyed.database, home, LETTA_ENCRYPTION_KEY=keyed.key)
    assert not (home / ".letta" / "ketta-encryption.key").exists(), "a server with LETTA_ENCRYPTION_KEY wrote a key file"


def _rotate(letta_build, pg, database: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LETTA_", "KETTA_"))}
    return subprocess.run(
        [str(letta_build.python), "-m", "letta.ketta", "rotate-key"], capture_output=True, text=True, timeout=600, cwd=home,
        env={**clean, "HOME": str(home), "LETTA_PG_URI": pg.server_uri(database), **env},
    )


def _copy(pg, keyed: Keyed) -> tuple[str, Path]:
    database = f"letta_keycopy_{uuid.uuid4().hex[:8]}"
    pg.clone_database(keyed.database, database)
    home = _new_home()
    shutil.copytree(keyed.home / ".letta", home / ".letta")
    return database, home


def test_rotating_the_generated_key(letta_build, pg, keyed):
    database, home = _copy(pg, keyed)
    try:
        done = _rotate(letta_build, pg, database, home)
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        assert "re-encrypted" in done.stdout, done.stdout
        new = (home / ".letta" / "ketta-encryption.key").read_text().strip()
        assert new != keyed.key
        assert (home / ".letta" / "ketta-encryption.key").stat().st_mode & 0o077 == 0
        _refused(letta_build, pg, database, _new_home(), LETTA_ENCRYPTION_KEY=keyed.key)
        _answers(letta_build, pg, keyed, database, home)
    finally:
        pg.drop_database(database)


def test_rotating_an_explicit_key(letta_build, pg, lab, keyed):
    """As the generated key's rotation (whose server answers on the rotated database), with both keys given.

    A server that answers with a key from LETTA_ENCRYPTION_KEY is proven by the second-host test, so
    here the rotated secrets are read with the release's own crypto (every one under the new key, the
    agent's provider key among them) and the old key is refused by the server's early check: no
    full server start for what those two prove."""
    database, home = _copy(pg, keyed)
    new = secrets.token_urlsafe(32)
    try:
        done = _rotate(letta_build, pg, database, _new_home(), LETTA_ENCRYPTION_KEY=keyed.key, KETTA_NEW_ENCRYPTION_KEY=new)
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]
        stored = _secrets(pg, database)
        assert "providers.api_key_enc" in {where for where, _ in stored}, "no provider key is stored encrypted"
        read = lab.crypto(letta_build.python, new, [value for _, value in stored])
        assert all(r["encrypted"] and r["plain"] for r in read), f"secrets the new key does not open: {read}"
        assert keyed.provider_key in {r["plain"] for r in read}, "the agent's provider key did not survive the rotation"
        assert not any(r["plain"] for r in lab.crypto(letta_build.python, keyed.key, [v for _, v in stored])), \
            "the old key still opens a secret"
        line = _refused(letta_build, pg, database, _new_home(), LETTA_ENCRYPTION_KEY=keyed.key)
        assert "from LETTA_ENCRYPTION_KEY does not decrypt" in line, line
    finally:
        pg.drop_database(database)


def _secrets(pg, database: str) -> list[tuple[str, str]]:
    """Every stored secret: each non-empty value of every ``*_enc`` column (``table.column``, value)."""
    conn = pg.connect(database)
    try:
        columns = conn.run("SELECT table_name, column_name FROM information_schema.columns "
                           "WHERE table_schema = current_schema() AND column_name LIKE '%\\_enc' ORDER BY 1, 2")
        found = []
        for table, column in columns:
            found += [(f"{table}.{column}", r[0]) for r in conn.run(
                f'SELECT "{column}" FROM "{table}" WHERE "{column}" IS NOT NULL AND "{column}" <> \'\'')]
        return found
    finally:
        conn.close()


def test_rotation_stops_before_writing_on_a_secret_it_cannot_read(letta_build, pg, keyed):
    database, home = _copy(pg, keyed)
    try:
        foreign = subprocess.run(
            [str(letta_build.python), "-c",
             "import sys; from letta.helpers.crypto_utils import CryptoUtils; print(CryptoUtils.encrypt('sk-foreign', sys.argv[1]))",
             secrets.token_urlsafe(32)],
            capture_output=True, text=True, check=True, cwd=home,
        ).stdout.strip().splitlines()[-1]
        conn = pg.connect(database)
        try:
            conn.run("UPDATE providers SET access_key_enc = :v", v=foreign)
        finally:
            conn.close()
        before = pg.data(database)
        done = _rotate(letta_build, pg, database, home)
        assert done.returncode == 2, done.stdout + done.stderr[-3000:]
        assert "providers" in done.stderr and "nothing was changed" in done.stderr, done.stderr[-3000:]
        assert pg.data(database) == before, "the refused rotation wrote to the database"
        assert (home / ".letta" / "ketta-encryption.key").read_text().strip() == keyed.key
        assert not (home / ".letta" / "ketta-encryption.key.new").exists()
    finally:
        pg.drop_database(database)
