"""The build tree of a release, made by applying the series and remade only when out of date.

``build/servers/<X>`` (patched) or ``build/servers/<X>-upstream`` (pristine) carries a digest of the
release's sdist and of every selected patch in ``.git/ketta-build-digest``; while it matches (and
nobody committed or edited there), the tree and its apply report are reused as they are. Servers
(:mod:`ketta_build.serverenv`: the matrix, the suites, ``serve``) start from here. These trees are
the tool's own: a maintainer's build tree (``build/<X>``, made by ``apply``) is never read or
re-applied by them, so its unexported work is neither lost nor tested as if it were the series.

Release wheels (:mod:`ketta_build.wheel`) never use such a tree: :func:`fresh_tree` applies the
series to the pristine release in a directory of the caller's own, and :func:`check_exported`
tells whether a maintainer's build tree holds exactly that (no commits or edits the series lacks).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .buildtree import (PORT_STATE_FILE, ApplyOptions, ApplyReport, apply_series, dirty_summary, read_tree_state,
                        uncommitted)
from .cache import Cache
from .errors import BuildTreeError, KettaError
from .gitcmd import git, git_bytes
from .header import parse_commit
from .releases import load_releases, parse_version
from .report import report_json
from .series import Series, read_series
from .sources import IndexSource

DIGEST_FILE = "ketta-build-digest"


def _series_digest(release_sha: str, series: Series, version) -> str:
    digest = hashlib.sha256(release_sha.encode())
    for sel in series.explain(version):
        if sel.selected:
            digest.update(sel.entry.name.encode() + b"\0")
            digest.update((series.directory / sel.entry.name).read_bytes())
    return digest.hexdigest()


def server_tree(build_root: Path, version, patched: bool = True) -> Path:
    """Where the servers' tree of ``version`` lives under ``build_root`` (the tool's own, never a work tree)."""
    return build_root / "servers" / (str(version) if patched else f"{version}-upstream")


def _unchanged_since_applied(tree: Path) -> bool:
    """Whether ``tree`` is still what its last apply made: HEAD as recorded, nothing edited."""
    try:
        head = git(tree, "rev-parse", "HEAD").strip()
        return read_tree_state(tree).head == head and not uncommitted(tree)
    except KettaError:
        return False


def _empty_series(series_dir: Path) -> Series:
    """No patch, in the series' directory: the pristine tree is still of the series' upstream (its profile,
    its releases)."""
    return Series(directory=series_dir, entries=())


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
    series = read_series(series_dir) if patched else _empty_series(series_dir)
    out = server_tree(build_root, release.version, patched)
    digest = _series_digest(release.sha256 or "", series, release.version)
    marker = out / ".git" / DIGEST_FILE
    if marker.is_file() and marker.read_text().strip() == digest and _unchanged_since_applied(out):
        state = out / ".git" / "ketta-build.json"
        return out, json.loads(state.read_text()) if state.is_file() else None
    out.parent.mkdir(parents=True, exist_ok=True)
    report: ApplyReport = apply_series(
        release, source, series, out, options=ApplyOptions(force=True), cache=cache, progress=progress
    )
    data = _applied(report)
    marker.write_text(digest + "\n")
    return out, data


def _applied(report: ApplyReport) -> dict:
    """The apply report as JSON, if every patch applied."""
    if report.exit_code != 0:
        version = report.release.version
        failed = ", ".join(r.name for r in report.failed) or ", ".join(report.not_attempted)
        profile = load_releases(report.series_dir).profile if (report.series_dir / "releases.toml").is_file() \
            else load_releases().profile
        raise KettaError(f"the series does not apply to {profile.name} {version} (failed: {failed}); see ketta-build "
                         f"apply --release {version}")
    return report_json(report)


def fresh_tree(
    version: str,
    *,
    series_dir: Path,
    dest: Path,
    cache: Cache,
    index_url: str | None = None,
    progress=lambda _: None,
) -> tuple[Path, dict]:
    """``dest`` (a directory that does not exist yet) made by applying the series in ``series_dir`` as
    it is on disk to the pristine release ``version``, and its apply report: a tree of the caller's
    own, never anyone's work tree. Applying is reproducible, so its commits are the same every time."""
    if dest.exists():
        raise KettaError("a fresh tree needs a directory that does not exist yet", path=dest)
    source = IndexSource(cache, index_url, progress=progress, releases=load_releases(series_dir))
    release = source.resolve(parse_version(version))
    report = apply_series(release, source, read_series(series_dir), dest, cache=cache, progress=progress)
    return dest, _applied(report)


def _patch_ids(tree: Path, revisions: str) -> dict[str, str]:
    """``git patch-id --stable`` of each commit in ``revisions`` that changes something: commit -> patch id."""
    log = git_bytes(tree, "log", "-p", "--pretty=medium", "--no-color", "--no-ext-diff", "--no-renames", revisions)
    pairs = (line.split() for line in git_bytes(tree, "patch-id", "--stable", input=log).decode().splitlines())
    return {commit: patch_id for patch_id, commit in pairs}


def _listed(items: list[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_exported(tree: Path, series_tree: Path, series_report: dict) -> str:
    """Refuse (:class:`BuildTreeError`, exit 5) unless the build tree ``tree`` holds exactly what
    ``series_tree`` (the series applied afresh to the same release by :func:`fresh_tree`, whose apply
    report is ``series_report``) holds. Returns the git tree hash both hold.

    The refusal names what differs: uncommitted edits (the files); commits ``patches/`` does not have
    (short hash and subject: commits neither made from a patch file as it is now, by apply, export or
    port, nor the same change as one of the series' commits); patches whose commit was made from an
    older version of the file; patches of the series no commit of the tree carries."""
    state = read_tree_state(tree)  # refuses a directory that is not a build tree
    version = state.version
    if (tree / ".git" / PORT_STATE_FILE).is_file():
        raise BuildTreeError(f"a port to release {version} is in progress in this tree; finish it (ketta-build port "
                             "--continue) or build from patches/ without --tree", path=tree)
    changed = uncommitted(tree)
    if changed:
        raise BuildTreeError(f"the tree holds uncommitted edits in {dirty_summary(changed)}, which patches/ does not "
                             f"have: commit and export them (ketta-build export --tree {tree}) or drop them; or build "
                             "from patches/ without --tree", path=tree)
    mine, wanted = git(tree, "rev-parse", "HEAD^{tree}"), git(series_tree, "rev-parse", "HEAD^{tree}")
    if mine == wanted:
        return mine
    base = f"upstream/{version}"
    ids = _patch_ids(tree, f"{base}..HEAD")
    series_ids = set(_patch_ids(series_tree, f"{base}..HEAD").values())
    current = {p["name"]: p.get("sha256") for p in series_report.get("patches", []) if p.get("commit")}
    made = {s.commit: (name, s.sha256) for name, s in state.synced.items()}
    unexported: list[str] = []
    behind: list[str] = []
    carried: set[str] = set()
    for commit in git(tree, "rev-list", "--reverse", f"{base}..HEAD").split():
        message = parse_commit(git(tree, "show", "-s", "--format=%B", commit))
        if message.patch:
            carried.add(message.patch)
        if commit in made:
            name, sha = made[commit]
            if current.get(name) != sha:
                behind.append(name)  # the file changed (or left the series) since this commit was made from it
            continue
        if commit in ids and ids[commit] not in series_ids:
            unexported.append(git(tree, "show", "-s", "--format=%h %s", "--abbrev=10", commit))
    absent = [name for name in current if name not in carried]
    problems = []
    if unexported:
        problems.append(f"the tree holds commits patches/ does not have ({_listed(unexported)}): export them first "
                        f"(ketta-build export --tree {tree})")
    if behind:
        problems.append(f"the tree was made from an older patches/ ({_listed(behind)} changed since): make it again "
                        f"(ketta-build apply --release {version} --out {tree} --force)")
    if absent:
        problems.append(f"no commit of the tree carries {_listed(absent)} of patches/")
    if not problems:
        problems.append(f"its files (git tree {mine[:12]}) are not what patches/ gives (git tree {wanted[:12]}): export "
                        f"it (ketta-build export --tree {tree}) or apply again")
    raise BuildTreeError("; ".join(problems) + "; or build from patches/ without --tree", path=tree)
