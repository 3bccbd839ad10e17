"""Adding a verb or a compatibility suite takes one new file and one registry line.

A copy of the repository's code gets a throw-away verb (``commands/hello.py`` and its name in
``commands/__init__.py``) and a throw-away suite (``compat_tests/test_throwaway.py`` and its line
in ``compat_tests/suites.toml``); the copy's own ketta-build, run in a process of its own, then has
the verb (help, JSON, exit code) and the suite (tox.ini, the matrix's plan, its cell files)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HELLO = '''"""``ketta-build hello``: a throw-away verb."""

from __future__ import annotations

from ..tables import print_result
from .common import Context, Result, json_flag, patches_flag, verb_parser

NAME = "hello"
HELP = "say hello to the newest supported release"
EXAMPLES = (("ketta-build hello", "one line"),)


def register(sub) -> None:
    p = verb_parser(sub, NAME, help=HELP, examples=EXAMPLES)
    patches_flag(p)
    json_flag(p)


def run(ctx: Context, args) -> Result:
    from ..releases import load_releases

    newest = str(load_releases(ctx.patches).newest.version)
    return Result(4, {"schema": "ketta-build/hello/1", "newest": newest},
                  lambda console: print_result(console, f"hello, {newest}"))
'''

THROWAWAY = '''import pytest

pytestmark = pytest.mark.throwaway


def test_nothing():
    assert __name__.endswith("test_throwaway")
'''


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    shutil.copytree(REPO / "ketta_build", root / "ketta_build", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "compat_tests", root / "compat_tests", ignore=shutil.ignore_patterns("__pycache__", "parity"))
    shutil.copytree(REPO / "patches", root / "patches")
    shutil.copy2(REPO / "tox.ini", root / "tox.ini")
    return root


def _run(root: Path, *code_or_args: str, module: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    argv = [sys.executable, "-m", "ketta_build", *code_or_args] if module else [sys.executable, "-c", *code_or_args]
    return subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True)


def _changed(root: Path, relative: str) -> list[str]:
    """The lines of ``relative`` in the copy that are not in the repository's file."""
    mine, theirs = (root / relative).read_text().splitlines(), (REPO / relative).read_text().splitlines()
    return [line for line in mine if line not in theirs]


def test_a_verb_is_one_file_and_one_registry_line(tmp_path):
    root = _copy(tmp_path)
    (root / "ketta_build" / "commands" / "hello.py").write_text(HELLO)
    registry = root / "ketta_build" / "commands" / "__init__.py"
    registry.write_text(registry.read_text().replace('    "completion",\n', '    "completion",\n    "hello",\n'))
    assert _changed(root, "ketta_build/commands/__init__.py") == ['    "hello",']

    assert "hello" in _run(root, "--help").stdout
    help_text = _run(root, "hello", "--help").stdout
    assert "examples:" in help_text and "exit codes:" in help_text
    proc = _run(root, "hello", "--json", "-")
    assert proc.returncode == 4, proc.stderr
    assert json.loads(proc.stdout) == {"schema": "ketta-build/hello/1", "newest": "0.16.8"}
    assert "hello, 0.16.8" in proc.stderr  # with --json - the human output goes to stderr
    bad = _run(root, "hello", "--patches", str(tmp_path / "nowhere"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr


def test_a_suite_is_one_file_and_one_registry_line(tmp_path):
    root = _copy(tmp_path)
    (root / "compat_tests" / "test_throwaway.py").write_text(THROWAWAY)
    suites = root / "compat_tests" / "suites.toml"
    suites.write_text(suites.read_text() + 'throwaway = { description = "a throw-away suite", typical_seconds = 5 }\n')
    assert len(_changed(root, "compat_tests/suites.toml")) == 1

    proc = _run(root, "from pathlib import Path; from ketta_build import toxini; print(toxini.write(Path('.')))",
                module=False)
    assert proc.stdout.strip() == "True", proc.stderr
    tox = (root / "tox.ini").read_text()
    assert "-{unified,handle,harddelete,agent,migration,upstream,fuzz,parity,upgrade,throwaway}" in tox
    assert "throwaway: KETTA_SUITE = throwaway" in tox and "or parity or throwaway" in tox
    probe = """
from pathlib import Path
from ketta_build.cellstore import suite_files
from ketta_build.matrix import Cell, env_name, plan_tasks
from ketta_build.suites import project_suites
registry = project_suites(Path('.'))
cells = [Cell('0.16.8', s, env_name('0.16.8', s, 'letta')) for s in registry.names]
tasks = plan_tasks(cells, registry, "letta")
print([t.env for t in tasks])
print(sorted(p.name for p in suite_files(registry.tests, 'throwaway')))
print(registry.get('throwaway').typical_seconds)
"""
    proc = _run(root, probe, module=False)
    assert proc.returncode == 0, proc.stderr
    envs, files, seconds = proc.stdout.splitlines()
    assert envs == "['letta0168-shared', 'letta0168-upgrade']"  # the new suite joins the shared session
    assert "'test_throwaway.py'" in files and "'conftest.py'" in files and "test_agent.py" not in files
    assert seconds == "5"
    help_text = _run(root, "matrix", "--help").stdout
    assert "--suite" in help_text
    unknown = _run(root, "matrix", "--suite", "nosuch", "--letta", "0.16.8")
    assert unknown.returncode == 2 and "throwaway" in unknown.stderr, unknown.stderr
