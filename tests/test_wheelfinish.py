"""ketta_build.wheelfinish: any upstream's wheel, built by its own backend, relabelled ``X+ketta.N``.

Offline: small synthetic projects, one per backend, built without isolation (the backends are in the
``test`` extra), then relabelled and checked: name and version, the added files and the SBOM with
RECORD hashes, an install with pip, and the same bytes twice.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import subprocess
import sys
import zipfile
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest

from ketta_build.errors import KettaError
from ketta_build.wheelfinish import build_upstream_wheel, relabel_wheel, wheel_info

EPOCH = 1_700_000_000
PROVENANCE = "demo_pkg/ketta_provenance.json"
SBOM_NAME = "ketta.cdx.json"
SBOM = b'{"bomFormat": "CycloneDX", "specVersion": "1.6"}\n'
LOCAL = "1.2.3+ketta.7"

_PACKAGE = {
    "demo_pkg/__init__.py": '"""A demo package."""\n\n__version__ = "1.2.3"\n',
    "demo_pkg/core.py": "def answer():\n    return 42\n",
    "README.md": "demo\n",
}


def _pyproject(requires: str, backend: str, version: str = 'version = "1.2.3"', extra: str = "") -> str:
    return (f'[build-system]\nrequires = [{requires}]\nbuild-backend = "{backend}"\n\n'
            f'[project]\nname = "demo-pkg"\n{version}\ndescription = "A demo package."\nreadme = "README.md"\n'
            f'requires-python = ">=3.8"\n{extra}')


PROJECTS: dict[str, dict[str, str]] = {
    "hatchling": {
        "pyproject.toml": _pyproject('"hatchling"', "hatchling.build", extra=(
            '\n[tool.hatch.build.targets.wheel]\npackages = ["demo_pkg"]\n'
            '\n[tool.hatch.build.targets.wheel.shared-data]\n"share/demo.txt" = "share/demo/demo.txt"\n')),
        "share/demo.txt": "shared data\n",
    },
    "setuptools": {
        "pyproject.toml": _pyproject('"setuptools>=70.1"', "setuptools.build_meta",
                                     extra='\n[tool.setuptools]\npackages = ["demo_pkg"]\n'),
    },
    "setuptools-scm": {
        "pyproject.toml": _pyproject('"setuptools>=70.1", "setuptools-scm>=8"', "setuptools.build_meta",
                                     version='dynamic = ["version"]',
                                     extra='\n[tool.setuptools]\npackages = ["demo_pkg"]\n\n[tool.setuptools_scm]\n'),
        # as in an sdist: the tree has no .git, PKG-INFO holds the version
        "PKG-INFO": "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.2.3\nSummary: A demo package.\n",
    },
    "flit-core": {
        "pyproject.toml": _pyproject('"flit_core>=3.9"', "flit_core.buildapi"),
    },
    "pdm-backend": {
        "pyproject.toml": _pyproject('"pdm-backend"', "pdm.backend"),
    },
}


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in {**_PACKAGE, **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _build(src: Path, out: Path) -> Path:
    return build_upstream_wheel(src, out, epoch=EPOCH, isolated=False, upstream_version="1.2.3")


def _relabel(wheel: Path, dest: Path, **kwargs) -> Path:
    args = {"local_label": "ketta", "build_number": 7, "add_to_package": {PROVENANCE: b'{"schema": "test"}\n'},
            "sbom_name": SBOM_NAME, "sbom": SBOM, "epoch": EPOCH, **kwargs}
    return relabel_wheel(wheel, dest, **args)


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def check_record(wheel: Path) -> dict[str, bytes]:
    """Every RECORD line names a file with that sha256 and size, every file has a line, RECORD's own
    line has neither, and RECORD is the archive's last member; the archive's files by name."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        files = {name: archive.read(name) for name in names}
    record = next(n for n in names if n.endswith(".dist-info/RECORD"))
    assert names[-1] == record
    rows = list(csv.reader(io.StringIO(files[record].decode())))
    assert sorted(row[0] for row in rows) == sorted(names)
    for path, digest, size in rows:
        if path == record:
            assert (digest, size) == ("", "")
        else:
            assert digest == _digest(files[path]), path
            assert int(size) == len(files[path]), path
    return files


def _installed_version(wheel: Path, target: Path) -> str:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    code = (f"import sys; sys.path.insert(0, {str(target)!r}); import importlib.metadata as m; "
            "import demo_pkg.core; assert demo_pkg.core.answer() == 42; print(m.version('demo-pkg'))")
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("backend", sorted(PROJECTS))
def test_each_backend_builds_and_relabels_reproducibly(tmp_path, backend):
    src = _write(tmp_path / "src", PROJECTS[backend])
    built = _build(src, tmp_path / "built")
    assert wheel_info(built).version.public == "1.2.3"
    assert wheel_info(built).pure
    assert not any(p.name in ("build", "dist") or p.suffix == ".egg-info" for p in src.iterdir())  # src untouched

    final = _relabel(built, tmp_path / "final")
    assert final.name == f"demo_pkg-{LOCAL}-{wheel_info(built).tag_text}.whl"
    files = check_record(final)
    dist_info = f"demo_pkg-{LOCAL}.dist-info"
    assert BytesHeaderParser().parsebytes(files[f"{dist_info}/METADATA"])["Version"] == LOCAL
    assert files[PROVENANCE] == b'{"schema": "test"}\n'
    assert files[f"{dist_info}/sboms/{SBOM_NAME}"] == SBOM
    assert not [n for n in files if "1.2.3." in n.split("/", 1)[0]]  # no directory keeps the old version
    if backend == "hatchling":
        assert f"demo_pkg-{LOCAL}.data/data/share/demo/demo.txt" in files
    assert wheel_info(final).version.local == "ketta.7"

    assert _installed_version(final, tmp_path / "target") == LOCAL
    assert (tmp_path / "target" / PROVENANCE).is_file()
    assert (tmp_path / "target" / dist_info / "sboms" / SBOM_NAME).read_bytes() == SBOM

    again = _relabel(built, tmp_path / "again")
    assert again.read_bytes() == final.read_bytes()
    rebuilt = _relabel(_build(src, tmp_path / "rebuilt"), tmp_path / "from-rebuilt")
    assert rebuilt.read_bytes() == final.read_bytes()


def test_setuptools_scm_without_pkg_info_gets_the_release_version(tmp_path):
    """A tree from a git source has neither .git nor PKG-INFO: the release's version is handed over."""
    files = {k: v for k, v in PROJECTS["setuptools-scm"].items() if k != "PKG-INFO"}
    built = _build(_write(tmp_path / "src", files), tmp_path / "built")
    assert str(wheel_info(built).version) == "1.2.3"


def test_a_build_of_another_version_than_the_release_is_refused(tmp_path):
    src = _write(tmp_path / "src", PROJECTS["flit-core"])
    with pytest.raises(KettaError, match=r"version 1\.2\.3 .*not the release's 1\.2\.4") as caught:
        build_upstream_wheel(src, tmp_path / "out", epoch=EPOCH, isolated=False, upstream_version="1.2.4")
    assert str(src) in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_a_compiled_extension_is_refused_unless_allowed_then_keeps_its_platform_tags(tmp_path):
    files = {
        "pyproject.toml": _pyproject('"setuptools>=70.1"', "setuptools.build_meta",
                                     extra='\n[tool.setuptools]\npackages = ["demo_pkg"]\n'),
        "setup.py": ('from setuptools import Extension, setup\n\n'
                     'setup(ext_modules=[Extension("demo_pkg._speed", ["demo_pkg/_speed.c"])])\n'),
        "demo_pkg/_speed.c": ('#include <Python.h>\n'
                              'static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "_speed", NULL, -1, NULL};\n'
                              'PyMODINIT_FUNC PyInit__speed(void) { return PyModule_Create(&mod); }\n'),
    }
    built = _build(_write(tmp_path / "src", files), tmp_path / "built")
    info = wheel_info(built)
    assert not info.pure and not info.tag_text.endswith("-none-any")

    with pytest.raises(KettaError, match="a platform wheel .*compiled code.*allow_platform") as caught:
        _relabel(built, tmp_path / "final")
    assert built.name in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "final").exists() or not list((tmp_path / "final").iterdir())

    final = _relabel(built, tmp_path / "final", allow_platform=True)
    assert final.name == f"demo_pkg-{LOCAL}-{info.tag_text}.whl"
    check_record(final)
    assert _installed_version(final, tmp_path / "target") == LOCAL
    code = f"import sys; sys.path.insert(0, {str(tmp_path / 'target')!r}); import demo_pkg._speed"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def flit_wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("flit")
    return _build(_write(root / "src", PROJECTS["flit-core"]), root / "built")


def test_a_wheel_with_a_local_version_is_refused(flit_wheel, tmp_path):
    once = _relabel(flit_wheel, tmp_path / "once")
    with pytest.raises(KettaError, match=r"already has a local version \(1\.2\.3\+ketta\.7\)") as caught:
        _relabel(once, tmp_path / "twice", build_number=8)
    assert once.name in str(caught.value)


@pytest.mark.parametrize("damage", ["not a zip", "truncated"])
def test_a_corrupt_wheel_is_refused_in_one_line(flit_wheel, tmp_path, damage):
    bad = tmp_path / flit_wheel.name
    bad.write_bytes(b"not a zip at all\n" if damage == "not a zip" else flit_wheel.read_bytes()[:-40])
    with pytest.raises(KettaError, match="not a valid wheel") as caught:
        _relabel(bad, tmp_path / "out")
    assert str(bad) in str(caught.value) and "\n" not in str(caught.value)


def _rewritten(wheel: Path, dest: Path, change) -> Path:
    """``wheel`` with its members passed through ``change(name, data) -> (name, data) | None``."""
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(dest, "w") as out:
        for name in src.namelist():
            changed = change(name, src.read(name))
            if changed is not None:
                out.writestr(*changed)
    return dest


def test_a_wheel_whose_files_do_not_match_its_record_is_refused(flit_wheel, tmp_path):
    tampered = _rewritten(flit_wheel, tmp_path / flit_wheel.name,
                          lambda n, d: (n, d + b"# changed\n") if n == "demo_pkg/core.py" else (n, d))
    with pytest.raises(KettaError, match="demo_pkg/core.py does not have the sha256 RECORD gives"):
        wheel_info(tampered)


def test_a_wheel_without_its_dist_info_is_refused(flit_wheel, tmp_path):
    stripped = _rewritten(flit_wheel, tmp_path / flit_wheel.name,
                          lambda n, d: None if ".dist-info/" in n else (n, d))
    with pytest.raises(KettaError, match=r"0 \.dist-info directories"):
        wheel_info(stripped)


def test_added_files_never_replace_or_escape(flit_wheel, tmp_path):
    with pytest.raises(KettaError, match="demo_pkg/core.py is already in the wheel"):
        _relabel(flit_wheel, tmp_path / "out", add_to_package={"demo_pkg/core.py": b""})
    with pytest.raises(KettaError, match="not a plain relative path"):
        _relabel(flit_wheel, tmp_path / "out", add_to_package={"../evil.py": b""})
    with pytest.raises(KettaError, match="not in demo_pkg-1.2.3.dist-info"):
        _relabel(flit_wheel, tmp_path / "out", add_to_package={"demo_pkg-1.2.3.dist-info/x": b""})
    with pytest.raises(KettaError, match="local label"):
        _relabel(flit_wheel, tmp_path / "out", local_label="Ketta-1")


def test_without_an_sbom_nothing_goes_to_sboms(flit_wheel, tmp_path):
    files = check_record(_relabel(flit_wheel, tmp_path / "out", sbom=None, add_to_package={}))
    assert not [n for n in files if "/sboms/" in n]


@pytest.mark.parametrize("path", ["/etc/evil.py", "./demo_pkg/x.py", "demo_pkg//x.py"])
def test_added_paths_must_be_plain_relative_paths(flit_wheel, tmp_path, path):
    with pytest.raises(KettaError, match="not a plain relative path"):
        _relabel(flit_wheel, tmp_path / "out", add_to_package={path: b""})
