"""Deployable wheels (network): reproducible, checked by twine and check-wheel-contents, every file the
git tree its provenance names, an SBOM two validators accept, and a plain virtualenv holding only the
wheel and its constraints migrates a database, serves an agent through a provider, and is upgraded
to the next build number's wheel."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from cyclonedx_js import cyclonedx_js  # noqa: F401 (a fixture)
from wheelcheck import check_against_tree, members

from ketta_build.cli import main
from ketta_build.uvcmd import run_uv
from ketta_build.wheel import read_build_number

REPO = Path(__file__).resolve().parent.parent
# One xdist worker runs the module: its wheels fixture builds the 0.16.8 wheel twice, which a second
# worker would do again.
pytestmark = [pytest.mark.network, pytest.mark.xdist_group("wheel-deploy")]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    """The 0.16.8 wheel built twice (each run applies the series in a tree of its own; two output
    directories, a second apart)."""
    root = tmp_path_factory.mktemp("wheels")
    cache = root / "cache"
    for n in (1, 2):
        rc = main(["wheel", "--letta", "0.16.8", "--dist-dir", str(root / f"dist{n}"), "--patches", str(REPO / "patches"),
                   "--cache-dir", str(cache)])
        assert rc == 0
        time.sleep(1.1)
    return root


def _wheel(dist: Path) -> Path:
    [wheel] = sorted(dist.glob("*.whl"))
    return wheel


def test_wheel_name_sums_and_reproducibility(wheels):
    number = read_build_number(REPO / "patches")
    one, two = _wheel(wheels / "dist1"), _wheel(wheels / "dist2")
    assert one.name == f"letta-0.16.8+ketta.{number}-py3-none-any.whl"
    assert one.read_bytes() == two.read_bytes(), "two builds of the same series gave different wheels"
    sums = dict(reversed(line.split("  ")) for line in (wheels / "dist1" / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {one.name, "constraints-0.16.8.txt"}
    for name, digest in sums.items():
        assert hashlib.sha256((wheels / "dist1" / name).read_bytes()).hexdigest() == digest


def test_twine_and_check_wheel_contents(wheels):
    wheel = _wheel(wheels / "dist1")
    twine = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel)], capture_output=True, text=True)
    assert twine.returncode == 0, twine.stdout + twine.stderr
    # W004 (module not at an importable path) fires only for upstream's alembic revisions, whose
    # file names start with a hex digit: alembic loads them by path, nobody imports them.
    proc = subprocess.run([sys.executable, "-m", "check_wheel_contents", "--ignore", "W004", str(wheel)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    full = subprocess.run([sys.executable, "-m", "check_wheel_contents", str(wheel)], capture_output=True, text=True).stdout
    offenders = [line.strip() for line in full.splitlines() if line.startswith("  ")]
    assert offenders and all(line.startswith("letta/ketta_alembic/versions/") for line in offenders), offenders


def test_every_file_of_the_wheel_is_the_tree_its_provenance_names(wheels):
    """The provenance's git tree is the one `ketta-build apply` makes of the same series, and every file
    of the wheel is a blob of it (or a copy of one), but for the files the wheel adds, named here."""

    wheel = _wheel(wheels / "dist1")
    files = members(wheel)
    provenance = json.loads(files["letta/ketta_provenance.json"])
    assert provenance["schema"] == "ketta-build/provenance/3" and provenance["project"] == "letta"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", "patches"], cwd=REPO,
                                capture_output=True, text=True).stdout)
    assert provenance["series"] == {"commit": commit or None, "dirty": dirty or not commit}
    tree = wheels / "apply"
    assert main(["apply", "--letta", "0.16.8", "--out", str(tree), "--patches", str(REPO / "patches"),
                 "--cache-dir", str(wheels / "cache")]) == 0
    assert subprocess.run(["git", "rev-parse", "HEAD^{tree}"], cwd=tree, capture_output=True, text=True,
                          check=True).stdout.strip() == provenance["tree"]
    info = f"letta-{provenance['version']}.dist-info"
    own = {"letta/ketta_provenance.json",  # ketta-build's
           f"{info}/sboms/ketta.cdx.json",  # ketta-build's
           f"{info}/METADATA", f"{info}/WHEEL", f"{info}/entry_points.txt", f"{info}/RECORD"}  # hatchling's
    compared = check_against_tree(wheel, tree, provenance["tree"], own, copies={f"{info}/licenses/LICENSE": "LICENSE"})
    assert compared + len(own) == len(files), "every file was compared with a blob or is named above"


def test_the_wheel_carries_its_sbom_with_pedigree(wheels, cyclonedx_js):  # noqa: F811
    """PEP 770: .dist-info/sboms/ketta.cdx.json, valid CycloneDX 1.6 for two validators, whose pedigree
    names upstream's sdist and every applied patch (in series order) as the provenance records them,
    and whose components are the pins of the constraints shipped beside the wheel."""
    import zipfile

    from ketta_build.sbom import read_constraints, validate
    from ketta_build.wheel import sbom_member

    dist = wheels / "dist1"
    wheel = _wheel(dist)
    member = sbom_member(wheel)
    assert member == f"letta-0.16.8+ketta.{read_build_number(REPO / 'patches')}.dist-info/sboms/ketta.cdx.json"
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(member).decode()
        provenance = json.loads(archive.read("letta/ketta_provenance.json"))
        record = archive.read(member.rsplit("/", 2)[0] + "/RECORD").decode()
    assert f"{member},sha256=" in record, "the SBOM is in RECORD like any other file"
    validate(text)
    assert cyclonedx_js.errors(text) is None
    data = json.loads(text)
    root = data["metadata"]["component"]
    assert root["purl"] == f"pkg:pypi/letta@{provenance['version'].replace('+', '%2B')}"
    [ancestor] = root["pedigree"]["ancestors"]
    sdist = provenance["upstream"]
    assert ancestor["purl"] == "pkg:pypi/letta@0.16.8"
    assert ancestor["hashes"] == [{"alg": "SHA-256", "content": sdist["sha256"]}]
    applied = {p["name"]: p["sha256"] for p in provenance["patches"] if p["outcome"] != "already-upstream"}
    assert len(applied) >= 7
    texts = {p["diff"]["url"]: p["diff"]["text"]["content"] for p in root["pedigree"]["patches"]}
    assert list(texts) == [f"patches/{name}" for name in applied], "the series order"
    for name, digest in applied.items():
        assert hashlib.sha256(texts[f"patches/{name}"].encode()).hexdigest() == digest, name
    properties = {p["name"]: p["value"] for p in root["properties"]}
    assert properties["ketta:git-tree"] == provenance["tree"]
    assert properties["ketta:series-dirty"] == json.dumps(provenance["series"]["dirty"])
    pins = read_constraints((dist / "constraints-0.16.8.txt").read_text())
    from packageurl import PackageURL

    assert {c["purl"] for c in data["components"]} == {PackageURL("pypi", name=p.name, version=p.version).to_string()
                                                       for p in pins}
    assert len(pins) > 200


def _venv(path: Path, wheel: Path, constraints: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    run_uv(["pip", "install", "--quiet", "--compile-bytecode", "--python", str(path / "bin" / "python"), "-c",
            str(constraints), f"letta[server,postgres] @ {wheel.as_uri()}"])
    return path


def _upgrade(venv: Path, wheel: Path, constraints: Path) -> None:
    before = {p.name for p in (venv / "lib").glob("python*/site-packages/*.dist-info")}
    run_uv(["pip", "install", "--quiet", "--compile-bytecode", "--python", str(venv / "bin" / "python"), "-c",
            str(constraints), f"letta[server,postgres] @ {wheel.as_uri()}"])
    after = {p.name for p in (venv / "lib").glob("python*/site-packages/*.dist-info")}
    assert {n for n in before ^ after if not n.startswith("letta-")} == set(), "the upgrade changed more than letta"
    assert len([n for n in after if n.startswith("letta-")]) == 1


def _migrate(venv: Path, pg, database: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LETTA_", "KETTA_"))}
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "letta.ketta_migrations", "upgrade"], cwd=cwd,
                          env={**env, "LETTA_PG_URI": pg.server_uri(database)}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def test_a_plain_virtualenv_with_the_wheel_migrates_serves_and_upgrades(wheels, tmp_path, monkeypatch):
    from compat_tests import api
    from compat_tests.letta_server import LettaServer
    from compat_tests.pgcluster import EmbeddedCluster
    from compat_tests.vendor import FakeVendor

    # A deployer's server starts as `letta server` does, cold: no start helper is made (or its preload
    # list measured) for an environment that starts one server in its life.
    monkeypatch.setenv("KETTA_FORK_STARTS", "0")
    dist = wheels / "dist1"
    venv = _venv(tmp_path / "venv", _wheel(dist), dist / "constraints-0.16.8.txt")
    # The next build number's wheel: the same series, build-number + 1.
    series = tmp_path / "patches"
    shutil.copytree(REPO / "patches", series)
    number = read_build_number(series) + 1
    (series / "build-number").write_text(f"{number}\n")
    assert main(["wheel", "--letta", "0.16.8", "--dist-dir", str(tmp_path / "dist-next"), "--patches", str(series),
                 "--cache-dir", str(wheels / "cache")]) == 0

    empty = tmp_path / "nowhere"  # no alembic.ini, no source tree: the wheel's own migrations
    empty.mkdir()
    cluster = EmbeddedCluster()
    vendor = FakeVendor("deploy").start()
    servers = []
    try:
        pg = cluster.start()
        database = f"deploy_{uuid.uuid4().hex[:8]}"
        pg.create_database(database)
        log = _migrate(venv, pg, database, empty)
        assert "ketta0002" in log
        home = tmp_path / "home"
        home.mkdir()
        server = LettaServer(letta=venv / "bin" / "letta", python=venv / "bin" / "python", tree=empty, pg=pg,
                             database=database, home=home, prepare_database=False)
        servers.append(server)
        server.start()
        assert f"letta 0.16.8+ketta.{number - 1} (upstream letta-0.16.8.tar.gz" in server.log_text()
        provider = api.create_provider(server, "Deployed", vendor.base_url, "sk-deployed")
        agent = api.create_agent_ok(server, f"{provider['name']}/gpt-4o-mini")
        vendor.clear()
        api.ok(api.send_message(server, agent["id"], "hello from a deployed wheel"))
        assert {r.bearer for r in vendor.chat_requests()} == {"sk-deployed"}
        server.stop()

        # The upgrade as a deployer makes it: the next wheel installed over the running environment's
        # (only letta changes hands), then its migrations, then the server again.
        _upgrade(venv, _wheel(tmp_path / "dist-next"), tmp_path / "dist-next" / "constraints-0.16.8.txt")
        _migrate(venv, pg, database, empty)
        upgraded = LettaServer(letta=venv / "bin" / "letta", python=venv / "bin" / "python", tree=empty, pg=pg,
                               database=database, home=home, prepare_database=False)
        servers.append(upgraded)
        upgraded.start()
        assert f"letta 0.16.8+ketta.{number} (upstream" in upgraded.log_text()
        vendor.clear()
        api.ok(api.send_message(upgraded, agent["id"], "hello after the upgrade"))
        assert {r.bearer for r in vendor.chat_requests()} == {"sk-deployed"}
    finally:
        for server in servers:
            server.stop()
        vendor.stop()
        cluster.stop()


def test_a_wheel_is_built_once_per_commit_and_build_number(tmp_path):
    """Server environments and serve reuse the wheel of an unchanged commit; anything else rebuilds."""
    from ketta_build.buildtree import git
    from ketta_build.letta.wheel import build_wheel_once

    tree = tmp_path / "tree"
    (tree / "letta").mkdir(parents=True)
    (tree / "pyproject.toml").write_text('[project]\nname = "letta"\nversion = "0.16.8"\n\n[build-system]\n'
                                         'requires = ["hatchling"]\nbuild-backend = "hatchling.build"\n')
    (tree / "letta" / "__init__.py").write_text("")
    for args in (("init", "-q"), ("add", "-A"), ("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")):
        git(tree, *args)
    dist = tmp_path / "dist"
    first = build_wheel_once(tree, dist, None)
    stamp = first.path.stat().st_mtime_ns
    again = build_wheel_once(tree, dist, None)
    assert again == first and again.path.stat().st_mtime_ns == stamp, "an unchanged commit is not rebuilt"
    record = dist / ".ketta-built-from.json"
    old_form = {k: v for k, v in json.loads(record.read_text()).items() if k != "provenance"}
    record.write_text(json.dumps(old_form))  # a wheel of an earlier provenance schema
    assert build_wheel_once(tree, dist, None).path.stat().st_mtime_ns != stamp, "a wheel of another provenance is rebuilt"
    first.path.write_bytes(b"tampered")
    assert build_wheel_once(tree, dist, None).sha256 == first.sha256, "a wheel that no longer matches is rebuilt"
    (tree / "letta" / "__init__.py").write_text("X = 1\n")
    git(tree, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "two")
    assert build_wheel_once(tree, dist, None).sha256 != first.sha256, "a new commit is built"


def test_a_ketta_wheel_of_a_synthetic_tree_carries_its_sbom(tmp_path):
    """The SBOM goes through hatchling's sbom-files into .dist-info/sboms/ and RECORD; two builds of the
    tree are the same bytes; a wheel without a build number (upstream's) has none."""
    import json
    import zipfile

    from ketta_build.buildtree import git
    from ketta_build.sbom import validate
    from ketta_build.letta.wheel import build_wheel
    from ketta_build.wheel import sbom_member

    tree = tmp_path / "tree"
    (tree / "letta").mkdir(parents=True)
    (tree / "pyproject.toml").write_text('[project]\nname = "letta"\nversion = "0.16.8"\n\n[build-system]\n'
                                         'requires = ["hatchling"]\nbuild-backend = "hatchling.build"\n')
    (tree / "letta" / "__init__.py").write_text("X = 1\n")
    for args in (("init", "-q"), ("add", "-A"), ("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")):
        git(tree, *args)
    series = tmp_path / "patches"
    series.mkdir()
    raw = (b"Subject: One change\nAuthor: Ketta developers <dev@ketta.invalid>\nUpstream-Status: Inappropriate [test]\n"
           b"Base-Release: 0.16.8\nDescription: The change Ketta needs, for a reason given here at length.\n\n"
           b"diff --git a/letta/__init__.py b/letta/__init__.py\n--- a/letta/__init__.py\n+++ b/letta/__init__.py\n"
           b"@@ -0,0 +1 @@\n+X = 1\n")
    (series / "0001-one.diff").write_bytes(raw)
    report = {"upstream": {"version": "0.16.8", "filename": "letta-0.16.8.tar.gz", "sha256": "e" * 64, "origin": "index"},
              "patches": [{"name": "0001-one.diff", "sha256": hashlib.sha256(raw).hexdigest(), "outcome": "clean"}],
              "tree": {"tree_hash": git(tree, "rev-parse", "HEAD^{tree}")}}
    (tree / ".git" / "ketta-build.json").write_text(json.dumps(report))
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("anyio==4.10.0\n    # via letta\n")
    one = build_wheel(tree, tmp_path / "d1", 3, series_dir=series, constraints=constraints)
    time.sleep(1.1)
    two = build_wheel(tree, tmp_path / "d2", 3, series_dir=series, constraints=constraints)
    assert one.path.read_bytes() == two.path.read_bytes()
    member = sbom_member(one.path)
    assert member == "letta-0.16.8+ketta.3.dist-info/sboms/ketta.cdx.json"
    with zipfile.ZipFile(one.path) as archive:
        text = archive.read(member).decode()
        record = archive.read("letta-0.16.8+ketta.3.dist-info/RECORD").decode()
        assert "ketta.cdx.json" not in {n.rsplit("/", 1)[-1] for n in archive.namelist() if ".dist-info/" not in n}
    digest = hashlib.sha256(text.encode()).digest()
    import base64

    assert f"{member},sha256={base64.urlsafe_b64encode(digest).rstrip(b'=').decode()},{len(text.encode())}" in record
    validate(text)
    assert [c["purl"] for c in json.loads(text)["components"]] == ["pkg:pypi/anyio@4.10.0"]
    proc = subprocess.run([sys.executable, "-m", "check_wheel_contents", str(one.path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sbom_member(build_wheel(tree, tmp_path / "d3", None).path) is None
