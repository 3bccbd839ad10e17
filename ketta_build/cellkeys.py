"""The input key of each matrix cell: what its result depends on (see :mod:`ketta_build.cellstore`).

A cell's key covers the wheel under test and its constraints, the suite's files (and the suite
registry), tox.ini, the suite variables the registry says its result depends on (``key_env``), and
for a suite with upgrade ``pairs`` the wheels or sdists of every release its pairs start from.
Each release's wheel is made (or found) once per run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .cache import Cache
from .cellstore import cell_key, digest_files, suite_files
from . import suiteenv
from .releases import load_releases, parse_version
from .sources import IndexSource
from .suites import REGISTRY_FILE, SuiteRegistry, project_suites


class CellKeys:
    """The input key of each cell, computing each release's wheel once."""

    def __init__(self, project: Path, cache: Cache, patched: bool, build_root: Path, index_url: str | None,
                 env: dict[str, str], series_dir: Path | None = None, registry: SuiteRegistry | None = None) -> None:
        self.project, self.cache, self.patched = project.absolute(), cache, patched
        self.series_dir = (series_dir or self.project / "patches").absolute()
        self.build_root, self.index_url, self.env = build_root, index_url, env
        self.registry = registry or project_suites(self.project)
        self._releases: dict[tuple[str, bool], dict] = {}
        self._suites: dict[str, str] = {}
        self.tox = hashlib.sha256((self.project / "tox.ini").read_bytes()).hexdigest()

    def release(self, version: str, patched: bool) -> dict:
        if (version, patched) not in self._releases:
            if patched or not self.patched:  # the wheel under test (a --no-patches run tests the unpatched one)
                plugin = load_releases(self.series_dir).profile.plugin  # a registry's suites are a plugin's
                found = plugin.cell_release(version, patched=patched, series_dir=self.series_dir,
                                            build_root=self.build_root, cache=self.cache, index_url=self.index_url)
            else:  # a stock start side of an upgrade pair: made from the sdist alone
                source = IndexSource(self.cache, self.index_url, allow_unsupported=True,
                                     releases=load_releases(self.series_dir))
                found = {"sdist": source.resolve(parse_version(version)).sha256}
            self._releases[version, patched] = found
        return self._releases[version, patched]

    def related(self, version: str, suite: str) -> set[str]:
        """The other releases a cell builds: for a suite with upgrade pairs, those its pairs start from."""
        return {v for v, _ in self._sides(version, suite)} - {version}

    def _sides(self, version: str, suite: str) -> set[tuple[str, bool]]:
        pairs_file = self.registry.get(suite).pairs
        if pairs_file is None:
            return set()
        supported = load_releases(self.series_dir)
        return supported.profile.plugin.pair_sides(version, tuple(str(v) for v in supported.versions),
                                                   self.registry.tests / pairs_file,
                                                   suiteenv.get("KETTA_UPGRADE_PAIRS", self.env) or "all")

    def key(self, version: str, suite: str) -> str:
        definition = self.registry.get(suite)
        if suite not in self._suites:
            files = [*suite_files(self.registry.tests, suite), self.registry.tests / REGISTRY_FILE]
            self._suites[suite] = digest_files(sorted(set(files)), self.project)
        inputs = {"version": version, "suite": suite, "patched": self.patched, "release": self.release(version, self.patched),
                  "suite_files": self._suites[suite], "tox": self.tox}
        if definition.key_env:
            inputs["env"] = {name: suiteenv.get(name, self.env) for name in definition.key_env}
        if definition.pairs:
            inputs["sides"] = {f"{v}-{'ketta' if p else 'stock'}": self.release(v, p)
                               for v, p in sorted(self._sides(version, suite))}
        return cell_key(inputs)
