"""The Letta server wheel (``[wheel] kind = "letta"``): upstream's hatchling build of ``letta X+ketta.N``.

Built from ``git archive HEAD`` of a build tree with the version in ``pyproject.toml`` rewritten and
``SOURCE_DATE_EPOCH`` fixed, so the same tree gives the same bytes. The wheel carries, besides
upstream's files, ``letta/ketta_provenance.json`` (:func:`ketta_build.wheel.provenance`), upstream's
migrations in ``letta/ketta_alembic/`` (a deployment migrates with ``python -m letta.ketta_migrations``)
and the SBOM in ``.dist-info/sboms/`` through hatchling's ``sbom-files``; the release's ``uv.lock``
gives the constraints a deployment installs with (:func:`export_constraints`).
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
from pathlib import Path

from ..cache import sha256_file
from ..errors import KettaError
from ..gitcmd import git
from ..sbom import SBOM_FILE, sbom_json
from ..uvcmd import run_uv
from ..wheel import (_VERSION_LINE, PROVENANCE_FILE, PROVENANCE_SCHEMA, BuiltWheel, _applied_patches, _export_head,
                     local_version, provenance, sbom_member)

PACKAGED_ALEMBIC = "ketta_alembic"  # upstream's alembic/ and alembic.ini, inside the letta package


def _set_version(pyproject: Path, version: str) -> None:
    text = pyproject.read_text()
    new, count = _VERSION_LINE.subn(f'version = "{version}"', text, count=1)
    if count != 1:
        raise KettaError("no literal `version = \"...\"` line to rewrite", path=pyproject)
    pyproject.write_text(new)


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


def _sbom_text(tree: Path, tmp: Path, series_dir: Path, constraints: Path | None, data: dict, epoch: int) -> str:
    report = json.loads((tree / ".git" / "ketta-build.json").read_text())  # provenance() checked it is there
    if constraints is None:
        constraints = export_constraints(tree, tmp / "constraints.txt")
    return sbom_json(data, _applied_patches(tree, series_dir, report), constraints.read_text(), epoch)


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


