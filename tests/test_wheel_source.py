"""A wheel is built from the reviewed series (issue 30), offline.

``ketta-build wheel`` applies ``patches/`` to the pristine release in a tree of its own: a commit
left in the maintainer's build tree is never shipped, and that tree is never re-applied or touched.
``wheel --tree DIR`` refuses a tree holding commits or edits ``patches/`` does not have. The
provenance and the SBOM inside the wheel record the git tree of what is in it, the series' commit
and whether ``patches/`` had uncommitted changes; every file of the wheel is checked against that
tree.

The synthetic releases carry a small PEP 517 backend (``BACKEND`` below, written for these tests)
that lays a wheel out as hatchling does, its ``sbom-files`` option included, so uv builds them
without a package index.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import wheelcheck
from conftest import make_diff, write_series
from wheelcheck import members
from world import git, header, make_world

from ketta_build import wheel as wheel_module

BACKEND = '''\
"""PEP 517 backend of the tests' synthetic releases: the package directory, METADATA, WHEEL, the
files named by [tool.hatch.build.targets.wheel] sbom-files under .dist-info/sboms/, and RECORD."""
import base64
import hashlib
import os
import time
import tomllib
import zipfile


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    with open("pyproject.toml", "rb") as f:
        pyproject = tomllib.load(f)
    name, version = pyproject["project"]["name"], pyproject["project"]["version"]
    target = pyproject.get("tool", {}).get("hatch", {}).get("build", {}).get("targets", {}).get("wheel", {})
    info = f"{name}-{version}.dist-info"
    members = []
    for root, dirs, files in os.walk(name):
        dirs.sort()
        for file in sorted(files):
            path = os.path.join(root, file)
            with open(path, "rb") as f:
                members.append((path.replace(os.sep, "/"), f.read()))
    members.append((f"{info}/METADATA", f"Metadata-Version: 2.4\\nName: {name}\\nVersion: {version}\\n".encode()))
    members.append((f"{info}/WHEEL", b"Wheel-Version: 1.0\\nGenerator: ketta-tests\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"))
    for sbom in target.get("sbom-files", []):
        with open(sbom, "rb") as f:
            members.append((f"{info}/sboms/{os.path.basename(sbom)}", f.read()))
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\\n"
                     for path, data in members) + f"{info}/RECORD,,\\n"
    members.append((f"{info}/RECORD", record.encode()))
    stamp = time.gmtime(max(int(os.environ.get("SOURCE_DATE_EPOCH", "315532800")), 315532800))[:6]
    filename = f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as archive:
        for path, data in members:
            archive.writestr(zipfile.ZipInfo(path, stamp), data)
    return filename
'''


def release_files(version: str) -> dict[str, str]:
    """What a synthetic release needs to be built into a wheel: its backend, a pyproject.toml naming it,
    a uv.lock (no dependencies), upstream's alembic/ and a data file in the package."""
    return {
        "pyproject.toml": f'[project]\nname = "letta"\nversion = "{version}"\nrequires-python = ">=3.11"\n\n'
                          '[project.optional-dependencies]\nserver = []\npostgres = []\nsqlite = []\n\n'
                          '[build-system]\nrequires = []\nbuild-backend = "ketta_test_backend"\nbackend-path = ["."]\n',
        "ketta_test_backend.py": BACKEND,
        "uv.lock": f'version = 1\nrevision = 3\nrequires-python = ">=3.11"\n\n[[package]]\nname = "letta"\nversion = "{version}"\n'
                   'source = { editable = "." }\n\n[package.metadata]\nprovides-extras = ["server", "postgres", "sqlite"]\n',
        "alembic.ini": "[alembic]\nscript_location = alembic\n",
        "alembic/env.py": "# upstream's alembic environment\n",
        "alembic/versions/1c28e167b74f_first.py": 'revision = "1c28e167b74f"\n',
        "letta/prompts/system.txt": "You are a helpful agent.\n",
    }


@pytest.fixture
def world(tmp_path, local_index, capsys):
    """The maintenance loop's world (tests/world.py) with releases that build into wheels; build
    trees and wheels are made inside the series' repository, where .gitignore keeps them out."""
    w = make_world(tmp_path, local_index, capsys, release_files=release_files)
    repo = w.root / "repo"
    (repo / ".gitignore").write_text("/build/\n/dist*/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "build trees and wheels are not the series")
    return w


def apply(world, out: str = "build/0.16.8") -> Path:
    rc, _, err = world.run("apply", "--letta", "0.16.8", "--out", out)
    assert rc == 0, err
    return world.root / "repo" / out


def build(world, out: str, *more: str) -> tuple[int, str, Path | None]:
    """``ketta-build wheel --letta 0.16.8 --dist-dir OUT ...`` in the repository: exit code, stderr, the wheel."""
    rc, _, err = world.run("wheel", "--letta", "0.16.8", "--dist-dir", out, *more)
    wheels = sorted((world.root / "repo" / out).glob("*.whl"))
    return rc, err, wheels[0] if wheels else None


def commit_wip(tree: Path) -> str:
    (tree / "letta" / "k.py").write_text("KETTA = True\nWIP = 'never exported'\n")
    git(tree, "commit", "-q", "-am", "WIP")
    return git(tree, "rev-parse", "HEAD").strip()


def tree_state(tree: Path) -> tuple[str, str, str]:
    """What a test compares to prove a build tree was left alone: HEAD, every ref, git status."""
    return (git(tree, "rev-parse", "HEAD"), git(tree, "for-each-ref"), git(tree, "status", "--porcelain", "--untracked-files=all"))


def wheel_own(build_number: int) -> set[str]:
    """The files a Ketta wheel of these releases holds that are not files (or copies of files) of the tree."""
    info = f"letta-0.16.8+ketta.{build_number}.dist-info"
    return {
        "letta/ketta_provenance.json",  # ketta-build's: what the wheel is made of
        f"{info}/sboms/ketta.cdx.json",  # ketta-build's: the SBOM
        f"{info}/METADATA", f"{info}/WHEEL", f"{info}/RECORD",  # the build backend's
    }


def check_against_tree(wheel: Path, repo: Path, tree: str, build_number: int) -> None:
    compared = wheelcheck.check_against_tree(wheel, repo, tree, wheel_own(build_number))
    assert compared == 8, compared  # letta/: the release's 4 files and 0002's k.py; letta/ketta_alembic/: 3


def test_a_commit_in_the_build_tree_is_never_shipped_and_the_tree_is_left_alone(world):
    # Issue 30, as reproduced: build/0.16.8 holds a local commit "WIP" that was never exported;
    # `wheel` used to ship it and name the series' tree in the provenance.
    tree = apply(world)
    series_tree = git(tree, "rev-parse", "HEAD^{tree}").strip()
    rc, err, _ = build(world, "dist-before")  # a wheel (or serve, or matrix) run before the WIP commit
    assert rc == 0, err
    commit_wip(tree)
    before = tree_state(tree)
    rc, err, built = build(world, "dist")
    assert rc == 0, err
    files = members(built)
    assert files["letta/k.py"] == b"KETTA = True\n", "the WIP commit was shipped"
    provenance = json.loads(files["letta/ketta_provenance.json"])
    assert provenance["schema"] == "ketta-build/provenance/3"
    assert (provenance["project"], provenance["release"], provenance["supplier"]) == ("letta", "0.16.8", "ketta")
    assert provenance["tree"] == series_tree
    repo_head = git(world.root / "repo", "rev-parse", "HEAD").strip()
    assert provenance["series"] == {"commit": repo_head, "dirty": False}
    check_against_tree(built, tree, provenance["tree"], provenance["build_number"])
    assert tree_state(tree) == before, "wheel changed the maintainer's build tree"
    sbom = json.loads(files["letta-0.16.8+ketta.0.dist-info/sboms/ketta.cdx.json"])
    properties = {p["name"]: p["value"] for p in sbom["metadata"]["component"]["properties"]}
    assert (properties["ketta:git-tree"], properties["ketta:series-commit"], properties["ketta:series-dirty"]) == \
        (series_tree, repo_head, "false")
    assert [p["diff"]["url"] for p in sbom["metadata"]["component"]["pedigree"]["patches"]] == \
        ["patches/0001-change-m.diff", "patches/0002-new-module.diff", "patches/0003-tail.diff"]


def test_a_changed_series_is_built_in_its_own_tree_and_said_to_be_uncommitted(world):
    # patches/ changed since build/0.16.8 was made: wheel used to re-apply over the work tree (the WIP
    # commit surviving only on a backup ref). Now the tree is not touched; the wheel is the series as
    # it is on disk and says that patches/ had uncommitted changes.
    tree = apply(world)
    commit_wip(tree)
    before = tree_state(tree)
    (world.patches / "0002-new-module.diff").write_text(
        header("A Ketta module", "0.16.8") + make_diff("letta/k.py", None, "KETTA = 2\n"))
    rc, err, built = build(world, "dist")
    assert rc == 0, err
    assert tree_state(tree) == before, "wheel re-applied the series over the maintainer's build tree"
    assert (tree / "letta" / "k.py").read_text() == "KETTA = True\nWIP = 'never exported'\n"
    files = members(built)
    assert files["letta/k.py"] == b"KETTA = 2\n"
    provenance = json.loads(files["letta/ketta_provenance.json"])
    assert provenance["series"]["dirty"] is True
    check = apply(world, "build/check")  # the same series applied by the maintainer's verb: the same tree
    assert git(check, "rev-parse", "HEAD^{tree}").strip() == provenance["tree"]
    check_against_tree(built, check, provenance["tree"], provenance["build_number"])
    # an untracked file in patches/ is an uncommitted change too; a change elsewhere in the repository is not
    git(world.root / "repo", "checkout", "-q", "--", "patches")
    (world.root / "repo" / "README.md").write_text("changed\n")
    rc, err, built = build(world, "dist2")
    assert rc == 0 and json.loads(members(built)["letta/ketta_provenance.json"])["series"]["dirty"] is False, err
    (world.patches / "notes.txt").write_text("a note\n")
    rc, out, err = world.run("wheel", "--letta", "0.16.8", "--dist-dir", "dist3", "--json", "dist3.json")
    built = next((world.root / "repo" / "dist3").glob("*.whl"))
    assert rc == 0 and json.loads(members(built)["letta/ketta_provenance.json"])["series"]["dirty"] is True, err
    assert "has uncommitted changes: the wheels say so" in " ".join(out.split()), out
    document = json.loads((world.root / "repo" / "dist3.json").read_text())
    assert document["series"]["dirty"] is True and document["wheels"][0]["tree"] == \
        json.loads(members(built)["letta/ketta_provenance.json"])["tree"]


def test_wheel_tree_refuses_a_tree_with_unexported_work(world):
    tree = apply(world)
    rc, err, default = build(world, "dist")
    assert rc == 0, err
    time.sleep(1.1)
    rc, err, given = build(world, "dist-tree", "--tree", "build/0.16.8")
    assert rc == 0, err
    assert given.read_bytes() == default.read_bytes(), "an exported tree gives the series' wheel, byte for byte"

    wip = commit_wip(tree)
    rc, err, built = build(world, "dist-wip", "--tree", "build/0.16.8")
    assert rc == 5 and built is None, err
    [line] = err.strip().splitlines()
    assert "build/0.16.8" in line and wip[:10] in line and "WIP" in line and "ketta-build export" in line, line
    assert not (world.root / "repo" / "dist-wip").exists()

    git(tree, "reset", "-q", "--hard", "HEAD~1")
    (tree / "letta" / "m.py").write_text("edited, not committed\n")
    (tree / "letta" / "new.py").write_text("X = 1\n")
    rc, err, built = build(world, "dist-edit", "--tree", "build/0.16.8")
    assert rc == 5 and built is None, err
    [line] = err.strip().splitlines()
    assert "build/0.16.8" in line and "letta/m.py" in line and "letta/new.py" in line and "uncommitted" in line, line

    git(tree, "checkout", "-q", "--", ".")
    git(tree, "clean", "-q", "-fd")
    (world.patches / "0002-new-module.diff").write_text(
        header("A Ketta module", "0.16.8") + make_diff("letta/k.py", None, "KETTA = 2\n"))
    rc, err, built = build(world, "dist-stale", "--tree", "build/0.16.8")
    assert rc == 5 and built is None, err
    [line] = err.strip().splitlines()
    assert "0002-new-module.diff" in line and "ketta-build apply" in line, line

    rc, _, err = world.run("wheel", "--letta", "0.16.7", "--tree", "build/0.16.8", "--dist-dir", "dist-other")
    assert rc == 2 and "0.16.8" in err, err


def test_wheel_tree_names_only_the_commits_export_would_write(world):
    # A maintainer's edit folded into 0001 (fixup, rebase): 0002 and 0003 are new commits too, but
    # the same changes as the series'; only 0001's commit is work patches/ does not have. Once
    # exported, the tree is accepted and the wheel holds the edit.
    tree = apply(world)
    (tree / "letta" / "m.py").write_text((tree / "letta" / "m.py").read_text().replace("(ketta)", "(ketta, edited)"))
    git(tree, "commit", "-q", "-a", "--fixup", ":/^Ketta changes line 15")
    subprocess.run(["git", "rebase", "-q", "-i", "--autosquash", "upstream/0.16.8"], cwd=tree, check=True,
                   env={**os.environ, "GIT_SEQUENCE_EDITOR": "true", "GIT_COMMITTER_NAME": "M", "GIT_COMMITTER_EMAIL": "m@x"})
    rebased = git(tree, "rev-parse", "--short=10", ":/^Ketta changes line 15").strip()
    rc, err, built = build(world, "dist-rebased", "--tree", "build/0.16.8")
    assert rc == 5 and built is None, err
    [line] = err.strip().splitlines()
    assert f"({rebased} Ketta changes line 15)" in line and "A Ketta module" not in line, line
    rc, _, err = world.run("export", "--tree", "build/0.16.8")
    assert rc == 0, err
    rc, err, built = build(world, "dist-exported", "--tree", "build/0.16.8")
    assert rc == 0, err
    files = members(built)
    assert b"line fifteen (ketta, edited)" in files["letta/m.py"]
    provenance = json.loads(files["letta/ketta_provenance.json"])
    assert provenance["tree"] == git(tree, "rev-parse", "HEAD^{tree}").strip()
    assert provenance["series"]["dirty"] is True, "export rewrote 0001 in patches/, not committed yet"
    check_against_tree(built, tree, provenance["tree"], provenance["build_number"])
    # a patch added to patches/ that no commit of the tree carries
    write_series(world.patches, "0001-change-m.diff", "0002-new-module.diff", "0003-tail.diff                 [letta>=0.16.8]",
                 "0003-tail-0.16.7.diff          [letta<0.16.8]", "0004-more.diff")
    (world.patches / "0004-more.diff").write_text(header("More", "0.16.8") + make_diff("letta/more.py", None, "MORE = 1\n"))
    rc, err, built = build(world, "dist-more", "--tree", "build/0.16.8")
    assert rc == 5 and "no commit of the tree carries 0004-more.diff" in err, err


def test_two_runs_give_the_same_wheel(world):
    # The wheel's own tree is made afresh by every run: apply's commits are reproducible, so the wheel is.
    rc, err, one = build(world, "dist1")
    assert rc == 0, err
    time.sleep(1.1)
    rc, err, two = build(world, "dist2")
    assert rc == 0, err
    assert one.read_bytes() == two.read_bytes()
    assert not (world.root / "repo" / "build").exists(), "wheel made a build tree where the maintainer's live"
    leftovers = [p.name for p in (world.root / "repo").iterdir() if p.name.startswith(".")]
    assert leftovers == [".git", ".gitignore"], leftovers


def test_the_series_state_outside_git_and_in_it(tmp_path):
    series = tmp_path / "patches"
    series.mkdir()
    (series / "series").write_text("")
    assert wheel_module.series_state(series) == {"commit": None, "dirty": True}, "outside git nothing is committed"
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "series")
    head = git(tmp_path, "rev-parse", "HEAD").strip()
    assert wheel_module.series_state(series) == {"commit": head, "dirty": False}
    (series / "series").write_text("0001-x.diff\n")
    assert wheel_module.series_state(series) == {"commit": head, "dirty": True}
    git(tmp_path, "checkout", "-q", "--", ".")
    (tmp_path / ".gitignore").write_text("*.diff\n")
    git(tmp_path, "add", ".gitignore")
    git(tmp_path, "commit", "-q", "-m", "ignore")
    assert wheel_module.series_state(series)["dirty"] is False
    (series / "0001-x.diff").write_text("an ignored file is not committed either\n")
    assert wheel_module.series_state(series)["dirty"] is True


def test_ctrl_c_between_the_wheel_and_its_sums_waits_for_the_sums(world, monkeypatch):
    """The wheels, their constraints and SHA256SUMS are put in place together: a Ctrl-C that comes
    between them is honoured once SHA256SUMS names every wheel (issue 30)."""
    import hashlib
    import signal

    real = wheel_module.write_sums

    def interrupted(directory):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C after the wheel is in dist/, before its sums are
        return real(directory)

    monkeypatch.setattr(wheel_module, "write_sums", interrupted)
    rc, err, built = build(world, "dist-int")
    assert rc == 130 and "completed first" in err, err
    sums = (world.root / "repo" / "dist-int" / "SHA256SUMS").read_text()
    assert built is not None and f"{hashlib.sha256(built.read_bytes()).hexdigest()}  {built.name}" in sums


def test_wheel_writes_through_a_dist_dir_that_is_a_symbolic_link(world):
    real = world.root / "repo" / "dist-real"
    real.mkdir()
    link = world.root / "repo" / "dist-link"
    link.symlink_to(real, target_is_directory=True)
    rc, err, built = build(world, "dist-link")
    assert rc == 0, err
    assert link.is_symlink() and built is not None and (real / built.name).is_file() and (real / "SHA256SUMS").is_file()
    assert not list(world.root.glob("repo/.dist-*"))
