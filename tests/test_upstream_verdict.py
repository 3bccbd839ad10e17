"""The upstream suite's bookkeeping: junit parsing, the reviewed list, patched-vs-unpatched verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from compat_tests.upstream_runner import (
    EXPECTED_FILE,
    CaseOutcome,
    ExpectedFailure,
    UpstreamRun,
    baseline_inputs,
    compare,
    load_expected,
    merged_record,
    message_shape,
    parse_junit,
    run_from_record,
    run_record,
    stored_baseline_holds,
)
from ketta_build.runstore import RunStore, reuse_allowed, stock_run_key
from ketta_build.letta.serverenv import ServerBuild

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="tests.test_server_providers" name="test_ok" file="tests/test_server_providers.py" line="3"/>
<testcase classname="tests.test_server_providers" name="test_bad[openai]" file="tests/test_server_providers.py" line="9">
  <failure message="AssertionError: assert 1 == 2">trace</failure></testcase>
<testcase classname="tests.managers.test_provider_manager.TestDelete" name="test_gone" file="tests/managers/test_provider_manager.py" line="20">
  <error message="fixture failed">trace</error></testcase>
<testcase classname="tests.test_providers" name="test_net" file="tests/test_providers.py" line="1">
  <skipped message="needs network"/></testcase>
</testsuite></testsuites>
"""


def run(label: str, statuses: dict[str, str]) -> UpstreamRun:
    return UpstreamRun(label, (), {test: CaseOutcome(s) for test, s in statuses.items()}, 1, 0.0, Path("log"))


def write_expected(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "expected.toml"
    path.write_text(body)
    return path


def test_junit_ids_are_pytest_node_ids(tmp_path):
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    outcomes = parse_junit(path)
    assert outcomes == {
        "tests/test_server_providers.py::test_ok": CaseOutcome("passed"),
        "tests/test_server_providers.py::test_bad[openai]": CaseOutcome("failed", "AssertionError: assert 1 == 2"),
        "tests/managers/test_provider_manager.py::TestDelete::test_gone": CaseOutcome("error", "fixture failed"),
        "tests/test_providers.py::test_net": CaseOutcome("skipped", "needs network"),
    }


def test_failure_only_when_patched_and_unlisted_is_blamed_on_ketta(tmp_path):
    expected = load_expected(write_expected(tmp_path, ""))
    patched = run("patched", {"t/a.py::x": "failed", "t/a.py::y": "failed", "t/a.py::z": "passed"})
    unpatched = run("unpatched", {"t/a.py::x": "passed", "t/a.py::y": "failed", "t/a.py::z": "passed"})
    verdict = compare("0.16.8", patched, unpatched, expected)
    assert set(verdict.caused_by_ketta) == {"t/a.py::x"}
    assert set(verdict.upstream) == {"t/a.py::y"}
    assert not verdict.expected and not verdict.stale


def test_listed_failure_is_expected_only_for_its_releases(tmp_path):
    expected = load_expected(write_expected(tmp_path, """
[[failure]]
test = "t/a.py::x"
releases = ">=0.16.2"
reason = "Ketta lists every provider of the organisation"
"""))
    patched = run("patched", {"t/a.py::x": "failed"})
    unpatched = run("unpatched", {"t/a.py::x": "passed"})
    assert set(compare("0.16.8", patched, unpatched, expected).expected) == {"t/a.py::x"}
    # Outside its range the same failure is unexplained.
    assert set(compare("0.16.1", patched, unpatched, expected).caused_by_ketta) == {"t/a.py::x"}


def test_listed_test_that_no_longer_fails_is_stale(tmp_path):
    expected = load_expected(write_expected(tmp_path, """
[[failure]]
test = "t/a.py::x"
releases = ">=0.14"
reason = "was broken by hard delete"
"""))
    verdict = compare("0.16.8", run("p", {"t/a.py::x": "passed"}), run("u", {"t/a.py::x": "passed"}), expected)
    assert set(verdict.stale) == {"t/a.py::x"}


@pytest.mark.parametrize(
    "body, message",
    [
        ('[[failure]]\ntest = "t::x"\nreleases = ">=0.14"\n', "lacks reason"),
        ('[[failure]]\ntest = "t::x"\nreleases = ">=0.14"\nreason = "  "\n', "empty reason"),
        ("[[failure]\n", "expected.toml"),
    ],
)
def test_bad_expected_file_is_named_in_the_error(tmp_path, body, message):
    with pytest.raises(ValueError, match=message):
        load_expected(write_expected(tmp_path, body))


def test_shipped_expected_file_loads():
    for entry in load_expected(EXPECTED_FILE):
        assert entry.reason and entry.test.startswith("tests/")


# ---------------------------------------------------------------------------- stored stock runs


def failing(label: str, messages: dict[str, str], passing: tuple[str, ...] = ()) -> UpstreamRun:
    outcomes = {test: CaseOutcome("failed", message) for test, message in messages.items()}
    outcomes.update({test: CaseOutcome("passed") for test in passing})
    return UpstreamRun(label, ("tests/t.py",), outcomes, 1, 12.5, Path("log"))


def test_a_stored_stock_run_is_kept_whole_and_found_by_its_key(tmp_path):
    store = RunStore(tmp_path / "stock-runs")
    made = failing("unpatched", {"tests/t.py::test_net": "ConnectError"}, passing=("tests/t.py::test_ok",))
    log = tmp_path / "pytest.log"
    log.write_text("the run's log\n")
    key = stock_run_key({"wheel": "a" * 64})
    assert store.lookup(key) is None
    saved = store.save(key, run_record(made), {"pytest.log": log})
    found = store.lookup(key)
    assert found is not None and found.date == saved.date and found.files["pytest.log"].read_text() == "the run's log\n"
    again = run_from_record(found.data, found.files["pytest.log"])
    assert again.outcomes == made.outcomes and again.failing() == made.failing() and again.files == made.files
    # Another input, another key; a run whose stored files went missing is not found.
    assert stock_run_key({"wheel": "b" * 64}) != key and store.lookup(stock_run_key({"wheel": "b" * 64})) is None
    found.files["pytest.log"].unlink()
    assert store.lookup(key) is None
    with pytest.raises(ValueError, match="plain names"):
        store.save(key, {}, {"../escape": log})


def test_rerun_sets_every_stored_stock_run_aside():
    assert reuse_allowed({}) and reuse_allowed({"KETTA_RERUN": "0"})
    assert not reuse_allowed({"KETTA_RERUN": "1"})


def test_a_stored_stock_run_never_blames_ketta_nor_excuses_a_different_failure():
    uuid_a, uuid_b = "0f8fad5b-d9cb-469f-a165-70867728950e", "7c9e6679-7425-40de-944b-e07fc1f90ae7"
    passing = ("tests/t.py::test_ok", "tests/t.py::test_listed")
    first = failing("unpatched", {"tests/t.py::test_net": f"NoResultFound: Provider id='provider-{uuid_a}'"}, passing=passing)
    second = failing("unpatched", {"tests/t.py::test_net": f"NoResultFound: Provider id='provider-{uuid_b}'"}, passing=passing)
    once = merged_record(first, None)
    twice = merged_record(second, once)
    assert (once["stock_runs"], twice["stock_runs"]) == (1, 2)
    # The same failure, another uuid: after two agreeing stock runs the stored one may stand in.
    same = failing("patched", {"tests/t.py::test_net": f"NoResultFound: Provider id='provider-{uuid_b}'"}, passing=passing)
    assert stored_baseline_holds(compare("0.16.8", same, first, []), twice) == []
    # One stock run is not enough to excuse anything.
    assert any("2 must agree" in r for r in stored_baseline_holds(compare("0.16.8", same, first, []), once))
    # Failing otherwise than stored (another status code counts): judged against a fresh stock run.
    other = failing("patched", {"tests/t.py::test_net": "AssertionError: assert 422 == 200"}, passing=passing)
    stock_500 = merged_record(failing("unpatched", {"tests/t.py::test_net": "AssertionError: assert 500 == 200"}, passing=passing),
                              merged_record(failing("unpatched", {"tests/t.py::test_net": "AssertionError: assert 500 == 200"},
                                                    passing=passing), None))
    reasons = stored_baseline_holds(compare("0.16.8", other, first, []), stock_500)
    assert len(reasons) == 1 and "tests/t.py::test_net fails otherwise" in reasons[0]
    # A stock failure that did not happen in every stock run (a flake) never excuses a patched one.
    flaky = merged_record(failing("unpatched", {}, passing=(*passing, "tests/t.py::test_net")), stock_500)
    assert flaky["stable_failures"] == {} and flaky["stock_runs"] == 3
    patched_500 = failing("patched", {"tests/t.py::test_net": "AssertionError: assert 500 == 200"}, passing=passing)
    assert stored_baseline_holds(compare("0.16.8", patched_500, first, []), flaky)
    # A test failing only patched would be blamed on Ketta: never on a stored run.
    blamed = failing("patched", {"tests/t.py::test_net": f"NoResultFound: Provider id='provider-{uuid_a}'", "tests/t.py::test_ok": "boom"})
    assert any("did not fail in the stored" in r for r in stored_baseline_holds(compare("0.16.8", blamed, first, []), twice))
    # A listed failure that the stored run says is not Ketta's doing (stale): a fresh run decides.
    listed = ExpectedFailure("tests/t.py::test_gone", SpecifierSet(">=0.16"), "Ketta deletes for real")
    assert any("not failing because of Ketta" in r for r in stored_baseline_holds(compare("0.16.8", same, first, [listed]), twice))
    assert message_shape("at 0x7f3a2b1c in 1764773531") == message_shape("at 0x7f00aa01 in 1764779999")
    assert message_shape("assert 500 == 200") != message_shape("assert 422 == 200")
    # Upstream's tests name providers with a short random hex id: the same failure in two runs.
    shapes = {message_shape(f"assert 'test-byok-cached-{hex_id}/gpt-4o' in []") for hex_id in ("a5e478b7", "0f63ca4c", "53709fea")}
    assert len(shapes) == 1, shapes  # 53709fea: five digits first, still one id
    assert message_shape("decade facade") == "decade facade", "words of hex letters are not ids"


def test_the_stock_run_key_follows_what_the_run_depends_on(tmp_path):
    tree = tmp_path / "letta-0.16.8"
    (tree / "tests").mkdir(parents=True)
    (tree / "tests" / "test_providers.py").write_text("def test_x(): pass\n")
    constraints = tmp_path / "letta-0.16.8.constraints.txt"
    constraints.write_text("x==1\n")
    test_constraints = tmp_path / "letta-0.16.8.test-constraints.txt"
    test_constraints.write_text("pytest==8\n")
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "pyvenv.cfg").write_text("home = /usr/bin\nversion_info = 3.11.2\n")
    build = ServerBuild("0.16.8", False, tree, tmp_path / "w.whl", "0.16.8", "c" * 64, constraints, env, None)

    class Postgres:  # what baseline_inputs asks of PostgreSQL: its version
        version = "16.4"

        def server_version(self):
            return self.version

    pg = Postgres()
    first = stock_run_key(baseline_inputs(build, env / "bin" / "python", pg))
    assert stock_run_key(baseline_inputs(build, env / "bin" / "python", pg)) == first
    (tree / "tests" / "test_providers.py").write_text("def test_x(): assert 0\n")
    changed_tests = stock_run_key(baseline_inputs(build, env / "bin" / "python", pg))
    test_constraints.write_text("pytest==9\n")
    changed_constraints = stock_run_key(baseline_inputs(build, env / "bin" / "python", pg))
    pg.version = "17.0"
    changed_postgres = stock_run_key(baseline_inputs(build, env / "bin" / "python", pg))
    other_wheel = stock_run_key(baseline_inputs(ServerBuild(*[*vars(build).values()][:5], "d" * 64, constraints, env, None),
                                                env / "bin" / "python", pg))
    assert len({first, changed_tests, changed_constraints, changed_postgres, other_wheel}) == 5


def test_a_key_held_by_one_process_waits_for_it_in_another(tmp_path):
    import subprocess
    import sys

    store = RunStore(tmp_path / "stock-runs")
    probe = ("import sys, filelock; from pathlib import Path; from ketta_build.runstore import RunStore\n"
             "try:\n    with RunStore(Path(sys.argv[1])).locked(sys.argv[2], timeout=0.3): print('got it')\n"
             "except filelock.Timeout: print('waited')")
    with store.locked("k" * 64):
        held = subprocess.run([sys.executable, "-c", probe, str(store.root), "k" * 64], capture_output=True, text=True)
        other = subprocess.run([sys.executable, "-c", probe, str(store.root), "o" * 64], capture_output=True, text=True)
    assert held.stdout.strip() == "waited", held.stderr
    assert other.stdout.strip() == "got it", other.stderr
