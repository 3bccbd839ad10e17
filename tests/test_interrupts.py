"""No verb loses work, or leaves litter, under Ctrl-C and SIGTERM (issue 30).

The signals come at chosen points: in a process of its own (tests/signal_driver.py: a function of the
package replaced by one that signals its own process first), or from outside while a slowed-down git
runs (a ``git`` wrapper first on PATH that holds a ``*.lock`` in the repository while it sleeps, and
removes it on SIGTERM, as git does: a Ctrl-C that reached it would leave the lock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_loop_sequences import RESOLVED, stop_port
from world import git


HERE = Path(__file__).resolve().parent
DRIVER = HERE / "signal_driver.py"
ROOT = HERE.parent

SLOW_GIT = """#!/bin/bash
# git, except that call number $KETTA_TEST_SLOW_NTH of git $KETTA_TEST_SLOW_GIT holds a lock in the
# repository for a while
for a in "$@"; do
  if [ "$a" = "$KETTA_TEST_SLOW_GIT" ]; then
    echo >> "$KETTA_TEST_MARK.count"
    [ "$(wc -l < "$KETTA_TEST_MARK.count")" -eq "$KETTA_TEST_SLOW_NTH" ] || break
    lock="$PWD/.git/ketta-test-slow.lock"
    [ -d "$PWD/.git" ] || lock="$PWD/ketta-test-slow.lock"
    trap 'rm -f "$lock"; exit 143' TERM
    : > "$lock"
    : > "$KETTA_TEST_MARK"
    sleep 3 & wait $!
    rm -f "$lock"
    break
  fi
done
exec "$KETTA_TEST_REAL_GIT" "$@"
"""


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}", **(extra or {})}
    return env


def world_args(world, *args: str, cache: Path | None = None) -> list[str]:
    return [*args, "--index-url", world.index.url, "--cache-dir", str(cache or world.cache), "--patches", str(world.patches)]


def drive(world, target: str, signame: str, *args: str, cwd: Path | None = None) -> tuple[int, str]:
    """``ketta-build ARGS`` signalled with ``signame`` when ``target`` is called: exit code and stderr."""
    proc = subprocess.run([sys.executable, str(DRIVER), target, signame, *args], cwd=cwd or world.root / "repo",
                          env=_env(), capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr


def locks(*trees: Path) -> list[Path]:
    return [p for tree in trees for p in (tree / ".git").rglob("*.lock")]


def litter(root: Path) -> list[Path]:
    """What an interrupted run may leave: temporary trees, pristine repositories, downloads."""
    patterns = (".*.ketta-tmp-*", ".*.ketta-old-*", "cache/pristine/.pristine-*", "cache/blobs/.download-*",
                "**/.*.ketta-new-*", "**/.*.ketta-wheel-*")
    return [p for pattern in patterns for p in root.glob(pattern)]


# ----------------------------------------------------------------------------- 1. git children and Ctrl-C


def _slow_git_run(world, tmp_path, slow: str, nth: int, *args: str) -> tuple[int, str]:
    """``ketta-build ARGS`` in a process group of its own, Ctrl-C sent to that group while call number
    ``nth`` of ``git slow`` runs (as a terminal sends it to its foreground job)."""
    bin_dir = tmp_path / "slow-bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "git"
    wrapper.write_text(SLOW_GIT)
    wrapper.chmod(0o755)
    mark = tmp_path / "slow-git-started"
    real_git = subprocess.run(["which", "git"], capture_output=True, text=True, check=True).stdout.strip()
    env = _env({"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "KETTA_TEST_SLOW_GIT": slow, "KETTA_TEST_SLOW_NTH": str(nth),
                "KETTA_TEST_MARK": str(mark), "KETTA_TEST_REAL_GIT": real_git})
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "signal.signal(signal.SIGTERM, signal.SIG_DFL); from ketta_build.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=world.root / "repo", env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not mark.exists():
            assert proc.poll() is None, f"ended before git {slow} ran: {proc.communicate()}"
            assert time.monotonic() < deadline, f"git {slow} never ran"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def _stopped_port_with_a_resolution(world) -> Path:
    tree = stop_port(world)
    (tree / "letta/m.py").write_text(RESOLVED)
    (tree / ".git" / "MERGE_MSG").unlink()
    # A message of one's own: --continue gives the commit the patch's (git update-ref, the first time),
    # and the finish names the new file in it (git update-ref again, while patches/ is written).
    git(tree, "commit", "-q", "-a", "-m", "fix conflict")
    return tree


def test_ctrl_c_while_port_continue_finishes_lets_git_finish_and_exits_130(world, tmp_path):
    tree = _stopped_port_with_a_resolution(world)
    rc, err = _slow_git_run(world, tmp_path, "update-ref", 2, *world_args(world, "port", "--continue", "--tree", str(tree)))
    assert rc == 130, err
    assert err.strip().count("\n") == 0 and "completed first" in err, err
    assert locks(tree, world.root / "repo") == []
    assert (world.patches / "0001-change-m-0.16.9.diff").is_file(), "the finish was completed"
    assert not (tree / ".git" / "ketta-port.json").exists()
    rc, _, err = world.run("export", "--tree", str(tree), "--check")
    assert rc == 0, err


def test_ctrl_c_while_git_runs_stops_it_gracefully_and_exits_130(world, tmp_path):
    tree = _stopped_port_with_a_resolution(world)
    before = world.snapshot()
    rc, err = _slow_git_run(world, tmp_path, "merge-base", 1, *world_args(world, "port", "--continue", "--tree", str(tree)))
    assert rc == 130, err
    assert err.strip().count("\n") == 0 and "before anything was put in place" in err, err
    assert locks(tree, world.root / "repo") == []
    assert world.snapshot() == before and (tree / ".git" / "ketta-port.json").is_file(), "nothing moved"
    rc, _, err = world.run("port", "--continue", "--tree", str(tree))
    assert rc == 0, err


def test_a_stale_lock_in_a_tree_is_named_in_one_line(world):
    tree = world.apply("0.16.8")
    (tree / "letta/m.py").write_text("changed\n")
    git(tree, "commit", "-q", "-am", "A change", "-m", "Why it is needed.")
    lock = tree / ".git" / "refs" / "heads" / "main.lock"
    lock.write_text("")  # what a git killed half-way through moving the branch leaves
    rc, _, err = world.run("export", "--tree", str(tree))
    line = err.strip()
    assert rc == 5 and "\n" not in line, err
    assert str(lock) in line and "remove that file" in line, line


# ----------------------------------------------------------------------------- 2. all or nothing at the finish


def test_sigterm_during_port_continues_finish_waits_for_it_and_exits_143(world):
    tree = _stopped_port_with_a_resolution(world)
    rc, err = drive(world, "ketta_build.port:_unregister", "SIGTERM",
                    *world_args(world, "port", "--continue", "--tree", str(tree)))
    assert rc == 143 and "terminated" in err and "completed first" in err, err
    assert '"0.16.9"' in (world.patches / "releases.toml").read_text()
    assert (world.patches / "0001-change-m-0.16.9.diff").is_file() and not (tree / ".git" / "ketta-port.json").exists()
    assert world.run("export", "--tree", str(tree), "--check")[0] == 0


# ----------------------------------------------------------------------------- 3. no litter after SIGTERM


def test_sigterm_while_patches_apply_leaves_no_temporary_tree(world):
    out = world.root / "build" / "0.16.8"
    rc, err = drive(world, "ketta_build.buildtree:apply_patch", "SIGTERM",
                    *world_args(world, "apply", "--letta", "0.16.8", "--out", str(out)))
    assert rc == 143 and "terminated (SIGTERM) before anything was put in place" in err, err
    assert not out.exists() and not list(out.parent.glob(".0.16.8.ketta-*"))


def test_sigterm_while_the_pristine_repository_is_made_leaves_nothing_in_the_cache(world):
    fresh = world.root / "fresh-cache"  # the world's own has the pristine repositories already
    rc, err = drive(world, "ketta_build.buildtree:_commit_pristine", "SIGTERM",
                    *world_args(world, "apply", "--letta", "0.16.8", "--out", str(world.root / "build" / "x"), cache=fresh))
    assert rc == 143, err
    assert (fresh / "pristine").is_dir() and list((fresh / "pristine").iterdir()) == []


def test_sigterm_during_a_download_leaves_no_partial_file(world):
    fresh = world.root / "fresh-cache"
    rc, err = drive(world, "ketta_build.cache:Cache.add_blob", "SIGTERM",
                    *world_args(world, "apply", "--letta", "0.16.8", "--out", str(world.root / "build" / "x"), cache=fresh))
    assert rc == 143, err
    assert (fresh / "blobs").is_dir() and list((fresh / "blobs").glob(".download-*")) == [] and litter(world.root) == []


def test_sigint_during_a_download_leaves_no_partial_file(world):
    fresh = world.root / "fresh-cache"
    rc, err = drive(world, "ketta_build.cache:Cache.add_blob", "SIGINT",
                    *world_args(world, "apply", "--letta", "0.16.8", "--out", str(world.root / "build" / "x"), cache=fresh))
    assert rc == 130, err
    assert (fresh / "blobs").is_dir() and list((fresh / "blobs").glob(".download-*")) == []


def test_a_letta_git_source_that_cannot_be_cloned_leaves_no_temporary_directory(world, tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    rc, _, err = world.run("apply", "--letta-git", "file:///nonexistent/letta.git", "--ref", "v0.16.8",
                           "--out", str(tmp_path / "out"))
    assert rc == 3 and "cannot open git repository" in err, err
    assert list(scratch.glob("ketta-upstream-git-*")) == []


def test_sigterm_while_a_letta_git_url_is_cloned_leaves_no_temporary_directory(world, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git(upstream, "init", "-q")
    (upstream / "pyproject.toml").write_text('[project]\nname = "letta"\nversion = "0.16.8"\n')
    git(upstream, "add", "-A")
    git(upstream, "commit", "-q", "-m", "0.16.8")
    git(upstream, "tag", "v0.16.8")
    proc = subprocess.run([sys.executable, str(DRIVER), "ketta_build.sources:run_git", "SIGTERM",
                           *world_args(world, "apply", "--letta-git", upstream.as_uri(), "--ref", "v0.16.8",
                                       "--out", str(tmp_path / "out"))],
                          cwd=world.root / "repo", env=_env({"TMPDIR": str(scratch)}), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 143, proc.stderr
    assert list(scratch.iterdir()) == []


# ----------------------------------------------------------------------------- 4. a symlinked --out


def test_apply_refuses_an_out_that_is_a_symbolic_link(world):
    real = world.root / "elsewhere"
    real.mkdir()
    link = world.root / "build-link"
    link.symlink_to(real, target_is_directory=True)
    rc, _, err = world.run("apply", "--letta", "0.16.8", "--out", str(link), "--force")
    line = err.strip()
    assert rc == 5 and "\n" not in line and str(link) in line and "symbolic link" in line, err
    assert link.is_symlink() and list(real.iterdir()) == []


# ----------------------------------------------------------------------------- 5. lint --fix and the series lock


def test_lint_fix_refuses_while_another_run_holds_the_series_lock(world, monkeypatch):
    from ketta_build.buildtree import series_lock
    from ketta_build.cache import Cache

    monkeypatch.setenv("KETTA_BUILD_LOCK_TIMEOUT", "0.3")
    before = world.snapshot()
    with series_lock(Cache(world.cache), world.patches):  # an export (or a port's finish) writing patches/
        rc, _, err = world.run("lint", "--fix")
        assert rc == 5 and "another ketta-build holds the lock 'series-" in err and err.strip().count("\n") == 0, err
        assert world.snapshot() == before
        rc, _, err = world.run("lint")  # reading only: no lock
        assert rc == 0, err
    assert world.run("lint", "--fix")[0] == 0


def test_a_port_finish_that_fails_halfway_writes_nothing(world, monkeypatch):
    """The finish wrote patch files, series, releases.toml and tox.ini one by one: a failure after the
    first (a full disk, a tox.ini it could not write) left a series listing a release nobody ported."""
    import ketta_build.port as port

    tree = _stopped_port_with_a_resolution(world)
    before = {p.name: p.read_bytes() for p in world.patches.iterdir()}
    tox_before = (world.root / "repo" / "tox.ini").read_bytes()

    def full_disk(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(port, "reword_commits", full_disk)
    rc, _, err = world.run("port", "--continue", "--tree", str(tree))
    assert rc != 0 and "No space left on device" in err, err
    assert {p.name: p.read_bytes() for p in world.patches.iterdir()} == before
    assert (world.root / "repo" / "tox.ini").read_bytes() == tox_before
    assert (tree / ".git" / "ketta-port.json").exists()  # the port can go on once the disk has room
    monkeypatch.undo()
    rc, _, err = world.run("port", "--continue", "--tree", str(tree))
    assert rc == 0, err
    assert '"0.16.9"' in (world.patches / "releases.toml").read_text()
    assert "letta{0167,0168,0169}" in (world.root / "repo" / "tox.ini").read_text()


# ----------------------------------------------------------------------------- 4. a compatibility session stopped


SLEEPER = """
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def held():
    yield
    Path({mark!r}).write_text("torn down")


def test_waits(held):
    Path({started!r}).write_text("")
    time.sleep(120)
"""


def test_sigterm_ends_a_compatibility_session_through_its_teardown(tmp_path):
    """The suites' servers, start helpers and PostgreSQL clusters run in sessions of their own: only the
    session's teardown stops them. SIGTERM (a cancelled CI run, a stopped matrix) killed pytest where it
    stood and left them running (found when a cold ``matrix --all`` was stopped)."""
    mark, started = tmp_path / "torn-down", tmp_path / "started"
    (tmp_path / "test_sleeper.py").write_text(SLEEPER.format(mark=str(mark), started=str(started)))
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "compat_tests.conftest", "-p", "no:cacheprovider", "-q",
                             "--rootdir", str(tmp_path), str(tmp_path / "test_sleeper.py")],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the test never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert mark.exists() and mark.read_text() == "torn down", f"no teardown after SIGTERM:\n{out[-2000:]}"
    assert proc.returncode != 0
