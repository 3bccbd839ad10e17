"""Upgrade pairs: a database made by one side, upgraded by another.

A *side* is a release plus how its database was made: ``ketta`` (the patched release), ``stock``
(the unpatched release) or ``stale`` (a stock release's database migrated by the migration Ketta
builds 1-3 shipped). A release's upgrade cell runs the standard pairs (:meth:`UpgradePairs.pairs_for`)
and the extra ones listed in the upgrade suite's data file (``compat_tests/upgrade-pairs.toml``).
The suite runs them (``compat_tests/upgrade.py``); the matrix reads them to key the cell by every
release it builds. Only data is read: nothing here imports the tests.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import KettaError

FLAVOURS = ("ketta", "stock", "stale")
CHOICES = ("all", "ci")


@dataclass(frozen=True)
class Side:
    version: str
    flavour: str  # ketta | stock | stale

    def __str__(self) -> str:
        return {"ketta": "Ketta", "stock": "stock", "stale": "Ketta build 3"}[self.flavour] + f" {self.version}"

    @property
    def tag(self) -> str:
        return f"{self.flavour}{self.version}"

    @property
    def patched(self) -> bool:
        """Whether this side runs the patched release (a stale side is a stock database, then Ketta's old migration)."""
        return self.flavour != "stock"


@dataclass(frozen=True)
class Pair:
    start: Side
    end: Side
    why: str
    ci: bool = False  # in the default test run (KETTA_UPGRADE_PAIRS=ci); every pair runs in the full matrix

    @property
    def id(self) -> str:
        return f"{self.start.tag}-to-{self.end.tag}"


@dataclass(frozen=True)
class UpgradePairs:
    releases: tuple[str, ...]  # the supported releases, oldest first
    extras: tuple[Pair, ...] = ()

    @classmethod
    def load(cls, releases: tuple[str, ...], data_file: Path | None) -> UpgradePairs:
        return cls(tuple(releases), read_extra_pairs(data_file) if data_file is not None else ())

    def _previous(self, version: str) -> str | None:
        index = self.releases.index(version) if version in self.releases else 0
        return self.releases[index - 1] if index else None

    def pairs_for(self, version: str) -> list[Pair]:
        """The pairs whose end is ``version``: from the previous release, Ketta to Ketta, stock to Ketta and
        the stale stamp of builds 1-3 repaired; Ketta back to stock on the same release; the extras."""
        start = self._previous(version) or version
        return [
            *([Pair(Side(start, "ketta"), Side(version, "ketta"), "consecutive releases")] if start != version else []),
            Pair(Side(start, "stock"), Side(version, "ketta"), "a stock Letta deployment moves to Ketta (and upgrades)"),
            Pair(Side(start, "stale"), Side(version, "ketta"), "the stamp of builds 1-3 repaired, hidden revisions run"),
            Pair(Side(version, "ketta"), Side(version, "stock"), "back to stock Letta (Ketta's revisions removed)", ci=True),
            *(p for p in self.extras if p.end.version == version),
        ]

    def selected(self, version: str, which: str = "all") -> list[Pair]:
        """``all`` pairs of a release's cell, or the ``ci`` ones (the default test run's)."""
        if which not in CHOICES:
            raise KettaError(f"KETTA_UPGRADE_PAIRS must be 'all' or 'ci', not {which!r}")
        pairs = self.pairs_for(version)
        return pairs if which == "all" else [p for p in pairs if p.ci]

    def sides(self, version: str, which: str = "all") -> set[tuple[str, bool]]:
        """(release, patched) of every side the cell of ``version`` starts or ends at."""
        return {(side.version, side.patched) for pair in self.selected(version, which) for side in (pair.start, pair.end)}


def _side(text: object, path: Path, number: int) -> Side:
    parts = text.split() if isinstance(text, str) else []
    if len(parts) != 2 or parts[0] not in FLAVOURS:
        raise KettaError(f"pair {number}: a side is '<flavour> <release>' with flavour {', '.join(FLAVOURS)}, "
                         f"not {text!r}", path=path)
    return Side(parts[1], parts[0])


def read_extra_pairs(path: Path) -> tuple[Pair, ...]:
    """The ``[[pair]]`` entries of ``path`` (start, end, why, ci)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KettaError("the upgrade suite's pairs file is missing", path=path) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KettaError(f"cannot read it: {exc}", path=path) from None
    pairs = []
    for number, raw in enumerate(data.get("pair", []), 1):
        if not isinstance(raw, dict) or not isinstance(raw.get("why"), str) or not isinstance(raw.get("ci", False), bool):
            raise KettaError(f"pair {number} needs start, end, why (text) and an optional ci (true/false)", path=path)
        pairs.append(Pair(_side(raw.get("start"), path, number), _side(raw.get("end"), path, number), raw["why"],
                          raw.get("ci", False)))
    return tuple(pairs)
