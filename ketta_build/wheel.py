"""Deployable artifacts from a build tree: the ``X+ketta.N`` wheel and the release's dependency constraints.

The wheel is built from ``git archive HEAD`` of a build tree (never from the work tree, so an
edit someone left there cannot leak into a wheel), with the version rewritten to a PEP 440 local
version and ``SOURCE_DATE_EPOCH`` fixed, so the same tree gives the same bytes.

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
import shutil
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .atomic import moving, uninterruptible
from .buildtree import read_tree_state
from .cache import Cache, sha256_file
from .errors import BuildTreeError, KettaError
from .gitcmd import extract_tree, git
from .patchfile import parse_patch_text
from .releases import load_releases, parse_version, require_served
from .releasetree import check_exported, fresh_tree
from .profile import Profile
from .sbom import SBOM_FILE, AppliedPatch, sbom_json
from .wheelfinish import build_upstream_wheel, relabel_wheel, wheel_info
from .uvcmd import run_uv

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
    extract_tree(tree, "HEAD", dest)


def _set_version(pyproject: Path, version: str) -> None:
    text = pyproject.read_text()
    new, count = _VERSION_LINE.subn(f'version = "{version}"', text, count=1)
    if count != 1:
        raise KettaError("no literal `version = \"...\"` line to rewrite", path=pyproject)
    pyproject.write_text(new)


PROVENANCE_FILE = "ketta_provenance.json"  # inside the letta package
PROVENANCE_SCHEMA = "ketta-build/provenance/2"
PACKAGED_ALEMBIC = "ketta_alembic"  # upstream's alembic/ and alembic.ini, inside the letta package


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
    of HEAD (what is built) and, for a release wheel, ``series`` (:func:`series_state`)."""
    state = tree / ".git" / "ketta-build.json"
    if not state.is_file():
        raise BuildTreeError("not a ketta-build tree (no .git/ketta-build.json)", path=tree)
    report = json.loads(state.read_text())
    upstream = report["upstream"]
    data = {
        "schema": PROVENANCE_SCHEMA,
        "version": version,
        "letta": upstream["version"],
        "build_number": build_number,
        "upstream": {"filename": upstream.get("filename"), "sha256": upstream.get("sha256"), "origin": upstream.get("origin")},
        "patches": [{"name": p["name"], "sha256": p.get("sha256"), "outcome": p["outcome"]} for p in report["patches"]],
        "tree": git(tree, "rev-parse", "HEAD^{tree}"),
    }
    if series is not None:
        data["series"] = {"commit": series["commit"], "dirty": series["dirty"]}
    if profile is not None and not profile.is_letta:  # another upstream: its name and release, not "letta"
        del data["letta"]
        data.update(project=profile.name, release=upstream["version"], supplier=profile.label)
    return data


_WHEEL_TABLE = re.compile(r"^\[tool\.hatch\.build\.targets\.wheel\]\s*$", re.MULTILINE)
_HATCHLING_REQUIREMENT = re.compile(r'"hatchling"')
SBOM_HATCHLING = "hatchling>=1.28"  # the first hatchling with the wheel target's sbom-files option


def _declare_sbom(pyproject: Path, name: str) -> None:
    """Have hatchling put ``name`` (beside pyproject.toml) in the wheel's ``.dist-info/sboms/`` (PEP 770;
    its ``sbom-files`` option writes the file into RECORD like any other), and ask for a hatchling
    that knows the option. The file is checked afterwards: an older hatchling ignores the option."""
    text = pyproject.read_text()
    table = _WHEEL_TABLE.search(text)
    line = f"sbom-files = [{json.dumps(name)}]"
    if table is None:
        text = text.rstrip("\n") + f"\n\n[tool.hatch.build.targets.wheel]\n{line}\n"
    else:
        text = text[:table.end()] + f"\n{line}" + text[table.end():]
    system = re.search(r"^\[build-system\][ \t]*\n(?:(?!\[).*\n?)*", text, re.MULTILINE)  # up to the next table
    if system is not None and _HATCHLING_REQUIREMENT.search(system.group(0)):
        start, end = system.span()
        text = text[:start] + _HATCHLING_REQUIREMENT.sub(json.dumps(SBOM_HATCHLING), system.group(0), count=1) + text[end:]
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise KettaError(f"cannot declare the SBOM for hatchling: {exc}", path=pyproject) from None
    wheel_target = parsed.get("tool", {}).get("hatch", {}).get("build", {}).get("targets", {}).get("wheel", {})
    if wheel_target.get("sbom-files") != [name]:
        raise KettaError("cannot declare the SBOM for hatchling: the wheel target already has sbom-files", path=pyproject)
    pyproject.write_text(text)


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


def _add_ketta_files(src: Path, data: dict) -> None:
    """Provenance and upstream's migrations, so that the installed wheel can say what it is and migrate."""
    (src / "letta" / PROVENANCE_FILE).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if (src / "alembic").is_dir() and (src / "alembic.ini").is_file():
        target = src / "letta" / PACKAGED_ALEMBIC
        shutil.copytree(src / "alembic", target)
        shutil.copy2(src / "alembic.ini", target / "alembic.ini")


def build_wheel(tree: Path, dist_dir: Path, build_number: int | None, *, series_dir: Path | None = None,
                constraints: Path | None = None, series: dict | None = None) -> BuiltWheel:
    """Build the wheel of ``tree``'s HEAD into ``dist_dir`` (atomically: a temp dir, then a rename).

    With a build number (a Ketta build) the wheel also carries ``letta/ketta_provenance.json``,
    upstream's migrations in ``letta/ketta_alembic/`` and the SBOM ``.dist-info/sboms/ketta.cdx.json``
    (:mod:`ketta_build.sbom`: the patch files from ``series_dir``, the locked dependencies from
    ``constraints``, exported from the tree's uv.lock when not given; ``series``, the series' commit and
    dirty flag, goes into both); without one it is upstream's wheel as is.
    """
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
        sbom = None
        if build_number is not None:
            if series_dir is None:
                raise KettaError("a Ketta wheel needs the series directory its tree was applied from (for its SBOM)")
            data = provenance(tree, version, build_number, series)
            _add_ketta_files(src, data)
            sbom = _sbom_text(tree, tmp, series_dir, constraints, data, int(epoch))

            (src / SBOM_FILE).write_text(sbom)
            _declare_sbom(src / "pyproject.toml", SBOM_FILE)
        out = tmp / "dist"
        run_uv(["build", "--wheel", "--python", sys.executable, "--out-dir", str(out), str(src)], env={"SOURCE_DATE_EPOCH": epoch})
        wheels = sorted(out.glob("*.whl"))
        if len(wheels) != 1:
            raise KettaError(f"expected one wheel from the build, found {len(wheels)}", path=out)
        if sbom is not None:
            _check_sbom(wheels[0], sbom)
        dist_dir.mkdir(parents=True, exist_ok=True)
        final = dist_dir / wheels[0].name
        os.replace(wheels[0], final)
    return BuiltWheel(final, version, sha256_file(final))


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


def _sbom_text(tree: Path, tmp: Path, series_dir: Path, constraints: Path | None, data: dict, epoch: int) -> str:
    report = json.loads((tree / ".git" / "ketta-build.json").read_text())  # provenance() checked it is there
    if constraints is None:
        constraints = export_constraints(tree, tmp / "constraints.txt")
    return sbom_json(data, _applied_patches(tree, series_dir, report), constraints.read_text(), epoch)


def sbom_member(wheel: Path) -> str | None:
    """The name of the Ketta SBOM inside ``wheel`` (``….dist-info/sboms/ketta.cdx.json``), None if it has none."""
    with zipfile.ZipFile(wheel) as archive:
        return next((n for n in archive.namelist() if n.endswith(f".dist-info/sboms/{SBOM_FILE}")
                     and n.count("/") == 2), None)


def _check_sbom(wheel: Path, text: str) -> None:
    member = sbom_member(wheel)
    if member is None:
        raise KettaError(f"the build did not put the SBOM in .dist-info/sboms/ (hatchling older than "
                         f"{SBOM_HATCHLING.split('>=')[1]}?)", path=wheel)
    with zipfile.ZipFile(wheel) as archive:
        if archive.read(member).decode() != text:
            raise KettaError(f"{member} is not the SBOM ketta-build wrote", path=wheel)


def build_wheel_once(tree: Path, dist_dir: Path, build_number: int | None, *, series_dir: Path | None = None,
                     constraints: Path | None = None) -> BuiltWheel:
    """``build_wheel``, unless ``dist_dir`` already holds the wheel of this very commit and build
    number (builds are reproducible, so the wheel would be byte-identical). The record beside it
    names the commit, the build number, the provenance schema and the wheel's sha256; a wheel that
    no longer matches its record, or was made with another provenance schema, is rebuilt."""
    record = dist_dir / ".ketta-built-from.json"
    head = git(tree, "rev-parse", "HEAD")
    if record.is_file():
        try:
            data = json.loads(record.read_text())
            path = dist_dir / data["wheel"]
            if data["commit"] == head and data["build_number"] == build_number and path.is_file() \
                    and data.get("provenance") == PROVENANCE_SCHEMA and sha256_file(path) == data["sha256"]:
                return BuiltWheel(path, data["version"], data["sha256"])
        except (ValueError, KeyError, TypeError):
            pass
    wheel = build_wheel(tree, dist_dir, build_number, series_dir=series_dir, constraints=constraints)
    record.write_text(json.dumps({"commit": head, "build_number": build_number, "provenance": PROVENANCE_SCHEMA,
                                  "wheel": wheel.path.name, "version": wheel.version, "sha256": wheel.sha256}) + "\n")
    return wheel


SERVER_EXTRAS = ("server", "postgres", "sqlite")


# The form of an exported constraints file, part of the source recorded beside it: files exported
# in an earlier form (with uv's header, which names the output path) are exported again, not kept.
CONSTRAINTS_FORM = b"\0no-header"


def export_constraints(tree: Path, dest: Path, extras: tuple[str, ...] = SERVER_EXTRAS) -> Path:
    """The release's own lock as pip constraints for ``extras`` (default: a server's).

    A ``dest`` exported from the same ``uv.lock`` for the same extras in the same form (its source is
    recorded beside it) is kept as it is; one of an older form (``CONSTRAINTS_FORM``) is exported again.
    """
    lock = tree / "uv.lock"
    if not lock.is_file():
        raise KettaError("the release has no uv.lock; cannot pin its dependencies", path=lock)
    source = hashlib.sha256(lock.read_bytes() + "\0".join(extras).encode() + CONSTRAINTS_FORM).hexdigest()
    record = dest.with_name(f".{dest.name}.source")
    if dest.is_file() and record.is_file() and record.read_text().strip() == source:
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    extra_args = [arg for extra in extras for arg in ("--extra", extra)]
    # No header: it names the output path, and the constraints' sha256 is part of every matrix cell's
    # key, which must not depend on where the checkout lives.
    run_uv(["export", "--frozen", "--no-hashes", "--no-emit-project", "--no-header", *extra_args, "-o", str(tmp)], cwd=tree)
    os.replace(tmp, dest)
    record.write_text(source + "\n")
    return dest


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
    """``letta-X+ketta.N-py3-none-any.whl`` and ``constraints-X.txt`` per release into ``out``, plus SHA256SUMS.

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
            progress(f"applying {series_dir} to letta {version} in a tree of the wheel's own")
            own, report = fresh_tree(version, series_dir=series_dir, dest=tmp / "trees" / version, cache=cache,
                                     index_url=index_url, progress=progress)
            if tree is not None:
                progress(f"checking that {tree} holds what {series_dir} gives")
                check_exported(tree, own, report)
            progress(f"building the wheel of {profile.name} {profile.local_version(version, number)}")
            (tmp / version).mkdir()
            if profile.is_letta:
                constraints = export_constraints(own, tmp / version / f"constraints-{version}.txt")
                wheel = build_wheel(own, tmp / version, number, series_dir=series_dir, constraints=constraints,
                                    series=series)
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
            raise KettaError(f"--tree {tree} is letta {version}, not {', '.join(asked)}")
        parsed = [version]
    return [str(require_served(v, releases, "no wheel without a series for it")) for v in parsed]


def check_dist_dir(dist_dir: Path, flag: str) -> None:
    """Refuse a dist directory that cannot be one (a file in its place or above it), naming the flag typed."""
    blocker = next((p for p in (dist_dir, *dist_dir.absolute().parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise KettaError(f"{flag} {dist_dir}: {blocker} is a file, not a directory")
