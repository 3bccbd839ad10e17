"""The maintenance loop as random sequences of what a maintainer does (hypothesis state machine).

Synthetic releases 0.16.7 and 0.16.8 (supported) and 0.16.9 (to port to; its line 15 conflicts with
patch 0001 in some examples) on a ``file://`` index. Steps: apply (with and without --force),
commit an edit (amend a patch's commit, fixup + autosquash, a new commit), reword a patch's description
or change what 0002 adds in a tree, leave an edit uncommitted, pull a teammate's change (a header field
of 0001 or 0002, or 0002's diff) into patches/, export (with --prune/--split), lint, port to 0.16.9,
resolve and continue, abort (with and without --force). After every step the loop's invariants hold:

(b) no work is lost: the content (tree) of every commit the maintainer made is still reachable from
    a ref of a build tree or a saved bundle, and uncommitted edits are either still in their tree
    or saved; a verb that fails leaves patches/ as it was;
(c) after a verb that wrote patches/, the series applies exactly on every release it claims;
(d) a second export right after a successful one writes nothing;
(e) every verb's ``--json -`` is alone on stdout;
(f) export never reverts what changed in patches/ since the tree took it (a pull, another tree's export,
    a port) and never loses a change made in the tree without refusing: after an export from a tree,
    each part (a header field, the diff) changed outside it still has that value unless the tree changed
    it too, each change the maintainer made there is in the file, and a part changed on both sides
    differently is refused (exit 5), never exported over the other; a refusal names a patch that
    changed in patches/ since the tree took it.

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
from world import BODY, RELEASES_TOML, header, m_of, take_the_patchs_side

from ketta_build.buildtree import PristineRepos
from ketta_build.cache import Cache
from ketta_build.memapply import check_claims
from ketta_build.cli import main
from ketta_build.patchfile import diff_part, parse_patch_text
from ketta_build.series import read_series
from ketta_build.sources import IndexSource

ENV = {**os.environ, "GIT_AUTHOR_NAME": "Maintainer", "GIT_AUTHOR_EMAIL": "m@example.org",
       "GIT_COMMITTER_NAME": "Maintainer", "GIT_COMMITTER_EMAIL": "m@example.org", "GIT_EDITOR": "true",
       "GIT_SEQUENCE_EDITOR": "true"}


def git(tree: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *args], cwd=tree, env=ENV, capture_output=True, text=True, check=False)
    if check and proc.returncode:
        raise AssertionError(f"git {' '.join(args)}: {proc.stderr}")
    return proc.stdout.strip()


def _norm(value: str) -> str:
    return "\n".join(line.strip() for line in value.strip().split("\n"))


def parts(content: bytes) -> dict[str, object]:
    """A patch file as the model sees it: each header field (Base-Release aside), and the diff (with its
    Base-Release, which a refresh moves)."""
    h = parse_patch_text(content, Path("model.diff"), "model.diff").header
    fields = {"Subject": h.subject, "Author": f"{h.author_name} <{h.author_email}>",
              "Upstream-Status": h.upstream_status, "Date": h.date, "Description": h.description, **dict(h.extra)}
    out: dict[str, object] = {k: _norm(v) for k, v in fields.items() if v is not None}
    out["diff"] = (str(h.base_release), diff_part(content))
    return out


def added_lines(content: bytes) -> set[str]:
    return {line[1:] for line in diff_part(content).decode().splitlines() if line.startswith("+")}


class Loop(RuleBasedStateMachine):
    @initialize(conflicting_port=st.booleans(), tree=st.sampled_from([None, "0.16.7", "0.16.8"]))
    def make_world(self, conflicting_port: bool, tree: str | None) -> None:
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
        # (f): per tree, what changed in patches/ since it took the files ((patch, part) -> value), and
        # what the maintainer changed in it since ((patch, field) -> value, (patch, "diff") -> added lines)
        self.outside: dict[Path, dict[tuple[str, str], object]] = {}
        self.pending: dict[Path, dict[tuple[str, str], object]] = {}
        if tree is not None:  # some sequences start with a tree made, so the steps that need one come sooner
            self.apply(tree, force=False)

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
        if rc in (0, 1) and out.is_dir():
            self.took(out)  # (what --force replaced is in a backup ref: no longer in the tree)

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
            self.pending.setdefault(tree, {}).setdefault((NEW_PATCH, "diff"), set()).add(f"X = {line}  # edit {self.made}")
        else:
            m = tree / "letta/m.py"
            text = m.read_text()
            target = f"line {line}\n"
            if target not in text:
                return
            self.made += 1
            edited = f"line {line} (edited {self.made})"
            m.write_text(text.replace(target, edited + "\n"))
            if how == "amend-last":
                name = _trailer(git(tree, "log", "-1", "--format=%B"))
                git(tree, "commit", "-q", "-a", "--amend", "--no-edit")
                self.pending.setdefault(tree, {}).setdefault((name or NEW_PATCH, "diff"), set()).add(edited)
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
                self.pending.setdefault(tree, {}).setdefault(("0001-change-m.diff", "diff"), set()).add(edited)
        self.work[tree] = git(tree, "rev-parse", "HEAD^{tree}")  # what they did before this they replaced themselves

    @precondition(lambda self: self.trees)
    @rule(data=st.data(), name=st.sampled_from(["0001-change-m.diff", "0002-new-module.diff"]))
    def reword_in_a_tree(self, data, name: str) -> None:
        """The maintainer rewrites a patch's description in its commit (wherever it is in the branch)."""
        tree = data.draw(st.sampled_from(sorted(self.trees.values())))
        if git(tree, "status", "--porcelain") or not git(tree, "symbolic-ref", "-q", "HEAD", check=False):
            return
        sha = git(tree, "log", "--format=%H", "--grep", f"^Ketta-Patch: {name}$")
        if not sha or "\n" in sha:
            return
        self.made += 1
        why = f"Because the maintainer of {tree.name} says so (edit {self.made})."
        message = git(tree, "log", "-1", "--format=%B", sha)
        paragraphs = message.split("\n\n")
        reworded = "\n\n".join([paragraphs[0], why, paragraphs[-1]])
        branch = git(tree, "symbolic-ref", "--short", "HEAD")
        git(tree, "checkout", "-q", sha)
        git(tree, "commit", "-q", "--amend", "-m", reworded)
        git(tree, "rebase", "-q", "--onto", git(tree, "rev-parse", "HEAD"), sha, branch)  # only messages moved
        self.pending.setdefault(tree, {})[(name, "Description")] = _norm(why)
        self.work[tree] = git(tree, "rev-parse", "HEAD^{tree}")

    @precondition(lambda self: self.trees)
    @rule(data=st.data())
    def edit_the_module_in_a_tree(self, data) -> None:
        """The maintainer changes what 0002 adds (letta/k.py), folded into 0002's commit."""
        tree = data.draw(st.sampled_from(sorted(self.trees.values())))
        if git(tree, "status", "--porcelain") or not git(tree, "symbolic-ref", "-q", "HEAD", check=False):
            return
        sha = git(tree, "log", "--format=%H", "--grep", "^Ketta-Patch: 0002-new-module.diff$")
        if not sha or "\n" in sha or not (tree / "letta/k.py").is_file():
            return
        self.made += 1
        line = f"KETTA = 'tree {self.made}'"
        (tree / "letta/k.py").write_text(line + "\n")
        git(tree, "commit", "-q", "-a", "--fixup", sha)
        git(tree, "rebase", "-q", "-i", "--autosquash", f"{sha}~1")  # k.py is 0002's alone: no conflict
        self.pending.setdefault(tree, {})[("0002-new-module.diff", "diff")] = {line}  # the file's one line, replaced
        self.work[tree] = git(tree, "rev-parse", "HEAD^{tree}")

    @rule(what=st.sampled_from([("0001-change-m.diff", "Description"), ("0001-change-m.diff", "Owner"),
                                ("0002-new-module.diff", "Description"), ("0002-new-module.diff", "Review-By"),
                                ("0002-new-module.diff", "diff")]))
    def pull(self, what: tuple[str, str]) -> None:
        """A teammate's commit arrives (git pull): one patch file changes under every tree."""
        name, part = what
        path = self.patches / name
        if not path.is_file():
            return
        before = self.snapshot()
        self.made += 1
        text = path.read_text()
        if part == "diff":
            text = text.split("diff --git", 1)[0] + make_diff("letta/k.py", None, f"KETTA = 'pulled {self.made}'\n")
        else:
            value = {"Description": f"Because a teammate says so (pull {self.made}).", "Owner": f"Team {self.made}",
                     "Review-By": f"{2027 + self.made % 50}-01-01"}[part]
            lines = text.split("\n\n", 1)[0].split("\n")
            kept, skipping = [], False
            for line in lines:  # the field's line and its continuation lines go
                if line.startswith(f"{part}: "):
                    skipping = True
                    continue
                if skipping and line.startswith(" "):
                    continue
                skipping = False
                kept.append(line)
            at = len(kept) if part == "Description" else next(i for i, line in enumerate(kept)
                                                              if line.startswith("Description: "))
            kept.insert(at, f"{part}: {value}")
            text = "\n".join(kept) + "\n\n" + text.split("\n\n", 1)[1]
        path.write_text(text)
        self.changed_outside(before, source=None)

    @precondition(lambda self: self.trees)
    @rule(data=st.data())
    def leave_an_edit_uncommitted(self, data) -> None:
        tree = data.draw(st.sampled_from(sorted(self.trees.values())))
        (tree / "letta" / "scratch.txt").write_text("unsaved work\n")
        self.uncommitted[tree] = "scratch.txt"

    @precondition(lambda self: self.uncommitted)
    @rule(data=st.data())
    def stash_it(self, data) -> None:
        """The maintainer puts the uncommitted edit aside (git stash -u): the tree is clean again, and
        the stash is work that must not be lost (apply --force keeps it as a backup ref)."""
        tree = data.draw(st.sampled_from(sorted(self.uncommitted)))
        if not (tree / ".git").is_dir() or not (tree / "letta" / self.uncommitted[tree]).exists():
            return
        git(tree, "stash", "-q", "-u")
        self.work[Path(f"{tree}#stash{self.made}")] = git(tree, "rev-parse", "stash@{0}^3^{tree}")
        self.made += 1
        del self.uncommitted[tree]

    @precondition(lambda self: self.trees)
    @rule(data=st.data(), prune=st.booleans(), split=st.booleans())
    def export(self, data, prune: bool, split: bool) -> None:
        tree = data.draw(st.sampled_from(sorted(self.trees.values())))
        before = self.snapshot()
        flags = [*(["--prune"] if prune else []), *(["--split"] if split else [])]
        rc, out, err = self.ketta("export", "--tree", str(tree), *flags)
        self.checked(before, rc, err)
        self.check_no_revert(tree, before, rc, out, err)
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
            self.took(tree)
        else:
            self.checked(before, rc, err)
            if rc == 0:
                self.trees["0.16.9"] = tree
                self.took(tree)
                self.changed_outside(before, source=tree)
                assert not (tree / ".git" / "ketta-port.json").exists()
                assert self.ketta("export", "--tree", str(tree), "--check")[0] == 0, "a finished port's tree exports as is"

    @precondition(lambda self: self.port is not None)
    @rule(commit=st.booleans())
    def resolve_and_continue(self, commit: bool) -> None:
        tree = self.port
        m = tree / "letta/m.py"
        m.write_text(take_the_patchs_side(m.read_text()))
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
            self.took(tree)
            self.changed_outside(before, source=tree)
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

    # ------------------------------------------------------------------ (f): export never reverts

    def took(self, tree: Path) -> None:
        """``tree`` took the files as they are now (apply, a port's start and finish)."""
        self.outside[tree] = {}
        self.pending[tree] = {}

    def changed_outside(self, before: dict[str, bytes], source: Path | None) -> None:
        """What changed in patches/ since ``before`` changed outside every tree but ``source``."""
        after = self.snapshot()
        for name, content in after.items():
            if not name.endswith(".diff") or name not in before or before[name] == content:
                continue
            old, new = parts(before[name]), parts(content)
            for key in {*old, *new}:
                if old.get(key) != new.get(key):
                    for tree in {*self.trees.values(), *([self.port] if self.port else [])} - {source}:
                        self.outside.setdefault(tree, {})[(name, key)] = new.get(key)

    def check_no_revert(self, tree: Path, before: dict[str, bytes], rc: int, out: str, err: str) -> None:  # (f)
        outside, pending = self.outside.get(tree, {}), self.pending.get(tree, {})
        if rc == 5 and "changed both" in err:
            assert any(name in err for name, _ in outside), f"refused with nothing changed in patches/: {err}"
            event("(f) export refused: changed both in patches/ and in the tree")
            return
        if rc != 0:
            return
        if outside:
            event("(f) export from a tree with changes made outside it since it took the files")
        if {k for k in pending} & {k for k in outside}:
            event("(f) export of a tree change to a patch also changed outside, in another part")
        files = self.snapshot()
        for (name, key), value in pending.items():
            if name == NEW_PATCH:  # a commit made in the tree: some patch has it now
                added = set().union(*(added_lines(c) for n, c in files.items() if n.endswith(".diff")))
                assert value <= added, f"{tree.name}'s new commit was not exported: {value}"
                continue
            assert name in files, f"{name}, changed in {tree.name}, is gone"
            if key == "diff":
                assert value <= added_lines(files[name]), f"{tree.name}'s change of {name} was lost: {value}"
                clash = (name, "diff") in outside and not value <= added_lines(before[name])
            else:
                assert parts(files[name]).get(key) == value, f"{tree.name}'s {key} of {name} was lost"
                clash = (name, key) in outside and outside[(name, key)] != value
            assert not clash, f"{name}'s {key} changed in patches/ and in {tree.name}: export had to refuse"
        for (name, key), value in outside.items():
            if name in files and (name, key) not in pending:
                assert parts(files[name]).get(key) == value, f"export from {tree.name} reverted {name}'s {key}"
        # what the tree took: the patches it wrote (all but a diff kept from patches/) and its own edits
        self.changed_outside(before, source=tree)
        self.pending[tree] = {}
        # (b): what the maintainer did there is in patches/ now (checked above), which a new apply
        # brings back with what changed outside it (so not as the same tree id)
        self.work.pop(tree, None)
        for p in json.loads(out)["patches"]:
            if p["commit"] and p["status"] in ("unchanged", "reworded", "refreshed", "new"):
                for key in [k for k in outside if k[0] == p["name"]]:
                    if key[1] != "diff" or "its diff kept" not in (p["note"] or ""):
                        del outside[key]

    # ------------------------------------------------------------------ (b): nothing is lost

    @invariant()
    def no_work_is_lost(self) -> None:
        if not hasattr(self, "work"):
            return
        for where, tree_id in self.work.items():
            tree = Path(str(where).split("#", 1)[0])  # (a stash made there: "TREE#stashN")
            kept = set(git(tree, "log", "--all", "--format=%T").split()) if (tree / ".git").is_dir() else set()
            if tree_id in kept:
                continue
            assert any(tree_id in _bundle_trees(b) for b in self.bundles), f"the work {tree_id} made in {tree} is gone"
        for tree, name in self.uncommitted.items():
            if (tree / "letta" / name).exists():
                continue
            assert any(b.name.startswith(tree.name) for b in self.bundles), f"the uncommitted edit in {tree} is gone"


NEW_PATCH = "(a new patch)"  # the model's name for a commit made in a tree, until export names it


def _trailer(message: str) -> str | None:
    return next((line.split(":", 1)[1].strip() for line in message.splitlines() if line.startswith("Ketta-Patch:")), None)



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
