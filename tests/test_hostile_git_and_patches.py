"""Issue 29, the git and patch half: an upstream source, a patch file or the user's git set-up can
never run code, reach outside the tree, or change what ketta-build ships.

* every git the tool runs ignores system, global and environment configuration, hooks, fsmonitor,
  signing, templates and attribute files, and inherits no ``GIT_*`` variable it did not set itself;
  neither the release's own .gitattributes nor a --letta-git repository's config changes a byte;
* nothing is written through a link found in a tree (``.rej`` files included);
* a hunk header claiming an absurd line costs nothing (and is bad input in a patch file);
* a patch makes and changes regular files only (export --check compares modes), and a patch,
  series or releases file that leads out of patches/ is refused unread.

All offline: synthetic releases on a local index, a directory or a git repository.
"""

from __future__ import annotations

import ast
import os
import stat
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
from conftest import make_diff, make_sdist, pin_index, server_files, write_patch, write_series, write_tree

from ketta_build.cli import main

PACKAGE = Path(__file__).resolve().parents[1] / "ketta_build"

HOOKS = ("applypatch-msg", "pre-applypatch", "post-applypatch", "pre-commit", "pre-merge-commit", "prepare-commit-msg",
         "commit-msg", "post-commit", "pre-rebase", "post-checkout", "post-merge", "pre-push", "pre-auto-gc",
         "post-rewrite", "reference-transaction", "post-index-change", "fsmonitor-watchman", "sendemail-validate")


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


class Hostile:
    """A git set-up that runs a marking script wherever git would run one, and would change commits
    (hook-edited messages, signatures, a commit encoding) and files (filters, ident, CRLF) if obeyed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.markers = root / "markers"
        self.markers.mkdir(parents=True)
        bin_dir = root / "bin"
        bin_dir.mkdir()
        mark = f'touch "{self.markers}/$(basename "$0")"\n'
        self.hooks = root / "hooks"
        self.hooks.mkdir()
        for name in HOOKS:
            extra = 'echo "Hooked-By: hostile" >> "$1"\n' if name == "prepare-commit-msg" else ""
            _script(self.hooks / name, mark + extra + "exit 0\n")
        templates = root / "templates"
        (templates / "hooks").mkdir(parents=True)
        for name in HOOKS:
            _script(templates / "hooks" / name, mark + "exit 0\n")
        (templates / "info").mkdir()
        (templates / "info" / "attributes").write_text("* filter=hostile ident eol=crlf\n")
        fsmonitor = _script(bin_dir / "fsmonitor", mark + "exit 1\n")
        gpg = _script(bin_dir / "gpg", mark + "exit 1\n")
        clean = _script(bin_dir / "filter-clean", mark + "sed 's/^/HOSTILE /'\n")
        smudge = _script(bin_dir / "filter-smudge", mark + "sed 's/^/HOSTILE /'\n")
        external = _script(bin_dir / "external-diff", mark + "exit 0\n")
        ssh = _script(bin_dir / "ssh", mark + "exit 1\n")
        self.attributes = root / "attributes"
        self.attributes.write_text("* filter=hostile ident eol=crlf\n")
        included = root / "included.cfg"
        included.write_text(f'[filter "hostile"]\n\tclean = {clean}\n\tsmudge = {smudge}\n\trequired = true\n')
        self.config = root / "hostile.cfg"
        self.config.write_text(textwrap.dedent(f"""\
            [include]
            \tpath = {included}
            [core]
            \thooksPath = {self.hooks}
            \tfsmonitor = {fsmonitor}
            \tattributesFile = {self.attributes}
            \tsshCommand = {ssh}
            \tautocrlf = true
            [commit]
            \tgpgSign = true
            [tag]
            \tgpgSign = true
            \tforceSignAnnotated = true
            [gpg]
            \tprogram = {gpg}
            [init]
            \ttemplateDir = {templates}
            \tdefaultBranch = hostile
            [diff]
            \texternal = {external}
            [merge]
            \tconflictStyle = diff3
            [log]
            \tshowSignature = true
            [i18n]
            \tcommitEncoding = ISO-8859-1
            [user]
            \tname = Mallory
            \temail = mallory@example.org
            """))
        self.home = root / "home"
        (self.home / ".config" / "git").mkdir(parents=True)
        (self.home / ".gitconfig").write_text(self.config.read_text())
        (self.home / ".config" / "git" / "config").write_text(self.config.read_text())
        (self.home / ".config" / "git" / "attributes").write_text(self.attributes.read_text())

    def global_env(self) -> dict[str, str]:
        """The hostile configuration as the user's own (HOME, XDG and GIT_CONFIG_GLOBAL)."""
        return {"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / ".config"),
                "GIT_CONFIG_GLOBAL": str(self.config)}

    def ran(self) -> list[str]:
        return sorted(p.name for p in self.markers.iterdir())


def _files(tree: Path) -> dict[str, tuple[bytes, bool, bool]]:
    """Every file of a work tree (not .git): content, executable, symlink."""
    out = {}
    for path in sorted(tree.rglob("*")):
        rel = path.relative_to(tree).as_posix()
        if rel == ".git" or rel.startswith(".git/") or path.is_dir() and not path.is_symlink():
            continue
        link = path.is_symlink()
        out[rel] = (os.readlink(path).encode() if link else path.read_bytes(), not link and os.access(path, os.X_OK), link)
    return out


def _clean_git(cwd: Path, *args: str) -> str:
    """git as a test needs it, untouched by any configuration a test planted."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "Maintainer",
                "GIT_AUTHOR_EMAIL": "m@example.org", "GIT_COMMITTER_NAME": "Maintainer",
                "GIT_COMMITTER_EMAIL": "m@example.org"})
    cmd = ["git", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "core.attributesFile=/dev/null",
           "-c", "init.templateDir=", "-c", "init.defaultBranch=main", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.strip()


def _apply(world, version: str, out: Path, cache: Path, *extra: str) -> tuple[int, str]:
    rc = main(["apply", "--letta", version, "--out", str(out), "--index-url", world.index.url, "--cache-dir", str(cache),
               "--patches", str(world.patches), *extra])
    return rc, world.capsys.readouterr().err


def _set_env(monkeypatch, env: dict[str, str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)


# ============================================================================ 8. git configuration


def test_a_hostile_global_git_configuration_runs_nothing_and_changes_nothing(world, tmp_path, monkeypatch):
    # The user's own configuration (HOME, XDG, GIT_CONFIG_GLOBAL) sets hooks, fsmonitor, signing with
    # a gpg that fails, templates, an attributes file with a filter (from an included file), ident and
    # CRLF, an external diff, a commit encoding. apply into an empty cache, lint and export --check
    # run none of it, and the trees and commits are those of a run without it.
    base_out, base_cache = tmp_path / "base" / "0.16.8", tmp_path / "base-cache"
    rc, err = _apply(world, "0.16.8", base_out, base_cache)
    assert rc == 0, err
    hostile = Hostile(tmp_path / "hostile")
    _set_env(monkeypatch, hostile.global_env())

    out, cache = tmp_path / "hostile-build" / "0.16.8", tmp_path / "hostile-cache"
    rc, err = _apply(world, "0.16.8", out, cache)
    assert rc == 0, err
    assert hostile.ran() == []
    for rev in ("upstream/0.16.8^{commit}", "HEAD", "HEAD^{tree}"):
        assert _clean_git(out, "rev-parse", rev) == _clean_git(base_out, "rev-parse", rev), rev
    assert _files(out) == _files(base_out)
    assert "Hooked-By" not in _clean_git(out, "log", "--format=%B")
    assert _clean_git(out, "cat-file", "commit", "upstream/0.16.8").find("gpgsig") == -1

    rc = main(["lint", "--patches", str(world.patches), "--index-url", world.index.url, "--cache-dir", str(cache)])
    assert rc == 0, world.capsys.readouterr().err
    rc = main(["export", "--tree", str(out), "--check", "--patches", str(world.patches)])
    assert rc == 0, world.capsys.readouterr().err
    assert hostile.ran() == []


def test_a_hostile_system_configuration_is_ignored_by_a_git_source(tmp_path, monkeypatch, capsys):
    # GIT_CONFIG_SYSTEM names the hostile file; the release comes from a git repository (its tag is
    # read and archived), so this covers the git that reads a --letta-git source.
    repo = write_tree(tmp_path / "letta-repo", server_files("0.16.8", {"letta/a.py": "a\nb\nc\n"}))
    _clean_git(repo, "init", "-q")
    _clean_git(repo, "add", "-A")
    _clean_git(repo, "commit", "-qm", "0.16.8")
    _clean_git(repo, "tag", "v0.16.8")
    pdir = write_series(tmp_path / "patches", "0001-a.diff")
    write_patch(pdir, "0001-a.diff", make_diff("letta/a.py", "a\nb\nc\n", "a\nB\nc\n"))

    def apply(out: Path) -> int:
        return main(["apply", "--letta-git", str(repo), "--ref", "v0.16.8", "--patches", str(pdir), "--out", str(out),
                     "--cache-dir", str(tmp_path / "cache")])

    assert apply(tmp_path / "base") == 0, capsys.readouterr().err
    hostile = Hostile(tmp_path / "hostile")
    empty_home = tmp_path / "empty-home"
    empty_home.mkdir()
    _set_env(monkeypatch, {"GIT_CONFIG_SYSTEM": str(hostile.config), "HOME": str(empty_home),
                           "XDG_CONFIG_HOME": str(empty_home / ".config")})
    monkeypatch.delenv("GIT_CONFIG_NOSYSTEM", raising=False)
    assert apply(tmp_path / "out") == 0, capsys.readouterr().err
    assert hostile.ran() == []
    assert _clean_git(tmp_path / "out", "rev-parse", "HEAD") == _clean_git(tmp_path / "base", "rev-parse", "HEAD")
    assert _files(tmp_path / "out") == _files(tmp_path / "base")


def test_a_git_source_is_read_without_its_own_configuration_or_attributes(tmp_path, capsys):
    # The --letta-git repository's own config defines a filter its .git/info/attributes applies to
    # every file, and its committed .gitattributes asks git archive to leave a file out and to
    # substitute a placeholder: the release is the commit's files, byte for byte, and nothing runs.
    hostile = Hostile(tmp_path / "hostile")
    files = server_files("0.16.8", {"letta/a.py": "a\nb\nc\n", "letta/stamp.py": "STAMP = '$Format:%H$'\n",
                                    ".gitattributes": "letta/a.py export-ignore\nletta/stamp.py export-subst\n"})
    repo = write_tree(tmp_path / "letta-repo", files)
    _clean_git(repo, "init", "-q")
    _clean_git(repo, "add", "-A")
    _clean_git(repo, "commit", "-qm", "0.16.8")
    _clean_git(repo, "config", "include.path", str(hostile.root / "included.cfg"))
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "attributes").write_text("* filter=hostile\n")
    pdir = write_series(tmp_path / "patches", "0001-a.diff")
    write_patch(pdir, "0001-a.diff", make_diff("letta/a.py", "a\nb\nc\n", "a\nB\nc\n"))
    out = tmp_path / "out"
    rc = main(["apply", "--letta-git", str(repo), "--ref", "HEAD", "--patches", str(pdir), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert hostile.ran() == []
    assert (out / "letta" / "a.py").read_text() == "a\nB\nc\n"
    assert (out / "letta" / "stamp.py").read_text() == "STAMP = '$Format:%H$'\n"
    assert _clean_git(out, "rev-parse", "upstream/0.16.8^{tree}") == _clean_git(repo, "rev-parse", "HEAD^{tree}")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs to give a repository to another user")
def test_a_git_source_of_another_user_is_refused_with_advice_that_works(tmp_path, capsys):
    # git refuses a repository another user owns, and advises a global safe.directory, which
    # ketta-build does not read: the one line says what does work.
    repo = write_tree(tmp_path / "letta-repo", server_files("0.16.8", {}))
    _clean_git(repo, "init", "-q")
    _clean_git(repo, "add", "-A")
    _clean_git(repo, "commit", "-qm", "0.16.8")
    subprocess.run(["chown", "-R", "nobody", str(repo)], check=True)
    pdir = write_series(tmp_path / "patches", "0001-a.diff")
    write_patch(pdir, "0001-a.diff", make_diff("letta/a.py", None, "a\n"))
    rc = main(["apply", "--letta-git", str(repo), "--ref", "HEAD", "--patches", str(pdir), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 3, err
    [line] = [ln for ln in err.splitlines() if ln.startswith("ketta-build: error:")]
    assert "another user" in line and "clone it" in line and "--global" not in line


def test_git_variables_of_the_environment_are_not_inherited(world, tmp_path, monkeypatch):
    # GIT_DIR and friends would point every git of the run at another repository; GIT_CONFIG_* would
    # inject configuration; GIT_TEMPLATE_DIR hooks; GIT_TRACE writes a file. None of it reaches git.
    base_out = tmp_path / "base" / "0.16.8"
    rc, err = _apply(world, "0.16.8", base_out, tmp_path / "base-cache")
    assert rc == 0, err
    hostile = Hostile(tmp_path / "hostile")
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    _clean_git(decoy, "init", "-q")
    decoy_objects = tmp_path / "decoy-objects"
    decoy_objects.mkdir()
    before = sorted(p.relative_to(decoy).as_posix() for p in decoy.rglob("*"))
    _set_env(monkeypatch, {
        "GIT_DIR": str(decoy / ".git"), "GIT_WORK_TREE": str(decoy), "GIT_INDEX_FILE": str(decoy / "index"),
        "GIT_OBJECT_DIRECTORY": str(decoy_objects), "GIT_COMMON_DIR": str(decoy / ".git"),
        "GIT_CONFIG_PARAMETERS": f"'core.hookspath'='{hostile.hooks}'",
        "GIT_CONFIG_COUNT": "2", "GIT_CONFIG_KEY_0": "commit.gpgSign", "GIT_CONFIG_VALUE_0": "true",
        "GIT_CONFIG_KEY_1": "gpg.program", "GIT_CONFIG_VALUE_1": str(hostile.root / "bin" / "gpg"),
        "GIT_TEMPLATE_DIR": str(hostile.root / "templates"), "GIT_EXTERNAL_DIFF": str(hostile.root / "bin" / "external-diff"),
        "GIT_TRACE": str(hostile.markers / "trace"), "GIT_AUTHOR_NAME": "Mallory", "GIT_COMMITTER_NAME": "Mallory",
        "GIT_COMMITTER_DATE": "@1 +0000", "GIT_AUTHOR_DATE": "@1 +0000",
    })
    out = tmp_path / "hostile-build" / "0.16.8"
    rc, err = _apply(world, "0.16.8", out, tmp_path / "hostile-cache")
    assert rc == 0, err
    for key in [k for k in os.environ if k.startswith("GIT_")]:
        monkeypatch.delenv(key)
    assert hostile.ran() == []
    assert sorted(p.relative_to(decoy).as_posix() for p in decoy.rglob("*")) == before
    assert list(decoy_objects.iterdir()) == []
    for rev in ("upstream/0.16.8^{commit}", "HEAD"):
        assert _clean_git(out, "rev-parse", rev) == _clean_git(base_out, "rev-parse", rev), rev


def test_the_tool_never_runs_the_hooks_of_a_maintainers_build_tree(world, tmp_path):
    # The maintainer's tree has hooks, an fsmonitor and a filter in its own configuration. export
    # (which rewrites commit messages: commit-tree and update-ref) runs none of them, and leaves them
    # in place: the maintainer's own git still runs them there.
    tree = world.apply("0.16.8")
    hostile = Hostile(tmp_path / "hostile")
    (tree / "letta" / "new.py").write_text("NEW = 1\n")
    _clean_git(tree, "add", "letta/new.py")
    _clean_git(tree, "commit", "-qm", "A new module\n\nKetta needs a new module for its own providers.")
    for name in HOOKS:
        (tree / ".git" / "hooks").mkdir(exist_ok=True)
        (tree / ".git" / "hooks" / name).write_bytes((hostile.hooks / name).read_bytes())
        (tree / ".git" / "hooks" / name).chmod(0o755)
    _clean_git(tree, "config", "core.fsmonitor", str(hostile.root / "bin" / "fsmonitor"))
    _clean_git(tree, "config", "core.attributesFile", str(hostile.attributes))
    _clean_git(tree, "config", "include.path", str(hostile.root / "included.cfg"))
    _clean_git(tree, "config", "commit.gpgSign", "true")
    _clean_git(tree, "config", "gpg.program", str(hostile.root / "bin" / "gpg"))

    rc, _, err = world.run("export", "--tree", str(tree))
    assert rc == 0, err
    assert (world.patches / "0004-a-new-module.diff").is_file()
    assert hostile.ran() == []
    rc, _, err = world.run("export", "--tree", str(tree), "--check")
    assert rc == 0, err
    assert hostile.ran() == []
    assert os.access(tree / ".git" / "hooks" / "reference-transaction", os.X_OK)
    # The maintainer's own git in that tree still obeys the tree's configuration.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    subprocess.run(["git", "status", "--porcelain"], cwd=tree, env=env, capture_output=True)
    assert "fsmonitor" in hostile.ran()


def test_a_three_way_merge_ignores_merge_configuration(tmp_path, monkeypatch):
    # git merge-file reads merge.conflictStyle from wherever it runs; the markers it leaves in a build
    # tree must not depend on the user's configuration or on the directory ketta-build was started in.
    from ketta_build.applying import _merge_file

    ours, base, theirs = b"a\nours\nc\n", b"a\nb\nc\n", b"a\ntheirs\nc\n"
    labels = ("letta 0.16.8", "letta 0.16.7 (patch base)", "0001-x.diff")
    plain = _merge_file(ours, base, theirs, labels)
    assert plain[1] == 1 and b"|||||||" not in plain[0]
    hostile = Hostile(tmp_path / "hostile")
    _set_env(monkeypatch, {**hostile.global_env(), "GIT_CONFIG_SYSTEM": str(hostile.config)})
    monkeypatch.delenv("GIT_CONFIG_NOSYSTEM", raising=False)
    project = tmp_path / "project"
    project.mkdir()
    _clean_git(project, "init", "-q")
    _clean_git(project, "config", "merge.conflictStyle", "diff3")
    monkeypatch.chdir(project)
    assert _merge_file(ours, base, theirs, labels) == plain


def _literal_git_commands(tree: ast.AST) -> list[int]:
    """Lines where a list or tuple literal starts with "git" (a command line), or GitPython is imported."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts and isinstance(node.elts[0], ast.Constant) \
                and node.elts[0].value == "git":
            found.append(node.lineno)
        if isinstance(node, ast.Import) and any(a.name == "git" or a.name.startswith("git.") for a in node.names):
            found.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "git":
            found.append(node.lineno)
    return sorted(found)


def test_every_git_goes_through_gitcmd():
    # gitcmd is the one place that makes git's environment and configuration safe; a module that
    # starts git itself (subprocess or GitPython) would bypass it.
    offenders = {}
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "gitcmd.py":
            continue
        lines = _literal_git_commands(ast.parse(path.read_text()))
        if lines:
            offenders[path.name] = lines
    assert offenders == {}


def test_the_check_sees_a_git_command_and_gitpython():
    assert _literal_git_commands(ast.parse('subprocess.run(["git", "status"])\nimport git\nfrom git import Repo\n')) == [1, 2, 3]
    assert _literal_git_commands(ast.parse('cmd = ("git", "x")\nx = ["gitk"]\n')) == [1]


def test_gitcmd_isolates_every_call(tmp_path, monkeypatch):
    # The environment and configuration gitcmd gives git, seen from git itself.
    from ketta_build import gitcmd

    hostile = Hostile(tmp_path / "hostile")
    _set_env(monkeypatch, {**hostile.global_env(), "GIT_CONFIG_SYSTEM": str(hostile.config),
                           "GIT_DIR": str(tmp_path / "nowhere"), "GIT_SSH_COMMAND": "false"})
    repo = tmp_path / "repo"
    repo.mkdir()
    gitcmd.git(repo, "init", "-q", ".")
    assert not (repo / ".git" / "hooks").exists(), "no template was copied"
    shown = gitcmd.git(repo, "config", "--show-origin", "--list")
    assert str(hostile.config) not in shown and "Mallory" not in shown
    for key, value in (("core.hookspath", "/dev/null"), ("core.fsmonitor", "false"), ("commit.gpgsign", "false"),
                       ("core.attributesfile", "/dev/null")):
        assert gitcmd.git(repo, "config", "--get", key) == value
    env = gitcmd.environment()
    assert env["GIT_CONFIG_GLOBAL"] == "/dev/null" and env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert "GIT_DIR" not in env and "GIT_SSH_COMMAND" not in env


# ============================================================================ 4. symlinks in a tree


def _failing_patch(pdir: Path) -> None:
    write_series(pdir, "0001-x.diff")
    write_patch(pdir, "0001-x.diff", make_diff("letta/x.py", "a\nb\nc\n", "a\nB\nc\n"))


def test_a_rej_file_is_never_written_through_a_symlink_out_of_the_tree(tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_text("precious\n")
    tree = write_tree(tmp_path / "letta-0.16.8", server_files("0.16.8", {"letta/x.py": "a\nchanged upstream\nc\n"}))
    (tree / "letta" / "x.py.rej").symlink_to(outside / "target")
    pdir = tmp_path / "patches"
    _failing_patch(pdir)
    out = tmp_path / "out"
    rc = main(["apply", "--letta-dir", str(tree), "--patches", str(pdir), "--out", str(out),
               "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert (outside / "target").read_text() == "precious\n"
    assert list(outside.iterdir()) == [outside / "target"]
    assert rc == 3, err
    [line] = [ln for ln in err.splitlines() if ln.startswith("ketta-build: error:")]
    # The source check refuses a link out of the tree before any patch runs (the link guard of the
    # writes is the second line of defence, tested with a link inside the tree below).
    assert "letta/x.py.rej" in line and "resolves outside the tree" in line
    assert not out.exists(), "nothing half-written"


def test_a_rej_file_is_never_written_through_a_symlink_inside_the_tree(tmp_path, local_index, capsys):
    # A link that stays inside the tree is allowed in an sdist; writing through it would change another
    # file of the release (here pyproject.toml, which decides the wheel).
    link = tarfile.TarInfo("letta-0.16.8/letta/x.py.rej")
    link.type = tarfile.SYMTYPE
    link.linkname = "../pyproject.toml"
    sdist = make_sdist(tmp_path / "letta-0.16.8.tar.gz", "0.16.8",
                       server_files("0.16.8", {"letta/x.py": "a\nchanged upstream\nc\n"}), [link])
    local_index.add(sdist)
    pdir = tmp_path / "patches"
    _failing_patch(pdir)
    pin_index(pdir, local_index)
    out = tmp_path / "out"
    rc = main(["apply", "--letta", "0.16.8", "--index-url", local_index.url, "--patches", str(pdir), "--out", str(out),
               "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "letta/x.py.rej" in err and "symlink" in err
    assert not out.exists()


def test_a_patch_never_writes_through_a_directory_symlink_inside_the_tree(tmp_path):
    # letta/alias -> server stays inside the tree, but a file written below it is another path than
    # the patch names (and not the one committed): refused like a link out of the tree.
    from packaging.version import Version

    from ketta_build.applying import Outcome
    from ketta_build.buildtree import ApplyOptions, apply_series
    from ketta_build.series import read_series
    from ketta_build.sources import DirSource

    tree = write_tree(tmp_path / "letta-0.16.8", server_files("0.16.8", {"letta/server/app.py": "app = 1\n"}))
    (tree / "letta" / "alias").symlink_to("server", target_is_directory=True)
    pdir = write_series(tmp_path / "patches", "0001-new.diff", "0002-change.diff")
    write_patch(pdir, "0001-new.diff", make_diff("letta/alias/evil.py", None, "evil = 1\n"))
    write_patch(pdir, "0002-change.diff", make_diff("letta/alias/app.py", "app = 1\n", "app = 2\n"))
    source = DirSource(tree)
    report = apply_series(source.resolve(Version("0.16.8")), source, read_series(pdir), tmp_path / "out",
                          options=ApplyOptions(keep_going=True))
    assert [r.outcome for r in report.results] == [Outcome.FAILED, Outcome.FAILED]
    assert all("goes through a symlink to letta/server/" in r.files[0].reason for r in report.results)
    out = tmp_path / "out"
    assert not (out / "letta" / "server" / "evil.py").exists()
    assert (out / "letta" / "server" / "app.py").read_text() == "app = 1\n"


def test_write_regular_writes_only_a_regular_file_of_its_own(tmp_path):
    from ketta_build.applying import write_regular
    from ketta_build.errors import UpstreamError

    (tmp_path / "outside").write_text("precious\n")
    (tmp_path / "link").symlink_to(tmp_path / "outside")
    os.link(tmp_path / "outside", tmp_path / "hard")
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    for name, what in (("link", "a symlink"), ("hard", "a hard link"), ("dir", "a directory"), ("fifo", "a named pipe")):
        with pytest.raises(UpstreamError, match=f"^{name}: is {what}.* in letta 0.16.8, ") as caught:
            write_regular(tmp_path / name, name, b"rejected\n", label="letta 0.16.8")
        assert caught.value.exit_code == 3
        with pytest.raises(UpstreamError):
            write_regular(tmp_path / name, name, None, label="letta 0.16.8", mode=0o755)
    assert (tmp_path / "outside").read_text() == "precious\n"
    assert stat.S_IMODE((tmp_path / "outside").stat().st_mode) != 0o755
    write_regular(tmp_path / "new", "new", b"new\n", label="letta 0.16.8", new=True, mode=0o755)
    assert (tmp_path / "new").read_bytes() == b"new\n" and os.access(tmp_path / "new", os.X_OK)
    write_regular(tmp_path / "new", "new", b"shorter", label="letta 0.16.8")
    assert (tmp_path / "new").read_bytes() == b"shorter" and os.access(tmp_path / "new", os.X_OK)


def test_a_patched_file_is_never_written_through_a_hard_link(tmp_path):
    # Without a cache the release is written as it comes: a hard link inside it would let a patch of
    # one file change another.
    from packaging.version import Version

    from ketta_build.buildtree import ApplyOptions, apply_series
    from ketta_build.errors import UpstreamError
    from ketta_build.series import read_series
    from ketta_build.sources import DirSource

    class LinkingSource(DirSource):
        def export(self, release, dest):
            super().export(release, dest)
            (dest / "letta" / "x.py").unlink()
            os.link(dest / "pyproject.toml", dest / "letta" / "x.py")

    tree = write_tree(tmp_path / "letta-0.16.8", server_files("0.16.8", {"letta/x.py": "x\n"}))
    pyproject = (tree / "pyproject.toml").read_text()
    pdir = write_series(tmp_path / "patches", "0001-x.diff")
    write_patch(pdir, "0001-x.diff", make_diff("letta/x.py", pyproject, pyproject + "# patched\n"))
    source = LinkingSource(tree)
    with pytest.raises(UpstreamError, match="letta/x.py.*hard link"):
        apply_series(source.resolve(Version("0.16.8")), source, read_series(pdir), tmp_path / "out",
                     options=ApplyOptions())
    assert not (tmp_path / "out").exists()


# ============================================================================ 7a. absurd line numbers


def test_the_hunk_search_is_bounded_by_the_file():
    # The positions tried, in order: a claimed position beyond the file starts at its last line, and
    # the search never visits a position the needle cannot start at.
    from ketta_build.applying import _search_order

    assert list(_search_order(10**12, 0, 2)) == [2, 1, 0]
    assert list(_search_order(-(10**12), 3, 5)) == [3, 4, 5]
    assert list(_search_order(3, 0, 6)) == [3, 2, 4, 1, 5, 0, 6]
    assert list(_search_order(3, 2, 6)) == [3, 2, 4, 5, 6]
    assert list(_search_order(3, 0, 6, within=1)) == [3, 2, 4]
    assert list(_search_order(10**12, 0, 2, within=10**12 - 1)) == [2, 1]
    assert list(_search_order(10**12, 0, 2, within=5)) == []
    assert list(_search_order(0, 3, 2)) == []


def test_a_hunk_claiming_an_absurd_line_fails_or_applies_at_once(tmp_path):
    # A hang guard, not a speed target: before the bound, this took minutes.
    code = textwrap.dedent("""\
        from ketta_build.applying import Outcome, apply_hunks
        from ketta_build.patchfile import Hunk
        lines = [f"line {i}\\n" for i in range(200)]
        far = 10**12
        missing = Hunk(1, far, ("nowhere\\n",), ("still nowhere\\n",), 10, 0, 0)
        present = Hunk(2, far, ("line 150\\n",), ("line 150 changed\\n",), 20, 0, 0)
        new, results = apply_hunks(lines, [missing, present], fuzz=3)
        assert [r.outcome for r in results] == [Outcome.FAILED, Outcome.OFFSET], results
        assert new[150] == "line 150 changed\\n"
        print("ok")
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def _refused_as_bad_input(tmp_path: Path, capsys, diff: str) -> tuple[str, Path]:
    """Apply the one patch ``diff`` to a small release; it must be refused as bad input (exit 2):
    (the one error line, the patch file)."""
    tree = write_tree(tmp_path / "letta-0.16.8", server_files("0.16.8", {"letta/a.py": "a\nb\nc\n"}))
    pdir = write_series(tmp_path / "patches", "0001-a.diff")
    path = write_patch(pdir, "0001-a.diff", diff)
    rc = main(["apply", "--letta-dir", str(tree), "--patches", str(pdir), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2, err
    [line] = [ln for ln in err.splitlines() if ln.startswith("ketta-build: error:")]
    return line, path


@pytest.mark.parametrize("header", ["@@ -999999999999,1 +999999999999,1 @@", "@@ -1,1 +10000001,1 @@",
                                    "@@ -" + "9" * 5000 + ",1 +1,1 @@"])
def test_a_hunk_header_claiming_an_absurd_line_is_bad_input(tmp_path, capsys, header):
    diff = make_diff("letta/a.py", "a\nb\nc\n", "a\nB\nc\n", context=0).replace("@@ -2 +2 @@", header)
    assert header in diff
    line, path = _refused_as_bad_input(tmp_path, capsys, diff)
    number = path.read_text().splitlines().index(header) + 1
    assert f"0001-a.diff:{number}:" in line and "line" in line
    assert len(line) < 400
    assert not (tmp_path / "out").exists()


# ============================================================================ 10. symlinks in patches


SYMLINK_DIFF = ("diff --git a/letta/link.py b/letta/link.py\nnew file mode 120000\nindex 0000000..1234567\n"
                "--- /dev/null\n+++ b/letta/link.py\n@@ -0,0 +1 @@\n+../pyproject.toml\n\\ No newline at end of file\n")


@pytest.mark.parametrize("diff,mode_line", [
    (SYMLINK_DIFF, "new file mode 120000"),
    (make_diff("letta/a.py", "a\nb\nc\n", "a\nB\nc\n").replace(" 100644\n", "\n", 1)
     .replace("index ", "old mode 100644\nnew mode 120000\nindex ", 1), "new mode 120000"),
    (make_diff("letta/a.py", "a\nb\nc\n", "a\nB\nc\n").replace(" 100644\n", " 120000\n", 1),
     "index de98044..7be73ce 120000"),
    (make_diff("letta/a.py", "a\nb\nc\n", None).replace("deleted file mode 100644", "deleted file mode 120000"),
     "deleted file mode 120000"),
    (SYMLINK_DIFF.replace("120000", "160000"), "new file mode 160000"),
])
def test_a_patch_that_makes_or_changes_a_symlink_is_bad_input(tmp_path, capsys, diff, mode_line):
    line, path = _refused_as_bad_input(tmp_path, capsys, diff)
    number = path.read_text().splitlines().index(mode_line) + 1
    assert f"0001-a.diff:{number}:" in line
    assert ("symlink" if "120000" in mode_line else "submodule") in line
    assert not (tmp_path / "out").exists()


def test_export_check_tells_a_symlink_patch_from_the_regular_file_in_the_tree(world):
    tree = world.apply("0.16.8")
    path = world.patches / "0002-new-module.diff"
    path.write_text(path.read_text().replace("new file mode 100644", "new file mode 120000"))
    rc, _, err = world.run("export", "--tree", str(tree), "--check")
    assert rc != 0
    assert "0002-new-module.diff" in err and "symlink" in err


def test_export_check_sees_a_changed_file_mode(world):
    # The commit of 0002 makes letta/k.py executable, the patch a plain file: the blob is the same,
    # the change is not.
    tree = world.apply("0.16.8")
    (tree / "letta" / "k.py").chmod(0o755)
    module_commit = _clean_git(tree, "log", "--format=%H", "-1", "--grep=0002-new-module.diff")
    _clean_git(tree, "commit", "-q", "-a", f"--fixup={module_commit}")
    _clean_git(tree, "-c", "sequence.editor=true", "rebase", "-q", "-i", "--autosquash", "upstream/0.16.8")
    rc, _, err = world.run("export", "--tree", str(tree), "--check")
    assert rc == 4, err
    assert "0002-new-module.diff" in err and "0003" not in err and "0001" not in err
    rc, _, err = world.run("export", "--tree", str(tree))
    assert rc == 0, err
    assert "new file mode 100755" in (world.patches / "0002-new-module.diff").read_text()
    rc, _, err = world.run("export", "--tree", str(tree), "--check")
    assert rc == 0, err


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret"
    secret.parent.mkdir(exist_ok=True)
    secret.write_text("SECRET-7f3a: root:x:0:0\n")
    return secret


def test_a_patch_file_that_is_a_symlink_is_refused_unread(tmp_path, capsys):
    tree = write_tree(tmp_path / "letta-0.16.8", server_files("0.16.8", {"letta/a.py": "a\nb\nc\n"}))
    pdir = write_series(tmp_path / "patches", "0001-good.diff")
    (pdir / "0001-good.diff").symlink_to(_secret(tmp_path))
    for argv in (["apply", "--letta-dir", str(tree), "--out", str(tmp_path / "out")], ["lint"], ["status"]):
        rc = main([*argv, "--patches", str(pdir), "--cache-dir", str(tmp_path / "cache")])
        out, err = capsys.readouterr()
        assert rc == 2, (argv, err)
        assert "SECRET" not in out + err
        [line] = [ln for ln in err.splitlines() if ln.startswith("ketta-build: error:")]
        assert "series:2:" in line and "0001-good.diff" in line and "symlink" in line
    assert not (tmp_path / "out").exists()


def test_a_series_file_that_leads_out_of_the_patch_directory_is_refused_unread(tmp_path, capsys):
    tree = write_tree(tmp_path / "letta-0.16.8", server_files("0.16.8", {"letta/a.py": "a\nb\nc\n"}))
    pdir = write_series(tmp_path / "patches", "0001-good.diff")
    write_patch(pdir, "0001-good.diff", make_diff("letta/a.py", "a\nb\nc\n", "a\nB\nc\n"))
    (pdir / "series").unlink()
    (pdir / "series").symlink_to(_secret(tmp_path))
    rc = main(["apply", "--letta-dir", str(tree), "--patches", str(pdir), "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert "SECRET" not in out + err
    [line] = [ln for ln in err.splitlines() if ln.startswith("ketta-build: error:")]
    assert "series" in line and "outside" in line


def test_a_releases_file_that_leads_out_of_the_patch_directory_is_refused_unread(tmp_path, capsys):
    tree = write_tree(tmp_path / "letta-0.16.8", server_files("0.16.8", {"letta/a.py": "a\nb\nc\n"}))
    secret = tmp_path / "outside" / "secret.toml"
    secret.parent.mkdir()
    secret.write_text('[[release]]\nversion = "SECRET-7f3a"\ndate = "2026-01-01"\n')
    pdir = tmp_path / "patches"
    pdir.mkdir()
    (pdir / "releases.toml").symlink_to(secret)
    write_series(pdir, "0001-good.diff")
    write_patch(pdir, "0001-good.diff", make_diff("letta/a.py", "a\nb\nc\n", "a\nB\nc\n"))
    for argv in (["lint"], ["status"], ["series", "--letta-dir", str(tree), "--check"]):
        rc = main([*argv, "--patches", str(pdir), "--cache-dir", str(tmp_path / "cache")])
        out, err = capsys.readouterr()
        assert rc == 2, (argv, err)
        assert "SECRET" not in out + err
        assert "releases.toml" in err and "outside" in err


def test_a_symlinked_patch_directory_still_works(tmp_path, capsys):
    # Only what leads out of the series directory is refused: the directory itself may be a link.
    tree = write_tree(tmp_path / "letta-0.16.8", server_files("0.16.8", {"letta/a.py": "a\nb\nc\n"}))
    real = write_series(tmp_path / "real-patches", "0001-good.diff")
    write_patch(real, "0001-good.diff", make_diff("letta/a.py", "a\nb\nc\n", "a\nB\nc\n"))
    (tmp_path / "patches").symlink_to(real, target_is_directory=True)
    rc = main(["apply", "--letta-dir", str(tree), "--patches", str(tmp_path / "patches"), "--out", str(tmp_path / "out")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "letta" / "a.py").read_text() == "a\nB\nc\n"


# ============================================================================ the release's own attributes


def test_the_releases_own_gitattributes_do_not_change_its_files(tmp_path, local_index, capsys):
    # An sdist's .gitattributes asks for ident expansion and CRLF: the build tree (and so the wheel,
    # made with git archive from it) must hold the release's bytes as they are.
    files = server_files("0.16.8", {"letta/a.py": "a\nb\nc\n", "letta/id.py": "ID = '$Id$'\n",
                                    ".gitattributes": "*.py ident eol=crlf\n"})
    local_index.add(make_sdist(tmp_path / "letta-0.16.8.tar.gz", "0.16.8", files))
    pdir = write_series(tmp_path / "patches", "0001-a.diff")
    write_patch(pdir, "0001-a.diff", make_diff("letta/a.py", "a\nb\nc\n", "a\nB\nc\n"))
    pin_index(pdir, local_index)
    out = tmp_path / "out"
    rc = main(["apply", "--letta", "0.16.8", "--index-url", local_index.url, "--patches", str(pdir), "--out", str(out),
               "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0, capsys.readouterr().err
    assert (out / "letta" / "id.py").read_bytes() == b"ID = '$Id$'\n"
    assert (out / "letta" / "a.py").read_bytes() == b"a\nB\nc\n"
    from ketta_build.gitcmd import extract_tree

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    extract_tree(out, "HEAD", shipped)
    assert (shipped / "letta" / "id.py").read_bytes() == b"ID = '$Id$'\n"
    assert (shipped / "letta" / "a.py").read_bytes() == b"a\nB\nc\n"
    assert _clean_git(out, "status", "--porcelain") == ""
