"""Upstream sources other than the index, index configuration, and the real 0.16.8 sdist."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import make_diff, server_files, write_patch, write_series, write_tree
from packaging.version import Version

from ketta_build.cli import main
from ketta_build.errors import UpstreamError
from ketta_build.releases import load_releases, parse_version
from ketta_build.index import discover_index_urls
from ketta_build.sources import GitSource

REPO_ROOT = Path(__file__).resolve().parents[1]


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def letta_git(tmp_path):
    repo = write_tree(tmp_path / "letta-repo", server_files("0.16.7", {"letta/a.py": "a\nb\nc\n"}))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "0.16.7")
    _git(repo, "tag", "v0.16.7")
    write_tree(repo, server_files("0.16.8", {"letta/a.py": "a\nb\nc\nd\n"}))
    _git(repo, "commit", "-qam", "0.16.8")
    _git(repo, "tag", "v0.16.8")
    return repo


def test_git_source_at_a_tag(tmp_path, letta_git):
    pdir = write_series(tmp_path / "p", "0001-a.diff")
    write_patch(pdir, "0001-a.diff", make_diff("letta/a.py", "a\nb\nc\n", "a\nB\nc\n"))
    out = tmp_path / "out"
    rc = main(["apply", "--letta-git", str(letta_git), "--ref", "v0.16.7", "--patches", str(pdir), "--out", str(out),
               "--cache-dir", str(tmp_path / "c"), "--json", str(tmp_path / "r.json")])
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["upstream"]["version"] == "0.16.7" and report["upstream"]["origin"] == "git"
    assert (out / "letta/a.py").read_text() == "a\nB\nc\n"
    assert not (out / "letta-repo").exists()


def test_git_source_checks_the_version_of_the_ref(letta_git):
    with pytest.raises(UpstreamError, match="is letta 0.16.8, not 0.16.7"):
        GitSource(str(letta_git), "v0.16.8").resolve(Version("0.16.7"))
    with pytest.raises(UpstreamError, match="ref 'v9' not found"):
        GitSource(str(letta_git), "v9").resolve(None)
    assert GitSource(str(letta_git), None).resolve(Version("0.16.8")).version == Version("0.16.8")


def test_index_config_order(monkeypatch):
    monkeypatch.delenv("UV_DEFAULT_INDEX", raising=False)
    monkeypatch.delenv("UV_INDEX_URL", raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.invalid/simple/")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///srv/extra")
    urls = discover_index_urls()
    assert urls[0] == "https://mirror.invalid/simple" and "file:///srv/extra" in urls
    monkeypatch.setenv("UV_DEFAULT_INDEX", "https://uv.invalid/simple")
    assert discover_index_urls()[0] == "https://uv.invalid/simple"
    assert discover_index_urls("https://explicit.invalid/simple") == ["https://explicit.invalid/simple"]


def test_versions():
    assert parse_version("v0.16.8") == Version("0.16.8")
    assert load_releases().nearest(Version("0.16.3")) == [Version("0.16.2"), Version("0.16.4")]
    assert load_releases().nearest(Version("0.13.0")) == [Version("0.14.0"), Version("0.15.0")]
    assert load_releases().nearest(Version("0.33.8")) == [Version("0.16.7"), Version("0.16.8")]


@pytest.mark.network
def test_real_letta_0_16_8_from_the_index(tmp_path):
    """The real sdist through the user's index configuration, with the project's series."""
    out = tmp_path / "build"
    report_file = tmp_path / "report.json"
    rc = main(["apply", "--letta", "0.16.8", "--patches", str(REPO_ROOT / "patches"), "--out", str(out),
               "--cache-dir", str(tmp_path / "cache"), "--json", str(report_file)])
    report = json.loads(report_file.read_text())
    assert rc == 0, report
    assert report["upstream"]["filename"] == "letta-0.16.8.tar.gz" and len(report["upstream"]["sha256"]) == 64
    assert report["summary"]["hunks"]["failed"] == 0 and report["summary"]["hunks"]["fuzz"] == 0
    assert (out / "letta" / "server").is_dir() and (out / "alembic.ini").is_file()
    diff = subprocess.run(["git", "diff", "--name-only", "upstream/0.16.8"], cwd=out, capture_output=True, text=True, check=True).stdout
    touched = {f["path"] for p in report["patches"] for f in p["files"]}
    assert touched and all(path in diff for path in touched)


def test_pip_is_asked_once_per_configuration(monkeypatch, tmp_path):
    from ketta_build import index

    asked = []
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://a.invalid/simple\n")
    monkeypatch.setenv("KETTA_BUILD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(index, "_PIP_CONFIG", {})
    monkeypatch.setattr(index, "_ask_pip_config",
                        lambda: asked.append(1) or ({"global.index-url": "https://a.invalid/simple"}, [str(conf)]))
    monkeypatch.delenv("PIP_CONFIG_FILE", raising=False)
    assert index._pip_config() == index._pip_config() == {"global.index-url": "https://a.invalid/simple"}
    assert len(asked) == 1
    index._pip_config()["global.index-url"] = "changed by a caller"
    assert index._pip_config()["global.index-url"] == "https://a.invalid/simple", "callers get a copy"
    monkeypatch.setattr(index, "_PIP_CONFIG", {})  # a new process: the answer on disk is reused
    assert index._pip_config()["global.index-url"] == "https://a.invalid/simple" and len(asked) == 1
    conf.write_text("[global]\nindex-url = https://b.invalid/simple\n")  # a file pip read changed: asked again
    monkeypatch.setattr(index, "_PIP_CONFIG", {})
    index._pip_config()
    assert len(asked) == 2
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "other.conf"))  # another configuration: asked again
    index._pip_config()
    assert len(asked) == 3


def test_pip_configuration_is_read_from_the_real_pip(monkeypatch, tmp_path):
    from ketta_build import index

    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://c.invalid/simple\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    config, files = index._ask_pip_config()
    assert config["global.index-url"] == "https://c.invalid/simple" and str(conf) in files


def _locked_project(tmp_path):
    """A project with a ``server`` extra and its uv.lock (made offline)."""
    from ketta_build.letta import wheel as letta_wheel

    project = tmp_path / "proj"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "p"\nversion = "1"\nrequires-python = ">=3.11"\n'
                                            '[project.optional-dependencies]\nserver = []\n')
    letta_wheel.run_uv(["lock", "--offline", "--quiet"], cwd=project)
    return project


def test_constraints_are_exported_again_only_when_the_lock_changes(tmp_path):
    from ketta_build.letta import wheel as letta_wheel

    project = _locked_project(tmp_path)
    dest = tmp_path / "constraints.txt"
    letta_wheel.export_constraints(project, dest, ("server",))
    first = dest.stat().st_mtime_ns
    letta_wheel.export_constraints(project, dest, ("server",))
    assert dest.stat().st_mtime_ns == first, "the same lock and extras: the file is kept"
    (project / "uv.lock").write_text((project / "uv.lock").read_text() + "\n")
    letta_wheel.export_constraints(project, dest, ("server",))
    assert dest.stat().st_mtime_ns != first, "a changed lock is exported again"


def test_constraints_do_not_depend_on_where_they_are_written(tmp_path):
    # Their sha256 is part of every matrix cell's key: two checkouts in two places must agree.
    from ketta_build.letta import wheel as letta_wheel

    project = _locked_project(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "elsewhere" / "deeper").mkdir(parents=True)
    one = letta_wheel.export_constraints(project, tmp_path / "a" / "constraints.txt", ("server",))
    two = letta_wheel.export_constraints(project, tmp_path / "elsewhere" / "deeper" / "c.txt", ("server",))
    assert one.read_bytes() == two.read_bytes()
    assert str(tmp_path) not in one.read_text()
    # A file exported before the header was left out (its source recorded without the form) is
    # exported again, not kept: a stale one made the keys of two checkouts differ.
    record = one.with_name(f".{one.name}.source")
    import hashlib

    old_source = hashlib.sha256((project / "uv.lock").read_bytes() + b"server").hexdigest()
    one.write_text("# This file was autogenerated by uv via the following command:\n#    uv export -o /old/place\n" + one.read_text())
    record.write_text(old_source + "\n")
    letta_wheel.export_constraints(project, one, ("server",))
    assert one.read_bytes() == two.read_bytes()


def test_the_letta_series_spells_out_the_built_in_letta_profile():
    """patches/upstream.toml is the profile a series without one gets: Letta's behaviour does not
    depend on whether the file is there."""
    from ketta_build.letta import PROFILE as LETTA
    from ketta_build.profile import default_profile, load_profile

    assert default_profile() is LETTA

    assert load_profile(Path(__file__).resolve().parent.parent / "patches") == LETTA


@pytest.mark.parametrize("edit,key", [("label", "lable"), ("must_contain", "must_contian"), ("kind", "knd")])
def test_a_misspelt_profile_key_is_refused_naming_its_line(tmp_path, edit, key):
    """A misspelt key once fell back to its default without a word: a wheel shipped as +ketta.N, not +acme.N."""
    from ketta_build.errors import SeriesError
    from ketta_build.profile import load_profile

    (tmp_path / "upstream.toml").write_text('[upstream]\nname = "idna"\nlabel = "acme"\nmust_contain = []\n\n'
                                            '[wheel]\nkind = "any"\n'.replace(f"\n{edit} =", f"\n{key} ="))
    with pytest.raises(SeriesError, match=f"unknown key\\(s\\) {key}") as exc:
        load_profile(tmp_path)
    assert str(exc.value).startswith(f"{tmp_path / 'upstream.toml'}:")
