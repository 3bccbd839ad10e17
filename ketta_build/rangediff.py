"""``ketta-build range-diff --letta X OLD NEW``: what changed between two versions of the series, patch by patch.

OLD and NEW are each a git ref of this repository (its ``patches/`` at that commit) or a patch
directory. Both are applied to release X in throw-away build trees; ``git range-diff`` then pairs
the commits (one per patch) and shows, per patch, whether it is unchanged (``=``), changed (``!``,
with the interdiff), new (``>``) or gone (``<``). It is the review of a refresh or a port.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import Version

from .buildtree import ApplyOptions, apply_series
from .gitcmd import git
from .cache import Cache
from .errors import KettaError
from .series import read_series
from .upstream import IndexSource

_PAIR = re.compile(r"^\s*(-|\d+):\s+(-+|[0-9a-f]+)\s+([<>=!])\s+(-|\d+):\s+(-+|[0-9a-f]+)\s+(.*)$")
_MEANING = {"=": "unchanged", "!": "changed", "<": "removed", ">": "added"}


@dataclass
class RangeDiff:
    letta: str
    old: str
    new: str
    text: str
    pairs: list[dict] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(p["status"] != "unchanged" for p in self.pairs)


def _series_dir(spec: str, repo: Path, work: Path, label: str) -> Path:
    """A patch directory: ``spec`` itself, or ``patches/`` of git ref ``spec`` in ``repo``."""
    path = Path(spec)
    if path.is_dir():
        return path
    probe = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "-q", f"{spec}^{{commit}}"],
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise KettaError(f"'{spec}' is neither a patch directory nor a git ref of {repo}")
    target = work / label
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", spec, "patches"], capture_output=True,
                             check=False)
    if archive.returncode != 0:
        raise KettaError(f"{spec} has no patches/ directory in {repo}")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target / "patches"


def range_diff(version: Version, old: str, new: str, *, repo: Path = Path("."), cache: Cache | None = None,
               index_url: str | None = None, progress=lambda _: None) -> RangeDiff:
    cache = cache or Cache()
    work = Path(tempfile.mkdtemp(prefix="ketta-range-diff-"))
    try:
        source = IndexSource(cache, index_url, progress=progress, allow_unsupported=True)
        release = source.resolve(version)
        trees = {}
        for label, spec in (("old", old), ("new", new)):
            series = read_series(_series_dir(spec, repo.absolute(), work, label))
            progress(f"applying {label} ({spec}) to letta {version}")
            report = apply_series(release, source, series, work / f"tree-{label}", options=ApplyOptions(), cache=cache,
                                  base_source=source)
            if report.exit_code:
                failed = ", ".join(r.name for r in report.failed) or ", ".join(report.not_attempted)
                raise KettaError(f"{spec}: the series does not apply to letta {version} ({failed}); see ketta-build apply")
            trees[label] = work / f"tree-{label}"
        git(trees["new"], "fetch", "-q", str(trees["old"]), "+HEAD:refs/ketta/old")
        env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1"}
        proc = subprocess.run(
            ["git", "-c", "color.ui=false", "range-diff", "--no-color", "--creation-factor=95", f"upstream/{version}..refs/ketta/old",
             f"upstream/{version}..HEAD"], cwd=trees["new"], capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise KettaError(f"git range-diff failed: {proc.stderr.strip()[-300:]}")
        result = RangeDiff(str(version), old, new, proc.stdout)
        for line in proc.stdout.splitlines():
            m = _PAIR.match(line)
            if m:
                result.pairs.append({"old": None if m.group(1) == "-" else int(m.group(1)),
                                     "new": None if m.group(4) == "-" else int(m.group(4)),
                                     "status": _MEANING[m.group(3)], "subject": m.group(6)})
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
