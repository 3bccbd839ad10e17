"""Which matrix cells a change can affect (``ketta-build matrix --changed [REF]``).

Compared with REF (a git ref of the checkout), the working tree:

* a release is affected when the patches the series selects for it (variant guards included) or
  their files, ``patches/build-number`` or the profile ``patches/upstream.toml``, differ: a change to ``0003-keys-from-database-0.14.diff``
  affects 0.14.0 … 0.16.1 only;
* a suite is affected when a file it depends on (:func:`ketta_build.cellstore.suite_files`) differs;
* everything is affected when the tool itself (``ketta_build/``), ``tox.ini`` or ``pyproject.toml``
  differs.

A cell is affected when its release or its suite is; an ``upgrade`` cell also when a release its
pairs start from is. REF defaults to the merge base with ``main`` (``origin/main`` if there is no
local ``main``), else the series commit of the last matrix report.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .cellstore import digest_files, suite_files
from .errors import KettaError
from .gitcmd import extract_tree, git, git_succeeds
from .profile import PROFILE_FILE
from .series import read_series

WHOLE = ("ketta_build", "tox.ini", "pyproject.toml")


@dataclass
class Affected:
    ref: str
    releases: set[str] = field(default_factory=set)
    suites: set[str] = field(default_factory=set)
    everything: bool = False
    why: list[str] = field(default_factory=list)

    def cell(self, version: str, suite: str, related: set[str] = frozenset()) -> bool:
        return self.everything or version in self.releases or suite in self.suites or bool(related & self.releases)


def default_ref(project: Path, report_dir: Path) -> str:
    """The merge base with main (or origin/main) when HEAD is elsewhere, else the series commit of the
    last matrix report, else HEAD (then only uncommitted changes count)."""
    head = git(project, "rev-parse", "HEAD")
    for branch in ("main", "origin/main"):
        if git_succeeds(project, "rev-parse", "-q", "--verify", branch):
            base = git(project, "merge-base", "HEAD", branch, check=False)
            if base and base != head:
                return base
    try:
        commit = json.loads((report_dir / "matrix.json").read_text())["context"]["series_commit"]
    except (OSError, ValueError, KeyError, TypeError):
        commit = None
    if commit and commit != head and git_succeeds(project, "rev-parse", "-q", "--verify", f"{commit}^{{commit}}"):
        return commit
    return head


def _selected(series_dir: Path, versions: list) -> dict[str, str]:
    """Per release, a digest of the patches selected for it (names and contents) and the build number."""
    series = read_series(series_dir)
    number = (series_dir / "build-number").read_bytes() if (series_dir / "build-number").is_file() else b""
    profile = series_dir / PROFILE_FILE  # the upstream profile changes what every release's wheel is
    number += profile.read_bytes() if profile.is_file() else b""
    out = {}
    for version in versions:
        h = hashlib.sha256(number)
        for entry in series.select(version):
            h.update(entry.name.encode() + b"\0" + (series_dir / entry.name).read_bytes())
        out[str(version)] = h.hexdigest()
    return out


def affected_cells(project: Path, ref: str, versions: list, suites: list[str]) -> Affected:
    """What differs between ``ref`` and the working tree of ``project``, as releases and suites."""
    if not git_succeeds(project, "rev-parse", "-q", "--verify", f"{ref}^{{commit}}"):
        raise KettaError(f"'{ref}' is not a commit of this checkout", path=project)
    result = Affected(ref)
    changed_paths = set(git(project, "diff", "--name-only", ref, "--").splitlines())
    changed_paths |= set(git(project, "ls-files", "--others", "--exclude-standard").splitlines())
    whole = sorted(p for p in changed_paths if p.split("/", 1)[0] in WHOLE)
    if whole:
        result.everything = True
        result.why.append(f"{', '.join(whole[:3])} changed: every cell")
        return result
    work = Path(tempfile.mkdtemp(prefix="ketta-changed-"))
    try:
        extract_tree(project, ref, work, "patches", "compat_tests")
        before = _selected(work / "patches", versions)
        now = _selected(project / "patches", versions)
        result.releases = {v for v in now if before.get(v) != now[v]}
        if result.releases:
            result.why.append(f"the series applied to {', '.join(sorted(result.releases, key=_key))} changed")
        for suite in suites:
            old = digest_files(suite_files(work / "compat_tests", suite), work)
            new = digest_files(suite_files(project / "compat_tests", suite), project)
            if old != new:
                result.suites.add(suite)
        if result.suites:
            result.why.append(f"the files of suite(s) {', '.join(sorted(result.suites))} changed")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _key(version: str):
    from packaging.version import Version

    return Version(version)
