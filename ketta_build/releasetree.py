"""The build tree of a release, made by applying the series and remade only when out of date.

``build/<X>`` (patched) or ``build/<X>-upstream`` (pristine) carries a digest of the release's sdist
and of every selected patch in ``.git/ketta-build-digest``; while it matches, the tree and its
apply report are reused as they are. Servers (:mod:`ketta_build.serverenv`) and release wheels
(:mod:`ketta_build.wheel`) both start from here.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from .buildtree import ApplyOptions, ApplyReport, apply_series
from .cache import Cache
from .errors import KettaError
from .releases import load_releases, parse_version
from .report import report_json
from .series import Series, read_series
from .upstream import IndexSource

DIGEST_FILE = "ketta-build-digest"


def _series_digest(release_sha: str, series: Series, version) -> str:
    digest = hashlib.sha256(release_sha.encode())
    for sel in series.explain(version):
        if sel.selected:
            digest.update(sel.entry.name.encode() + b"\0")
            digest.update((series.directory / sel.entry.name).read_bytes())
    return digest.hexdigest()


def _empty_series() -> Series:
    return Series(directory=Path(tempfile.gettempdir()), entries=())


def ensure_tree(
    version: str,
    *,
    patched: bool,
    series_dir: Path,
    build_root: Path,
    cache: Cache,
    index_url: str | None = None,
    progress=lambda _: None,
) -> tuple[Path, dict | None]:
    """The build tree for ``version`` (patched or pristine), re-applied only if out of date."""
    source = IndexSource(cache, index_url, progress=progress, releases=load_releases(series_dir))
    release = source.resolve(parse_version(version))
    series = read_series(series_dir) if patched else _empty_series()
    out = build_root / (str(release.version) if patched else f"{release.version}-upstream")
    digest = _series_digest(release.sha256 or "", series, release.version)
    marker = out / ".git" / DIGEST_FILE
    if marker.is_file() and marker.read_text().strip() == digest:
        state = out / ".git" / "ketta-build.json"
        return out, json.loads(state.read_text()) if state.is_file() else None
    report: ApplyReport = apply_series(
        release, source, series, out, options=ApplyOptions(force=True), cache=cache, progress=progress
    )
    data = report_json(report)
    if report.exit_code != 0:
        failed = ", ".join(r.name for r in report.failed) or ", ".join(report.not_attempted)
        raise KettaError(f"the series does not apply to letta {release.version} (failed: {failed}); see ketta-build apply --letta {release.version}")
    marker.write_text(digest + "\n")
    return out, data
