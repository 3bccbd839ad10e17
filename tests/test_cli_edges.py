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
    from ketta_build import matrix, matrixreport
    from ketta_build.cli import main
    from ketta_build.suites import project_suites

    monkeypatch.setenv("COLUMNS", "80")
    job = tmp_path / "job"
    cells = [matrix.Cell("0.16.8", suite, f"letta0168-{suite}", status="pass", passed=12, duration=20,
                         log=f"logs/letta0168-{suite}.log") for suite in project_suites(Path(__file__).resolve().parent.parent).names]
    (job / "logs").mkdir(parents=True)
    for c in cells:
        (job / c.log).write_text("log\n")
    matrixreport.write_reports(cells, job, no_patches=False, context={})
    assert main(["matrix", "--merge", str(job), "--report-dir", str(tmp_path / "merged")]) == 0
    out = capsys.readouterr().out
    [line] = [ln for ln in out.splitlines() if ln.startswith("0.16.8")]
    for suite in project_suites(Path(__file__).resolve().parent.parent).names:
        assert f"{suite}=pass 12/12" in line, out
    assert all(len(ln) <= 80 for ln in out.splitlines() if "│" in ln or "┃" in ln), out


# ----------------------------------------------------------------------------- help and docs agree with the tool

def _verbs(parser=None, prefix: str = "") -> dict:
    import argparse

    from ketta_build.cli import build_parser

    found = {}
    for action in (parser or build_parser())._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{prefix}{name}"] = sub
                found.update(_verbs(sub, f"{prefix}{name} "))
    return found


def _option_help(verb: str, flag: str) -> str:
    return next(a.help for a in _verbs()[verb]._actions if flag in a.option_strings)


def test_export_help_says_check_exits_4():
    text = _option_help("export", "--check")
    assert "exit 4" in text and "exit 1" not in text, text


def test_upstream_check_help_names_every_exit_code_it_has():
    # the description, where the verb's own codes are listed (the shared table below lists them all)
    text = " ".join(_verbs()["upstream check"].description.split())
    for code in ("0 nothing new", "10 carries over", "11 needs porting", "2 usage", "3 upstream source"):
        assert code in text, (code, text)


def test_every_verb_help_has_examples_that_parse():
    """The README: "`ketta-build VERB --help` gives each verb's options and examples"."""
    import shlex

    from ketta_build.cli import build_parser

    for verb, sub in _verbs().items():
        text = sub.format_help()
        assert "\nexamples:\n" in text, f"ketta-build {verb} --help has no examples"
        block = text.split("\nexamples:\n", 1)[1].split("\n\n", 1)[0]
        commands = [ln.strip() for ln in block.splitlines() if ln.strip().startswith(f"ketta-build {verb}")]
        assert commands, (verb, block)
        for line in commands:
            argv = shlex.split(line.split("  ")[0])[1:]  # the command, before its explanation
            try:
                build_parser().parse_args(argv)
            except SystemExit:
                raise AssertionError(f"ketta-build {verb} --help: example `{line}` does not parse") from None


def test_a_usage_error_with_json_dash_writes_the_error_document(capsys):
    import pytest

    from ketta_build.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["apply", "--fuzz", "many", "--json", "-"])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    # what docs/json-schemas.md promises for an error
    section = (REPO / "docs" / "json-schemas.md").read_text().split("## `ketta-build/error/1`", 1)[1].split("\n## ", 1)[0]
    assert set(doc) == {"schema", "command", "exit_code", "error"}
    assert all(f"`{key}`" in section for key in ("command", "exit_code", "error"))
    assert doc["schema"] == "ketta-build/error/1" and doc["command"] == "apply" and doc["exit_code"] == 2
    assert "--fuzz" in doc["error"] and not doc["error"].startswith("ketta-build")
    assert len(captured.err.strip().splitlines()) == 1 and "--fuzz" in captured.err


def test_a_usage_error_with_json_file_writes_the_error_document(tmp_path, capsys):
    import pytest

    from ketta_build.cli import main

    with pytest.raises(SystemExit):
        main(["upstream", "check", "--json", str(tmp_path / "e.json"), "--bogus"])
    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc["schema"] == "ketta-build/error/1" and doc["command"] == "upstream" and doc["exit_code"] == 2


def test_range_diff_takes_patches_for_the_series_a_git_ref_holds(world, tmp_path, monkeypatch):
    """Every verb takes --patches: for range-diff, where a git ref's series lives (its repository, its path)."""
    from ketta_build.cli import main

    monkeypatch.chdir(tmp_path)  # outside the repository: --patches says which
    report = tmp_path / "rd.json"
    rc = main(["range-diff", "--letta", "0.16.8", "--patches", str(world.patches), "--index-url", world.index.url,
               "--cache-dir", str(world.cache), "HEAD", str(world.patches), "--json", str(report)])
    err = world.capsys.readouterr().err
    assert rc == 0, err
    assert {p["class"] for p in json.loads(report.read_text())["pairs"]} == {"unchanged"}


# ----------------------------------------------------------------------------- -q, --version, misspelt options

def test_version_flag(capsys):
    import pytest

    from ketta_build import __version__
    from ketta_build.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == f"ketta-build {__version__}\n"


def test_a_misspelt_option_points_to_its_verbs_help(capsys):
    import pytest

    from ketta_build.cli import main

    for argv, bad, verb in ((["apply", "--letta", "0.16.8", "--froce"], "--froce", "apply"),
                            (["upstream", "check", "--index-ulr", "http://x"], "--index-ulr", "upstream check"),
                            (["status", "--jsno", "-"], "--jsno", "status")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and len(err.strip().splitlines()) == 1, err
        assert bad in err and f"(see ketta-build {verb} --help)" in err, err
        assert err.startswith(f"ketta-build {verb}: error: "), err


def _quiet_run(world, *argv: str) -> tuple[int, str, str]:
    import os as _os

    from ketta_build.cli import main

    cwd = _os.getcwd()
    _os.chdir(world.root / "repo")
    try:
        rc = main(list(argv))
    finally:
        _os.chdir(cwd)
    out, err = world.capsys.readouterr()
    return rc, out, err


def test_quiet_prints_only_errors_and_the_final_result(world):
    src = ["--index-url", world.index.url, "--cache-dir", str(world.cache), "--patches", str(world.patches)]
    out_dir = str(world.root / "build" / "0.16.8")
    rc, out, err = _quiet_run(world, "-q", "apply", "--letta", "0.16.8", "--out", out_dir, *src)
    assert rc == 0 and err == "", err
    assert out.splitlines() == [f"hunks: 3 clean; tree {out.split(' tree ')[1].split()[0]} at {out_dir}"], out
    # the verb's own -q says the same
    rc, out, err = _quiet_run(world, "apply", "-q", "--letta", "0.16.8", "--out", out_dir, "--force", *src)
    assert rc == 0 and len(out.splitlines()) == 1 and out.startswith("hunks: 3 clean"), out
    rc, out, err = _quiet_run(world, "-q", "export", "--tree", out_dir, *src)
    assert rc == 0 and out == "nothing to write: the series matches the tree\n", out
    rc, out, err = _quiet_run(world, "-q", "lint", *src)
    assert rc == 0 and out == "lint: no findings\n", out
    # a failure: its errors, on stderr, and the result line
    (world.patches / "0003-tail.diff").write_text((world.patches / "0003-tail.diff").read_text().replace(
        "-line 40\n", "-line 40 as it never was\n"))
    rc, out, err = _quiet_run(world, "-q", "apply", "--letta", "0.16.8", "--out", out_dir, "--force", *src)
    assert rc == 1 and len(out.splitlines()) == 1 and out.startswith("hunks: 2 clean, 1 failed"), out
    assert err.startswith("ketta-build: failed: ") and "0003-tail.diff" in err, err


# ----------------------------------------------------------------------------- lint's advice runs as printed

def test_lints_fix_for_a_stale_tox_ini_runs_as_printed(world):
    tox = world.root / "repo" / "tox.ini"
    tox.write_text("[tox]\n")
    rc, _, err = world.run("lint")
    [line] = [ln for ln in err.splitlines() if "[generated]" in ln and "tox.ini" in ln]
    assert rc == 4 and line.endswith("(ketta-build lint --fix writes it)"), err
    assert world.run("lint", "--fix")[0] == 0
    assert "[testenv:letta{0167,0168}-shared]" in tox.read_text()
    assert world.run("lint")[0] == 0


# ----------------------------------------------------------------------------- --build-root: nothing under ./build

def test_build_root_keeps_every_verb_out_of_dot_build(world, monkeypatch):
    """apply, export and port (start, continue's lookup) with --build-root write their trees there;
    ./build of the directory they run in stays absent. matrix hands the root to its suites."""
    elsewhere = world.root / "elsewhere"
    rc, _, err = world.run("apply", "--letta", "0.16.8", "--build-root", str(elsewhere))
    assert rc == 0, err
    assert (elsewhere / "0.16.8" / ".git").is_dir()
    rc, out, err = world.run("export", "--build-root", str(elsewhere))  # the default tree: <root>/<newest>
    assert rc == 0 and "nothing to write" in out, err
    world.publish("0.16.9")
    rc, _, err = world.run("port", "--letta", "0.16.9", "--build-root", str(elsewhere))
    assert rc == 0, err
    assert (elsewhere / "0.16.9" / ".git").is_dir()
    assert not (world.root / "repo" / "build").exists()

    from ketta_build import matrix

    seen = {}
    monkeypatch.setattr(matrix, "need_tox", lambda: None)
    monkeypatch.setattr(matrix, "run_matrix", lambda *a, **kw: seen.update(kw) or [])
    world.run("matrix", "--letta", "0.16.8", "--build-root", str(elsewhere), "--patches", str(world.patches),
              "--cache-dir", str(world.cache), "--report-dir", str(world.root / "reports"))
    assert seen["build_root"] == elsewhere
    assert not (world.root / "repo" / "build").exists()


def test_every_verb_that_builds_trees_takes_build_root():
    verbs = _verbs()
    for verb in ("apply", "export", "port", "matrix", "serve"):
        assert any("--build-root" in a.option_strings for a in verbs[verb]._actions), verb


# ----------------------------------------------------------------------------- -v: a line per step of the long work

def test_v_shows_the_steps_of_lint_export_and_upstream_check_on_stderr(world):
    from world import git

    rc, out, err = world.run("lint", "-v")
    assert rc == 0, err
    assert "checking 0001-change-m.diff" in err and "reading letta 0.16.7" in err, err
    assert "applying 3 patch(es) in memory to letta 0.16.8" in err, err
    assert "checking" not in out
    tree = world.apply("0.16.8")
    (tree / "letta" / "m.py").write_text((tree / "letta" / "m.py").read_text().replace("line 41\n", "line 41 (ketta)\n"))
    git(tree, "commit", "-q", "-a", "--amend", "--no-edit")
    world.capsys.readouterr()
    rc, out, err = world.run("export", "-v", "--tree", str(tree))
    assert rc == 0, err
    assert "checking the patches export writes on the releases their guards claim: letta 0.16.7, 0.16.8" in err, err
    assert "applying 3 patch(es) in memory to letta 0.16.8" in err, err
    world.publish("0.16.9")
    rc, out, err = world.run("upstream", "check", "-v")
    assert rc == 10, err
    assert f"asking {world.index.url} for letta's releases" in err, err
    assert "letta 0.16.9: a server release" in err and "dry-run port onto letta 0.16.9" in err, err
    rc, out, err = world.run("status", "-v", "--patches", str(world.patches), "--cache-dir", str(world.cache),
                             "--index-url", world.index.url)
    assert "applying" in err and "in memory to letta 0.16.7" in err, err


def test_head_of_the_steps_on_stderr_keeps_the_exit_code(world):
    """``ketta-build status -v 2>&1 | head -1``: the steps go to stderr, whose reader is gone after one
    line; the exit code was 1 there and 0 with the whole output read."""
    argv = ["status", "--index-url", world.index.url, "--cache-dir", str(world.cache), "--patches", str(world.patches), "-v"]
    whole = subprocess.run([sys.executable, "-m", "ketta_build", *argv], cwd=world.root / "repo", capture_output=True,
                           text=True, timeout=300)
    assert whole.returncode == 0 and len(whole.stderr.splitlines()) > 1, whole.stderr
    proc = subprocess.run(["bash", "-c", f'"{sys.executable}" -m ketta_build {" ".join(argv)} 2>&1 | head -1; exit "${{PIPESTATUS[0]}}"'],
                          cwd=world.root / "repo", capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"},
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(proc.stdout.splitlines()) == 1
