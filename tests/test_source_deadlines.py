"""Whole-request deadlines for everything read from an index (issue 29, item 7b): an index that
trickles a byte at a time cannot keep a run going for ever, and a body that ends early is an error,
not a short file (item 9)."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time

import pytest
from conftest import make_diff, make_sdist, pin_sdists, server_files, write_patch, write_series

from ketta_build.cli import main


class Trickle:
    """An index on 127.0.0.1 whose page or sdist is sent slowly (``mode``) or cut short."""

    def __init__(self, sdist, mode: str) -> None:
        self.data = sdist.read_bytes()
        self.name = sdist.name
        self.mode = mode  # page | download | short | fine
        self.stop = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def _slowly(self, data: bytes) -> None:
                for i in range(len(data)):  # a byte every 0.2 s: minutes for the smallest sdist or page
                    if outer.stop.is_set():
                        return
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.2)

            def do_GET(self):
                try:
                    if self.path.rstrip("/") == "/simple/letta":
                        page = json.dumps({"meta": {"api-version": "1.0"}, "name": "letta", "files": [
                            {"filename": outer.name, "url": f"/files/{outer.name}",
                             "hashes": {"sha256": hashlib.sha256(outer.data).hexdigest()}}]}).encode()
                        head = (b"HTTP/1.0 200 OK\r\nContent-Type: application/vnd.pypi.simple.v1+json\r\n"
                                b"Content-Length: %d\r\n" % len(page))
                        if outer.mode == "page":
                            self.wfile.write(head)
                            self._slowly(b"X-Slow: " + b"a" * 10000 + b"\r\n\r\n")
                            return
                        self.wfile.write(head + b"\r\n" + page)
                        return
                    head = b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % len(outer.data)
                    if outer.mode == "download":
                        self.wfile.write(head)
                        self._slowly(outer.data * 1000)
                    elif outer.mode == "short":
                        self.wfile.write(head + outer.data[: len(outer.data) // 3])
                    else:
                        self.wfile.write(head + outer.data)
                except OSError:  # the client gave up
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def trickle(tmp_path):
    made = []

    def start(mode: str) -> Trickle:
        sdist = make_sdist(tmp_path / "letta-0.16.8.tar.gz", "0.16.8", server_files("0.16.8", {"letta/a.py": "a\nb\nc\n"}))
        made.append(Trickle(sdist, mode))
        return made[-1]

    yield start
    for server in made:
        server.close()


def _apply_in_time(tmp_path, url: str, capsys, limit: float = 30.0) -> tuple[int, str, float]:
    pdir = write_series(tmp_path / "patches", "0001-good.diff")
    write_patch(pdir, "0001-good.diff", make_diff("letta/a.py", "a\nb\nc\n", "a\nB\nc\n"))
    pin_sdists(pdir, tmp_path / "letta-0.16.8.tar.gz")
    result = {}

    def run():
        result["rc"] = main(["apply", "--letta", "0.16.8", "--index-url", url, "--cache-dir", str(tmp_path / "cache"),
                             "--patches", str(pdir), "--out", str(tmp_path / "out")])

    start = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(limit)
    took = time.monotonic() - start
    assert not worker.is_alive(), f"apply still running after {limit:.0f} s"
    return result["rc"], capsys.readouterr().err, took


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("ketta-build: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_trickled_download_stops_at_its_deadline(tmp_path, trickle, capsys, monkeypatch):
    monkeypatch.setenv("KETTA_DOWNLOAD_DEADLINE", "1")
    index = trickle("download")
    rc, err, took = _apply_in_time(tmp_path, index.url, capsys)
    assert rc == 3 and took < 15
    line = _one_error_line(err)
    assert "letta-0.16.8.tar.gz" in line and "took longer than 1 s" in line and "KETTA_DOWNLOAD_DEADLINE" in line
    assert not list((tmp_path / "cache").rglob("blobs/sha256/*/*")) and not (tmp_path / "out").exists()


def test_a_trickled_page_stops_at_its_deadline(tmp_path, trickle, capsys, monkeypatch):
    monkeypatch.setenv("KETTA_DOWNLOAD_DEADLINE", "1")
    index = trickle("page")
    rc, err, took = _apply_in_time(tmp_path, index.url, capsys)
    assert rc == 3 and took < 15
    line = _one_error_line(err)
    assert f"{index.url}/letta/" in line and "took longer than 1 s" in line


def test_a_body_cut_short_is_an_error_not_a_short_file(tmp_path, trickle, capsys):
    index = trickle("short")
    rc, err, _ = _apply_in_time(tmp_path, index.url, capsys)
    assert rc == 3
    line = _one_error_line(err)
    size = len(index.data)
    assert f"ended after {size // 3} of {size} bytes" in line and "nothing was cached" in line


def test_a_prompt_index_is_read_whole(tmp_path, trickle, capsys, monkeypatch):
    monkeypatch.setenv("KETTA_DOWNLOAD_DEADLINE", "5")
    rc, err, _ = _apply_in_time(tmp_path, trickle("fine").url, capsys)
    assert rc == 0, err


def test_a_deadline_that_is_not_a_number_is_bad_input(tmp_path, trickle, capsys, monkeypatch):
    monkeypatch.setenv("KETTA_DOWNLOAD_DEADLINE", "soon")
    rc, err, _ = _apply_in_time(tmp_path, trickle("fine").url, capsys)
    assert rc == 2 and "KETTA_DOWNLOAD_DEADLINE='soon'" in _one_error_line(err)



@pytest.mark.parametrize("module,bound,what", [("index", "MAX_PAGE_BYTES", "a page larger than any project page"),
                                               ("sources", "MAX_DOWNLOAD_BYTES", "a download larger than any release")])
def test_what_is_larger_than_its_bound_is_refused_and_not_kept(tmp_path, trickle, capsys, monkeypatch, module, bound, what):
    import importlib

    monkeypatch.setattr(importlib.import_module(f"ketta_build.{module}"), bound, 64)  # the bound, made small
    rc, err, _ = _apply_in_time(tmp_path, trickle("fine").url, capsys)
    assert rc == 3, what
    assert "larger than 64 bytes" in _one_error_line(err)
    assert not list((tmp_path / "cache").rglob("blobs/.download-*")) and not list((tmp_path / "cache").rglob("blobs/sha256/*/*"))
