"""Deployable artifacts from a build tree: the ``X+ketta.N`` wheel and the release's dependency constraints.

The wheel is built from ``git archive HEAD`` of the build tree (never from the work tree, so an
edit someone left there cannot leak into a deployable wheel), with the version rewritten to a
PEP 440 local version and ``SOURCE_DATE_EPOCH`` fixed, so the same tree gives the same bytes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .buildtree import git
from .errors import BuildTreeError, KettaError
from .upstream import sha256_file

BUILD_NUMBER_FILE = "build-number"
_VERSION_LINE = re.compile(r'^version\s*=\s*"([^"]+)"\s*$', re.MULTILINE)


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
    from .upstream import uv_environment

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


def read_build_number(series_dir: Path) -> int:
    """``patches/build-number``: one integer, bumped whenever the series changes (0 if absent)."""
    path = series_dir / BUILD_NUMBER_FILE
    if not path.exists():
        return 0
    text = path.read_text().strip()
    if not text.isdigit():
        raise KettaError(f"expected one non-negative integer, found {text!r}", path=path, line=1)
    return int(text)


def local_version(version: str, build_number: int | None) -> str:
    return version if build_number is None else f"{version}+ketta.{build_number}"


@dataclass(frozen=True)
class BuiltWheel:
    path: Path
    version: str
    sha256: str


def _export_head(tree: Path, dest: Path) -> None:
    if not (tree / ".git").exists():
        raise BuildTreeError("not a build tree (no .git); run ketta-build apply first", path=tree)
    archive = subprocess.run(["git", "-C", str(tree), "archive", "--format=tar", "HEAD"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)


def _set_version(pyproject: Path, version: str) -> None:
    text = pyproject.read_text()
    new, count = _VERSION_LINE.subn(f'version = "{version}"', text, count=1)
    if count != 1:
        raise KettaError("no literal `version = \"...\"` line to rewrite", path=pyproject)
    pyproject.write_text(new)


def build_wheel(tree: Path, dist_dir: Path, build_number: int | None) -> BuiltWheel:
    """Build the wheel of ``tree``'s HEAD into ``dist_dir`` (atomically: a temp dir, then a rename)."""
    with tempfile.TemporaryDirectory(prefix="ketta-wheel-") as tmp_name:
        tmp = Path(tmp_name)
        src = tmp / "src"
        src.mkdir()
        _export_head(tree, src)
        upstream = _VERSION_LINE.search((src / "pyproject.toml").read_text())
        if upstream is None:
            raise KettaError("no literal version in pyproject.toml", path=tree / "pyproject.toml")
        version = local_version(upstream.group(1), build_number)
        _set_version(src / "pyproject.toml", version)
        epoch = git(tree, "log", "-1", "--format=%ct")
        out = tmp / "dist"
        run_uv(["build", "--wheel", "--python", sys.executable, "--out-dir", str(out), str(src)], env={"SOURCE_DATE_EPOCH": epoch})
        wheels = sorted(out.glob("*.whl"))
        if len(wheels) != 1:
            raise KettaError(f"expected one wheel from the build, found {len(wheels)}", path=out)
        dist_dir.mkdir(parents=True, exist_ok=True)
        final = dist_dir / wheels[0].name
        os.replace(wheels[0], final)
    return BuiltWheel(final, version, sha256_file(final))


SERVER_EXTRAS = ("server", "postgres", "sqlite")


def export_constraints(tree: Path, dest: Path, extras: tuple[str, ...] = SERVER_EXTRAS) -> Path:
    """The release's own lock as pip constraints for ``extras`` (default: a server's)."""
    if not (tree / "uv.lock").is_file():
        raise KettaError("the release has no uv.lock; cannot pin its dependencies", path=tree / "uv.lock")
    tmp = dest.with_name(dest.name + ".tmp")
    extra_args = [arg for extra in extras for arg in ("--extra", extra)]
    run_uv(["export", "--frozen", "--no-hashes", "--no-emit-project", *extra_args, "-o", str(tmp)], cwd=tree)
    os.replace(tmp, dest)
    return dest
