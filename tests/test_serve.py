"""``ketta-build serve`` (network): a patched server on a persistent embedded PostgreSQL; Ctrl-C
stops everything; a second serve finds the providers of the first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ketta_build.letta.postgres import free_port

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.network


def _serve(data: Path, port: int, state: Path) -> subprocess.Popen:
    state.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LETTA_", "KETTA_"))}
    return subprocess.Popen([sys.executable, "-m", "ketta_build", "serve", "--letta", "0.16.8", "--data-dir", str(data),
                             "--port", str(port), "--json", str(state), "--patches", str(REPO / "patches"),
                             "--build-root", str(REPO / "build")],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _ready(proc: subprocess.Popen, state: Path) -> dict:
    deadline = time.monotonic() + 900
    while not state.is_file():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "serve not ready in 15 minutes"
        time.sleep(0.5)
    return json.loads(state.read_text())


def _call(method: str, url: str, body: dict | None = None):
    req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def _stopped(proc: subprocess.Popen, info: dict, data: Path, sig: int) -> str:
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.terminate()  # serve stops its server and PostgreSQL on SIGTERM as well
        out, _ = proc.communicate(timeout=120)
        pytest.fail(f"serve did not stop on signal {sig}:\n{out}")
    assert proc.returncode == 0, out
    with pytest.raises(OSError):
        urllib.request.urlopen(info["url"] + "/v1/health/", timeout=2)
    with pytest.raises(ProcessLookupError):
        os.kill(info["pid"], 0)
    assert not (data / "pg" / "data" / "postmaster.pid").exists(), "PostgreSQL still running"
    return out


def test_serve_persists_and_stops_everything(tmp_path):
    data, state, port = tmp_path / "data", tmp_path / "serve.json", free_port()
    first, info, out = _serve(data, port, state), None, ""
    try:
        info = _ready(first, state)
        assert info["url"] == f"http://127.0.0.1:{port}"
        assert info["wheel"].startswith("letta-0.16.8+ketta.") and info["timings"]["migration"] > 0
        assert Path(info["key_file"]).is_file() and str(data) in info["key_file"]
        _call("POST", info["url"] + "/v1/providers/", {"name": "Kept", "provider_type": "openai",
                                                        "api_key": "sk-kept", "base_url": "http://127.0.0.1:9/v1"})
    finally:
        if info is None:
            first.kill()
        elif first.poll() is None:
            out = _stopped(first, info, data, signal.SIGINT)
    assert "ready at" in out and "encryption key:" in out and "stopping the server and PostgreSQL" in out

    second, info = _serve(data, port, state), None
    try:
        info = _ready(second, state)
        names = [p["name"] for p in _call("GET", info["url"] + "/v1/providers/")]
        assert names == ["Kept"]
        assert info["timings"]["migration"] < 1, "a database at head is not migrated again"
    finally:
        if info is None:
            second.kill()
        elif second.poll() is None:
            _stopped(second, info, data, signal.SIGTERM)
