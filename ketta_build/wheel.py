"""Deployable artifacts from a build tree: the ``X+LABEL.N`` wheel (and a plugin's constraints).

The wheel is built from ``git archive HEAD`` of a build tree (never from the work tree, so an
edit someone left there cannot leak into a wheel) with ``SOURCE_DATE_EPOCH`` fixed, so the same tree
gives the same bytes: by the upstream's own build backend, then relabeled (:func:`build_any_wheel`),
or by the profile's plugin (its ``build_release_wheel``).

Release wheels (``ketta-build wheel``, :func:`release_wheels`) come from a tree of their own: the
series in ``patches/`` applied afresh to the pristine release, never a maintainer's build tree
(which may hold commits that were never exported, and is never touched). Their provenance records
the git tree of what was built and the series' commit and dirty flag.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .atomic import moving, uninterruptible
from .buildtree import read_tree_state
from .cache import Cache, sha256_file
from .errors import BuildTreeError, KettaError
from .gitcmd import extract_tree, git
from .patchfile import parse_patch_text
from .profile import Profile, default_profile
from .releases import load_releases, parse_version, require_served
from .releasetree import check_exported, fresh_tree
from .sbom import SBOM_FILE, AppliedPatch, sbom_json
from .wheelfinish import build_upstream_wheel, relabel_wheel, wheel_info

BUILD_NUMBER_FILE = "build-number"
_VERSION_LINE = re.compile(r'^version\s*=\s*"([^"]+)"\s*$', re.MULTILINE)


def read_build_number(series_dir: Path) -> int:
    """``patches/build-number``: one integer, bumped whenever the series changes (0 if absent)."""
    path = series_dir / BUILD_NUMBER_FILE
    if not path.exists():
        return 0
    text = path.read_text().strip()
    if not text.isdigit():
        raise KettaError(f"expected one non-negative integer, found {text!r}", path=path, line=1)
    return int(text)


def local_version(version: str, build_number: int | None, label: str = "ketta") -> str:
    return version if build_number is None else f"{version}+{label}.{build_number}"


@dataclass(frozen=True)
class BuiltWheel:
    path: Path
    version: str
    sha256: str


def _export_head(tree: Path, dest: Path) -> None:
    if not (tree / ".git").exists():
        raise BuildTreeError("not a build tree (no .git); run ketta-build apply first", path=tree)
    extract_tree(tree, "HEAD", dest)


PROVENANCE_FILE = "ketta_provenance.json"  # inside the upstream's import package
PROVENANCE_SCHEMA = "ketta-build/provenance/3"


def series_state(series_dir: Path) -> dict:
    """Where the series comes from: ``commit``, the commit checked out in the git repository holding
    ``series_dir`` (None outside git or before a first commit), and ``dirty``, whether ``series_dir``
    has uncommitted changes (edited, added, deleted, untracked or ignored files). Outside git, or with
    none of its files committed, nothing of it is committed: dirty."""
    if not git(series_dir, "rev-parse", "--show-toplevel", check=False):
        return {"commit": None, "dirty": True}
    commit = git(series_dir, "rev-parse", "-q", "--verify", "HEAD^{commit}", check=False) or None
    tracked = git(series_dir, "ls-files", "--", ".", check=False)
    changed = git(series_dir, "status", "--porcelain=v1", "--untracked-files=all", "--ignored", "--", ".", check=False)
    return {"commit": commit, "dirty": commit is None or not tracked or bool(changed)}


def _series_prefix(series_dir: Path) -> str:
    """The series directory's path in its git repository (``patches/``); empty outside git."""
    return git(series_dir, "rev-parse", "--show-prefix", check=False)


def provenance(tree: Path, version: str, build_number: int, series: dict | None = None,
               profile: Profile | None = None) -> dict:
    """What a Ketta wheel is made of (no paths, no times): the build tree's apply report, the git tree
    of HEAD (what is built) and, for a release wheel, ``series`` (:func:`series_state`). ``profile``
    (default: the default profile) names the project, its release and the label."""
    profile = profile or default_profile()
    state = tree / ".git" / "ketta-build.json"
    if not state.is_file():
        raise BuildTreeError("not a ketta-build tree (no .git/ketta-build.json)", path=tree)
    report = json.loads(state.read_text())
    upstream = report["upstream"]
    data = {
        "schema": PROVENANCE_SCHEMA,
        "version": version,
        "project": profile.name,
        "release": upstream["version"],
        "upstream_supplier": profile.display,
        "supplier": profile.label,
        "build_number": build_number,
        "upstream": {"filename": upstream.get("filename"), "sha256": upstream.get("sha256"), "origin": upstream.get("origin")},
        "patches": [{"name": p["name"], "sha256": p.get("sha256"), "outcome": p["outcome"]} for p in report["patches"]],
        "tree": git(tree, "rev-parse", "HEAD^{tree}"),
    }
    if series is not None:
        data["series"] = {"commit": series["commit"], "dirty": series["dirty"]}
    return data


def _applied_patches(tree: Path, series_dir: Path, data: dict) -> list:
    """The patch files the build tree was made from (series order), each checked against the sha256
    its apply report recorded: a patch changed since would make the SBOM lie about the wheel."""
    out = []
    prefix = _series_prefix(series_dir)
    for entry in data["patches"]:
        path = series_dir / entry["name"]
        raw = path.read_bytes() if path.is_file() else None
        if raw is None or hashlib.sha256(raw).hexdigest() != entry["sha256"]:
            raise BuildTreeError(f"{entry['name']} in {series_dir} is not the file this tree was applied from; "
                                 "apply again (ketta-build wheel does)", path=tree)
        out.append(AppliedPatch(entry["name"], raw, parse_patch_text(raw, path, entry["name"]).header, entry["outcome"],
                                path=prefix + entry["name"]))
    return out


def build_any_wheel(tree: Path, dist_dir: Path, build_number: int, *, series_dir: Path, series: dict | None,
                    profile: Profile) -> BuiltWheel:
    """The wheel of ``tree``'s HEAD for an upstream of wheel kind ``any``: built by the upstream's own
    build backend (:func:`ketta_build.wheelfinish.build_upstream_wheel`, through uv and the user's index
    configuration), then given the local version ``X+LABEL.N``, the provenance in its import package
    and the SBOM (:func:`ketta_build.wheelfinish.relabel_wheel`). Reproducible: the same tree gives the
    same bytes (SOURCE_DATE_EPOCH is the tree's commit time)."""
    with tempfile.TemporaryDirectory(prefix="ketta-wheel-") as tmp_name:
        tmp = Path(tmp_name)
        src = tmp / "src"
        src.mkdir()
        _export_head(tree, src)
        epoch = int(git(tree, "log", "-1", "--format=%ct"))
        release = json.loads((tree / ".git" / "ketta-build.json").read_text())["upstream"]["version"]
        built = build_upstream_wheel(src, tmp / "built", epoch=epoch, upstream_version=release)
        info = wheel_info(built)
        if not info.pure:
            raise KettaError(f"{profile.name} {release} builds a platform wheel ({info.tag_text}: compiled "
                             "extensions), and this machine's tag is not what users install: ketta-build ships "
                             "pure-Python wheels only", path=series_dir / "upstream.toml")
        with zipfile.ZipFile(built) as archive:  # a single-module project has no package to hold the file
            in_package = any(n.startswith(f"{profile.package_dir}/") for n in archive.namelist())
        version = profile.local_version(release, build_number)
        data = provenance(tree, version, build_number, series, profile)
        report = json.loads((tree / ".git" / "ketta-build.json").read_text())
        sbom = sbom_json(data, _applied_patches(tree, series_dir, report), "", epoch)
        final = relabel_wheel(built, dist_dir, local_label=profile.label, build_number=build_number,
                              add_to_package={f"{profile.package_dir}/{PROVENANCE_FILE}":
                                              (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()}
                              if in_package else {},
                              sbom_name=SBOM_FILE, sbom=sbom.encode(), epoch=epoch)
    return BuiltWheel(final, version, sha256_file(final))


def sbom_member(wheel: Path) -> str | None:
    """The name of the Ketta SBOM inside ``wheel`` (``….dist-info/sboms/ketta.cdx.json``), None if it has none."""
    with zipfile.ZipFile(wheel) as archive:
        return next((n for n in archive.namelist() if n.endswith(f".dist-info/sboms/{SBOM_FILE}")
                     and n.count("/") == 2), None)


@dataclass(frozen=True)
class ReleaseWheel:
    version: str
    wheel: Path
    constraints: Path | None  # None: an upstream without a lock file to constrain it (wheel kind "any")
    sha256: str
    tree: str  # the git tree hash of the sources built
    series: dict  # series_state() of the series it was built from


SUMS_FILE = "SHA256SUMS"


def release_wheels(versions: list[str], out: Path, *, series_dir: Path, cache=None, index_url: str | None = None,
                   tree: Path | None = None, progress=lambda _: None) -> list[ReleaseWheel]:
    """``NAME-X+LABEL.N-py3-none-any.whl`` (and, for a plugin's wheel, ``constraints-X.txt``) per release into ``out``, plus SHA256SUMS.

    Each wheel is built from a tree of its own: the series in ``series_dir``, as it is on disk, applied
    afresh to the pristine release (:func:`ketta_build.releasetree.fresh_tree`); no build tree of the
    maintainer's is read or written. With ``tree`` (one release: the tree's), that build tree must hold
    exactly what the series gives, or nothing is built (:func:`ketta_build.releasetree.check_exported`).
    Everything is made in a temporary directory beside ``out`` and moved in at the end; SHA256SUMS
    then covers every wheel and constraints file in ``out``.
    """
    cache = cache or Cache()
    number = read_build_number(series_dir)
    series = series_state(series_dir)
    profile = load_releases(series_dir).profile
    # A link to a directory is written through, never replaced: the work is done beside the directory
    # it names (the wheels are renamed into it, which needs one file system).
    out = out.resolve() if out.is_symlink() else out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    made: list[ReleaseWheel] = []
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.ketta-wheel-", dir=out.parent) as tmp_name:
        tmp = Path(tmp_name)
        staged = []
        for version in dict.fromkeys(versions):
            progress(f"applying {series_dir} to {profile.release_name(version)} in a tree of the wheel's own")
            own, report = fresh_tree(version, series_dir=series_dir, dest=tmp / "trees" / version, cache=cache,
                                     index_url=index_url, progress=progress)
            if tree is not None:
                progress(f"checking that {tree} holds what {series_dir} gives")
                check_exported(tree, own, report)
            progress(f"building the wheel of {profile.name} {profile.local_version(version, number)}")
            (tmp / version).mkdir()
            plugin = profile.plugin
            if plugin is not None and hasattr(plugin, "build_release_wheel"):  # its own kind of wheel
                wheel, constraints = plugin.build_release_wheel(own, tmp / version, number, release=version,
                                                                series_dir=series_dir, series=series, profile=profile)
            else:
                constraints = None
                wheel = build_any_wheel(own, tmp / version, number, series_dir=series_dir, series=series, profile=profile)
            staged.append((version, wheel, constraints, git(own, "rev-parse", "HEAD^{tree}")))
        out.mkdir(parents=True, exist_ok=True)
        moves = []
        for version, wheel, constraints, source_tree in staged:
            final_wheel = out / wheel.path.name
            final_constraints = out / constraints.name if constraints is not None else None
            moves += [(wheel.path, final_wheel)] + ([(constraints, final_constraints)] if constraints is not None else [])
            made.append(ReleaseWheel(version, final_wheel, final_constraints, wheel.sha256, source_tree, series))
        # The wheels, their constraints and SHA256SUMS change together: Ctrl-C or SIGTERM waits for the
        # three, a failure puts back what was there.
        with uninterruptible(), moving(moves):
            write_sums(out)
    return made


def write_sums(directory: Path) -> Path:
    """``SHA256SUMS`` (sha256sum format) of every wheel and constraints file in ``directory``."""
    lines = [f"{sha256_file(p)}  {p.name}\n" for p in sorted(directory.iterdir())
             if p.is_file() and (p.suffix == ".whl" or p.name.startswith("constraints-"))]
    sums = directory / SUMS_FILE
    tmp = directory / f".{SUMS_FILE}.tmp"
    tmp.write_text("".join(lines))
    os.replace(tmp, sums)
    return sums


def releases_to_build(series_dir: Path, asked: list[str] | None, every: bool, tree: Path | None) -> list[str]:
    """The releases a ``wheel`` run builds: ``asked``, every supported one, or the newest; with ``tree``
    the one release of that build tree. Refuses a release the series does not serve."""
    releases = load_releases(series_dir)
    parsed = list(releases.versions) if every else [parse_version(v) for v in asked or []] or [releases.newest.version]
    if tree is not None:
        if every:
            raise KettaError("--tree builds the one release of that tree; not with --all")
        version = read_tree_state(tree).version
        if asked and set(parsed) != {version}:
            raise KettaError(f"--tree {tree} is {releases.profile.release_name(version)}, not {', '.join(asked)}")
        parsed = [version]
    return [str(require_served(v, releases, "no wheel without a series for it")) for v in parsed]


def check_dist_dir(dist_dir: Path, flag: str) -> None:
    """Refuse a dist directory that cannot be one (a file in its place or above it), naming the flag typed."""
    blocker = next((p for p in (dist_dir, *dist_dir.absolute().parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise KettaError(f"{flag} {dist_dir}: {blocker} is a file, not a directory")
