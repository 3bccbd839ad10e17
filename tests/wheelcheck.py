"""Checking a wheel against the git tree its provenance names: every file of the wheel is the blob at
its path in that tree, or a copy ketta-build or the build backend makes of one (checked against
that blob), or one of the files the caller names as the wheel's own; and every file of the package
in the tree is in the wheel."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

from ketta_build.applying import git_blob_id

PACKAGED_ALEMBIC = "letta/ketta_alembic/"  # ketta-build copies upstream's alembic/ and alembic.ini here


def members(wheel: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def tree_blobs(repo: Path, tree: str) -> dict[str, str]:
    """path -> blob id of every file in git tree ``tree`` (an object of the repository ``repo``)."""
    listing = subprocess.run(["git", "ls-tree", "-r", "--full-tree", tree], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    return {line.split("\t", 1)[1]: line.split()[2] for line in listing}


def check_against_tree(wheel: Path, repo: Path, tree: str, own: set[str], copies: dict[str, str] | None = None) -> int:
    """Raise AssertionError unless every file of ``wheel`` is (a) the blob at the same path in ``tree``,
    (b) under ``letta/ketta_alembic/``, the blob of ``alembic/...`` (``alembic.ini`` for the one at its
    top), (c) in ``copies`` (wheel member -> tree path), the blob of that path, or (d) in ``own``: the
    files the wheel adds of its own, each named by the caller. Every file of ``letta/`` in the tree
    must be in the wheel, and every name in ``own`` too. Returns how many files were compared with a blob."""
    blobs = tree_blobs(repo, tree)
    found = members(wheel)
    compared = 0
    for name, data in found.items():
        if name in own:
            continue
        if name in (copies or {}):
            source = copies[name]
        elif name.startswith(PACKAGED_ALEMBIC):
            rest = name.removeprefix(PACKAGED_ALEMBIC)
            source = "alembic.ini" if rest == "alembic.ini" else "alembic/" + rest
        else:
            source = name
        assert source in blobs, f"{name} is in the wheel, but {source} is not in tree {tree}"
        assert git_blob_id(data) == blobs[source], f"{name} in the wheel is not {source} of tree {tree}"
        compared += 1
    package = {path for path in blobs if path.startswith("letta/")}
    assert package <= set(found), f"files of the tree missing from the wheel: {sorted(package - set(found))[:10]}"
    assert own <= set(found), f"files the wheel should add that it lacks: {sorted(own - set(found))}"
    return compared
