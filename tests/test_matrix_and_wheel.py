"""Offline tests of the matrix report, the wheel version rules and uv's index configuration."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from ketta_build import index, matrix, matrixreport, sources, wheel
from ketta_build.letta import wheel as letta_wheel
from ketta_build.suites import project_suites
from ketta_build.cache import Cache
from ketta_build.cli import main
from ketta_build.errors import KettaError

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="compat_tests.test_handle" name="test_a"/>
<testcase classname="compat_tests.test_handle" name="test_b"><failure message="boom"/></testcase>
<testcase classname="compat_tests.test_handle" name="test_c"><error message="fixture"/></testcase>
<testcase classname="compat_tests.test_handle" name="test_d"><skipped type="pytest.xfail" message="x"/></testcase>
</testsuite></testsuites>
"""

REGISTRY = project_suites(Path(__file__).resolve().parent.parent)


def test_env_names_follow_tox_factors():
    assert matrix.env_name("0.16.8", "handle", "letta") == "letta0168-handle"
    assert matrix.env_name("v0.14.0", "migration", "letta") == "letta0140-migration"


def test_junit_counts_and_failure_names(tmp_path: Path):
    (tmp_path / "x.xml").write_text(JUNIT)
    cell = matrix.Cell("0.16.8", "handle", "letta0168-handle")
    matrix._read_junit(tmp_path / "x.xml", [cell])
    assert (cell.passed, cell.failed, cell.errors, cell.xfailed) == (1, 1, 1, 1)
    assert cell.failures == ["compat_tests.test_handle::test_b", "compat_tests.test_handle::test_c (error)"]


def _cells() -> list:
    return [
        matrix.Cell("0.16.8", "handle", "letta0168-handle", status="pass", passed=3, duration=19, log="logs/letta0168-handle.log"),
        matrix.Cell("0.16.8", "agent", "letta0168-agent", status="fail", passed=1, failed=2, duration=30, exit_code=1,
                    log="logs/letta0168-agent.log", failures=["t::x"]),
    ]


CONTEXT = {"tool": "ketta-build 9.9", "series_commit": "a" * 40, "series_dirty": False, "build_number": 4,
           "date": "2026-11-25 12:00 UTC", "total_seconds": 600.0,
           "builds": {"0.16.8": {"sdist": "letta-0.16.8.tar.gz", "sdist_sha256": "b" * 64, "wheel": "w.whl",
                                 "wheel_sha256": "c" * 64, "patches": [{"name": "0001-x.diff", "sha256": "d" * 64}]}}}


def test_reports_link_logs_and_show_every_cell(tmp_path: Path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "letta0168-agent.log").write_text("".join(f"line {n}\n" for n in range(100)) + "AssertionError: boom\n")
    paths = matrixreport.write_reports(_cells(), tmp_path, no_patches=True, context=CONTEXT)
    md = paths["markdown"].read_text()
    assert "[pass 3/3 19s](logs/letta0168-handle.log)" in md and "letta0168-agent (fail, exit 1): t::x" in md
    assert "build number 4" in md and "b" * 64 in md
    page = paths["html"].read_text()
    # the grid, what was tested, and the failing cell's tests and log tail on the page itself
    assert page.count("<td") == 2 and 'href="#letta0168-agent"' in page and "#f5c2c2" in page
    assert 'id="letta0168-agent"' in page and "<code>t::x</code>" in page and "AssertionError: boom" in page
    assert "line 99" in page and "line 10\n" not in page, "the page shows the log's tail, not all of it"
    assert "aaaaaaaaaaaa" in page and "letta-0.16.8.tar.gz sha256 " + "b" * 64 in page and "10.0 min" in page
    data = json.loads(paths["json"].read_text())
    assert data["schema"] == matrixreport.SCHEMA and data["summary"]["fail"] == 1 and data["patched"] is False
    assert data["context"]["build_number"] == 4


def test_merge_gathers_one_matrix_from_per_release_jobs(tmp_path: Path):
    one, two = tmp_path / "job-0.16.7", tmp_path / "job-0.16.8"
    a = matrix.Cell("0.16.7", "handle", "letta0167-handle", status="pass", passed=3, duration=20, log="logs/letta0167-handle.log")
    for job, cells in ((one, [a]), (two, _cells())):
        (job / "logs").mkdir(parents=True)
        for c in cells:
            (job / c.log).write_text(f"log of {c.env}\n")
        matrixreport.write_reports(cells, job, no_patches=False, context={**CONTEXT, "total_seconds": 300.0})
    out = tmp_path / "merged"
    assert main(["matrix", "--merge", str(two), str(one), "--report-dir", str(out), "--json", str(tmp_path / "m.json")]) == 1
    data = json.loads((out / "matrix.json").read_text())
    assert [(c["version"], c["suite"]) for c in data["cells"]] == [("0.16.8", "handle"), ("0.16.8", "agent"), ("0.16.7", "handle")]
    assert data["summary"] == {"pass": 2, "fail": 1, "error": 0, "not-run": 0, "not-affected": 0, "reused": 0}
    assert data["context"]["total_seconds"] == 600.0 and len(data["context"]["merged_from"]) == 2
    assert (out / "logs" / "letta0167-handle.log").read_text() == "log of letta0167-handle\n"
    page = (out / "matrix.html").read_text()
    assert page.index("<th>0.16.7</th>") < page.index("<th>0.16.8</th>"), "releases in version order"
    # all green merges to exit 0
    assert main(["matrix", "--merge", str(one), "--report-dir", str(tmp_path / "green")]) == 0


def test_merge_refuses_duplicates_missing_reports_and_its_own_source(tmp_path: Path, capsys):
    job = tmp_path / "job"
    matrixreport.write_reports(_cells(), job, no_patches=False)
    assert main(["matrix", "--merge", str(job), str(job), "--report-dir", str(tmp_path / "out")]) == 2
    assert "letta0168-handle is in two reports" in capsys.readouterr().err
    assert main(["matrix", "--merge", str(tmp_path / "nothing"), "--report-dir", str(tmp_path / "out")]) == 2
    assert "nothing/matrix.json: no matrix report here" in capsys.readouterr().err.replace("\n", "")
    assert main(["matrix", "--merge", str(job), "--report-dir", str(job)]) == 2
    assert (job / "matrix.json").is_file(), "a refused merge leaves its sources alone"
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "matrix.json").write_text("{\n  nope")
    assert main(["matrix", "--merge", str(tmp_path / "bad"), "--report-dir", str(tmp_path / "out")]) == 2
    assert "bad/matrix.json:2: not JSON" in capsys.readouterr().err.replace("\n", "")
    assert not (tmp_path / "out").exists()


def test_matrix_refuses_unknown_suite_and_bad_parallelism(tmp_path: Path):
    with pytest.raises(KettaError, match="unknown suite"):
        matrix.run_matrix(["0.16.8"], ["bogus"], report_dir=tmp_path, project=Path(__file__).resolve().parent.parent)
    with pytest.raises(KettaError, match="-p must be"):
        matrix.run_matrix(["0.16.8"], ["handle"], report_dir=tmp_path, parallel=0, project=Path(__file__).resolve().parent.parent)
    with pytest.raises(KettaError, match="0.16.3 is not a supported server release.*nearest supported: 0.16.2, 0.16.4"):
        matrix.run_matrix(["0.16.3"], ["handle"], report_dir=tmp_path, project=Path(__file__).resolve().parent.parent)
    assert not any(tmp_path.iterdir()), "a refused matrix must not write a report"


def test_build_number_file(tmp_path: Path):
    assert wheel.read_build_number(tmp_path) == 0
    (tmp_path / "build-number").write_text("7\n")
    assert wheel.read_build_number(tmp_path) == 7
    assert wheel.local_version("0.16.8", 7) == "0.16.8+ketta.7"
    (tmp_path / "build-number").write_text("seven\n")
    with pytest.raises(KettaError) as err:
        wheel.read_build_number(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'build-number'}:1:")


def test_version_rewrite_touches_only_the_literal(tmp_path: Path):
    py = tmp_path / "pyproject.toml"
    py.write_text('[project]\nname = "letta"\nversion = "0.16.8"\n[tool.x]\nversion_note = "keep"\n')
    letta_wheel._set_version(py, "0.16.8+ketta.2")
    assert py.read_text() == '[project]\nname = "letta"\nversion = "0.16.8+ketta.2"\n[tool.x]\nversion_note = "keep"\n'
    py.write_text('[project]\nname = "letta"\ndynamic = ["version"]\n')
    with pytest.raises(KettaError, match="literal"):
        letta_wheel._set_version(py, "1+ketta.1")


def test_uv_gets_pips_indexes(monkeypatch, tmp_path: Path):
    for var in ("UV_DEFAULT_INDEX", "UV_INDEX_URL", "UV_INDEX", "UV_INDEX_STRATEGY", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(var, raising=False)
    existing = tmp_path / "simple"
    existing.mkdir()
    monkeypatch.setattr(index, "_pip_config", lambda: {
        "global.index-url": "http://127.0.0.1:9/simple",
        "global.extra-index-url": f"file:///does/not/exist {existing.as_uri()}",
    })
    env = index.uv_environment()
    assert env["UV_DEFAULT_INDEX"] == "http://127.0.0.1:9/simple"
    assert env["UV_INDEX"] == existing.as_uri()  # pip skips a missing file:// index; so must uv
    assert env["UV_INDEX_STRATEGY"] == "unsafe-best-match"
    assert env["UV_PYTHON_DOWNLOADS"] == "never"
    monkeypatch.setenv("UV_DEFAULT_INDEX", "http://127.0.0.1:8/simple")
    assert "UV_DEFAULT_INDEX" not in index.uv_environment()  # the user's own uv settings win


def test_download_progress_says_size_and_rate():
    assert sources.download_progress("letta-0.16.8.tar.gz", 3_100_000, 9_800_000, 0.74) == \
        "downloading letta-0.16.8.tar.gz: 3.1 / 9.8 MB at 4.2 MB/s"
    assert sources.download_progress("x.tar.gz", 1_000_000, 0, 0) == "downloading x.tar.gz: 1.0 MB at 0.0 MB/s"


FAKE_TOX = '''
import json, os, sys, time
env = sys.argv[sys.argv.index("-e") + 1]
suites = sys.argv[sys.argv.index("-m") + 1].split(" or ") if "-m" in sys.argv else None
plan = json.loads(os.environ["FAKE_TOX_PLAN"])
if suites is None:
    suites = plan["shared"] if env.endswith("-shared") else [env.split("-", 1)[1]]
with open(os.environ["FAKE_TOX_LOG"], "a") as log:
    log.write(f"start {env} {time.monotonic()}\\n")
    log.write(f"patches {os.environ.get('KETTA_PATCHES')}\\n")
    log.write(f"cache {os.environ.get('KETTA_BUILD_CACHE')} {os.environ.get('KETTA_RERUN')}\\n")
    log.write(f"build-root {os.environ.get('KETTA_BUILD_ROOT')}\\n")
cases = []
for suite in suites:
    seconds, outcome = plan["suites"][suite]
    time.sleep(seconds)
    child = {"pass": "", "fail": '<failure message="boom"/>'}[outcome]
    cases.append(f'<testcase classname="compat_tests.t_{suite}" name="test_x" time="{seconds}">'
                 f'<properties><property name="ketta_suite" value="{suite}"/></properties>{child}</testcase>')
if plan.get("crash") != env:
    with open(os.path.join(os.environ["KETTA_REPORT_DIR"], env + ".xml"), "w") as xml:
        xml.write("<testsuite>" + "".join(cases) + "</testsuite>")
with open(os.environ["FAKE_TOX_LOG"], "a") as log:
    log.write(f"end {env} {time.monotonic()}\\n")
sys.exit(1 if any("failure" in c for c in cases) or plan.get("crash") == env else 0)
'''


def _fake_matrix(tmp_path: Path, monkeypatch, plan: dict, suites: list[str], parallel: int = 2, series_dir=None, **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    fake = tmp_path / "fake_tox.py"
    fake.write_text(FAKE_TOX)
    log = tmp_path / "tox.log"
    monkeypatch.setenv("FAKE_TOX_LOG", str(log))
    monkeypatch.setenv("FAKE_TOX_PLAN", json.dumps({"shared": list(REGISTRY.shared), **plan}))
    start = time.monotonic()
    cells = matrix.run_matrix(["0.16.8"], suites, report_dir=tmp_path / "reports", parallel=parallel,
                              tox=[sys.executable, str(fake)], series_dir=series_dir,
                              **{"project": Path(__file__).resolve().parent.parent, **kw})
    events = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    return cells, events, time.monotonic() - start


def test_matrix_runs_the_shared_suites_in_one_session_beside_upgrade(tmp_path: Path, monkeypatch):
    # A stand-in for tox (the real one runs in the compatibility matrix) that sleeps per suite and
    # writes the JUnit file the suites would. The shared suites go to one session, upgrade to its
    # own, both at once; the session's results are split into one cell per suite.
    plan = {"suites": {"upgrade": [1.0, "pass"], "handle": [0.2, "pass"], "unified": [0.3, "fail"], "agent": [0.2, "pass"]}}
    cells, events, wall = _fake_matrix(tmp_path, monkeypatch, plan, ["handle", "unified", "agent", "upgrade"])
    by = {c.suite: c for c in cells}
    assert {e[1] for e in events if e[0] == "start"} == {"letta0168-upgrade", "letta0168-shared"}
    assert wall < 1.0 + 0.7, f"{wall:.2f} s: the session did not run beside upgrade"
    assert (by["handle"].status, by["unified"].status, by["agent"].status, by["upgrade"].status) == ("pass", "fail", "pass", "pass")
    assert by["unified"].failures == ["compat_tests.t_unified::test_x"]
    assert {by[s].session for s in ("handle", "unified", "agent")} == {"letta0168-shared"}
    assert by["handle"].log == by["agent"].log == "logs/letta0168-shared.log"
    assert by["handle"].duration == 0.2 and by["unified"].duration == 0.3, "a shared cell's time is its own tests'"
    assert by["upgrade"].session == "letta0168-upgrade" and by["upgrade"].duration >= 1.0


def test_a_session_that_writes_no_results_leaves_its_cells_in_error(tmp_path: Path, monkeypatch):
    plan = {"suites": {"handle": [0.0, "pass"], "agent": [0.0, "pass"], "migration": [0.0, "pass"]},
            "crash": "letta0168-shared"}
    cells, _, _ = _fake_matrix(tmp_path, monkeypatch, plan, ["handle", "agent", "migration"])
    assert [c.status for c in cells] == ["error"] * 3


def test_one_shared_suite_runs_in_its_own_environment(tmp_path: Path, monkeypatch):
    plan = {"suites": {"handle": [0.0, "pass"], "upgrade": [0.0, "pass"]}}
    cells, events, _ = _fake_matrix(tmp_path, monkeypatch, plan, ["handle", "upgrade"])
    assert {e[1] for e in events if e[0] == "start"} == {"letta0168-handle", "letta0168-upgrade"}
    assert all(c.status == "pass" for c in cells)


def test_the_suites_get_the_series_the_matrix_was_given(tmp_path: Path, monkeypatch):
    # matrix --patches DIR: the wheels and the suites (KETTA_PATCHES, read by compat_tests' --patches)
    # use that series, not the checkout's.
    plan = {"suites": {"handle": [0.0, "pass"]}}
    _, default, _ = _fake_matrix(tmp_path / "a", monkeypatch, plan, ["handle"])
    assert [e[1] for e in default if e[0] == "patches"] == [str((Path(".") / "patches").absolute())]
    other = tmp_path / "other-series"
    other.mkdir()
    shutil.copy2(Path("patches") / "releases.toml", other / "releases.toml")
    _, events, _ = _fake_matrix(tmp_path / "b", monkeypatch, plan, ["handle"], series_dir=other)
    assert [e[1] for e in events if e[0] == "patches"] == [str(other.absolute())]
    (other / "releases.toml").write_text('[[release]]\nversion = "0.16.7"\ndate = "2026-01-01"\n')
    with pytest.raises(KettaError, match="0.16.8"):
        _fake_matrix(tmp_path / "c", monkeypatch, plan, ["handle"], series_dir=other)


def test_the_suites_build_under_the_build_root_the_matrix_was_given(tmp_path: Path, monkeypatch):
    # matrix --build-root DIR: the suites build the patched trees there (KETTA_BUILD_ROOT), not in ./build;
    # an unpatched run keeps its trees under its report directory.
    monkeypatch.delenv("KETTA_BUILD_ROOT", raising=False)
    plan = {"suites": {"handle": [0.0, "pass"]}}
    _, events, _ = _fake_matrix(tmp_path / "a", monkeypatch, plan, ["handle"], build_root=tmp_path / "elsewhere")
    assert [e[1:] for e in events if e[0] == "build-root"] == [[str((tmp_path / "elsewhere").absolute())]]
    _, events, _ = _fake_matrix(tmp_path / "b", monkeypatch, plan, ["handle"], build_root=tmp_path / "elsewhere",
                                no_patches=True)
    assert [e[1:] for e in events if e[0] == "build-root"] == [[str((tmp_path / "b" / "reports" / "build").absolute())]]


def test_the_suites_build_in_the_cache_the_matrix_was_given(tmp_path: Path, monkeypatch):
    # matrix --cache-dir DIR: the suites' wheels, environments and stored stock runs live there too,
    # not in the user's default cache; --rerun reaches the suites as KETTA_RERUN.
    monkeypatch.delenv("KETTA_BUILD_CACHE", raising=False)
    plan = {"suites": {"handle": [0.0, "pass"]}}
    _, default, _ = _fake_matrix(tmp_path / "a", monkeypatch, plan, ["handle"])
    assert [e[1:] for e in default if e[0] == "cache"] == [["None", "None"]]
    own = tmp_path / "own-cache"
    _, events, _ = _fake_matrix(tmp_path / "b", monkeypatch, plan, ["handle"], cache=Cache(own), reuse=False)
    assert [e[1:] for e in events if e[0] == "cache"] == [[str(own.absolute()), "1"]]


def test_plan_groups_per_release_and_narrows_the_marker():
    cells = [matrix.Cell(v, s, matrix.env_name(v, s, "letta")) for v in ("0.16.7", "0.16.8") for s in ("handle", "agent", "upgrade")]
    tasks = matrix.plan_tasks(cells, REGISTRY, "letta")
    assert [(t.env, t.marker, [c.suite for c in t.cells]) for t in tasks] == [
        ("letta0167-shared", "handle or agent", ["handle", "agent"]), ("letta0167-upgrade", None, ["upgrade"]),
        ("letta0168-shared", "handle or agent", ["handle", "agent"]), ("letta0168-upgrade", None, ["upgrade"]),
    ]
    whole = matrix.plan_tasks([matrix.Cell("0.16.8", s, matrix.env_name("0.16.8", s, "letta")) for s in REGISTRY.shared], REGISTRY, "letta")
    assert [(t.env, t.marker) for t in whole] == [("letta0168-shared", None)]
    # Longest first: measured durations (the previous report's), else the suites' typical ones.
    assert [t.env for t in matrix.longest_first(tasks, {}, REGISTRY)][:2] == ["letta0168-upgrade", "letta0167-upgrade"]
    measured = {"letta0167-handle": 500.0}
    assert matrix.longest_first(tasks, measured, REGISTRY)[0].env == "letta0167-shared"


def test_previous_durations_come_from_the_last_report(tmp_path: Path):
    assert matrix.previous_durations(tmp_path) == {}
    (tmp_path / "matrix.json").write_text(json.dumps({"cells": [{"env": "letta0168-handle", "duration": 31.5}, {"env": "x"}]}))
    assert matrix.previous_durations(tmp_path) == {"letta0168-handle": 31.5}
    (tmp_path / "matrix.json").write_text("{ broken")
    assert matrix.previous_durations(tmp_path) == {}
