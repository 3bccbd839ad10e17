"""The upstream suite's bookkeeping: junit parsing, the reviewed list, patched-vs-unpatched verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from compat_tests.upstream_runner import EXPECTED_FILE, CaseOutcome, UpstreamRun, compare, load_expected, parse_junit

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
