"""The upstream suite for any upstream (ketta_build.upstreamtests): a release's own tests, stock and patched.

Offline: a made-up flit-core project, ``kettademo`` (flat layout, its tests in ``tests/`` of its sdist),
served by the local index; its wheels are built without isolation (this environment's flit-core) and
its test environments get pytest from this environment (a ``.pth``) instead of the index.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from pathlib import Path

import pytest

from conftest import make_diff, make_sdist, write_patch
from ketta_build import upstreamtests
from ketta_build.cache import Cache
from ketta_build.cli import main
from ketta_build.errors import SeriesError

INIT = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b + 1  # upstream's bug\n"
TESTS = (
    "import kettademo\n\n\n"
    "def test_add():\n    assert kettademo.add(2, 2) == 4\n\n\n"
    "def test_sub():\n    assert kettademo.sub(3, 2) == 1\n\n\n"
    "def test_the_installed_wheel_is_tested():\n    assert 'site-packages' in kettademo.__file__\n\n\n"
    "class TestKind:\n    def test_skipped(self):\n        import pytest\n        pytest.skip('not here')\n"
)


def _files(version: str) -> dict[str, str]:
    return {
        "pyproject.toml": ('[build-system]\nrequires = ["flit_core>=3.9"]\nbuild-backend = "flit_core.buildapi"\n\n'
                           f'[project]\nname = "kettademo"\nversion = "{version}"\ndescription = "A demo"\n'),
        "PKG-INFO": f"Metadata-Version: 2.1\nName: kettademo\nVersion: {version}\nSummary: A demo\n",
        "kettademo/__init__.py": INIT,
        "tests/test_demo.py": TESTS,
    }


BREAK = INIT.replace("return a + b\n", "return a + b + 1  # the patch's change\n")
FIX = INIT.replace("return a - b + 1  # upstream's bug\n", "return a - b\n")
PATCHES = {"break": ("0001-break-add.diff", BREAK), "fix": ("0002-fix-sub.diff", FIX)}


@pytest.fixture
def offline(monkeypatch):
    """Builds with this environment's flit-core; test environments with this environment's pytest."""
    monkeypatch.setenv("UV_OFFLINE", "1")
    monkeypatch.setenv("UV_NO_BUILD_ISOLATION", "1")
    original = upstreamtests.make_environment

    def with_our_pytest(dest, wheel, requirements, index_url=None):
        python = original(dest, wheel, (), index_url)
        [site] = list(dest.glob("lib/python*/site-packages"))
        (site / "zz-this-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        return python

    monkeypatch.setattr(upstreamtests, "make_environment", with_our_pytest)


@pytest.fixture
def make_series(tmp_path, local_index):
    """A kind-any series for kettademo 1.0 and 1.1 on the local index: ``make_series(*patches, expected=...)``."""
    local_index.project = "kettademo"
    pins = []
    for version in ("1.0", "1.1"):
        sdist = make_sdist(tmp_path / f"kettademo-{version}.tar.gz", version, _files(version), name="kettademo")
        local_index.add(sdist)
        pins.append(f'[[release]]\nversion = "{version}"\ndate = "2026-01-0{len(pins) + 1}"\n'
                    f'sha256 = "{hashlib.sha256(sdist.read_bytes()).hexdigest()}"\n')

    def make(*patches: str, expected: str | None = None, name: str = "patches") -> Path:
        series = tmp_path / name
        series.mkdir()
        (series / "upstream.toml").write_text('[upstream]\nname = "kettademo"\ntag = "{version}"\nlabel = "acme"\n\n'
                                              '[wheel]\nkind = "any"\n')
        (series / "releases.toml").write_text("\n".join(pins))
        (series / "build-number").write_text("1\n")
        lines = []
        for which in patches:
            file, new = PATCHES[which]
            write_patch(series, file, make_diff("kettademo/__init__.py", INIT, new), base="1.0")
            lines.append(file)
        (series / "series").write_text("".join(line + "\n" for line in lines))
        if expected is not None:
            (series / "upstream-expected-failures.toml").write_text(expected)
        return series

    return make


def _run(series: Path, tmp_path: Path, local_index) -> upstreamtests.UpstreamTestsResult:
    return upstreamtests.run_release("1.0", series_dir=series, build_root=tmp_path / "build",
                                     cache=Cache(tmp_path / "cache", lock_timeout=30), index_url=local_index.url)


def test_a_patch_that_breaks_an_upstream_test_is_a_regression(make_series, offline, tmp_path, local_index):
    result = _run(make_series("break"), tmp_path, local_index)
    assert list(result.regressions) == ["tests/test_demo.py::test_add"] and not result.ok and result.exit_code == 1
    assert result.stock.outcomes["tests/test_demo.py::test_add"].status == "passed"
    assert result.under_test.outcomes["tests/test_demo.py::test_the_installed_wheel_is_tested"].status == "passed"
    assert list(result.failing_both) == ["tests/test_demo.py::test_sub"]  # upstream's own bug: shown, not counted
    assert result.under_test.outcomes["tests/test_demo.py::TestKind::test_skipped"].status == "skipped"
    assert result.under_test.wheel == "kettademo-1.0+acme.1-py2.py3-none-any.whl" and result.stock.wheel.startswith("kettademo-1.0-")
    doc = result.as_json()
    assert doc["schema"] == "ketta-build/upstream-tests/1" and doc["ok"] is False
    assert doc["regressions"][0]["test"] == "tests/test_demo.py::test_add"


def test_a_listed_failure_is_accepted_with_its_reason(make_series, offline, tmp_path, local_index):
    listed = ('[[failure]]\ntest = "tests/test_demo.py::test_add"\nreleases = ">=1.0"\n'
              'why = "acme adds one on purpose"\n')
    result = _run(make_series("break", expected=listed), tmp_path, local_index)
    assert result.ok and result.expected == {"tests/test_demo.py::test_add": "acme adds one on purpose"}
    assert result.as_json()["expected_failures_file"] == "upstream-expected-failures.toml"


def test_a_listed_failure_that_no_longer_fails_is_stale_and_a_fix_is_reported(make_series, offline, tmp_path, local_index):
    listed = '[[failure]]\ntest = "tests/test_demo.py::test_add"\nreleases = "==1.0"\nwhy = "it used to"\n'
    result = _run(make_series("fix", expected=listed), tmp_path, local_index)
    assert list(result.stale) == ["tests/test_demo.py::test_add"] and not result.regressions and not result.ok
    assert list(result.fixed) == ["tests/test_demo.py::test_sub"]
    assert result.fixed["tests/test_demo.py::test_sub"].status == "failed"


def test_the_matrix_runs_one_upstream_cell_per_release_without_tox(make_series, offline, tmp_path, local_index,
                                                                      monkeypatch, capsys):
    series = make_series("break")
    monkeypatch.chdir(tmp_path)  # a downstream's checkout: no tox.ini, no compat_tests/
    common = ("--patches", str(series), "--cache-dir", str(tmp_path / "cache"), "--index-url", local_index.url,
              "--build-root", str(tmp_path / "build"))
    code = main(["matrix", *common, "--suite", "upstream", "--release", "1.0", "1.1", "--report-dir", "r", "-p", "2",
                 "--json", "m.json"])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    doc = json.loads(Path("m.json").read_text())
    cells = {c["version"]: c for c in doc["cells"]}
    assert sorted(cells) == ["1.0", "1.1"] and {c["suite"] for c in cells.values()} == {"upstream"}
    assert cells["1.0"]["env"] == "kettademo10-upstream" and cells["1.0"]["status"] == "fail"
    assert cells["1.0"]["failures"] == ["tests/test_demo.py::test_add"]
    assert cells["1.0"]["passed"] == 1 and cells["1.0"]["skipped"] == 2  # the wheel test; the skip and upstream's bug
    for name in ("matrix.json", "matrix.md", "matrix.html", "upstream/1.0.json", "upstream/1.1-stock.log",
                 "builds/1.0.json", "builds/1.0-upstream.json"):
        assert (tmp_path / "r" / name).is_file(), name
    assert json.loads((tmp_path / "r/upstream/1.1.json").read_text())["regressions"][0]["test"] == "tests/test_demo.py::test_add"
    assert "REGRESSION tests/test_demo.py::test_add" in (tmp_path / "r" / cells["1.0"]["log"]).read_text()
    # CI's gate: one report from the per-release jobs' reports
    code = main(["matrix", "--patches", str(series), "--merge", "r", "--report-dir", "merged"])
    assert code == 1 and (tmp_path / "merged/upstream/1.0.json").is_file()


def test_the_matrix_of_a_clean_series_passes_and_no_patches_compares_stock_with_itself(make_series, offline, tmp_path,
                                                                                       local_index, monkeypatch, capsys):
    series = make_series("fix")
    monkeypatch.chdir(tmp_path)
    common = ("--patches", str(series), "--cache-dir", str(tmp_path / "cache"), "--index-url", local_index.url)
    assert main(["matrix", *common, "--release", "1.1", "--report-dir", "r"]) == 0, capsys.readouterr()
    assert main(["matrix", *common, "--release", "1.1", "--no-patches", "--report-dir", "n"]) == 0, capsys.readouterr()
    doc = json.loads((tmp_path / "n/upstream/1.1.json").read_text())
    assert doc["patched"] is False and [f["test"] for f in doc["failing_both"]] == ["tests/test_demo.py::test_sub"]
    assert main(["matrix", *common, "--release", "1.1", "--changed"]) != 0
    assert "leave it out" in capsys.readouterr().err


def test_a_cell_whose_inputs_have_a_stored_pass_is_reused_without_running_a_test(make_series, offline, tmp_path,
                                                                                  local_index, monkeypatch, capsys):
    """Issue #32: the upstream suite's cells are keyed like the registry's: the same wheels, sdist, [tests],
    list and Python are a stored pass (no environment made, no test run); --rerun, or a change to the
    reviewed list, runs the cell again; a failing cell is never stored."""
    made = []
    real = upstreamtests.make_environment
    monkeypatch.setattr(upstreamtests, "make_environment", lambda *a, **k: made.append(a[0]) or real(*a, **k))
    series = make_series("fix")
    monkeypatch.chdir(tmp_path)
    common = ("--patches", str(series), "--cache-dir", str(tmp_path / "cache"), "--index-url", local_index.url,
              "--release", "1.1", "--json", "m.json")

    def cell() -> dict:
        [only] = json.loads(Path("m.json").read_text())["cells"]
        return only

    assert main(["matrix", *common, "--report-dir", "r1"]) == 0, capsys.readouterr()
    assert len(made) == 2 and not cell()["reused"]  # stock and patched environments
    assert main(["matrix", *common, "--report-dir", "r2"]) == 0, capsys.readouterr()
    assert len(made) == 2 and cell()["reused"] and cell()["status"] == "pass"
    assert (tmp_path / "r2" / cell()["log"]).read_text() == (tmp_path / "r1" / "logs" / "kettademo11-upstream.log").read_text()
    assert main(["matrix", *common, "--report-dir", "r3", "--rerun"]) == 0, capsys.readouterr()
    assert len(made) == 4 and not cell()["reused"]
    (series / "upstream-expected-failures.toml").write_text("")  # the reviewed list is part of the key
    assert main(["matrix", *common, "--report-dir", "r4"]) == 0, capsys.readouterr()
    assert len(made) == 6 and not cell()["reused"]
    broken = make_series("break", name="broken")  # a failing cell is run every time
    for report in ("b1", "b2"):
        assert main(["matrix", *common[:1], str(broken), *common[2:], "--report-dir", report]) == 1
        assert not cell()["reused"]
    assert len(made) == 10


@pytest.mark.parametrize("text, complaint", [
    ('[[failure]]\ntest = "t"\nreleases = ">=1"\n', "each [[failure]] has test"),
    ('[[failure]]\ntest = "t"\nreleases = "one"\nwhy = "w"\n', "not a PEP 440 specifier"),
    ('[[failures]]\ntest = "t"\n', "unknown key"),
    ("[[failure]\n", "not valid TOML"),
])
def test_a_broken_list_is_refused_in_one_line(tmp_path, text, complaint):
    path = tmp_path / "upstream-expected-failures.toml"
    path.write_text(text)
    with pytest.raises(SeriesError, match=complaint.replace("[", r"\[")):
        upstreamtests.load_expectations(path)


def test_the_tests_table_is_read_and_checked(tmp_path):
    from ketta_build.profile import UpstreamTests, load_profile

    (tmp_path / "upstream.toml").write_text('[upstream]\nname = "demo"\n\n[tests]\npaths = ["t", "more/t.py"]\n'
                                            'requirements = []\nargs = ["-x"]\nexpected_failures = "x.toml"\n')
    assert load_profile(tmp_path).tests == UpstreamTests(("t", "more/t.py"), (), ("-x",), "x.toml")
    for bad in ('paths = []', 'paths = ["../up"]', 'expected_failures = "a/b.toml"', 'colour = "red"'):
        (tmp_path / "upstream.toml").write_text(f'[upstream]\nname = "demo"\n\n[tests]\n{bad}\n')
        with pytest.raises(SeriesError):
            load_profile(tmp_path)
