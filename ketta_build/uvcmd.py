"""Running uv: the one installed with ketta-build (else the one on PATH), with the user's pip/uv index
configuration and without Python downloads. Below :mod:`ketta_build.wheel` and
:mod:`ketta_build.wheelfinish`, which both build with it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .errors import KettaError
from .index import uv_environment


def uv_binary() -> str:
    """The uv executable: the one installed with ketta-build, else the one on PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if not found:
            raise KettaError("uv is needed to build wheels and server environments; pip install uv") from None
        return found


def run_uv(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run uv with the user's pip/uv index configuration and without Python downloads."""
    proc = subprocess.run(
        [uv_binary(), *args],
        cwd=cwd,
        env={**os.environ, **uv_environment(), **(env or {})},
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise KettaError(f"uv {args[0]} failed in {cwd or '.'}: {last}")
    return proc.stdout
