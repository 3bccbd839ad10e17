"""``ketta-build cache``: each store's entries and size, and prune by age or size, least recently used
first, never an entry another process holds. A synthetic cache directory; nothing is fetched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ketta_build.cli import main

DAY = 86400
SHA_OLD = "a" * 64
SHA_LOCKED = "b" * 64
SHA_NEW = "c" * 64
SHA_REPO = "d" * 64


def _age(path: Path, days: float) -> None:
    when = time.time() - days * DAY
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.utime(p, (when, when), follow_symlinks=False)


def _file(path: Path, size: int, days: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    _age(path, days)
    return path


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    root = tmp_path / "cache"
    _file(root / "blobs" / "sha256" / "aa" / SHA_OLD, 4000, 40)
    _file(root / "blobs" / "sha256" / "bb" / SHA_LOCKED, 3000, 50)
    _file(root / "blobs" / "sha256" / "cc" / SHA_NEW, 2000, 1)
    _file(root / "blobs" / ".download-x", 100, 90)  # a download in progress: not an entry
    _file(root / "releases" / "0123456789abcdef" / "letta-0.16.8.json", 100, 2)
    repo = root / "pristine" / f"{SHA_REPO}.git"
    _file(repo / "HEAD", 30, 35)
    _file(repo / "objects" / "pack" / "p.pack", 5000, 35)
    _file(root / "pristine" / f"{SHA_REPO}.json", 70, 35)
    _age(repo, 35)
    _file(root / "envs" / "e1" / "pyvenv.cfg", 1000, 20)
    _age(root / "envs" / "e1", 20)
    _file(root / "cells" / "ab" / ("ab" + "1" * 62) / "cell.json", 500, 60)
    _age(root / "cells" / "ab", 60)
    _age(root / "cells" / "ab" / ("ab" + "1" * 62), 60)
    _file(root / "stock-runs" / "cd" / ("cd" + "2" * 62) / "run.json", 600, 10)
    _age(root / "stock-runs" / "cd" / ("cd" + "2" * 62), 10)
    _file(root / "ports" / "k" / "t.json", 50, 400)
    return root


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cache_info_shows_each_store_with_entries_and_size(cache_dir, capsys):
    rc, out, err = _run(capsys, "cache", "--cache-dir", str(cache_dir), "--json", "-")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["schema"] == "ketta-build/cache/1" and doc["prune"] is None
    stores = {s["name"]: s for s in doc["stores"]}
    assert {"blobs", "releases", "pristine", "envs", "cells", "stock-runs", "fills", "ports", "locks"} <= set(stores)
    assert (stores["blobs"]["entries"], stores["blobs"]["bytes"]) == (3, 9000)
    assert (stores["pristine"]["entries"], stores["pristine"]["bytes"]) == (1, 5100)  # the repository and its record
    assert stores["envs"]["entries"] == 1 and stores["cells"]["entries"] == 1 and stores["fills"]["entries"] == 0
    assert doc["total_bytes"] == sum(s["bytes"] for s in doc["stores"])
    assert "blobs" in err and "pristine" in err  # the table goes to stderr beside --json -
    rc, out, _ = _run(capsys, "cache", "info", "--cache-dir", str(cache_dir))
    assert rc == 0 and "blobs" in out and "total" in out


def _hold(cache_dir: Path, name: str) -> subprocess.Popen:
    """Another process holding the cache lock ``name`` until its stdin closes."""
    code = ("import sys; from pathlib import Path; from ketta_build.cache import Cache\n"
            f"with Cache(Path({str(cache_dir)!r})).lock({name!r}):\n"
            "    print('held', flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_prune_older_than_removes_the_old_keeps_what_is_in_use_and_dry_run_removes_nothing(cache_dir, capsys):
    before = sorted(p for p in cache_dir.rglob("*"))
    holder = _hold(cache_dir, f"blob-{SHA_LOCKED}")
    try:
        rc, out, err = _run(capsys, "cache", "prune", "--older-than", "30", "--dry-run", "--cache-dir", str(cache_dir),
                            "--json", "-")
        assert rc == 0, err
        doc = json.loads(out)["prune"]
        assert doc["dry_run"] is True
        assert sorted(Path(e["path"]).name for e in doc["removed"]) == sorted(
            [SHA_OLD, f"{SHA_REPO}.git", "ab" + "1" * 62])
        assert [Path(e["path"]).name for e in doc["in_use"]] == [SHA_LOCKED]
        assert sorted(p for p in cache_dir.rglob("*") if "locks" not in p.parts) == \
            [p for p in before if "locks" not in p.parts]
        rc, out, err = _run(capsys, "cache", "prune", "--older-than", "30", "--cache-dir", str(cache_dir), "--json", "-")
        assert rc == 0, err
        assert f"kept {cache_dir / 'blobs' / 'sha256' / 'bb' / SHA_LOCKED}: in use" in err
    finally:
        holder.stdin.close()
        holder.wait()
    assert not (cache_dir / "blobs" / "sha256" / "aa" / SHA_OLD).exists()
    assert (cache_dir / "blobs" / "sha256" / "bb" / SHA_LOCKED).exists()
    assert not (cache_dir / "pristine" / f"{SHA_REPO}.git").exists()
    assert not (cache_dir / "pristine" / f"{SHA_REPO}.json").exists()
    assert not (cache_dir / "cells" / "ab" / ("ab" + "1" * 62)).exists()
    for kept in (cache_dir / "blobs" / "sha256" / "cc" / SHA_NEW, cache_dir / "envs" / "e1",
                 cache_dir / "ports" / "k" / "t.json", cache_dir / "blobs" / ".download-x"):
        assert kept.exists(), kept
    assert not list(cache_dir.rglob(".pruned-*"))


def test_prune_max_size_removes_the_least_recently_used_first(cache_dir, capsys):
    # prunable: 9000 blobs + 100 releases + 5100 pristine + 1000 envs + 500 cells + 600 stock-runs = 16300
    rc, out, err = _run(capsys, "cache", "prune", "--max-size", "9K", "--cache-dir", str(cache_dir), "--json", "-")
    assert rc == 0, err
    removed = [Path(e["path"]).name for e in json.loads(out)["prune"]["removed"]]
    # oldest first: cells (60 d), the 50-day blob, the 40-day blob: 16300 - 7500 = 8800 <= 9216
    assert removed == ["ab" + "1" * 62, SHA_LOCKED, SHA_OLD]
    assert (cache_dir / "pristine" / f"{SHA_REPO}.git").exists()


@pytest.mark.parametrize("argv,message", [
    (["cache", "info", "--older-than", "3"], "--older-than only go with cache prune"),
    (["cache", "prune"], "--older-than DAYS and/or --max-size SIZE"),
    (["cache", "prune", "--max-size", "lots"], "--max-size 'lots'"),
    (["cache", "prune", "--older-than", "-1"], "--older-than must be 0 or more"),
])
def test_cache_usage_errors_are_one_line_and_exit_2(cache_dir, capsys, argv, message):
    rc, out, err = _run(capsys, *argv, "--cache-dir", str(cache_dir))
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
