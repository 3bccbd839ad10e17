"""Any upstream's wheel, built by its own backend, then finished as a Ketta wheel.

:func:`build_upstream_wheel` builds one wheel from an exported source tree with the project's own
PEP 517 backend (hatchling, setuptools with or without setuptools-scm, flit-core, pdm-backend, …):
nothing in the project's configuration is rewritten. :func:`relabel_wheel` then gives that wheel the
local version ``X+LABEL.N`` and adds the Ketta files (provenance, the PEP 770 SBOM) by rewriting the
archive itself, following the wheel format (PEP 427/491): the file name, the ``.dist-info`` (and
``.data``) directory, METADATA's ``Version:`` and a RECORD made afresh from the bytes written. Its
output depends only on its inputs: members in a fixed order, timestamps from ``epoch``, fixed
permissions, so the same wheel relabelled twice gives the same bytes.

Platform wheels (compiled extensions): :func:`relabel_wheel` refuses them unless asked
(``allow_platform=True``), and then keeps their tags as they are; :func:`wheel_info` tells a caller
beforehand (``WheelInfo.pure``). The default is a refusal because a locally built platform wheel
carries the build machine's platform tag (``linux_x86_64``, not ``manylinux``) and native code the
SBOM does not describe: shipping it must be a decision, not an accident.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import tomllib
import zipfile
import zlib
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path, PurePosixPath

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from .errors import KettaError
from .uvcmd import run_uv

_LOCAL_LABEL = re.compile(r"^[a-z][a-z0-9]*$")
_ZIP_EPOCH = 315532800  # 1980-01-01T00:00:00Z: the earliest time a zip entry can hold
_SIGNATURES = ("RECORD.jws", "RECORD.p7s")  # PEP 427 signatures: a relabelled wheel's would be false


# --- building -----------------------------------------------------------------------------------


def build_upstream_wheel(src: Path, out_dir: Path, *, epoch: int, isolated: bool = True,
                         upstream_version: str | None = None) -> Path:
    """Build one wheel of the source tree ``src`` with its own PEP 517 backend into ``out_dir``; its path.

    ``src`` is never written: the build runs on a copy (setuptools leaves ``build/`` and
    ``*.egg-info`` behind, and a stale ``build/lib`` would leak into a later wheel). Isolated, uv
    installs the ``[build-system]`` requirements from the user's index configuration
    (:func:`ketta_build.uvcmd.run_uv`); not isolated, the backend must already be installed beside
    the running Python (offline). ``SOURCE_DATE_EPOCH`` is ``epoch``.

    ``upstream_version`` (the release's version, e.g. from the sdist's PKG-INFO) is the version the
    wheel must have: a wheel of any other version is refused. It is also handed to the version
    plugins that compute a version from git (:func:`_version_environment`), because an exported tree
    has no ``.git``: setuptools-scm would otherwise fall back to whatever it finds, either the
    PKG-INFO (only if the tree came from an sdist), or the git repository of a directory above the
    tree (the caller's checkout: a wrong version, silently), or fail.
    """
    if not (src / "pyproject.toml").is_file() and not (src / "setup.py").is_file():
        raise KettaError("not a Python project (no pyproject.toml or setup.py)", path=src)
    with tempfile.TemporaryDirectory(prefix="ketta-upstream-wheel-") as tmp_name:
        tmp = Path(tmp_name)
        tree = tmp / "src"
        shutil.copytree(src, tree, symlinks=True)
        env = {"SOURCE_DATE_EPOCH": str(epoch), "PYTHONHASHSEED": "0",
               **_version_environment(tree, upstream_version)}
        args = ["build", "--wheel", "--python", sys.executable, "--out-dir", str(tmp / "dist"), str(tree)]
        if not isolated:
            args.insert(2, "--no-build-isolation")
        run_uv(args, env=env)
        built = _one_wheel(tmp / "dist", src)
        if upstream_version is not None:
            _check_built_version(built, upstream_version, src)
        out_dir.mkdir(parents=True, exist_ok=True)
        final = out_dir / built.name
        _write_whole(final, built.read_bytes())
    return final


def _version_environment(tree: Path, version: str | None) -> dict[str, str]:
    """The variables that make git-derived versions ``version``: setuptools-scm's (hatch-vcs and
    others use it too), for this distribution alone when its name is known (a build requirement built
    from source must not get the pretend version), and pdm-backend's ``scm`` source's."""
    if version is None:
        return {}
    name = _project_name(tree)
    if name is None:
        scm = "SETUPTOOLS_SCM_PRETEND_VERSION"
    else:
        scm = "SETUPTOOLS_SCM_PRETEND_VERSION_FOR_" + re.sub(r"[^A-Z0-9]", "_", canonicalize_name(name).upper())
    return {scm: version, "PDM_BUILD_SCM_VERSION": version}


def _project_name(tree: Path) -> str | None:
    """The distribution's name: ``[project].name`` in pyproject.toml, else PKG-INFO's ``Name:``."""
    pyproject = tree / "pyproject.toml"
    if pyproject.is_file():
        try:
            name = tomllib.loads(pyproject.read_text()).get("project", {}).get("name")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise KettaError(f"cannot read pyproject.toml: {exc}", path=pyproject) from None
        if isinstance(name, str):
            return name
    pkg_info = tree / "PKG-INFO"
    if pkg_info.is_file():
        return BytesHeaderParser().parsebytes(pkg_info.read_bytes()).get("Name")
    return None


def _one_wheel(dist: Path, src: Path) -> Path:
    wheels = sorted(dist.glob("*.whl"))
    if len(wheels) != 1:
        raise KettaError(f"expected one wheel from the build, found {len(wheels)}", path=src)
    return wheels[0]


def _check_built_version(wheel: Path, expected: str, src: Path) -> None:
    built = parse_wheel_filename(wheel.name)[1]
    try:
        same = built == Version(expected)
    except InvalidVersion:
        raise KettaError(f"{expected!r} is not a PEP 440 version", path=src) from None
    if not same:
        raise KettaError(f"the build made version {built} ({wheel.name}), not the release's {expected}", path=src)


# --- reading a wheel ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WheelInfo:
    """What a wheel's file name and ``.dist-info`` say about it."""

    name: str  # the distribution part of the file name, as written (``my_pkg``)
    version: Version
    build_tag: str  # "" when the file name has none
    tags: tuple[str, ...]  # "py3-none-any", … sorted
    tag_text: str  # the tags as the file name writes them: "py2.py3-none-any"
    dist_info: str  # the .dist-info directory, as in the archive
    pure: bool  # every tag is ``*-none-any``: no compiled code, installs anywhere


@dataclass(frozen=True)
class _Member:
    path: str
    data: bytes
    executable: bool


def wheel_info(wheel: Path) -> WheelInfo:
    """Read ``wheel``'s name, version, tags and ``.dist-info``; KettaError if it is not a valid wheel."""
    info, _ = _read_wheel(wheel)
    return info


def _parse_file_name(wheel: Path) -> tuple[str, Version, str, tuple[str, ...], str]:
    try:
        _, version, _, tags = parse_wheel_filename(wheel.name)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise KettaError(f"not a wheel file name: {exc}", path=wheel) from None
    parts = wheel.name.removesuffix(".whl").split("-")
    build_tag = parts[2] if len(parts) == 6 else ""
    return parts[0], version, build_tag, tuple(sorted(str(t) for t in tags)), "-".join(parts[-3:])


def _read_wheel(wheel: Path) -> tuple[WheelInfo, list[_Member]]:
    """The wheel's description and its files (directories and signatures left out), each checked
    against the wheel's RECORD."""
    name, version, build_tag, tags, tag_text = _parse_file_name(wheel)
    members = _read_members(wheel)
    dist_info = _find_dist_info(wheel, members, name, version)
    _check_record(wheel, members, dist_info)
    _check_metadata_version(wheel, members, dist_info, version)
    pure = all(t.endswith("-none-any") for t in tags)
    return WheelInfo(name, version, build_tag, tags, tag_text, dist_info, pure), members


def _read_members(wheel: Path) -> list[_Member]:
    try:
        with zipfile.ZipFile(wheel) as archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                raise KettaError("not a valid wheel: a file appears twice in the archive", path=wheel)
            for member in names:
                _check_member_path(wheel, member)
            return [_Member(i.filename, archive.read(i), bool((i.external_attr >> 16) & 0o111)) for i in infos]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError, EOFError, OSError,
            ValueError) as exc:
        raise KettaError(f"not a valid wheel (unreadable zip archive: {exc})", path=wheel) from None


def _check_member_path(wheel: Path, member: str, what: str = "not a valid wheel: member") -> None:
    path = PurePosixPath(member)
    if path.is_absolute() or ".." in path.parts or "\\" in member or str(path) != member or member == ".":
        raise KettaError(f"{what} {member!r} is not a plain relative path inside the wheel", path=wheel)


def _find_dist_info(wheel: Path, members: list[_Member], name: str, version: Version) -> str:
    tops = sorted({m.path.split("/", 1)[0] for m in members if "/" in m.path and m.path.split("/", 1)[0].endswith(".dist-info")})
    if len(tops) != 1:
        raise KettaError(f"not a valid wheel: {len(tops)} .dist-info directories, not one", path=wheel)
    stem = tops[0].removesuffix(".dist-info")
    dist, _, written = stem.rpartition("-")
    try:
        same = canonicalize_name(dist) == canonicalize_name(name) and Version(written) == version
    except InvalidVersion:
        same = False
    if not same:
        raise KettaError(f"not a valid wheel: {tops[0]} does not match the file name", path=wheel)
    for required in ("METADATA", "WHEEL", "RECORD"):
        if not any(m.path == f"{tops[0]}/{required}" for m in members):
            raise KettaError(f"not a valid wheel: no {tops[0]}/{required}", path=wheel)
    return tops[0]


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _check_record(wheel: Path, members: list[_Member], dist_info: str) -> None:
    """Every file is in RECORD with its size and hash (RECORD and signatures excepted), and every
    RECORD line names a file that is there with that hash: a wheel that fails this was damaged."""
    record_path = f"{dist_info}/RECORD"
    files = {m.path: m.data for m in members}
    try:
        rows = [row for row in csv.reader(io.StringIO(files[record_path].decode())) if row]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise KettaError(f"not a valid wheel: unreadable RECORD ({exc})", path=wheel) from None
    listed = set()
    for row in rows:
        path, digest = row[0], row[1] if len(row) > 1 else ""
        listed.add(path)
        if path == record_path or path in (f"{dist_info}/{s}" for s in _SIGNATURES):
            continue
        if path not in files:
            raise KettaError(f"not a valid wheel: RECORD lists {path}, which is not in the archive", path=wheel)
        if not digest.startswith("sha256=") or digest != _record_hash(files[path]):
            raise KettaError(f"not a valid wheel: {path} does not have the sha256 RECORD gives", path=wheel)
    unlisted = sorted(set(files) - listed - {record_path} - {f"{dist_info}/{s}" for s in _SIGNATURES})
    if unlisted:
        raise KettaError(f"not a valid wheel: {unlisted[0]} is not in RECORD", path=wheel)


def _metadata_version(data: bytes) -> str | None:
    return BytesHeaderParser().parsebytes(data).get("Version")


def _check_metadata_version(wheel: Path, members: list[_Member], dist_info: str, version: Version) -> None:
    metadata = next(m.data for m in members if m.path == f"{dist_info}/METADATA")
    written = _metadata_version(metadata)
    try:
        same = written is not None and Version(written) == version
    except InvalidVersion:
        same = False
    if not same:
        raise KettaError(f"not a valid wheel: METADATA says version {written}, the file name {version}", path=wheel)


# --- relabelling --------------------------------------------------------------------------------


def relabel_wheel(wheel: Path, dest_dir: Path, *, local_label: str, build_number: int, add_to_package: dict[str, bytes],
                  sbom_name: str, sbom: bytes | None, epoch: int, allow_platform: bool = False) -> Path:
    """``wheel`` as version ``X+LABEL.N`` in ``dest_dir``, with ``add_to_package`` and the SBOM; its path.

    The version is changed in the file name, the ``.dist-info`` and ``.data`` directory names and
    METADATA's ``Version:`` (nothing else in the wheel names it); ``add_to_package`` maps paths
    relative to the wheel's root (``tomli/ketta_provenance.json``) to their bytes; ``sbom`` (when not
    None) goes to ``<dist-info>/sboms/<sbom_name>`` (PEP 770). RECORD is written afresh: every file
    with its sha256 and size, RECORD itself without. Members are ordered (the package's files by
    path, then the ``.dist-info``'s, RECORD last), stamped with ``epoch`` (1980 at the earliest) and
    given mode 0644, or 0755 where the original was executable: the same inputs give the same bytes.
    Signature files (``RECORD.jws``, ``RECORD.p7s``) are dropped, since they would no longer hold.

    Refused (KettaError): anything that is not a valid wheel (file name, zip, one ``.dist-info``
    matching the name, METADATA, and a RECORD every file matches), a wheel that already has a local
    version, an added file that is already there or lies outside the wheel's root or in the
    ``.dist-info``, a bad label, and a platform wheel unless ``allow_platform`` (then its tags are
    kept as they are; :func:`wheel_info` tells beforehand).
    """
    info, members = _read_wheel(wheel)
    if info.version.local is not None:
        raise KettaError(f"already has a local version ({info.version}); relabel the upstream wheel", path=wheel)
    if not info.pure and not allow_platform:
        raise KettaError(f"a platform wheel ({', '.join(info.tags)}: compiled code); "
                         "pass allow_platform=True to relabel it with its tags kept", path=wheel)
    version = _local_version(info.version, local_label, build_number)
    renamed = _renamed_members(wheel, members, info, version)
    new_dist_info = f"{_new_stem(info, version)}.dist-info"
    extra = _extra_members(wheel, renamed, new_dist_info, add_to_package, sbom_name, sbom)
    content = _archive_bytes(_ordered(renamed + extra, new_dist_info), new_dist_info, epoch)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / _file_name(info, version)
    _write_whole(final, content)
    return final


def _local_version(version: Version, label: str, build_number: int) -> str:
    """``X+LABEL.N``; the label is lower-case letters and digits starting with a letter, so that the
    version is already in PEP 440's normal form (what a file name must hold)."""
    if not _LOCAL_LABEL.match(label):
        raise KettaError(f"local label {label!r}: use lower-case letters and digits, starting with a letter")
    if isinstance(build_number, bool) or not isinstance(build_number, int) or build_number < 0:
        raise KettaError(f"build number {build_number!r}: a non-negative integer")
    local = f"{version}+{label}.{build_number}"
    if str(Version(local)) != local:
        raise KettaError(f"{local} is not in PEP 440's normal form")
    return local


def _file_name(info: WheelInfo, version: str) -> str:
    """The wheel's file name with ``version``; its build tag and tags as the file name wrote them."""
    build = f"-{info.build_tag}" if info.build_tag else ""
    return f"{info.name}-{version}{build}-{info.tag_text}.whl"


def _new_stem(info: WheelInfo, version: str) -> str:
    """The ``.dist-info``/``.data`` directories' name with ``version``: ``demo_pkg-1.2.3+ketta.7``."""
    return f"{info.dist_info.removesuffix('.dist-info').rpartition('-')[0]}-{version}"


def _renamed_members(wheel: Path, members: list[_Member], info: WheelInfo, version: str) -> list[_Member]:
    """The members under the new ``.dist-info``/``.data`` names, METADATA with the new version, with
    RECORD and signatures left out (RECORD is written afresh)."""
    stem = info.dist_info.removesuffix(".dist-info")
    new_stem = _new_stem(info, version)
    dropped = {f"{info.dist_info}/RECORD", *(f"{info.dist_info}/{s}" for s in _SIGNATURES)}
    out = []
    for member in members:
        if member.path in dropped:
            continue
        top, _, rest = member.path.partition("/")
        data = member.data
        if top == info.dist_info:
            top = f"{new_stem}.dist-info"
            if rest == "METADATA":
                data = _set_metadata_version(wheel, data, version)
        elif top == f"{stem}.data":
            top = f"{new_stem}.data"
        out.append(_Member(f"{top}/{rest}" if rest else top, data, member.executable))
    return out


def _set_metadata_version(wheel: Path, metadata: bytes, version: str) -> bytes:
    """METADATA with its one ``Version:`` header (in the headers, before the first blank line) set to
    ``version``; every other byte as it was."""
    end = re.search(rb"\r?\n\r?\n", metadata)
    head, body = (metadata[:end.start()], metadata[end.start():]) if end else (metadata, b"")
    new_head, count = re.subn(rb"(?mi)^Version:[ \t]*[^\r\n]*", b"Version: " + version.encode(), head)
    if count != 1:
        raise KettaError(f"METADATA has {count} Version headers, not one", path=wheel)
    return new_head + body


def _extra_members(wheel: Path, members: list[_Member], dist_info: str, add_to_package: dict[str, bytes],
                   sbom_name: str, sbom: bytes | None) -> list[_Member]:
    existing = {m.path for m in members}
    extra = []
    for path, data in sorted(add_to_package.items()):
        _check_member_path(wheel, path, "added file")
        top = path.split("/", 1)[0]
        if top.endswith((".dist-info", ".data")):
            raise KettaError(f"{path}: added files go in the package, not in {top}", path=wheel)
        extra.append(_Member(path, bytes(data), False))
    if sbom is not None:
        if not sbom_name or "/" in sbom_name or sbom_name in (".", ".."):
            raise KettaError(f"SBOM name {sbom_name!r}: a plain file name", path=wheel)
        extra.append(_Member(f"{dist_info}/sboms/{sbom_name}", bytes(sbom), False))
    for member in extra:
        if member.path in existing:
            raise KettaError(f"{member.path} is already in the wheel; not replacing it", path=wheel)
    return extra


def _ordered(members: list[_Member], dist_info: str) -> list[_Member]:
    """The package's files by path, then the ``.dist-info``'s (PEP 427: at the end of the archive)."""
    return sorted(members, key=lambda m: (m.path.startswith(dist_info + "/"), m.path))


def _record(members: list[_Member], record_path: str) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for member in members:
        writer.writerow([member.path, _record_hash(member.data), len(member.data)])
    writer.writerow([record_path, "", ""])
    return out.getvalue().encode()


def _archive_bytes(members: list[_Member], dist_info: str, epoch: int) -> bytes:
    """The zip archive of ``members`` and their RECORD (last), every entry stamped alike."""
    record_path = f"{dist_info}/RECORD"
    stamp = time.gmtime(max(epoch, _ZIP_EPOCH))[:6]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member in [*members, _Member(record_path, _record(members, record_path), False)]:
            entry = zipfile.ZipInfo(member.path, date_time=stamp)
            entry.create_system = 3  # unix: the permissions below are read
            entry.external_attr = (stat.S_IFREG | (0o755 if member.executable else 0o644)) << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, member.data, compresslevel=6)
    return buffer.getvalue()


def _write_whole(path: Path, content: bytes) -> None:
    """``content`` at ``path`` through a temporary sibling and a rename, mode 0644."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.ketta-new-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
