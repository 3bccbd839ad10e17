"""Bad input: each case gives one clear line naming the file (and line), a non-zero exit, and no half tree."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import textwrap

import pytest
from conftest import (HEADER, make_diff, make_sdist, make_wheel, pin_index, server_files, write_patch, write_series,
                      write_tree)

from ketta_build import buildtree
from ketta_build.cli import main

GOOD_DIFF = make_diff("letta/a.py", "a\nb\nc\n", "a\nB\nc\n")


@pytest.fixture
def project(tmp_path):
    """An upstream tree, a patch dir with one good patch, and a runner for the CLI."""
    tree = write_tree(tmp_path / "letta-0.16.8", server_files("0.16.8", {"letta/a.py": "a\nb\nc\n"}))
    pdir = write_series(tmp_path / "patches", "0001-good.diff")
    write_patch(pdir, "0001-good.diff", GOOD_DIFF)

    class Project:
        root = tmp_path
        patches = pdir
        upstream = tree
        out = tmp_path / "out"

        def run(self, *extra: str, capsys=None) -> tuple[int, str]:
            args = ["apply", "--letta-dir", str(tree), "--patches", str(pdir), "--out", str(self.out), "--cache-dir", str(tmp_path / "cache"), *extra]
            rc = main(args)
            err = capsys.readouterr().err if capsys else ""
            return rc, err

    return Project()


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("ketta-build: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _patch_text(diff: str, **fields) -> str:
    text = HEADER.format(subject="S", base="0.16.8") + diff
    for old, new in fields.items():
        text = text.replace(old, new)
    return text


def _bad_patch(project, text: str, capsys) -> str:
    (project.patches / "0001-good.diff").write_text(text)
    rc, err = project.run(capsys=capsys)
    assert rc == 2
    assert not project.out.exists()
    return _one_error_line(err)


# ----------------------------------------------------------------------------- malformed patches


def test_malformed_hunk_header(project, capsys):
    line = _bad_patch(project, _patch_text(GOOD_DIFF.replace("@@ -1,3 +1,3 @@", "@@ -1,x +1,3 @@")), capsys)
    assert "0001-good.diff:" in line and "malformed hunk header" in line


def test_hunk_shorter_than_its_header(project, capsys):
    line = _bad_patch(project, _patch_text(GOOD_DIFF.replace("@@ -1,3 +1,3 @@", "@@ -1,4 +1,4 @@")), capsys)
    assert "0001-good.diff:" in line and "shorter than its header" in line


def test_hunk_longer_than_its_header(project, capsys):
    line = _bad_patch(project, _patch_text(GOOD_DIFF + "+extra\n"), capsys)
    assert "longer than its header" in line
    assert line.split("0001-good.diff:")[1].split(":")[0] == str(_patch_text(GOOD_DIFF).count("\n") + 1)


def test_context_line_lost_its_space(project, capsys):
    line = _bad_patch(project, _patch_text(GOOD_DIFF.replace("\n a\n", "\n\n")), capsys)
    assert "lost its leading space" in line


def test_missing_header_field(project, capsys):
    line = _bad_patch(project, _patch_text(GOOD_DIFF, **{"Upstream-Status: Inappropriate [test]\n": ""}), capsys)
    assert "0001-good.diff:1:" in line and "Upstream-Status" in line


def test_bad_author(project, capsys):
    line = _bad_patch(project, _patch_text(GOOD_DIFF, **{"Test Author <test@example.org>": "nobody"}), capsys)
    assert "0001-good.diff:2:" in line and "Author must be" in line


def test_bad_upstream_status(project, capsys):
    line = _bad_patch(project, _patch_text(GOOD_DIFF, **{"Inappropriate [test]": "Maybe"}), capsys)
    assert "0001-good.diff:3:" in line and "Upstream-Status must start with" in line


def test_bad_base_release(project, capsys):
    line = _bad_patch(project, _patch_text(GOOD_DIFF, **{"Base-Release: 0.16.8": "Base-Release: latest"}), capsys)
    assert "0001-good.diff:4:" in line and "Base-Release" in line


def test_diff_path_escaping_the_tree(project, capsys):
    line = _bad_patch(project, _patch_text(GOOD_DIFF.replace("letta/a.py", "../a.py")), capsys)
    assert "escapes the tree" in line and "0001-good.diff:" in line


def test_absolute_diff_path(project, capsys):
    bad = GOOD_DIFF.replace("diff --git a/letta/a.py b/letta/a.py", "diff --git a//etc/passwd b//etc/passwd")
    line = _bad_patch(project, _patch_text(bad), capsys)
    assert "is absolute" in line


def test_binary_diff(project, capsys):
    binary = "diff --git a/letta/logo.png b/letta/logo.png\nnew file mode 100644\nindex 0000000..1234567\nBinary files /dev/null and b/letta/logo.png differ\n"
    line = _bad_patch(project, _patch_text(binary), capsys)
    assert "binary diff" in line and "0001-good.diff:" in line


def test_crlf_converted_patch_file(project, capsys):
    line = _bad_patch(project, _patch_text(GOOD_DIFF).replace("\n", "\r\n"), capsys)
    assert "CRLF" in line and "dos2unix" in line


def test_patch_not_utf8(project, capsys):
    (project.patches / "0001-good.diff").write_bytes(_patch_text(GOOD_DIFF).encode() + b"+\xff\xfe\n")
    rc, err = project.run(capsys=capsys)
    assert rc == 2 and "not valid UTF-8" in _one_error_line(err)


def test_header_without_diff(project, capsys):
    line = _bad_patch(project, HEADER.format(subject="S", base="0.16.8"), capsys)
    assert "expected 'diff --git" in line or "no diff after the header" in line


# ----------------------------------------------------------------------------- series problems


def _bad_series(project, capsys, *lines: str) -> str:
    write_series(project.patches, *lines)
    rc, err = project.run(capsys=capsys)
    assert rc == 2 and not project.out.exists()
    return _one_error_line(err)


def test_patch_listed_but_missing(project, capsys):
    line = _bad_series(project, capsys, "0001-good.diff", "0002-missing.diff")
    assert "series:3:" in line and "0002-missing.diff" in line and "does not exist" in line


def test_file_on_disk_not_in_series(project, capsys):
    write_patch(project.patches, "0002-stray.diff", GOOD_DIFF)
    line = _bad_series(project, capsys, "0001-good.diff")
    assert "0002-stray.diff" in line and "not listed in the series" in line


def test_duplicate_entry(project, capsys):
    line = _bad_series(project, capsys, "0001-good.diff", "0001-good.diff")
    assert "series:3:" in line and "listed twice" in line


def test_bad_guard_syntax(project, capsys):
    line = _bad_series(project, capsys, "0001-good.diff [letta>=>0.15]")
    assert "series:2:" in line and "bad version guard" in line


def test_guard_on_another_package(project, capsys):
    line = _bad_series(project, capsys, "0001-good.diff [pydantic>=2]")
    assert "series:2:" in line and "must be on 'letta'" in line


def test_series_entry_escaping_the_patch_dir(project, capsys):
    line = _bad_series(project, capsys, "../0001-good.diff")
    assert "series:2:" in line and "plain file name" in line


def test_overlapping_variants(project, capsys):
    write_patch(project.patches, "0001-good-old.diff", GOOD_DIFF)
    line = _bad_series(project, capsys, "0001-good.diff [letta>=0.16]", "0001-good-old.diff [letta<0.16.9]")
    assert "overlap for letta 0.16.8" in line and "series:" in line


def test_variant_without_guard(project, capsys):
    write_patch(project.patches, "0001-good-old.diff", GOOD_DIFF)
    line = _bad_series(project, capsys, "0001-good.diff", "0001-good-old.diff [letta<0.16]")
    assert "series:2:" in line and "needs a version guard" in line


# ----------------------------------------------------------------------------- tree and output problems


def test_patch_touching_a_file_missing_upstream(project, capsys):
    write_patch(project.patches, "0001-good.diff", make_diff("letta/nowhere.py", "a\n", "b\n"))
    rc, err = project.run(capsys=capsys)
    assert rc == 1
    assert "letta/nowhere.py does not exist in letta 0.16.8" in err


def test_non_empty_out_without_force(project, capsys):
    project.out.mkdir()
    (project.out / "keep.txt").write_text("mine")
    rc, err = project.run(capsys=capsys)
    assert rc == 5 and "--force" in _one_error_line(err)
    assert (project.out / "keep.txt").read_text() == "mine"


def test_force_refuses_a_directory_that_is_not_a_build_tree(project, capsys):
    project.out.mkdir()
    (project.out / "keep.txt").write_text("mine")
    rc, err = project.run("--force", capsys=capsys)
    assert rc == 5 and "not a ketta-build tree" in _one_error_line(err)


def test_force_refuses_a_dirty_build_tree(project, capsys):
    assert project.run(capsys=capsys)[0] == 0
    (project.out / "letta/a.py").write_text("hand edit\n")
    rc, err = project.run("--force", capsys=capsys)
    assert rc == 5 and "uncommitted changes" in _one_error_line(err)
    assert (project.out / "letta/a.py").read_text() == "hand edit\n"
    subprocess.run(["git", "checkout", "--", "."], cwd=project.out, check=True)
    assert project.run("--force", capsys=capsys)[0] == 0


def test_letta_dir_that_is_letta_code(tmp_path, capsys):
    code = write_tree(tmp_path / "code", {"pyproject.toml": '[project]\nversion = "0.33.8"\n', "letta_code/__init__.py": ""})
    pdir = write_series(tmp_path / "p", "0001-good.diff")
    write_patch(pdir, "0001-good.diff", GOOD_DIFF)
    rc = main(["apply", "--letta-dir", str(code), "--patches", str(pdir), "--out", str(tmp_path / "o")])
    assert rc == 2 and "Letta Code" in _one_error_line(capsys.readouterr().err)


def test_missing_patch_directory(tmp_path, capsys):
    rc = main(["apply", "--letta", "0.16.8", "--patches", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "patch directory does not exist" in _one_error_line(capsys.readouterr().err)


def test_usage_error_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["apply", "--fuzz", "many"])
    assert exc.value.code == 2


def test_interrupted_run_leaves_no_tree(project, capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(buildtree, "apply_patch", boom)
    rc, err = project.run(capsys=capsys)
    assert rc == 130 and "interrupted" in err
    assert not project.out.exists()
    assert not list(project.root.glob(".out.ketta-tmp-*"))


def test_killed_run_leaves_only_a_temp_dir_that_the_next_run_removes(project, capsys):
    stale = project.root / ".out.ketta-tmp-dead"
    (stale / "tree").mkdir(parents=True)
    (stale / ".ketta-pid").write_text("999999999")
    assert project.run(capsys=capsys)[0] == 0
    assert not stale.exists()


# ----------------------------------------------------------------------------- index problems


def _index_run(tmp_path, local_index, version="0.16.8", *extra):
    pdir = write_series(tmp_path / "patches", "0001-good.diff")
    write_patch(pdir, "0001-good.diff", GOOD_DIFF)
    pin_index(pdir, local_index)  # the made-up releases are pinned as the index publishes them
    return main(
        ["apply", "--letta", version, "--index-url", local_index.url, "--cache-dir", str(tmp_path / "cache"),
         "--patches", str(pdir), "--out", str(tmp_path / "out"), *extra]
    )


def test_hash_mismatch_from_the_index(tmp_path, local_index, capsys):
    sdist = make_sdist(tmp_path / "letta-0.16.8.tar.gz", "0.16.8", server_files("0.16.8", {"letta/a.py": "a\nb\nc\n"}))
    local_index.add(sdist, sha256="0" * 64)
    assert _index_run(tmp_path, local_index) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert "sha256 mismatch for letta-0.16.8.tar.gz" in line and "nothing was cached" in line
    assert not list((tmp_path / "cache" / "blobs").rglob("*.tar.gz")) and not (tmp_path / "out").exists()


def test_letta_code_release_is_detected_not_patched(tmp_path, local_index, capsys):
    local_index.add(make_wheel(tmp_path / "letta-0.33.8-py3-none-manylinux_2_28_x86_64.whl", "letta_code"))
    assert _index_run(tmp_path, local_index, "0.33.8") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "not the Letta agent server" in line and "letta_code/" in line and "0.16.8" in line
    assert any(r.startswith("/files/") for r in local_index.requests)  # it looked inside the wheel


def test_unknown_version_lists_the_nearest(tmp_path, local_index, capsys):
    assert _index_run(tmp_path, local_index, "0.16.3") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "nearest supported: 0.16.2, 0.16.4" in line


def test_not_a_version(tmp_path, local_index, capsys):
    assert _index_run(tmp_path, local_index, "latest") == 2
    assert "not a version number" in _one_error_line(capsys.readouterr().err)


def test_index_unreachable_with_an_empty_cache(tmp_path, capsys):
    pdir = write_series(tmp_path / "patches", "0001-good.diff")
    write_patch(pdir, "0001-good.diff", GOOD_DIFF)
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/simple"
    rc = main(["apply", "--letta", "0.16.8", "--index-url", dead, "--cache-dir", str(tmp_path / "c"), "--patches", str(pdir), "--out", str(tmp_path / "o")])
    assert rc == 3
    line = _one_error_line(capsys.readouterr().err)
    assert "cannot reach the package index" in line and "has no letta 0.16.8" in line


def test_unsafe_sdist_members_are_refused(tmp_path, local_index, capsys):
    evil = tarfile.TarInfo("letta-0.16.8/../../evil.txt")
    evil.size = 1
    sdist = make_sdist(tmp_path / "letta-0.16.8.tar.gz", "0.16.8", server_files("0.16.8", {}), [evil])
    local_index.add(sdist)
    assert _index_run(tmp_path, local_index) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert "letta-0.16.8.tar.gz" in line and "contains '..'" in line
    assert not (tmp_path / "evil.txt").exists()


def test_sdist_symlink_out_of_the_tree_is_refused(tmp_path, local_index, capsys):
    link = tarfile.TarInfo("letta-0.16.8/letta/passwd")
    link.type = tarfile.SYMTYPE
    link.linkname = "../../../etc/passwd"
    sdist = make_sdist(tmp_path / "letta-0.16.8.tar.gz", "0.16.8", server_files("0.16.8", {}), [link])
    local_index.add(sdist)
    assert _index_run(tmp_path, local_index) == 3
    assert "outside the tree" in _one_error_line(capsys.readouterr().err)


def test_cache_lock_held_by_another_run(tmp_path, local_index, capsys, monkeypatch):
    import filelock

    monkeypatch.setenv("KETTA_BUILD_LOCK_TIMEOUT", "0.5")
    sdist = make_sdist(tmp_path / "letta-0.16.8.tar.gz", "0.16.8", server_files("0.16.8", {"letta/a.py": "a\nb\nc\n"}))
    local_index.add(sdist)
    import hashlib

    sha = hashlib.sha256(sdist.read_bytes()).hexdigest()
    lock_path = tmp_path / "cache" / "locks" / f"blob-{sha}.lock"
    lock_path.parent.mkdir(parents=True)
    with filelock.FileLock(str(lock_path)):
        rc = _index_run(tmp_path, local_index)
    assert rc == 5
    line = _one_error_line(capsys.readouterr().err)
    assert "another ketta-build holds the lock" in line and str(lock_path) in line


def test_two_runs_on_one_cache_at_once_both_succeed(tmp_path, local_index):
    sdist = make_sdist(tmp_path / "letta-0.16.8.tar.gz", "0.16.8", server_files("0.16.8", {"letta/a.py": "a\nb\nc\n"}))
    local_index.add(sdist)
    pdir = write_series(tmp_path / "patches", "0001-good.diff")
    write_patch(pdir, "0001-good.diff", GOOD_DIFF)
    pin_index(pdir, local_index)
    script = textwrap.dedent(
        """
        import sys
        from ketta_build.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, "apply", "--letta", "0.16.8", "--index-url", local_index.url,
             "--cache-dir", str(tmp_path / "cache"), "--patches", str(pdir), "--out", str(tmp_path / f"out{i}"),
             "--json", str(tmp_path / f"r{i}.json")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "120"},
        )
        for i in range(2)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    import json

    trees = {json.loads((tmp_path / f"r{i}.json").read_text())["tree"]["tree_hash"] for i in range(2)}
    assert len(trees) == 1
    assert len(list((tmp_path / "cache" / "blobs").rglob("*"))) >= 1
    assert sum(1 for r in local_index.requests if r.startswith("/files/")) == 1  # downloaded once


def test_second_run_needs_no_network(tmp_path, local_index, capsys):
    sdist = make_sdist(tmp_path / "letta-0.16.8.tar.gz", "0.16.8", server_files("0.16.8", {"letta/a.py": "a\nb\nc\n"}))
    local_index.add(sdist)
    assert _index_run(tmp_path, local_index) == 0
    asked = len(local_index.requests)
    assert _index_run(tmp_path, local_index, "0.16.8", "--force") == 0
    assert len(local_index.requests) == asked


def test_corrupted_cache_blob_is_detected(tmp_path, local_index, capsys):
    sdist = make_sdist(tmp_path / "letta-0.16.8.tar.gz", "0.16.8", server_files("0.16.8", {"letta/a.py": "a\nb\nc\n"}))
    local_index.add(sdist)
    assert _index_run(tmp_path, local_index) == 0
    for blob in (tmp_path / "cache" / "blobs").rglob("*"):
        if blob.is_file():
            blob.write_bytes(b"tampered")
    for repo in (tmp_path / "cache" / "pristine").glob("*.git"):
        import shutil

        shutil.rmtree(repo)
    assert _index_run(tmp_path, local_index, "0.16.8", "--force") == 3
    assert "is corrupt" in _one_error_line(capsys.readouterr().err)


def test_json_report_schema(project, capsys, tmp_path):
    import json

    rc, _ = project.run("--json", str(tmp_path / "r.json"), capsys=capsys)
    data = json.loads((tmp_path / "r.json").read_text())
    assert rc == 0 and data["schema"] == "ketta-build/apply-report/1" and data["exit_code"] == 0
    assert data["upstream"]["version"] == "0.16.8" and data["upstream"]["tag"] == "upstream/0.16.8"
    [patch] = data["patches"]
    assert patch["outcome"] == "clean" and patch["files"][0]["hunks"][0]["label"] == "clean"
    assert data["summary"]["hunks"]["clean"] == 1 and data["tree"]["tree_hash"]
    state = json.loads((project.out / ".git" / "ketta-build.json").read_text())
    assert state["tree"] == data["tree"]


def test_series_command_explains_selection(project, capsys, tmp_path):
    write_patch(project.patches, "0002-new.diff", GOOD_DIFF)
    write_series(project.patches, "0001-good.diff", "0002-new.diff [letta>=0.16.8]")
    rc = main(["series", "--letta", "v0.16.7", "--patches", str(project.patches), "--check", "--json", str(tmp_path / "s.json")])
    import json

    data = json.loads((tmp_path / "s.json").read_text())
    assert rc == 0
    assert [(e["name"], e["selected"]) for e in data["entries"]] == [("0001-good.diff", True), ("0002-new.diff", False)]
    assert "outside [letta>=0.16.8]" in data["entries"][1]["reason"]


def test_series_command_prints_the_guard_text(project, capsys):
    # rich would swallow "[letta>=0.16.8]" as markup if the reason were not escaped
    write_patch(project.patches, "0002-new.diff", GOOD_DIFF)
    write_series(project.patches, "0001-good.diff", "0002-new.diff [letta>=0.16.8]")
    assert main(["series", "--letta", "v0.16.7", "--patches", str(project.patches)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "outside [letta>=0.16.8]" in out


# ----------------------------------------------------------------------------- issue 30: tracebacks and exit codes


def test_a_releases_toml_that_is_not_utf8_is_one_line(project, capsys):
    path = project.patches / "releases.toml"
    path.write_bytes(b"# caf\xe9\n" + path.read_bytes())
    rc = main(["lint", "--patches", str(project.patches)])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2 and str(path) in line and "UTF-8" in line


@pytest.mark.parametrize("value", ["abc", "-1", "nan"])
def test_a_lock_timeout_that_is_not_a_number_is_one_line(project, capsys, monkeypatch, value):
    monkeypatch.setenv("KETTA_BUILD_LOCK_TIMEOUT", value)
    rc, err = project.run(capsys=capsys)
    line = _one_error_line(err)
    assert rc == 2 and "KETTA_BUILD_LOCK_TIMEOUT" in line and repr(value) in line and not project.out.exists()


def test_an_author_on_two_lines_is_bad_input(project, capsys):
    line = _bad_patch(project, _patch_text(GOOD_DIFF, **{"Author: Test Author <test@example.org>":
                                                         "Author: Test\n Author <test@example.org>"}), capsys)
    assert "0001-good.diff:2:" in line and "Author" in line


@pytest.mark.parametrize("value", ["99999999999999999999", "12x", "-5"])
def test_a_source_date_epoch_out_of_range_or_malformed_is_bad_input(project, capsys, monkeypatch, value):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    rc, err = project.run(capsys=capsys)
    line = _one_error_line(err)
    assert rc == 2 and "SOURCE_DATE_EPOCH" in line and repr(value) in line and not project.out.exists()
    assert not list(project.root.glob(".out.ketta-tmp-*")), "nothing left beside the tree"


@pytest.mark.parametrize("in_a_repository", [False, True])
def test_an_empty_out_directory_is_simply_filled(project, capsys, in_a_repository):
    """Nothing there to keep: no ignored files are looked for (git would fail there, or answer for an
    enclosing repository)."""
    project.out.mkdir()
    if in_a_repository:
        subprocess.run(["git", "init", "-q", str(project.root)], check=True)
    (project.root / ".gitignore").write_text("*.log\n")
    (project.root / "x.log").write_text("not the tree's\n")
    rc, err = project.run(capsys=capsys)
    assert rc == 0, err
    assert (project.out / ".git").is_dir() and (project.root / "x.log").is_file()


def test_a_file_written_whole_keeps_its_mode_or_gets_the_umasks(tmp_path):
    """write_atomic once left every file it wrote (patches, releases.toml, reports) at mode 0600."""
    import os

    from ketta_build.atomic import write_atomic

    umask = os.umask(0o022)
    try:
        new = tmp_path / "new.txt"
        write_atomic(new, b"x\n")
        assert new.stat().st_mode & 0o777 == 0o644
        script = tmp_path / "run.sh"
        script.write_text("#!/bin/sh\n")
        script.chmod(0o755)
        write_atomic(script, b"#!/bin/sh\necho\n")
        assert script.stat().st_mode & 0o777 == 0o755 and script.read_bytes() == b"#!/bin/sh\necho\n"
    finally:
        os.umask(umask)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
