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


# ----------------------------------------------------------------------------- 80 columns, no terminal

LONG = "0002-a-new-module-for-the-unified-provider-system.diff"


def _long_named(world) -> None:
    """The world's 0002 under a name as long as the real series' longest ones (and longer)."""
    (world.patches / "0002-new-module.diff").rename(world.patches / LONG)
    series = world.patches / "series"
    series.write_text(series.read_text().replace("0002-new-module.diff", LONG))


def _piped(world, args: str) -> subprocess.CompletedProcess:
    """``COLUMNS=80 ketta-build ARGS | cat``: 80 columns, no terminal, as in a CI log."""
    return subprocess.run(["bash", "-c", f'"{sys.executable}" -m ketta_build {args} | cat; exit "${{PIPESTATUS[0]}}"'],
                          cwd=world.root / "repo", capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "80"})


def _names(world) -> list[str]:
    return [ln.split()[0] for ln in (world.patches / "series").read_text().splitlines() if ln and not ln.startswith("#")]


def test_status_at_80_columns_in_a_pipe_shows_every_patch_name_whole(world):
    _long_named(world)
    proc = _piped(world, f"status --patches {world.patches} --index-url {world.index.url} --cache-dir {world.cache}")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name in _names(world):
        assert any(name in line for line in lines), (name, proc.stdout)
    # every record is whole: a patch's outcomes stay on its line
    assert any(ln.startswith(LONG) and "exact 0.16.7-0.16.8" in ln for ln in lines), proc.stdout


def test_status_keeps_its_table_where_the_table_fits(world, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "250")
    rc, out, err = world.run("status", "--patches", str(world.patches), "--index-url", world.index.url,
                             "--cache-dir", str(world.cache))
    assert rc == 0, err
    assert "┃ patch" in out and any("0001-change-m.diff" in ln and "│" in ln for ln in out.splitlines()), out


def test_apply_at_80_columns_in_a_pipe_shows_every_patch_name_and_command_whole(world):
    _long_named(world)
    out = world.root / "build" / "a-build-tree-with-a-long-path-as-ci-runners-have-them" / "0.16.8"
    args = (f"apply --letta 0.16.8 --out {out} --patches {world.patches} --index-url {world.index.url} "
            f"--cache-dir {world.cache}")
    proc = _piped(world, args)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for name in ("0001-change-m.diff", LONG, "0003-tail.diff"):
        assert any(name in line for line in lines), (name, proc.stdout)
    assert any(str(out) in line for line in lines), proc.stdout  # the tree's path, whole
    # a patch that fails: the commands to copy are whole, each on a line of its own
    (world.patches / "0003-tail.diff").write_text((world.patches / "0003-tail.diff").read_text().replace(
        "-line 40\n", "-line 40 as it never was\n"))
    proc = _piped(world, args + " --force")
    assert proc.returncode == 1, proc.stderr
    lines = [ln.strip() for ln in proc.stdout.splitlines()]
    assert f"git -C {out} commit -a --no-edit --author 'Test Author <test@example.org>'" in lines, proc.stdout
    assert f"ketta-build export --tree {out}" in lines, proc.stdout


def test_matrix_table_falls_back_to_one_line_per_release_at_80_columns(tmp_path, monkeypatch, capsys):
    from ketta_build import matrix
    from ketta_build.cli import main

    monkeypatch.setenv("COLUMNS", "80")
    job = tmp_path / "job"
    cells = [matrix.Cell("0.16.8", suite, f"letta0168-{suite}", status="pass", passed=12, duration=20,
                         log=f"logs/letta0168-{suite}.log") for suite in matrix.SUITES]
    (job / "logs").mkdir(parents=True)
    for c in cells:
        (job / c.log).write_text("log\n")
    matrix.write_reports(cells, job, no_patches=False, context={})
    assert main(["matrix", "--merge", str(job), "--report-dir", str(tmp_path / "merged")]) == 0
    out = capsys.readouterr().out
    [line] = [ln for ln in out.splitlines() if ln.startswith("0.16.8")]
    for suite in matrix.SUITES:
        assert f"{suite}=pass 12/12" in line, out
    assert all(len(ln) <= 80 for ln in out.splitlines() if "│" in ln or "┃" in ln), out

