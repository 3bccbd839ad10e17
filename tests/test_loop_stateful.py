"""The maintenance loop as random sequences of what a maintainer does (hypothesis state machine).

Synthetic releases 0.16.7 and 0.16.8 (supported) and 0.16.9 (to port to; its line 15 conflicts with
patch 0001 in some examples) on a ``file://`` index. Steps: apply (with and without --force),
commit an edit (amend a patch's commit, fixup + autosquash, a new commit), leave an edit uncommitted,
export (with --prune/--split), lint, port to 0.16.9, resolve and continue, abort (with and without
--force). After every step the loop's invariants hold:

(b) no work is lost: the content (tree) of every commit the maintainer made is still reachable from
    a ref of a build tree or a saved bundle, and uncommitted edits are either still in their tree
    or saved; a verb that fails leaves patches/ as it was;
(c) after a verb that wrote patches/, the series applies exactly on every release it claims;
(d) a second export right after a successful one writes nothing;
(e) every verb's ``--json -`` is alone on stdout.

The default run tries a bounded number of sequences (``TestLoop``); ``pytest -m long`` runs
``TestLoopLong`` with KETTA_STATEFUL_EXAMPLES sequences (default 200) of up to 25 steps.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import make_diff, make_sdist, pin_sdists, server_files, write_series
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from test_loop_sequences import file_index
from world import BODY, RELEASES_TOML, header, m_of

from ketta_build.buildtree import PristineRepos
from ketta_build.cache import Cache
from ketta_build.claims import check_claims
from ketta_build.cli import main
from ketta_build.series import read_series
from ketta_build.upstream import IndexSource

ENV = {**os.environ, "GIT_AUTHOR_NAME": "Maintainer", "GIT_AUTHOR_EMAIL": "m@example.org",
       "GIT_COMMITTER_NAME": "Maintainer", "GIT_COMMITTER_EMAIL": "m@example.org", "GIT_EDITOR": "true",
       "GIT_SEQUENCE_EDITOR": "true"}


def git(tree: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=tree, env=ENV, capture_output=True, text=True, check=False)
    if check and proc.returncode:
        raise AssertionError(f"git {' '.join(args)}: {proc.stderr}")
    return proc.stdout.strip()


class Loop(RuleBasedStateMachine):
    @initialize(conflicting_port=st.booleans())
    def make_world(self, conflicting_port: bool) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ketta-stateful-"))
        sdists = []
        for version, m in (("0.16.7", m_of("0.16.7")), ("0.16.8", BODY),
                           ("0.16.9", BODY.replace("line 15\n", "line 15 upstream\n") if conflicting_port
                            else BODY.replace("line 2\n", "line 2 upstream\n"))):
            sdists.append(make_sdist(self.root / f"letta-{version}.tar.gz", version,
                                     server_files(version, {"letta/m.py": m})))
        self.index = file_index(self.root / "index", sdists)
        self.cache = self.root / "cache"
        self.patches = self.root / "repo" / "patches"
        self.patches.mkdir(parents=True)
        (self.patches / "releases.toml").write_text(RELEASES_TOML)
        pin_sdists(self.patches, *sdists[:2])  # 0.16.7 and 0.16.8; the port pins 0.16.9
        write_series(self.patches, "0001-change-m.diff", "0002-new-module.diff",
                     "0003-tail.diff                 [letta>=0.16.8]", "0003-tail-0.16.7.diff          [letta<0.16.8]")
        m1 = BODY.replace("line 15\n", "line fifteen (ketta)\n")
        (self.patches / "0001-change-m.diff").write_text(header("Ketta changes line 15", "0.16.8") + make_diff("letta/m.py", BODY, m1))
        (self.patches / "0002-new-module.diff").write_text(
            header("A Ketta module", "0.16.8") + make_diff("letta/k.py", None, "KETTA = True\n"))
        (self.patches / "0003-tail.diff").write_text(
            header("Ketta changes line 40", "0.16.8") + make_diff("letta/m.py", m1, m1.replace("line 40\n", "line forty\n")))
        m7 = m_of("0.16.7").replace("line 15\n", "line fifteen (ketta)\n")
        (self.patches / "0003-tail-0.16.7.diff").write_text(
            header("Ketta changes line 40", "0.16.7") + make_diff("letta/m.py", m7, m7.replace("line 40 (old)\n", "line forty\n")))
        assert self.ketta("lint", "--fix")[0] == 0
        self.trees: dict[str, Path] = {}
        self.work: dict[Path, str] = {}  # tree path -> tree id of the maintainer's last commit there
        self.uncommitted: dict[Path, str] = {}  # tree -> its diff when the maintainer left an edit there
        self.bundles: list[Path] = []
        self.port: Path | None = None
        self.made = 0  # edits made, so no two are the same

    def teardown(self) -> None:
        shutil.rmtree(getattr(self, "root", "/nonexistent"), ignore_errors=True)

    # ------------------------------------------------------------------ running ketta-build

    def ketta(self, *argv: str, json_out: bool = True) -> tuple[int, str, str]:
        args = list(argv)
        verb = args[0]
        if verb in ("apply", "port", "lint", "export"):
            args += ["--patches", str(self.patches), "--cache-dir", str(self.cache), "--index-url", self.index]
        if json_out:
            args += ["--json", "-"]
        out, err = io.StringIO(), io.StringIO()
        cwd = os.getcwd()
        os.chdir(self.root / "repo")
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = main(args)
        finally:
            os.chdir(cwd)
        event(f"{' '.join(a for a in argv if a.startswith('-') and a != '--tree' or a == verb)} -> exit {rc}")
        if json_out and out.getvalue():
            data = json.loads(out.getvalue())  # (e): nothing else on stdout
            assert data["schema"].startswith("ketta-build/")
        return rc, out.getvalue(), err.getvalue()

    def snapshot(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.patches.iterdir())}

    def checked(self, before: dict[str, bytes], rc: int, err: str) -> None:
        """A failed verb left patches/ alone and said so in one line; a successful one left it applying."""
        if rc != 0:
            assert self.snapshot() == before, f"exit {rc} changed patches/: {err}"
            assert "Traceback" not in err
        elif self.snapshot() != before:
            self.assert_claims_hold()

    def assert_claims_hold(self) -> None:  # (c)
        series = read_series(self.patches)
        cache = Cache(self.cache)
        repos = PristineRepos(IndexSource(cache, self.index, allow_unsupported=True, releases=series.releases), cache)
        failures, gaps = check_claims(series, series.releases.versions, repos)
        assert not failures and not gaps, [str(f) for f in failures]

    def tree_for(self, version: str) -> Path:
        return self.root / "build" / version

    # ------------------------------------------------------------------ steps

    @rule(version=st.sampled_from(["0.16.7", "0.16.8"]), force=st.booleans())
    def apply(self, version: str, force: bool) -> None:
        out = self.tree_for(version)
        before = self.snapshot()
        rc, _, err = self.ketta("apply", "--letta", version, "--out", str(out), *(["--force"] if force else []))
        self.checked(before, rc, err)
        if rc == 0:
            self.trees[version] = out
        else:
            assert rc in (1, 5), err

    @precondition(lambda self: self.trees)
    @rule(data=st.data(), line=st.integers(1, 60), how=st.sampled_from(["amend-last", "fixup-first", "new-commit"]))
    def commit_an_edit(self, data, line: int, how: str) -> None:
        tree = data.draw(st.sampled_from(sorted(self.trees.values())))
        if git(tree, "status", "--porcelain") or not git(tree, "symbolic-ref", "-q", "HEAD", check=False):
            return
        if how == "new-commit":
            self.made += 1
            (tree / "letta" / f"extra{line}.py").write_text(f"X = {line}  # edit {self.made}\n")
            git(tree, "add", "-A")
            git(tree, "commit", "-q", "-m", f"Add extra{line}", "-m", "A module Ketta needs for a reason of its own.")
        else:
            m = tree / "letta/m.py"
            text = m.read_text()
            target = f"line {line}\n"
            if target not in text:
                return
            m.write_text(text.replace(target, f"line {line} (edited)\n"))
            if how == "amend-last":
                git(tree, "commit", "-q", "-a", "--amend", "--no-edit")
            else:
                first = git(tree, "log", "--format=%H", "--grep", "Ketta-Patch: 0001-change-m.diff")
                if not first:
                    git(tree, "checkout", "-q", "--", ".")
                    return
                git(tree, "commit", "-q", "-a", "--fixup", first)
                proc = subprocess.run(["git", "rebase", "-q", "-i", "--autosquash", f"{first}~1"], cwd=tree, env=ENV,
                                      capture_output=True, check=False)
                if proc.returncode:  # a conflict: the maintainer gives up on this edit
                    git(tree, "rebase", "--abort")
                    git(tree, "reset", "-q", "--hard", "HEAD~1")
                    return
        self.work[tree] = git(tree, "rev-parse", "HEAD^{tree}")  # what they did before this they replaced themselves

    @precondition(lambda self: self.trees)
    @rule(data=st.data())
    def leave_an_edit_uncommitted(self, data) -> None:
        tree = data.draw(st.sampled_from(sorted(self.trees.values())))
        (tree / "letta" / "scratch.txt").write_text("unsaved work\n")
        self.uncommitted[tree] = "scratch.txt"

    @precondition(lambda self: self.trees)
    @rule(data=st.data(), prune=st.booleans(), split=st.booleans())
    def export(self, data, prune: bool, split: bool) -> None:
        tree = data.draw(st.sampled_from(sorted(self.trees.values())))
        before = self.snapshot()
        flags = [*(["--prune"] if prune else []), *(["--split"] if split else [])]
        rc, _, err = self.ketta("export", "--tree", str(tree), *flags)
        self.checked(before, rc, err)
        if rc == 0:  # (d)
            once = self.snapshot()
            rc2, out2, err2 = self.ketta("export", "--tree", str(tree), *flags)
            assert rc2 == 0 and self.snapshot() == once, f"the second export wrote: {err2}"
            assert json.loads(out2)["written"] == []
        else:
            assert rc in (4, 5, 2), err

    @rule()
    def lint(self) -> None:
        before = self.snapshot()
        rc, _, err = self.ketta("lint")
        assert self.snapshot() == before and rc in (0, 4) and "Traceback" not in err

    @precondition(lambda self: self.port is None and "0.16.9" not in (self_releases(self)))
    @rule(in_place=st.booleans())
    def port(self, in_place: bool) -> None:
        tree = self.tree_for("0.16.9")
        before = self.snapshot()
        rc, _, err = self.ketta("port", "--letta", "0.16.9", "--tree", str(tree), *(["--in-place"] if in_place else []))
        if rc == 1:
            assert self.snapshot() == before
            self.port = tree
        else:
            self.checked(before, rc, err)
            if rc == 0:
                self.trees["0.16.9"] = tree
                assert not (tree / ".git" / "ketta-port.json").exists()
                assert self.ketta("export", "--tree", str(tree), "--check")[0] == 0, "a finished port's tree exports as is"

    @precondition(lambda self: self.port is not None)
    @rule(commit=st.booleans())
    def resolve_and_continue(self, commit: bool) -> None:
        tree = self.port
        m = tree / "letta/m.py"
        m.write_text(_take_the_patchs_side(m.read_text()))
        for rej in tree.rglob("*.rej"):
            rej.unlink()
        if commit:
            git(tree, "commit", "-q", "-a", "-m", "resolved by hand")
            self.work[tree] = git(tree, "rev-parse", "HEAD^{tree}")
        before = self.snapshot()
        rc, _, err = self.ketta("port", "--continue", "--tree", str(tree))
        self.checked(before, rc, err)
        if rc == 0:
            self.port = None
            self.trees["0.16.9"] = tree
            assert self.ketta("export", "--tree", str(tree), "--check")[0] == 0, "a finished port's tree exports as is"
        else:
            assert rc in (1, 4, 5), err

    @precondition(lambda self: self.port is not None)
    @rule(force=st.booleans())
    def abort(self, force: bool) -> None:
        tree = self.port
        before = self.snapshot()
        had = set(tree.parent.glob("*.bundle"))
        rc, _, err = self.ketta("port", "--abort", "--tree", str(tree), *(["--force"] if force else []))
        assert self.snapshot() == before, "abort never touches patches/"
        if rc == 0:
            self.port = None
            self.bundles += sorted(set(tree.parent.glob("*.bundle")) - had)
            self.uncommitted.pop(tree, None)
        else:
            assert rc == 5 and tree.exists(), err

    # ------------------------------------------------------------------ (b): nothing is lost

    @invariant()
    def no_work_is_lost(self) -> None:
        if not hasattr(self, "work"):
            return
        for tree, tree_id in self.work.items():
            kept = set(git(tree, "log", "--all", "--format=%T").split()) if (tree / ".git").is_dir() else set()
            if tree_id in kept:
                continue
            assert any(tree_id in _bundle_trees(b) for b in self.bundles), f"the work {tree_id} made in {tree} is gone"
        for tree, name in self.uncommitted.items():
            if (tree / "letta" / name).exists():
                continue
            assert any(b.name.startswith(tree.name) for b in self.bundles), f"the uncommitted edit in {tree} is gone"


def _take_the_patchs_side(text: str) -> str:
    """Resolve conflict markers in favour of the patch (the side after ``=======``)."""
    out, side = [], None
    for line in text.splitlines(keepends=True):
        if line.startswith("<<<<<<< "):
            side = "upstream"
        elif line.startswith("=======") and side == "upstream":
            side = "patch"
        elif line.startswith(">>>>>>> ") and side == "patch":
            side = None
        elif side in (None, "patch"):
            out.append(line)
    return "".join(out)


def self_releases(machine: Loop) -> str:
    return (machine.patches / "releases.toml").read_text() if hasattr(machine, "patches") else ""


def _bundle_trees(bundle: Path) -> set[str]:
    with tempfile.TemporaryDirectory() as tmp:
        git(Path(tmp), "init", "-q")
        git(Path(tmp), "fetch", "-q", str(bundle), "refs/ketta/*:refs/ketta/*")
        return set(git(Path(tmp), "log", "--all", "--format=%T").split())


_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


class TestLoop(Loop.TestCase):
    settings = settings(max_examples=6, stateful_step_count=10, **_SETTINGS)


@pytest.mark.long
class TestLoopLong(Loop.TestCase):
    settings = settings(max_examples=int(os.environ.get("KETTA_STATEFUL_EXAMPLES", "200")), stateful_step_count=25,
                        **_SETTINGS)
