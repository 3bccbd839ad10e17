"""init's judgements about a release it fetched, offline: where the package and the tests are."""

from __future__ import annotations

import pytest

from ketta_build.errors import KettaError, UpstreamError
from ketta_build.newseries import _package_of, _tests_of, create_series


def tree(root, *files):
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    return root


def test_the_package_is_found_in_src_flat_namespace_and_single_module_layouts(tmp_path):
    assert _package_of(tree(tmp_path / "a", "src/tomli/__init__.py", "tests/__init__.py"), "tomli")[0] == "tomli"
    assert _package_of(tree(tmp_path / "b", "idna/__init__.py", "tests/__init__.py", "docs/__init__.py"), "idna")[0] == "idna"
    assert _package_of(tree(tmp_path / "c", "jaraco/functools/__init__.py"), "jaraco.functools") == \
        ("jaraco.functools", "jaraco/functools/__init__.py")
    assert _package_of(tree(tmp_path / "d", "six.py", "test_six.py"), "six") == ("six", "six.py")
    with pytest.raises(UpstreamError, match="--package NAME"):
        _package_of(tree(tmp_path / "e", "a/__init__.py", "b/__init__.py"), "something")


def test_the_tests_are_found_where_the_release_keeps_them(tmp_path):
    assert _tests_of(tree(tmp_path / "a", "tests/test_x.py")) == ("tests",)
    assert _tests_of(tree(tmp_path / "b", "testing/test_x.py")) == ("testing",)
    assert _tests_of(tree(tmp_path / "c", "test_six.py", "six.py")) == ("test_six.py",)
    assert _tests_of(tree(tmp_path / "d", "src/tomli/__init__.py")) == ()


@pytest.mark.parametrize("option,value,flag", [("label", "Acme!", "--label"), ("package", "os-path", "--package")])
def test_a_bad_label_or_package_is_refused_before_anything_is_asked_or_written(tmp_path, option, value, flag):
    with pytest.raises(KettaError, match=flag) as exc:
        create_series("idna", tmp_path / "p", index_url="http://127.0.0.1:9/unreachable", **{option: value})
    assert "tmp" not in str(exc.value).split(flag)[0] and not (tmp_path / "p").exists()


def test_the_review_watch_list_is_read_and_a_bad_one_is_refused_on_its_line(tmp_path):
    from ketta_build.errors import SeriesError
    from ketta_build.profile import load_profile

    (tmp_path / "upstream.toml").write_text('[upstream]\nname = "idna"\n\n[review]\n'
                                            'watch = { "idna/core.py" = ["encode", "decode"], "idna/codec.py" = [] }\n')
    assert load_profile(tmp_path).watch == (("idna/core.py", ("encode", "decode")), ("idna/codec.py", ()))
    for bad in ('watch = ["idna/core.py"]', 'watch = { "../outside.py" = [] }', 'watch = { "idna/core.py" = [1] }'):
        (tmp_path / "upstream.toml").write_text(f'[upstream]\nname = "idna"\n\n[review]\n{bad}\n')
        with pytest.raises(SeriesError) as exc:
            load_profile(tmp_path)
        assert exc.value.line == 5 and "review.watch" in str(exc.value)


def test_a_version_in_a_header_may_name_its_project():
    from ketta_build.patchfile import version_text

    for given in ("0.16.8", "v0.16.8", "letta 0.16.8", "letta0.16.8", "letta==0.16.8", " mypkg v0.16.8 "):
        assert version_text(given) == "0.16.8", given
    assert version_text("py3x 1.0") == "1.0" and version_text("letta>=0.16.4") == "letta>=0.16.4"


def test_init_writes_the_series_and_keeps_build_products_out_of_git(tmp_path, local_index, capsys):
    """Offline init against a local index: the four files, pinned releases, and .gitignore gains
    build/, dist/ and reports/ (what it already ignores is kept, nothing twice); a second init refuses."""
    import json
    import tomllib

    from conftest import make_sdist
    from ketta_build.cli import main

    local_index.project = "kettademo"
    for version in ("1.0", "1.1"):
        local_index.add(make_sdist(tmp_path / f"kettademo-{version}.tar.gz", version, {
            "pyproject.toml": f'[project]\nname = "kettademo"\nversion = "{version}"\n',
            "kettademo/__init__.py": "", "tests/test_x.py": ""}, name="kettademo"))
    project = tmp_path / "fork"
    project.mkdir()
    (project / ".gitignore").write_text("*.pyc\nbuild\n")  # no newline issue, and build already there
    code = main(["init", "--upstream", "kettademo", "--patches", str(project / "patches"), "--label", "acme",
                 "--index-url", local_index.url, "--cache-dir", str(tmp_path / "cache"), "--json", str(tmp_path / "i.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert (project / ".gitignore").read_text() == ("*.pyc\nbuild\n# ketta-build: build trees, wheels, matrix reports\n"
                                                   "dist/\nreports/\n")
    assert str(project / ".gitignore") in json.loads((tmp_path / "i.json").read_text())["written"]
    releases = tomllib.loads((project / "patches" / "releases.toml").read_text())["release"]
    assert [r["version"] for r in releases] == ["1.0", "1.1"] and all(len(r["sha256"]) == 64 for r in releases)
    assert "ketta-build apply --patches" in out and "--release 1.1" in out
    before = (project / ".gitignore").read_text()
    assert main(["init", "--upstream", "kettademo", "--patches", str(project / "patches"),
                 "--index-url", local_index.url, "--cache-dir", str(tmp_path / "cache")]) == 5
    assert (project / ".gitignore").read_text() == before


def test_a_gitignore_that_is_a_link_is_never_written_through(tmp_path):
    from ketta_build.newseries import _gitignore

    (tmp_path / "elsewhere").write_text("")
    (tmp_path / ".gitignore").symlink_to(tmp_path / "elsewhere")
    assert _gitignore(tmp_path) is None
    (tmp_path / ".gitignore").unlink()
    assert _gitignore(tmp_path) == b"# ketta-build: build trees, wheels, matrix reports\nbuild/\ndist/\nreports/\n"
