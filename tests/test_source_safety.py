"""An upstream source can never run code, reach outside the tree, or change what we ship (issue 29,
the source half): what an index page, an sdist, a git source or the cache holds is judged before
it is used, and a refusal is one line (exit 3) that leaves nothing behind."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import make_diff, make_sdist, pin, pin_index, pin_sdists, server_files, write_patch, write_series, write_tree
from packaging.version import Version

from ketta_build.cli import main

GOOD_DIFF = make_diff("letta/a.py", "a\nb\nc\n", "a\nB\nc\n")


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("ketta-build: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _series(tmp_path: Path) -> Path:
    pdir = write_series(tmp_path / "patches", "0001-good.diff")
    write_patch(pdir, "0001-good.diff", GOOD_DIFF)
    return pdir


def _apply(tmp_path: Path, index, version: str = "0.16.8", *extra: str) -> int:
    """apply from ``index`` (a URL, or a local index whose made-up releases are pinned as it publishes them)."""
    pdir = _series(tmp_path)
    if not isinstance(index, str):
        pin_index(pdir, index)
    return main(["apply", "--letta", version, "--index-url", index if isinstance(index, str) else index.url,
                 "--cache-dir", str(tmp_path / "cache"), "--patches", str(pdir), "--out", str(tmp_path / "out"), *extra])


def html_index(root: Path, anchors: list[str]) -> str:
    """A PEP 503 index directory (file://) whose project page holds ``anchors`` as written; its URL."""
    (root / "letta").mkdir(parents=True, exist_ok=True)
    (root / "letta" / "index.html").write_text("<html><body>" + "".join(anchors) + "</body></html>")
    return root.as_uri()


def _sdist(tmp_path: Path, version: str = "0.16.8") -> Path:
    return make_sdist(tmp_path / f"letta-{version}.tar.gz", version, server_files(version, {"letta/a.py": "a\nb\nc\n"}))


# ----------------------------------------------------------------------------- 3. nothing from an index becomes a path


def test_a_sha256_fragment_that_is_a_path_is_refused_before_any_use(tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    sdist = _sdist(tmp_path)
    (tmp_path / "idx" / "files").mkdir(parents=True)
    (tmp_path / "idx" / "files" / sdist.name).write_bytes(sdist.read_bytes())
    url = html_index(tmp_path / "idx", [f'<a href="../files/{sdist.name}#sha256={victim}">{sdist.name}</a>'])
    assert _apply(tmp_path, url) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert "sha256" in line and "64 lowercase hex" in line and sdist.name in line and "idx/letta" in line
    assert victim.read_text() == "precious\n", "the victim file is untouched"
    assert not (tmp_path / "out").exists()


def test_a_json_page_hash_that_is_a_path_is_refused(tmp_path, local_index, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    local_index.add(_sdist(tmp_path), sha256=str(victim))
    assert _apply(tmp_path, local_index.url) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert "64 lowercase hex" in line and local_index.url in line
    assert victim.read_text() == "precious\n"


def test_an_upper_case_or_short_hash_is_refused(tmp_path, local_index, capsys):
    sdist = _sdist(tmp_path)
    local_index.add(sdist, sha256=hashlib.sha256(sdist.read_bytes()).hexdigest().upper())
    assert _apply(tmp_path, local_index.url) == 3
    assert "64 lowercase hex" in _one_error_line(capsys.readouterr().err)
    local_index.files[0]["hashes"]["sha256"] = "abc"
    assert _apply(tmp_path, local_index.url) == 3
    assert "64 lowercase hex" in _one_error_line(capsys.readouterr().err)


def test_a_file_name_with_a_slash_or_dot_dot_is_refused(tmp_path, local_index, capsys):
    sdist = _sdist(tmp_path)
    local_index.add(sdist)
    local_index.files[0]["filename"] = "../../letta-0.16.8.tar.gz"
    assert _apply(tmp_path, local_index) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert "not a plain file name" in line and "../../letta-0.16.8.tar.gz" in line
    (tmp_path / "idx" / "files").mkdir(parents=True)
    (tmp_path / "idx" / "files" / sdist.name).write_bytes(sdist.read_bytes())
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    url = html_index(tmp_path / "idx", [f'<a href="../files/{sdist.name}#sha256={digest}">x/../{sdist.name}</a>'])
    assert _apply(tmp_path, url) == 3
    assert "not a plain file name" in _one_error_line(capsys.readouterr().err)


def test_a_remote_page_cannot_point_a_download_at_a_local_file(tmp_path, local_index, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("key\n")
    local_index.add(_sdist(tmp_path))
    local_index.files[0]["url"] = secret.as_uri()
    assert _apply(tmp_path, local_index) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert "file:" in line and "http" in line


def test_the_cache_takes_no_path_for_a_hash():
    from ketta_build.cache import Cache
    from ketta_build.errors import UpstreamError

    cache = Cache(Path("/nonexistent-cache"))
    for bad in ("/etc/passwd", "../" * 3 + "x", "A" * 64, "0" * 63):
        with pytest.raises(UpstreamError, match="64 lowercase hex"):
            cache.blob_path(bad)
        with pytest.raises(UpstreamError, match="64 lowercase hex"):
            cache.pristine_repo(bad)
    assert cache.blob_path("0" * 64).name == "0" * 64


def test_a_cached_release_record_with_a_bad_hash_is_not_used(tmp_path, local_index, capsys):
    local_index.add(_sdist(tmp_path))
    assert _apply(tmp_path, local_index) == 0
    import json

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    records = list((tmp_path / "cache" / "releases").rglob("letta-0.16.8.json"))
    assert records
    for record in records:  # this index's record and the pinned sdist's
        record.write_text(json.dumps({**json.loads(record.read_text()), "sha256": str(victim)}))
    assert _apply(tmp_path, local_index, "0.16.8", "--force") == 0
    assert victim.read_text() == "precious\n"


# ----------------------------------------------------------------------------- 1. no version-control metadata


def _member(name: str, data: bytes = b"", mode: int = 0o644, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info


def _sdist_with(path: Path, version: str, first: list[tuple[tarfile.TarInfo, bytes]],
                after: list[tuple[tarfile.TarInfo, bytes]] = ()) -> Path:
    """An sdist of ``version`` whose members are ``first``, the server files, then ``after``."""
    top = f"letta-{version}"
    with tarfile.open(path, "w:gz") as tar:
        for info, data in first:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
        for rel, content in sorted(server_files(version, {"letta/a.py": "a\nb\nc\n"}).items()):
            tar.addfile(_member(f"{top}/{rel}", content.encode()), io.BytesIO(content.encode()))
        for info, data in after:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


@pytest.mark.parametrize("member", [".git/hooks/post-commit", ".git", "letta/.git", ".GIT/config", ".hg/hgrc",
                                    "letta/.svn/entries", "CVS/Root", "letta/.bzr/branch-format"])
def test_an_sdist_with_version_control_metadata_is_refused(tmp_path, local_index, capsys, member):
    marker = tmp_path / "pwned"
    hook = f"#!/bin/sh\necho pwned > {marker}\n".encode()
    if member == ".git":  # a gitdir pointer: git would take the tree for another repository's work tree
        hook = f"gitdir: {tmp_path}\n".encode()
    sdist = _sdist_with(tmp_path / "letta-0.16.8.tar.gz", "0.16.8", [(_member(f"letta-0.16.8/{member}", hook, 0o755), hook)])
    local_index.add(sdist)
    assert _apply(tmp_path, local_index) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert "letta-0.16.8.tar.gz" in line and f"letta-0.16.8/{member}" in line and "version-control metadata" in line
    assert not marker.exists(), "the hook never ran"
    assert not (tmp_path / "out").exists() and not list((tmp_path / "cache").glob("pristine/*.git"))


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def _letta_repo(root: Path, extra: dict[str, str] | None = None) -> Path:
    repo = write_tree(root, server_files("0.16.8", {"letta/a.py": "a\nb\nc\n", **(extra or {})}))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "0.16.8")
    _git(repo, "tag", "v0.16.8")
    return repo


def _apply_git(tmp_path: Path, repo: Path) -> int:
    return main(["apply", "--letta-git", str(repo), "--ref", "v0.16.8", "--patches", str(_series(tmp_path)),
                 "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])


def test_a_git_source_with_version_control_metadata_is_refused(tmp_path, capsys):
    repo = _letta_repo(tmp_path / "letta-repo", {"letta/.svn/entries": "12\n"})
    assert _apply_git(tmp_path, repo) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert "letta/.svn" in line and "version-control metadata" in line and not (tmp_path / "out").exists()


def test_a_git_source_whose_tree_holds_a_dot_git_is_one_line(tmp_path, capsys):
    # git itself never adds a .git to a tree, but a made tree object can hold one; git archive refuses it
    repo = _letta_repo(tmp_path / "letta-repo")
    hook = repo / "hook"
    hook.write_text("#!/bin/sh\ntouch pwned\n")
    blob = _git(repo, "hash-object", "-w", str(hook))
    hooks = subprocess.run(["git", "mktree"], cwd=repo, input=f"100755 blob {blob}\tpost-commit\n", text=True,
                           capture_output=True, check=True).stdout.strip()
    dotgit = subprocess.run(["git", "mktree"], cwd=repo, input=f"040000 tree {hooks}\thooks\n", text=True,
                            capture_output=True, check=True).stdout.strip()
    listing = _git(repo, "ls-tree", "HEAD") + f"\n040000 tree {dotgit}\t.git\n"
    tree = subprocess.run(["git", "mktree"], cwd=repo, input=listing, text=True, capture_output=True, check=True).stdout.strip()
    commit = _git(repo, "commit-tree", tree, "-p", "HEAD", "-m", "0.16.8 with a .git")
    _git(repo, "tag", "-f", "v0.16.8", commit)
    assert _apply_git(tmp_path, repo) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert ".git" in line and not (tmp_path / "out").exists()


def test_a_directory_source_with_metadata_or_a_fifo_is_refused(tmp_path, capsys):
    tree = write_tree(tmp_path / "letta-dir", server_files("0.16.8", {"letta/a.py": "a\nb\nc\n", "letta/.hg/hgrc": "x\n"}))
    run = lambda: main(["apply", "--letta-dir", str(tree), "--patches", str(_series(tmp_path)),  # noqa: E731
                        "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    assert run() == 3
    assert "letta/.hg" in _one_error_line(capsys.readouterr().err)
    shutil.rmtree(tree / "letta" / ".hg")
    os.mkfifo(tree / "letta" / "pipe")
    assert run() == 3  # refused, not opened: reading a FIFO would wait forever
    assert "pipe" in _one_error_line(capsys.readouterr().err)
    (tree / "letta" / "pipe").unlink()
    (tree / ".git").mkdir()  # the checkout's own .git is left out, as before
    (tree / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert run() == 0
    shutil.rmtree(tmp_path / "out")
    (tree / "letta" / "sub" / ".git" / "hooks").mkdir(parents=True)  # a .git deeper down is refused, not dropped
    (tree / "letta" / "sub" / ".git" / "config").write_text("[core]\n\thooksPath = hooks\n")
    assert run() == 3
    assert "letta/sub/.git" in _one_error_line(capsys.readouterr().err)


def test_a_directory_sources_pyproject_is_read_only_as_a_regular_utf8_file(tmp_path, capsys):
    secret = tmp_path / "secret.toml"
    secret.write_text('version = "0.16.8"\n')
    tree = write_tree(tmp_path / "letta-dir", server_files("0.16.8", {"letta/a.py": "a\nb\nc\n"}))
    run = lambda: main(["apply", "--letta-dir", str(tree), "--patches", str(_series(tmp_path)),  # noqa: E731
                        "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    (tree / "pyproject.toml").write_bytes((tree / "pyproject.toml").read_bytes() + b"# caf\xe9\n")
    assert run() == 3  # not a traceback
    assert "not UTF-8" in _one_error_line(capsys.readouterr().err)
    (tree / "pyproject.toml").unlink()
    (tree / "pyproject.toml").symlink_to(secret)
    assert run() == 3
    assert "not read" in _one_error_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------- 2. chained links


def chained_leak(secret: Path, where: str = "letta", depth: int = 10, top: bool = True) -> tuple[str, str, str, str]:
    """Two links, each inside the tree as written, that together reach ``secret``: (leak name, its target,
    hop name, its target). The hop ``letta/z1/.../zN/hop -> ../..(N times)`` is the directory ``letta``;
    the leak goes through it and then climbs as many levels as written names allow (N+1, and one more
    under an sdist's top directory), which lexically only undo z1..zN and the hop, and really reach /:
    then the secret's absolute path, without its leading slash."""
    zs = "/".join(f"z{i}" for i in range(1, depth + 1))
    hop = f"{where}/{zs}/hop"
    hop_target = "/".join([".."] * depth)
    leak_target = f"{zs}/hop/" + "/".join([".."] * (depth + 1 + top)) + "/" + str(secret).lstrip("/")
    return f"{where}/leak.py", leak_target, hop, hop_target


def test_chained_links_out_of_an_sdist_are_refused(tmp_path, local_index, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("key\n")
    leak, leak_target, hop, hop_target = chained_leak(secret)
    sdist = _sdist_with(tmp_path / "letta-0.16.8.tar.gz", "0.16.8",
                        [(_member(f"letta-0.16.8/{leak}", kind=tarfile.SYMTYPE, link=leak_target), b""),
                         (_member(f"letta-0.16.8/{hop}", kind=tarfile.SYMTYPE, link=hop_target), b"")])
    local_index.add(sdist)
    assert _apply(tmp_path, local_index) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert "letta-0.16.8.tar.gz" in line and leak in line and "outside the tree" in line
    assert not (tmp_path / "out").exists() and not list((tmp_path / "cache").glob("pristine/*.git"))


def _repo_with_chained_leak(root: Path, secret: Path, files: dict[str, str]) -> tuple[str, Path]:
    """A git repository of ``files`` plus the two links of :func:`chained_leak` (git archive has no top
    directory), committed: (the leak's name, the repository)."""
    leak, leak_target, hop, hop_target = chained_leak(secret, top=False)
    repo = write_tree(root, files)
    (repo / hop).parent.mkdir(parents=True)
    os.symlink(hop_target, repo / hop)
    os.symlink(leak_target, repo / leak)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "release")
    return leak, repo


def test_chained_links_out_of_a_git_source_are_refused(tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("key\n")
    leak, repo = _repo_with_chained_leak(tmp_path / "letta-repo", secret,
                                         server_files("0.16.8", {"letta/a.py": "a\nb\nc\n"}))
    _git(repo, "tag", "v0.16.8")
    assert _apply_git(tmp_path, repo) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert leak in line and "outside the tree" in line and not (tmp_path / "out").exists()


def test_extract_tree_refuses_chained_links_and_writes_nothing(tmp_path):
    from ketta_build.errors import GitError
    from ketta_build.gitcmd import extract_tree

    secret = tmp_path / "secret.txt"
    secret.write_text("key\n")
    _, repo = _repo_with_chained_leak(tmp_path / "repo", secret, {"README": "r\n"})
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(GitError, match="outside the tree"):
        extract_tree(repo, "HEAD", dest)
    assert list(dest.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["dest", "repo", "secret.txt"]


def test_a_link_and_a_file_written_through_it_are_refused(tmp_path, local_index, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    leak, leak_target, hop, hop_target = chained_leak(outside)
    sdist = _sdist_with(tmp_path / "letta-0.16.8.tar.gz", "0.16.8",
                        [(_member(f"letta-0.16.8/{leak}", kind=tarfile.SYMTYPE, link=leak_target), b""),
                         (_member(f"letta-0.16.8/{hop}", kind=tarfile.SYMTYPE, link=hop_target), b""),
                         (_member(f"letta-0.16.8/{leak}/planted.txt", b"planted\n"), b"planted\n")])
    local_index.add(sdist)
    assert _apply(tmp_path, local_index) == 3
    assert "letta-0.16.8.tar.gz" in _one_error_line(capsys.readouterr().err)
    assert list(outside.iterdir()) == [], "nothing was written through the link"


def test_a_dangling_link_out_of_the_tree_is_refused(tmp_path, local_index, capsys):
    leak, leak_target, hop, hop_target = chained_leak(tmp_path / "does-not-exist-yet")
    sdist = _sdist_with(tmp_path / "letta-0.16.8.tar.gz", "0.16.8",
                        [(_member(f"letta-0.16.8/{leak}", kind=tarfile.SYMTYPE, link=leak_target), b""),
                         (_member(f"letta-0.16.8/{hop}", kind=tarfile.SYMTYPE, link=hop_target), b"")])
    local_index.add(sdist)
    assert _apply(tmp_path, local_index) == 3
    assert "outside the tree" in _one_error_line(capsys.readouterr().err)


def test_links_inside_the_tree_are_kept(tmp_path, local_index, capsys):
    sdist = _sdist_with(tmp_path / "letta-0.16.8.tar.gz", "0.16.8", [], [
        (_member("letta-0.16.8/letta/sub/deeper/up", kind=tarfile.SYMTYPE, link="../.."), b""),
        (_member("letta-0.16.8/letta/via.py", kind=tarfile.SYMTYPE, link="sub/deeper/up/a.py"), b""),
        (_member("letta-0.16.8/docs/readme", kind=tarfile.SYMTYPE, link="../letta/a.py"), b"")])
    local_index.add(sdist)
    assert _apply(tmp_path, local_index) == 0
    out = tmp_path / "out"
    assert os.readlink(out / "letta" / "via.py") == "sub/deeper/up/a.py" and (out / "docs" / "readme").read_text() == "a\nB\nc\n"


# ----------------------------------------------------------------------------- 9. whole archives and pages only


def _published(local_index, path: Path) -> None:
    """Publish ``path`` with its own sha256: the index vouches for exactly these bytes."""
    local_index.add(path)


def test_a_truncated_sdist_whose_hash_matches_is_refused(tmp_path, local_index, capsys):
    whole = _sdist_with(tmp_path / "whole.tar.gz", "0.16.8", [], [
        (_member(f"letta-0.16.8/letta/m{i}.py", f"x = {i}\n".encode() * 200), f"x = {i}\n".encode() * 200) for i in range(40)])
    cut = tmp_path / "cut" / "letta-0.16.8.tar.gz"
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    _published(local_index, cut)
    assert _apply(tmp_path, local_index) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert "letta-0.16.8.tar.gz" in line and "truncated or corrupt" in line
    assert not (tmp_path / "out").exists() and not list((tmp_path / "cache").glob("pristine/*"))


def test_an_sdist_cut_at_a_member_boundary_is_not_extracted_in_part(tmp_path, local_index, capsys):
    raw = io.BytesIO()
    files = server_files("0.16.8", {"letta/a.py": "a\nb\nc\n", **{f"letta/z{i}.py": f"z = {i}\n" for i in range(30)}})
    with tarfile.open(fileobj=raw, mode="w") as tar:
        offsets = []
        for rel, content in sorted(files.items()):
            offsets.append(tar.offset)
            tar.addfile(_member(f"letta-0.16.8/{rel}", content.encode()), io.BytesIO(content.encode()))
    cut = tmp_path / "letta-0.16.8.tar.gz"
    cut.write_bytes(gzip.compress(raw.getvalue()[: offsets[-5]], mtime=0))  # a whole gzip stream of a cut tar
    _published(local_index, cut)
    assert _apply(tmp_path, local_index) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert "end-of-archive marker" in line and "letta-0.16.8.tar.gz" in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize("body", [b"{not json", b'{"files": 3}', b"[]", b'{"files": [{"filename": 1}]}',
                                  b'{"files": [{"filename": "letta-0.16.8.tar.gz"}]}',
                                  b'{"files": [{"filename": "letta-0.16.8.tar.gz", "url": "x", "hashes": []}]}',
                                  b'{"files": [{"filename": "letta-0.16.8.tar.gz", "url": "x", "yanked": [1]}]}',
                                  b"\xff\xfe\x00"])
def test_a_malformed_json_page_is_one_line_naming_the_page(tmp_path, local_index, capsys, body):
    local_index.page_body = body
    assert _apply(tmp_path, local_index) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert f"{local_index.url}/letta/" in line and "JSON" in line


# ----------------------------------------------------------------------------- 5. the version inside the sdist


def _sdist_tree(path: Path, top: str, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for rel, content in sorted(files.items()):
            tar.addfile(_member(f"{top}/{rel}", content.encode()), io.BytesIO(content.encode()))
    return path


@pytest.mark.parametrize("top, files, said", [
    ("evil-9.9", server_files("0.16.8", {"letta/a.py": "a\nb\nc\n"}), "top-level directory is 'evil-9.9', not 'letta-0.16.8'"),
    ("letta-0.16.7", server_files("0.16.8", {"letta/a.py": "a\nb\nc\n"}), "'letta-0.16.7', not 'letta-0.16.8'"),
    ("letta-0.16.8", server_files("0.16.7", {"letta/a.py": "a\nb\nc\n"}), "pyproject.toml says version 0.16.7, not 0.16.8"),
    ("letta-0.16.8", server_files("0.16.8", {"letta/a.py": "a\nb\nc\n", "PKG-INFO": "Metadata-Version: 2.4\nName: letta\n"
                                                                                    "Version: 0.16.7\n\nbody\n"}),
     "PKG-INFO says version 0.16.7, not 0.16.8"),
    ("letta-0.16.8", {**server_files("0.16.8", {"letta/a.py": "a\nb\nc\n"}), "pyproject.toml": "[project]\nname = 'letta'\n"},
     "neither PKG-INFO nor pyproject.toml"),
])
def test_an_sdist_must_be_the_release_it_is_published_as(tmp_path, local_index, capsys, top, files, said):
    local_index.add(_sdist_tree(tmp_path / "letta-0.16.8.tar.gz", top, files))
    assert _apply(tmp_path, local_index) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert said in line and "letta-0.16.8.tar.gz" in line
    assert not (tmp_path / "out").exists() and not list((tmp_path / "cache").glob("pristine/*.git"))


def test_an_sdist_whose_pkg_info_and_top_directory_agree_is_taken(tmp_path, local_index):
    files = server_files("0.16.8", {"letta/a.py": "a\nb\nc\n", "PKG-INFO": "Metadata-Version: 2.4\nName: letta\nVersion: 0.16.8\n"})
    local_index.add(_sdist_tree(tmp_path / "letta-0.16.8.tar.gz", "letta-0.16.8", files))
    assert _apply(tmp_path, local_index) == 0


# ----------------------------------------------------------------------------- pins: releases.toml says which bytes a release is


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _other_sdist(tmp_path: Path) -> Path:
    """Another made-up letta 0.16.8: what a substituting index would serve."""
    (tmp_path / "other").mkdir(exist_ok=True)
    return make_sdist(tmp_path / "other" / "letta-0.16.8.tar.gz", "0.16.8",
                      server_files("0.16.8", {"letta/a.py": "a\nb\nc\n", "letta/evil.py": "evil = True\n"}))


def test_every_supported_release_of_the_series_is_pinned():
    from ketta_build.cache import is_sha256
    from ketta_build.releases import load_releases

    releases = load_releases(Path(__file__).resolve().parents[1] / "patches")
    assert len(releases) >= 11 and all(is_sha256(r.sha256) for r in releases), [str(r) for r in releases if not r.sha256]
    assert len({r.sha256 for r in releases}) == len(releases)


def test_a_release_without_a_pin_is_refused_with_the_line_to_add(tmp_path, local_index, capsys):
    sdist = _sdist(tmp_path)
    local_index.add(sdist)
    pdir = _series(tmp_path)
    releases = pdir / "releases.toml"
    text = releases.read_text()
    pinned = next(ln for ln in text.splitlines() if ln.startswith("sha256") and text.index(ln) > text.index('"0.16.8"'))
    releases.write_text(text.replace(pinned + "\n", ""))
    line_no = text.splitlines().index('version = "0.16.8"')  # its [[release]] is the line before
    rc = main(["apply", "--letta", "0.16.8", "--index-url", local_index.url, "--cache-dir", str(tmp_path / "cache"),
               "--patches", str(pdir), "--out", str(tmp_path / "out")])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"releases.toml:{line_no}:" in line and "letta 0.16.8 has no pin" in line and f'sha256 = "{_sha(sdist)}"' in line
    assert not any(r.startswith("/files/") for r in local_index.requests), "nothing was downloaded"
    assert not (tmp_path / "out").exists()


def test_a_malformed_pin_is_refused(tmp_path, local_index, capsys):
    local_index.add(_sdist(tmp_path))
    pdir = _series(tmp_path)
    pin(pdir, "0.16.8", "not-a-hash")
    rc = main(["apply", "--letta", "0.16.8", "--index-url", local_index.url, "--cache-dir", str(tmp_path / "cache"),
               "--patches", str(pdir), "--out", str(tmp_path / "out")])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "releases.toml:" in line and "'not-a-hash'" in line and "64 lowercase hex" in line


def test_a_substituted_release_is_refused(tmp_path, local_index, capsys):
    real, other = _sdist(tmp_path), _other_sdist(tmp_path)
    local_index.add(other)  # the index serves another 0.16.8, with its own (correct) sha256
    pdir = _series(tmp_path)
    pin_sdists(pdir, real)
    rc = main(["apply", "--letta", "0.16.8", "--index-url", local_index.url, "--cache-dir", str(tmp_path / "cache"),
               "--patches", str(pdir), "--out", str(tmp_path / "out")])
    assert rc == 3
    line = _one_error_line(capsys.readouterr().err)
    assert "letta 0.16.8" in line and _sha(real) in line and _sha(other) in line and "releases.toml" in line
    assert not any(r.startswith("/files/") for r in local_index.requests) and not (tmp_path / "out").exists()


def test_without_a_published_hash_the_download_is_checked_against_the_pin(tmp_path, local_index, capsys):
    real, other = _sdist(tmp_path), _other_sdist(tmp_path)
    local_index.add(other)
    local_index.files[0]["hashes"] = {}
    pdir = _series(tmp_path)
    pin_sdists(pdir, real)
    args = ["apply", "--letta", "0.16.8", "--index-url", local_index.url, "--cache-dir", str(tmp_path / "cache"),
            "--patches", str(pdir), "--out", str(tmp_path / "out")]
    assert main(args) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert f"the pin (releases.toml) says {_sha(real)}, the download is {_sha(other)}" in line and "nothing was cached" in line
    pin_sdists(pdir, other)
    assert main(args) == 0


def test_a_cached_release_is_checked_against_the_pin(tmp_path, local_index, capsys):
    real = _sdist(tmp_path)
    local_index.add(real)
    pdir = _series(tmp_path)
    pin_sdists(pdir, real)
    args = ["apply", "--letta", "0.16.8", "--index-url", local_index.url, "--cache-dir", str(tmp_path / "cache"),
            "--patches", str(pdir), "--out", str(tmp_path / "out"), "--force"]
    assert main(args) == 0
    capsys.readouterr()
    other = _other_sdist(tmp_path)
    pin_sdists(pdir, other)  # the pin now names other bytes than the cache holds for this index
    assert main(args) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert _sha(other) in line and _sha(real) in line
    assert "evil" not in " ".join(p.name for p in (tmp_path / "out" / "letta").iterdir())


def test_the_pin_lets_the_cache_serve_a_release_to_any_index(tmp_path, local_index, capsys):
    import socket

    real = _sdist(tmp_path)
    local_index.add(real)
    pdir = _series(tmp_path)
    pin_sdists(pdir, real)
    base = ["apply", "--letta", "0.16.8", "--cache-dir", str(tmp_path / "cache"), "--patches", str(pdir),
            "--out", str(tmp_path / "out"), "--force"]
    assert main([*base, "--index-url", local_index.url]) == 0
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/simple"
    asked = len(local_index.requests)
    assert main([*base, "--index-url", dead, "--json", str(tmp_path / "r.json")]) == 0
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["upstream"]["sha256"] == _sha(real) and report["upstream"]["location"].startswith(local_index.url.rsplit("/", 1)[0])
    assert len(local_index.requests) == asked


def test_lint_requires_every_release_to_be_pinned(world):
    releases = world.patches / "releases.toml"
    text = releases.read_text()
    first_pin = next(ln for ln in text.splitlines() if ln.startswith("sha256"))
    releases.write_text(text.replace(first_pin + "\n", "", 1))
    rc, _, err = world.run("lint")
    assert rc == 4
    [finding] = [ln for ln in err.splitlines() if "[pin]" in ln]
    assert "releases.toml:1:" in finding and "letta 0.16.7 has no pin" in finding
    assert not [ln for ln in err.splitlines() if "[source]" in ln], "the missing pin is said once"


def test_port_records_the_pin_of_the_sdist_it_used(world):
    sdist = world.publish("0.16.9", m=world_body().replace("line 13\n", "line 13 (upstream)\n"))
    rc, _, err = world.run("port", "--letta", "0.16.9", "--tree", str(world.root / "build" / "0.16.9"))
    assert rc == 0, err
    from ketta_build.releases import load_releases

    assert load_releases(world.patches).find(Version("0.16.9")).sha256 == _sha(sdist)
    assert world.run("lint")[0] == 0
    rc, _, err = world.run("apply", "--letta", "0.16.9", "--out", str(world.root / "a169"))
    assert rc == 0, err


def world_body() -> str:
    from world import BODY

    return BODY


# ----------------------------------------------------------------------------- 6. the cached pristine repository


def _tamper_pristine(repo: Path, work: Path, content: str) -> None:
    """Amend letta/a.py in the cached bare repository and force-move its upstream tag to the new commit."""
    _git(work.parent, "clone", "-q", str(repo), str(work))
    tag = _git(work, "tag", "--list", "upstream/*")
    _git(work, "checkout", "-q", tag)
    (work / "letta" / "a.py").write_text(content)
    _git(work, "commit", "-qam", "tampered")
    _git(work, "tag", "-f", tag)
    _git(work, "push", "-q", "-f", "origin", f"refs/tags/{tag}")


def test_a_tampered_pristine_repository_is_not_used(tmp_path, local_index, capsys):
    local_index.add(_sdist(tmp_path))
    assert _apply(tmp_path, local_index) == 0
    [repo] = (tmp_path / "cache" / "pristine").glob("*.git")
    made = (repo / "HEAD").stat().st_ino, (repo / "packed-refs").read_text()
    capsys.readouterr()
    assert _apply(tmp_path, local_index, "0.16.8", "--force") == 0
    assert "warning" not in capsys.readouterr().err, "an intact repository is used as it is"
    assert ((repo / "HEAD").stat().st_ino, (repo / "packed-refs").read_text()) == made
    _tamper_pristine(repo, tmp_path / "tamper", "a\nb\nc\nbackdoor = True\n")
    capsys.readouterr()
    assert _apply(tmp_path, local_index, "0.16.8", "--force") == 0
    err = capsys.readouterr().err
    assert (tmp_path / "out" / "letta" / "a.py").read_text() == "a\nB\nc\n", "built from the sdist again"
    assert "warning" in err and "pristine" in err and str(repo) in err
    pristine = _git(tmp_path / "out", "show", "upstream/0.16.8:letta/a.py")
    assert "backdoor" not in pristine and "backdoor" not in _git(repo, "show", "upstream/0.16.8:letta/a.py")


def test_a_pristine_object_changed_in_place_is_not_shipped(tmp_path, local_index, capsys):
    import zlib

    local_index.add(_sdist(tmp_path))
    assert _apply(tmp_path, local_index) == 0
    [repo] = (tmp_path / "cache" / "pristine").glob("*.git")
    # the blob of letta/a.py rewritten under its own name: ids, tag, commit and tree all still match
    blob = _git(repo, "rev-parse", "upstream/0.16.8:letta/a.py")
    loose = repo / "objects" / blob[:2] / blob[2:]
    if not loose.exists():  # packed by the clone: unpack everything to loose objects first
        for pack in (repo / "objects" / "pack").glob("*.pack"):
            moved = tmp_path / pack.name
            pack.rename(moved)
            pack.with_suffix(".idx").unlink()
            subprocess.run(["git", "unpack-objects", "-q"], cwd=repo, stdin=moved.open("rb"), check=True)
    body = b"a\nb\nc\nbackdoor = True\n"
    loose.chmod(0o644)
    loose.write_bytes(zlib.compress(b"blob %d\0" % len(body) + body))
    capsys.readouterr()
    assert _apply(tmp_path, local_index, "0.16.8", "--force") == 0
    assert "backdoor" not in (tmp_path / "out" / "letta" / "a.py").read_text()
    assert "pristine" in capsys.readouterr().err


def test_an_upload_time_from_the_index_is_only_taken_as_a_date(world):
    # the date port writes into releases.toml comes from the index: garbage there must not get in
    world.publish("0.16.9", m=world_body().replace("line 13\n", "line 13 (upstream)\n"))
    world.index.files[-1]["upload-time"] = "2026-99-99T00:00:00Z"
    rc, _, err = world.run("port", "--letta", "0.16.9", "--tree", str(world.root / "build" / "0.16.9"))
    assert rc == 0, err
    from ketta_build.releases import load_releases

    assert load_releases(world.patches).find(Version("0.16.9")).date == "unknown"


def test_a_member_under_a_link_of_the_archive_is_refused_even_past_path_max(tmp_path, local_index, capsys):
    # The chain of the adversarial trial: every link, judged by its text, stays inside; tarfile's data
    # filter (Python < 3.11.13) trusts os.path.realpath, which gives up silently at PATH_MAX, so a
    # member written through the last link landed outside. Nothing may be written under a link.
    outside = tmp_path / "outside"
    outside.mkdir()
    top, comp, steps = "letta-0.16.8", "d" * 247, "abcdefghijklmnop"
    members, path = [], ""
    for step in steps:
        members.append((_member(f"{top}/{path}{comp}", kind=tarfile.DIRTYPE), b""))
        members.append((_member(f"{top}/{path}{step}", kind=tarfile.SYMTYPE, link=comp), b""))
        path += comp + "/"
    linkpath = "/".join(steps) + "/" + "l" * 254
    members.append((_member(f"{top}/{linkpath}", kind=tarfile.SYMTYPE, link="../" * len(steps)), b""))
    escape = linkpath + "/" + "../" * (len(steps) + 1) + str(outside).lstrip("/")
    members.append((_member(f"{top}/escape", kind=tarfile.SYMTYPE, link=escape), b""))
    members.append((_member(f"{top}/escape/pwned.txt", data=b"written by a hostile sdist\n"), b"written by a hostile sdist\n"))
    local_index.add(_sdist_with(tmp_path / "letta-0.16.8.tar.gz", "0.16.8", members))
    assert _apply(tmp_path, local_index) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert "letta-0.16.8.tar.gz" in line and "a link in the same archive" in line and len(line) < 600
    assert list(outside.iterdir()) == [] and not (tmp_path / "out").exists()


def test_a_member_under_a_link_inside_the_tree_is_refused_too(tmp_path, local_index, capsys):
    # Even a link that stays inside: what is written through it would change another file of the release.
    members = [(_member("letta-0.16.8/letta/alias", kind=tarfile.SYMTYPE, link="."), b""),
               (_member("letta-0.16.8/letta/alias/a.py", data=b"x = 1\n"), b"x = 1\n")]
    local_index.add(_sdist_with(tmp_path / "letta-0.16.8.tar.gz", "0.16.8", members))
    assert _apply(tmp_path, local_index) == 3
    assert "letta/alias" in _one_error_line(capsys.readouterr().err)


def test_an_archive_that_unpacks_to_more_than_the_bound_is_refused_unwritten(tmp_path, local_index, capsys, monkeypatch):
    from ketta_build import safetree

    monkeypatch.setattr(safetree, "MAX_UNPACKED_BYTES", 1 << 20)  # the bound, made small for the test
    big = b"\0" * (2 << 20)
    local_index.add(_sdist_with(tmp_path / "letta-0.16.8.tar.gz", "0.16.8",
                                [(_member("letta-0.16.8/letta/zeros.bin", data=big), big)]))
    assert _apply(tmp_path, local_index) == 3
    assert "more than the" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
