"""The GitHub workflows cannot drift from the tool: every ``ketta-build`` command line in them (and
in .ci/run) parses with the real CLI parser, actionlint and zizmor find nothing, and the
least-privilege rules hold (permissions per job, actions pinned to commits, no expressions in
``run:``)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ketta_build.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
EXPECTED = {"ci.yml", "matrix.yml", "upstream.yml", "release.yml"}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _steps(workflow: dict):
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield job_id, step


def ketta_build_commands(script: str) -> list[list[str]]:
    """The argument vectors of every ``ketta-build`` invocation in a shell script."""
    script = script.replace("\\\n", " ")
    commands = []
    for line in script.splitlines():
        line = line.split(" #", 1)[0]
        for segment in re.split(r"\|\||&&|;|\||\$\(|\)|\(", line):
            try:
                words = shlex.split(segment)
            except ValueError:
                continue
            if not words or not words[0].endswith("ketta-build"):
                continue
            argv, skip = [], False
            for word in words[1:]:
                if skip:
                    skip = False
                    continue
                if re.fullmatch(r"\d?>>?(&\d)?", word):
                    skip = not word.endswith(("&1", "&2"))
                    continue
                if re.match(r"\d?>", word):
                    continue
                argv.append(word)
            commands.append(argv)
    return commands


def test_the_four_workflows_exist():
    assert {p.name for p in WORKFLOWS} == EXPECTED


def test_command_extraction_sees_what_a_shell_would():
    script = 'status=0\nketta-build matrix --merge jobs/* --report-dir merged || status=$?\n' \
             'ketta-build port --letta "$v" > port.log 2>&1 || port=$?\n(cd x && ketta-build lint)\n' \
             'echo "$(ketta-build releases --json -)"\n'
    assert ketta_build_commands(script) == [["matrix", "--merge", "jobs/*", "--report-dir", "merged"],
                                            ["port", "--letta", "$v"], ["lint"], ["releases", "--json", "-"]]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_ketta_build_line_parses_with_the_real_parser(path: Path):
    parser = build_parser()
    found = []
    for _, step in _steps(_load(path)):
        script = step.get("run", "")
        if script.strip() == ".ci/run":  # the README's test command, checked in the script itself
            script = (REPO / ".ci" / "run").read_text()
        for argv in ketta_build_commands(script):
            try:
                parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"{path.name}: `ketta-build {shlex.join(argv)}` does not parse with ketta-build's CLI")
            found.append(argv[0])
    assert found, f"{path.name} calls no ketta-build command"


def test_ci_run_is_the_readme_test_command_and_parses():
    ci = (REPO / ".ci" / "run").read_text()
    command = ci.strip().splitlines()[-1]
    assert command in (REPO / "README.md").read_text(), ".ci/run must run the README's test command"
    vectors = ketta_build_commands(command)
    assert vectors
    for argv in vectors:
        build_parser().parse_args(argv)
    steps = [s.get("run", "") for _, s in _steps(_load(REPO / ".github" / "workflows" / "ci.yml"))]
    assert ".ci/run" in steps


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_pinned_actions_and_no_expressions_in_run(path: Path):
    workflow = _load(path)
    assert workflow.get("permissions") == {}, f"{path.name}: top-level permissions must be {{}}"
    for job_id, job in workflow["jobs"].items():
        assert "permissions" in job, f"{path.name}: job {job_id} declares no permissions"
    for job_id, step in _steps(workflow):
        uses = step.get("uses")
        if uses:
            assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses), f"{path.name}: {job_id} uses {uses} (pin a commit)"
            if uses.startswith("actions/checkout@"):
                assert step.get("with", {}).get("persist-credentials") is False, f"{path.name}: {job_id} keeps the token"
        assert "${{" not in step.get("run", ""), f"{path.name}: {job_id} interpolates an expression into run:"


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is a test dependency (pip install '.[test]')"
    return found


def test_actionlint_finds_nothing():
    proc = subprocess.run([_tool("actionlint"), *map(str, WORKFLOWS)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zizmor_finds_nothing_even_pedantic():
    proc = subprocess.run([_tool("zizmor"), "--offline", "--persona", "pedantic", "--no-progress", ".github/"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "No findings" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_every_verb_of_the_parser_is_dispatched():
    from ketta_build.cli import COMMANDS

    [sub] = [a for a in build_parser()._actions if a.dest == "command"]
    assert set(sub.choices) == set(COMMANDS)
