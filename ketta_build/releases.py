"""Which versions of the ``letta`` distribution are Letta *server* releases.

The upstream server repository was archived after 0.16.8; from 0.32 on the
same PyPI name ships Letta Code, a different product.  The list below is the
supported range and is final.
"""

from __future__ import annotations

from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from .errors import UnknownRelease


@dataclass(frozen=True)
class ServerRelease:
    version: Version
    date: str  # release date, ISO 8601

    def __str__(self) -> str:
        return str(self.version)


SUPPORTED_RELEASES: tuple[ServerRelease, ...] = tuple(
    ServerRelease(Version(v), d)
    for v, d in (
        ("0.14.0", "2025-11-13"),
        ("0.15.0", "2025-11-24"),
        ("0.15.1", "2025-11-26"),
        ("0.16.0", "2025-12-15"),
        ("0.16.1", "2025-12-17"),
        ("0.16.2", "2026-01-12"),
        ("0.16.4", "2026-01-29"),
        ("0.16.5", "2026-02-24"),
        ("0.16.6", "2026-03-03"),
        ("0.16.7", "2026-03-31"),
        ("0.16.8", "2026-05-14"),
    )
)

REFERENCE_RELEASE = SUPPORTED_RELEASES[-1]
LAST_SERVER_RELEASE = SUPPORTED_RELEASES[-1].version
#: First version number of the Letta Code product on the same PyPI name.
FIRST_LETTA_CODE = Version("0.32.0")


def parse_version(text: str) -> Version:
    """Parse ``0.16.8`` or ``v0.16.8``; raise UnknownRelease on garbage."""
    raw = text.strip()
    if raw[:1] in ("v", "V"):
        raw = raw[1:]
    try:
        return Version(raw)
    except InvalidVersion:
        raise UnknownRelease(f"'{text}' is not a version number (expected e.g. 0.16.8 or v0.16.8)") from None


def find_supported(version: Version) -> ServerRelease | None:
    for release in SUPPORTED_RELEASES:
        if release.version == version:
            return release
    return None


def nearest_supported(version: Version) -> list[Version]:
    """The supported releases on either side of ``version`` (two from one side at the ends)."""
    below = [r.version for r in SUPPORTED_RELEASES if r.version < version]
    above = [r.version for r in SUPPORTED_RELEASES if r.version > version]
    if below and above:
        return [below[-1], above[0]]
    return below[-2:] if below else above[:2]


def supported_range_text() -> str:
    return f"{SUPPORTED_RELEASES[0].version}–{SUPPORTED_RELEASES[-1].version}"
