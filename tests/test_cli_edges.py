"""The edges a user meets first (issue 30): a closed stdout, 80 columns without a terminal, help that
agrees with the tool, the top-level flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from world import BODY

REPO = Path(__file__).resolve().parents[1]


def _closed_stdout_run(args: list[str], cwd: Path) -> tuple[int, str]:
    """Run ketta-build with a stdout pipe whose reader is gone before the first line (``| head -0``)."""
    proc = subprocess.Popen([sys.executable, "-m", "ketta_build", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "80"})
    proc.stdout.close()
    err = proc.stderr.read()
    return proc.wait(timeout=300), err


def test_a_closed_stdout_keeps_upstream_checks_exit_code_and_writes_the_json(world, tmp_path):
    world.publish("0.16.9", m=BODY.replace("line 15\n", "line 15 rewritten upstream\n"))  # needs porting: 11
    report = tmp_path / "check.json"
    rc, err = _closed_stdout_run(["upstream", "check", "--index-url", world.index.url, "--cache-dir", str(world.cache),
                                  "--patches", str(world.patches), "--json", str(report)], world.root / "repo")
    assert rc == 11, err
    assert json.loads(report.read_text())["exit_code"] == 11
    assert "Traceback" not in err and "Broken" not in err and "Exception ignored" not in err, err


def test_a_closed_stdout_keeps_exit_0_and_the_json_of_any_verb(tmp_path):
    report = tmp_path / "releases.json"
    rc, err = _closed_stdout_run(["releases", "--patches", str(REPO / "patches"), "--json", str(report)], tmp_path)
    assert rc == 0, err
    assert json.loads(report.read_text())["schema"] == "ketta-build/releases/1"
    assert err == ""


def test_head_1_of_upstream_check_keeps_its_exit_code(world, tmp_path):
    """The shell pipeline of the issue, as written: ``ketta-build upstream check | head -1``."""
    world.publish("0.16.9")  # carries over: 10
    args = " ".join(["upstream", "check", "--index-url", world.index.url, "--cache-dir", str(world.cache),
                     "--patches", str(world.patches)])
    proc = subprocess.run(["bash", "-c", f'"{sys.executable}" -m ketta_build {args} | head -1; exit "${{PIPESTATUS[0]}}"'],
                          cwd=world.root / "repo", capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"},
                          timeout=300)
    assert proc.returncode == 10, proc.stderr
    assert len(proc.stdout.splitlines()) == 1 and "Traceback" not in proc.stderr
