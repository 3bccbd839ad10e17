"""A small world for the maintenance loop: a repository with a series of three logical patches (one
with a variant per release) over synthetic releases 0.16.7 and 0.16.8 on a local index; other
releases are published as a test needs them. ``World.run`` runs ketta-build as a maintainer would,
in the repository, with the world's index and cache."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import make_diff, make_sdist, pin_sdists, server_files, write_series
from packaging.version import Version

from ketta_build.cli import main
from ketta_build.profile import default_profile
from ketta_build.suites import REGISTRY_FILE, TESTS_DIR, load_suites
from ketta_build.toxini import render

PROJECT = Path(__file__).resolve().parent.parent
BODY = "".join(f"line {i}\n" for i in range(1, 61))
RELEASES_TOML = '[[release]]\nversion = "0.16.7"\ndate = "2026-03-31"\n\n[[release]]\nversion = "0.16.8"\ndate = "2026-05-14"\n'


def header(subject: str, base: str, why: str = "Because Ketta needs this change for its unified providers.") -> str:
    return (f"Subject: {subject}\nAuthor: Test Author <test@example.org>\nUpstream-Status: Inappropriate [test]\n"
            f"Base-Release: {base}\nForwarded: not-needed\nOwner: Test Author <test@example.org>\nDescription: {why}\n\n")


def m_of(version: str) -> str:
    """letta/m.py of a release: 0.16.7 has an older line 40."""
    return BODY.replace("line 40\n", "line 40 (old)\n") if version == "0.16.7" else BODY


class World:
    def __init__(self, root: Path, index, capsys):
        self.root = root
        self.index = index
        self.capsys = capsys
        self.patches = root / "repo" / "patches"
        self.cache = root / "cache"
        # release -> files added to it when it is published (e.g. a build backend and its pyproject.toml)
        self.release_files = lambda version: {}

    def publish(self, version: str, files: dict[str, str] | None = None, m: str | None = None, yanked=False,
                mtime: int = 0) -> Path:
        content = server_files(version, {"letta/m.py": m if m is not None else m_of(version), **self.release_files(version),
                                         **(files or {})})
        sdist = make_sdist(self.root / f"letta-{version}.tar.gz", version, content, mtime=mtime)
        self.index.add(sdist, yanked=yanked)
        releases = self.patches / "releases.toml"
        if releases.is_file() and f'version = "{version}"' in releases.read_text():
            pin_sdists(self.patches, sdist)  # the world's maintainer pins a release the series supports
        return sdist

    def run(self, *args: str) -> tuple[int, str, str]:
        argv = list(args)
        verb = argv[0]
        if verb in ("apply", "port", "lint", "range-diff", "export", "wheel") or argv[:2] == ["upstream", "check"]:
            argv += ["--index-url", self.index.url, "--cache-dir", str(self.cache)]
        if verb in ("apply", "port", "lint", "export", "wheel") or argv[:2] == ["upstream", "check"]:
            argv += ["--patches", str(self.patches)]
        cwd = os.getcwd()
        os.chdir(self.root / "repo")
        try:
            rc = main(argv)
        finally:
            os.chdir(cwd)
        out, err = self.capsys.readouterr()
        return rc, out, err

    def apply(self, version: str) -> Path:
        out = self.root / "build" / version
        rc, _, err = self.run("apply", "--letta", version, "--out", str(out), "--force")
        assert rc == 0, err
        return out

    def snapshot(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.patches.iterdir())}


def git(tree: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Maintainer", "GIT_AUTHOR_EMAIL": "m@example.org",
           "GIT_COMMITTER_NAME": "Maintainer", "GIT_COMMITTER_EMAIL": "m@example.org", "GIT_EDITOR": "true"}
    return subprocess.run(["git", *args], cwd=tree, env=env, capture_output=True, text=True, check=True).stdout


def make_world(tmp_path, local_index, capsys, release_files=None) -> World:
    w = World(tmp_path, local_index, capsys)
    if release_files is not None:
        w.release_files = release_files
    w.publish("0.16.7")
    w.publish("0.16.8")
    w.patches.mkdir(parents=True)
    (w.patches / "releases.toml").write_text(RELEASES_TOML)
    pin_sdists(w.patches, w.root / "letta-0.16.7.tar.gz", w.root / "letta-0.16.8.tar.gz")
    registry = w.root / "repo" / TESTS_DIR / REGISTRY_FILE  # the project's suites, as the checkout has them
    registry.parent.mkdir(parents=True)
    registry.write_bytes((PROJECT / TESTS_DIR / REGISTRY_FILE).read_bytes())
    (w.root / "repo" / "tox.ini").write_text(render([Version("0.16.7"), Version("0.16.8")], load_suites(registry.parent), default_profile()))
    write_series(w.patches, "0001-change-m.diff", "0002-new-module.diff",
                 "0003-tail.diff                 [letta>=0.16.8]", "0003-tail-0.16.7.diff          [letta<0.16.8]")
    (w.patches / "0001-change-m.diff").write_text(
        header("Ketta changes line 15", "0.16.8") + make_diff("letta/m.py", BODY, BODY.replace("line 15\n", "line fifteen (ketta)\n")))
    (w.patches / "0002-new-module.diff").write_text(
        header("A Ketta module", "0.16.8") + make_diff("letta/k.py", None, "KETTA = True\n"))
    (w.patches / "0003-tail.diff").write_text(
        header("Ketta changes line 40", "0.16.8") + make_diff("letta/m.py", BODY.replace("line 15\n", "line fifteen (ketta)\n"),
                                                              BODY.replace("line 15\n", "line fifteen (ketta)\n").replace("line 40\n", "line forty\n")))
    m7 = m_of("0.16.7").replace("line 15\n", "line fifteen (ketta)\n")
    (w.patches / "0003-tail-0.16.7.diff").write_text(
        header("Ketta changes line 40", "0.16.7") + make_diff("letta/m.py", m7, m7.replace("line 40 (old)\n", "line forty\n")))
    rc, _, err = w.run("lint", "--fix")  # difflib wrote them; git's canonical form has function context in @@ lines
    assert rc == 0, err
    git(w.root / "repo", "init", "-q")  # the series lives in a repository, as it does for a maintainer
    git(w.root / "repo", "add", "-A")
    git(w.root / "repo", "commit", "-q", "-m", "the series")
    return w


def take_the_patchs_side(text: str) -> str:
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
