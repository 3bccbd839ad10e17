"""Parallel runs (pytest-xdist, docs/testing.md#parallel-runs): a run of tests/ is spread over the
cores, a run of compat_tests/ never is, and nothing a test module makes once for all its tests is made
again by each worker without anyone having decided so."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import group_of, module_groups

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# Module- or session-scoped fixtures made once per worker that runs a test using them, and why that
# is fine. Any other such fixture is in a module whose tests share one xdist_group (one worker makes
# it, as a serial run does) or keeps what it makes in ``shared_tmp`` (one for the whole run).
PER_WORKER = {
    "test_cli_completion.py::bash_script": "prints the completion script into a file: milliseconds",
    "test_sbom.py::document": "an SBOM made in memory from constants",
    "test_wheelfinish.py::flit_wheel": "one flit-core build of a two-file project: about a second",
}
WIDE = {"module", "session", "package"}


def _wide_fixtures(path: Path) -> list[ast.FunctionDef]:
    """The module- and session-scoped fixtures ``path`` defines."""
    fixtures = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call) and ast.unparse(decorator.func) in ("pytest.fixture", "fixture"):
                scope = next((k.value for k in decorator.keywords if k.arg == "scope"), None)
                if isinstance(scope, ast.Constant) and scope.value in WIDE:
                    fixtures.append(node)
    return fixtures


def test_every_fixture_made_once_for_many_tests_says_how_workers_share_it():
    grouped = {Path(module).name for module in module_groups()}
    seen, unsaid = set(), []
    for path in sorted(TESTS.glob("*.py")):
        for fixture in _wide_fixtures(path):
            name = f"{path.name}::{fixture.name}"
            seen.add(name)
            shared = "shared_tmp" in [a.arg for a in fixture.args.args]
            if not (path.name in grouped or shared or name in PER_WORKER or fixture.name == "shared_tmp"):
                unsaid.append(name)
    assert not unsaid, (f"{unsaid}: made once per xdist worker that needs them. Put the module's tests in a group "
                        "(pytestmark = pytest.mark.xdist_group(NAME)), keep what the fixture makes in shared_tmp, or "
                        "list it in PER_WORKER with the reason making it twice is fine (docs/testing.md#parallel-runs)")
    assert set(PER_WORKER) <= seen, f"PER_WORKER names fixtures that are gone: {sorted(set(PER_WORKER) - seen)}"


def test_groups_are_named_where_the_scheduler_reads_them():
    """The scheduler (tests/conftest.py) reads xdist_group from a module's pytestmark; a mark on a
    class or a test would be ignored, silently."""
    elsewhere = []
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        module_level = {id(call) for node in tree.body if isinstance(node, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
                        for call in ast.walk(node.value)}
        elsewhere += [f"{path.name}:{node.lineno}" for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                      and node.attr == "xdist_group" and id(node) not in module_level]
    assert not elsewhere, f"xdist_group outside a module's pytestmark: {elsewhere}"
    groups = module_groups()
    assert groups["tests/test_wheel_deploy.py"] == "wheel-deploy"
    assert group_of("tests/test_wheel_deploy.py::test_twine_and_check_wheel_contents", groups) == "wheel-deploy"
    assert group_of("tests/test_fork_starts.py::test_a_child_killed_leaves_the_helper_serving[0.14.0]", groups) == "fork-starts"
    assert group_of("tests/test_docs.py::test_the_docs_exist", groups) == "tests/test_docs.py::test_the_docs_exist"


PROBE = """\
import os
import pytest

def pytest_configure(config):  # after every pytest_cmdline_main: what the run was set up to do, then stop
    with open(os.environ["XDIST_PROBE"], "w") as f:
        f.write(f"{getattr(config.option, 'numprocesses', None)} {getattr(config.option, 'dist', None)}")
    pytest.exit("probed", returncode=0)
"""


def _set_up(tmp_path: Path, *args: str) -> str:
    """How many workers and which distribution ``pytest ARGS`` (run from the repository) sets up."""
    (tmp_path / "xdist_probe.py").write_text(PROBE)
    out = tmp_path / "probe.txt"
    out.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_ADDOPTS", "PYTEST_XDIST"))}
    env.update(PYTHONPATH=str(tmp_path), XDIST_PROBE=str(out), PYTEST_XDIST_AUTO_NUM_WORKERS="3")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "xdist_probe", "--basetemp",
                           str(tmp_path / "bt"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and out.is_file(), proc.stdout + proc.stderr
    return out.read_text()


@pytest.mark.parametrize(("args", "set_up"), [
    ((), "3 loadgroup"),  # the README's pytest: testpaths, i.e. the directory tests/
    (("-n0",), "0 no"),
    (("tests/test_docs.py",), "None no"),  # one file: no workers to start
    (("tests/test_docs.py", "-n", "2"), "2 loadgroup"),
])
def test_a_run_of_tests_is_spread_over_the_cores_a_run_of_one_file_or_n0_is_not(tmp_path, args, set_up):
    assert _set_up(tmp_path, *args) == set_up


def test_a_run_of_tests_gets_two_workers_per_core_unless_told(tmp_path, monkeypatch):
    from conftest import default_workers

    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    assert default_workers() == 2 * len(os.sched_getaffinity(0))
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "5")
    assert default_workers() == 5


def test_a_run_of_compat_tests_is_never_spread(tmp_path):
    """tox runs compat_tests/ with this repository's pytest configuration (pyproject.toml); its session
    shares one PostgreSQL and one default server, which each worker would start again."""
    assert _set_up(tmp_path, "compat_tests", "-m", "handle") == "None no"
