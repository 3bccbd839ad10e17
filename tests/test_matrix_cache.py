"""Content-addressed cell results and --changed, on a synthetic project with a stand-in for tox.

The project has a tox.ini, compat_tests/ with one test module per suite (and a helper module one of
them imports), and a series with two variants of one patch over synthetic releases; the releases'
"wheels" are given by a table the test edits (the real ones come from prepare_wheel).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_series
from test_matrix_and_wheel import FAKE_TOX

from ketta_build import matrix, matrixreport
from ketta_build.affected import affected_cells
from ketta_build.cellstore import CellStore, suite_files
from ketta_build.suites import project_suites

REGISTRY = project_suites(Path(__file__).resolve().parent.parent)

RELEASES = ('[[release]]\nversion = "0.16.7"\ndate = "2026-03-31"\n\n[[release]]\nversion = "0.16.8"\ndate = "2026-05-14"\n\n'
            '[[release]]\nversion = "0.16.9"\ndate = "2026-06-01"\n')


class Keys(matrix.CellKeys):
    """CellKeys whose releases' wheels come from ``wheels`` (version -> sha) instead of builds."""

    wheels: dict[str, str] = {}

    def release(self, version: str, patched: bool) -> dict:
        return {"wheel": self.wheels[version] + ("" if patched else "-unpatched")}

    def _sides(self, version: str, suite: str) -> set[tuple[str, bool]]:
        if suite != "upgrade":
            return set()
        previous = {"0.16.8": "0.16.7", "0.16.9": "0.16.8"}.get(version, version)
        return {(previous, True), (version, True)}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    tests = root / "compat_tests"
    tests.mkdir(parents=True)
    (tests / "conftest.py").write_text("# fixtures\n")
    (tests / "helper.py").write_text("VALUE = 1\n")
    (tests / "allowed.toml").write_text("# data a suite names\n")
    (tests / "test_handle.py").write_text("import pytest\nfrom . import helper\npytestmark = pytest.mark.handle\n")
    (tests / "test_agent.py").write_text("import pytest\npytestmark = pytest.mark.agent\nDATA = 'allowed.toml'\n")
    (tests / "test_upgrade.py").write_text("import pytest\npytestmark = pytest.mark.upgrade\n")
    (tests / "suites.toml").write_bytes((Path(__file__).resolve().parent.parent / "compat_tests" / "suites.toml").read_bytes())
    (root / "tox.ini").write_text("[tox]\n")
    patches = root / "patches"
    patches.mkdir()
    (patches / "releases.toml").write_text(RELEASES)
    write_series(patches, "0001-all.diff", "0002-x.diff [letta>=0.16.8]", "0002-x-0.16.7.diff [letta<0.16.8]")
    for name in ("0001-all.diff", "0002-x.diff", "0002-x-0.16.7.diff"):
        (patches / name).write_text(f"a patch called {name}\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "start")
    return root


def run(project: Path, monkeypatch, tmp_path: Path, *, suites=("handle", "agent"), versions=("0.16.8",), outcome="pass",
        no_patches=False, reuse=True, changed=None, wheels=None):
    fake = tmp_path / "fake_tox.py"
    fake.write_text(FAKE_TOX)
    log = tmp_path / "tox.log"
    log.unlink(missing_ok=True)
    monkeypatch.setenv("FAKE_TOX_LOG", str(log))
    monkeypatch.setenv("FAKE_TOX_PLAN", json.dumps({"shared": list(REGISTRY.shared),
                                                    "suites": {s: [0.0, outcome] for s in REGISTRY.names}}))
    Keys.wheels = wheels or {"0.16.7": "w7", "0.16.8": "w8", "0.16.9": "w9"}
    keys = Keys(project, None, not no_patches, project / "build", None, {"KETTA_UPGRADE_PAIRS": "all"})
    cells = matrix.run_matrix(list(versions), list(suites), report_dir=tmp_path / "reports", project=project,
                              tox=[sys.executable, str(fake)], store=CellStore(tmp_path / "cells"), reuse=reuse,
                              keys=keys, changed=changed, no_patches=no_patches)
    started = {line.split()[1] for line in log.read_text().splitlines() if line.startswith("start")} if log.exists() else set()
    return {c.suite: c for c in cells}, started


def test_a_second_run_with_the_same_inputs_reuses_every_cell_and_names_the_run_that_proved_it(project, monkeypatch, tmp_path):
    first, started = run(project, monkeypatch, tmp_path)
    assert started == {"letta0168-shared"} and not any(c.reused for c in first.values())
    second, started = run(project, monkeypatch, tmp_path)
    assert started == set(), "nothing ran"
    for cell in second.values():
        assert cell.status == "pass" and cell.reused and cell.key == first[cell.suite].key
        assert cell.proven["env"] == "letta0168-shared" and cell.proven["date"]
        assert (tmp_path / "reports" / cell.log).is_file(), "a reused cell links its evidence"
    md = matrixreport.report_markdown(list(second.values()), False)
    assert "pass (reused: proven" in md


@pytest.mark.parametrize("change", ["wheel", "suite file", "imported helper", "named data file", "tox.ini"])
def test_a_changed_input_runs_the_cell_again(project, monkeypatch, tmp_path, change):
    run(project, monkeypatch, tmp_path)
    wheels = None
    if change == "wheel":
        wheels = {"0.16.7": "w7", "0.16.8": "w8-new", "0.16.9": "w9"}
    elif change == "suite file":
        (project / "compat_tests" / "test_handle.py").write_text((project / "compat_tests" / "test_handle.py").read_text() + "# x\n")
    elif change == "imported helper":
        (project / "compat_tests" / "helper.py").write_text("VALUE = 2\n")
    elif change == "named data file":
        (project / "compat_tests" / "allowed.toml").write_text("# another entry\n")
    else:
        (project / "tox.ini").write_text("[tox]\nrequires = tox\n")
    cells, started = run(project, monkeypatch, tmp_path, wheels=wheels)
    rerun = {s for s, c in cells.items() if not c.reused}
    expected = {"wheel": {"handle", "agent"}, "suite file": {"handle"}, "imported helper": {"handle"},
                "named data file": {"agent"}, "tox.ini": {"handle", "agent"}}[change]
    assert rerun == expected


def test_no_patches_never_reuses_a_patched_pass(project, monkeypatch, tmp_path):
    run(project, monkeypatch, tmp_path)
    cells, _ = run(project, monkeypatch, tmp_path, no_patches=True)
    assert not any(c.reused for c in cells.values())


def test_a_failed_cell_is_never_reused(project, monkeypatch, tmp_path):
    first, _ = run(project, monkeypatch, tmp_path, outcome="fail")
    assert all(c.status == "fail" for c in first.values())
    second, started = run(project, monkeypatch, tmp_path, outcome="fail")
    assert started == {"letta0168-shared"} and not any(c.reused for c in second.values())


def test_rerun_ignores_the_store_but_still_fills_it(project, monkeypatch, tmp_path):
    run(project, monkeypatch, tmp_path, reuse=False)  # a --rerun run stores what passed ...
    cells, started = run(project, monkeypatch, tmp_path, reuse=False)
    assert started == {"letta0168-shared"} and not any(c.reused for c in cells.values())
    cells, started = run(project, monkeypatch, tmp_path)  # ... for the next run that may reuse
    assert started == set() and all(c.reused for c in cells.values())


def test_an_upgrade_cell_depends_on_the_release_its_pairs_start_from(project, monkeypatch, tmp_path):
    run(project, monkeypatch, tmp_path, suites=("upgrade",), versions=("0.16.8", "0.16.9"))
    cells, started = run(project, monkeypatch, tmp_path, suites=("upgrade",), versions=("0.16.8", "0.16.9"),
                         wheels={"0.16.7": "w7-new", "0.16.8": "w8", "0.16.9": "w9"})
    assert started == {"letta0168-upgrade"}, "0.16.8's pairs start from 0.16.7; 0.16.9's do not"


def test_the_suite_files_follow_imports_and_named_data(project):
    names = {p.name for p in suite_files(project / "compat_tests", "handle")}
    assert names == {"conftest.py", "test_handle.py", "helper.py"}
    assert {p.name for p in suite_files(project / "compat_tests", "agent")} == {"conftest.py", "test_agent.py", "allowed.toml"}


def test_the_suite_files_hold_a_script_a_module_runs_by_name(tmp_path):
    """A script the suites run rather than import (compat_tests/fork_helper.py, run by a server
    environment's Python) is part of what a cell depends on: named, not imported."""
    tests = tmp_path / "compat_tests"
    tests.mkdir()
    (tests / "conftest.py").write_text("from . import server\n")
    (tests / "server.py").write_text('SCRIPT = __file__.replace("server.py", "start_script.py")\n')
    (tests / "start_script.py").write_text("print('forked')\n")
    (tests / "unrelated_script.py").write_text("print('no one runs me')\n")
    (tests / "test_one.py").write_text("import pytest\npytestmark = pytest.mark.one\n")
    names = {p.name for p in suite_files(tests, "one")}
    assert names == {"conftest.py", "server.py", "start_script.py", "test_one.py"}


def test_changed_runs_only_the_releases_a_variant_serves(project, monkeypatch, tmp_path):
    """A change to the 0.16.7 variant affects 0.16.7 alone; the other cells are reused or not affected."""
    versions = ("0.16.7", "0.16.8", "0.16.9")
    run(project, monkeypatch, tmp_path, versions=("0.16.8",))  # 0.16.8 passed before; 0.16.7 and 0.16.9 never ran
    (project / "patches" / "0002-x-0.16.7.diff").write_text("the 0.16.7 variant, changed\n")
    from packaging.version import Version

    changed = affected_cells(project, "HEAD", [Version(v) for v in versions], ["handle", "agent"])
    assert changed.releases == {"0.16.7"} and not changed.suites and not changed.everything
    cells = matrix.run_matrix(list(versions), ["handle", "agent"], report_dir=tmp_path / "r2", project=project,
                              tox=[sys.executable, str(tmp_path / "fake_tox.py")], store=CellStore(tmp_path / "cells"),
                              keys=Keys(project, None, True, project / "build", None, "all", {}), changed=changed)
    status = {(c.version, c.suite): ("reused" if c.reused else c.status) for c in cells}
    assert status == {("0.16.7", "handle"): "pass", ("0.16.7", "agent"): "pass",
                      ("0.16.8", "handle"): "reused", ("0.16.8", "agent"): "reused",
                      ("0.16.9", "handle"): "not-affected", ("0.16.9", "agent"): "not-affected"}


def test_changed_sees_a_suite_file_and_the_tool(project):
    from packaging.version import Version

    (project / "compat_tests" / "helper.py").write_text("VALUE = 3\n")
    changed = affected_cells(project, "HEAD", [Version("0.16.8")], ["handle", "agent"])
    assert changed.suites == {"handle"} and not changed.releases
    (project / "ketta_build").mkdir()
    (project / "ketta_build" / "matrix.py").write_text("# the tool\n")
    assert affected_cells(project, "HEAD", [Version("0.16.8")], ["handle"]).everything


def test_a_missing_tox_is_one_line_up_front_not_a_red_cell(monkeypatch, tmp_path, capsys):
    import importlib.util

    from ketta_build.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("tox", "tox_uv") else real(name, *a))
    rc = main(["matrix", "--letta", "0.16.8", "--suite", "handle", "--report-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "tox and tox-uv" in err[0] and "pip install" in err[0]
    assert not (tmp_path / "r").exists()


def test_cell_keys_work_from_a_relative_project_path(project, monkeypatch):
    """`ketta-build matrix` runs with the project "." : the registry's suite files were relative then,
    and keying a cell failed (a traceback in the README's test command)."""
    from ketta_build.suites import project_suites

    monkeypatch.chdir(project)
    Keys.wheels = {"0.16.7": "w7", "0.16.8": "w8", "0.16.9": "w9"}
    keys = Keys(Path("."), None, True, Path("build"), None, {"KETTA_UPGRADE_PAIRS": "all"}, registry=project_suites(Path(".")))
    assert len(keys.key("0.16.8", "handle")) == 64
