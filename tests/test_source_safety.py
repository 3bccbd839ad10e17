"""An upstream source can never run code, reach outside the tree, or change what we ship (issue 29,
the source half): what an index page, an sdist, a git source or the cache holds is judged before
it is used, and a refusal is one line (exit 3) that leaves nothing behind."""

from __future__ import annotations

import hashlib
from pathlib import Path

from conftest import make_diff, make_sdist, server_files, write_patch, write_series

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


def _apply(tmp_path: Path, index_url: str, version: str = "0.16.8", *extra: str) -> int:
    return main(["apply", "--letta", version, "--index-url", index_url, "--cache-dir", str(tmp_path / "cache"),
                 "--patches", str(_series(tmp_path)), "--out", str(tmp_path / "out"), *extra])


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
    assert _apply(tmp_path, local_index.url) == 3
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
    assert _apply(tmp_path, local_index.url) == 3
    line = _one_error_line(capsys.readouterr().err)
    assert "file:" in line and "http" in line


def test_the_cache_takes_no_path_for_a_hash():
    import pytest

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
    assert _apply(tmp_path, local_index.url) == 0
    import json

    [record] = (tmp_path / "cache" / "releases").rglob("letta-0.16.8.json")
    data = json.loads(record.read_text())
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    data["sha256"] = str(victim)
    record.write_text(json.dumps(data))
    for other in (tmp_path / "cache" / "releases").rglob("*.json"):
        if other != record:
            other.write_text(json.dumps({**json.loads(other.read_text()), "sha256": str(victim)}))
    assert _apply(tmp_path, local_index.url, "0.16.8", "--force") == 0
    assert victim.read_text() == "precious\n"
