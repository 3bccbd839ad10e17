"""Every verb, given broken input, answers with one line and an exit code: never a traceback.

The inputs are the ordinary ways things are broken on a maintainer's machine: a series directory
that is missing, is a file, or holds a patch that is not one; a build tree that is not a repository;
a version that is not one; an unreachable index and an empty cache. ``main`` must return (a raised
exception is the traceback a user would see), with a known non-zero exit code and an error line.
"""

from __future__ import annotations

import pytest

from ketta_build.cli import main

UNREACHABLE = "http://127.0.0.1:9/simple"
KNOWN_CODES = {1, 2, 3, 4, 5, 10, 11}


@pytest.fixture
def broken(tmp_path, monkeypatch):
    """Paths of broken things, and an environment in which nothing reaches a real index."""
    monkeypatch.setenv("PIP_INDEX_URL", UNREACHABLE)
    monkeypatch.setenv("UV_INDEX_URL", UNREACHABLE)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "no-pip.conf"))
    monkeypatch.chdir(tmp_path)
    garbage = tmp_path / "garbage-patches"
    garbage.mkdir()
    (garbage / "series").write_text("0001-x.diff\n")
    (garbage / "0001-x.diff").write_text("this is not a patch\n")
    (garbage / "releases.toml").write_text('[[release]]\nversion = "0.16.8"\ndate = "2026-05-14"\n')
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    not_git = tmp_path / "not-a-repo"
    not_git.mkdir()
    cache = tmp_path / "empty-cache"
    return {"garbage": str(garbage), "missing": str(tmp_path / "missing"), "file": str(a_file),
            "notgit": str(not_git), "cache": str(cache), "out": str(tmp_path / "out")}


CASES = [
    # verb, arguments (formatted with the broken paths)
    ("apply", "--letta 0.16.8 --patches {garbage} --cache-dir {cache} --index-url " + UNREACHABLE + " --out {out}"),
    ("apply", "--letta banana --patches {garbage}"),
    ("apply", "--letta 0.16.8 --letta-dir {notgit} --patches {garbage} --out {out}"),
    ("apply", "--letta 0.16.8 --patches {missing} --cache-dir {cache} --index-url " + UNREACHABLE),
    ("series", "--letta 0.16.8 --patches {file} --cache-dir {cache} --index-url " + UNREACHABLE),
    ("series", "--letta 0.16.8 --letta-git {notgit} --patches {garbage} --check"),
    ("export", "--tree {notgit} --patches {garbage}"),
    ("export", "--tree {file} --patches {garbage} --check"),
    ("export", "--tree {missing} --patches {missing}"),
    ("lint", "--patches {garbage} --cache-dir {cache} --index-url " + UNREACHABLE),
    ("lint", "--patches {file}"),
    ("status", "--patches {garbage} --cache-dir {cache} --index-url " + UNREACHABLE),
    ("status", "--patches {missing}"),
    ("range-diff", "--letta 0.16.8 --cache-dir {cache} --index-url " + UNREACHABLE + " {missing} {garbage}"),
    ("range-diff", "--letta 0.16.8 --cache-dir {cache} --index-url " + UNREACHABLE + " {garbage} {garbage}"),
    ("upstream", "check --patches {garbage} --cache-dir {cache} --index-url " + UNREACHABLE),
    ("upstream", "check --patches {missing} --letta-git {notgit}"),
    ("port", "--letta 0.16.9 --tree {notgit} --patches {garbage} --cache-dir {cache} --index-url " + UNREACHABLE),
    ("port", "--continue --tree {notgit} --patches {garbage}"),
    ("port", "--abort --tree {file} --patches {garbage}"),
    ("bisect", "0001-x.diff --letta-git {notgit} --patches {garbage}"),
    ("bisect", "0001-x.diff --letta-git {missing} --patches {missing}"),
    ("matrix", "--letta banana"),
    ("matrix", "--letta 0.13.0 --report-dir {file}"),
    ("matrix", "--merge {missing} --report-dir {out}"),
    ("serve", "--letta banana"),
    ("serve", "--letta 0.16.8 --patches {garbage} --data-dir {file} --cache-dir {cache} --index-url " + UNREACHABLE),
    ("releases", "--patches {missing}"),
    ("releases", "--patches {garbage} --json {notgit}"),
    ("wheel", "--letta 0.16.8 --patches {garbage} --dist-dir {file} --cache-dir {cache} --index-url " + UNREACHABLE),
    ("wheel", "--letta 0.16.8 --patches {garbage} --tree {file} --cache-dir {cache} --index-url " + UNREACHABLE),
    ("wheel", "--patches {garbage} --tree {notgit} --dist-dir {out}"),
    ("wheel", "--letta banana"),
    ("cache", "prune --max-size banana --cache-dir {cache}"),
    ("cache", "prune --older-than 1 --cache-dir {file} --json {notgit}"),
    ("cache", "--cache-dir {missing} --dry-run"),
    ("init", "--upstream tomli --patches {garbage}"),
    ("init", "--upstream tomli --releases banana --patches {out} --cache-dir {cache} --index-url " + UNREACHABLE),
    ("completion", "bash --patches {file}"),
    ("completion", "fish --patches {missing}"),
]


@pytest.mark.parametrize("verb,args", CASES, ids=[f"{v}:{i}" for i, (v, _) in enumerate(CASES)])
def test_broken_input_is_one_line_and_an_exit_code(verb, args, broken, capsys):
    argv = [verb, *args.format(**broken).split()]
    rc = main(argv)  # an exception escaping here is the traceback a user would get
    err = capsys.readouterr().err
    assert rc in KNOWN_CODES, (argv, rc, err)
    assert "Traceback" not in err, err
    # the error, or one line per finding (lint), each naming the command
    assert err.strip() and all(line.startswith("ketta-build") for line in err.strip().splitlines()), (argv, err)


def test_every_verb_is_tried():
    from ketta_build.cli import COMMANDS

    assert {verb for verb, _ in CASES} == set(COMMANDS)
