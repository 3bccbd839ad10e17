"""A second real upstream, end to end: tomli (flit-core, tests in its sdist) from the package index.

``tests/upstreams/tomli/`` keeps a two-patch series for it, made with ketta-build itself: 0001 applies
to every supported release (2.0.1 … 2.2.1, at an offset on the older ones); 0002 serves 2.2.1, and
2.3.0 changed a line of its context, so a port to 2.3.0 carries it by a 3-way merge. Network: the
releases come from the index through the user's pip configuration.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ketta_build.cli import main

pytestmark = pytest.mark.network
SERIES = Path(__file__).with_name("upstreams") / "tomli"
RELEASES = ("2.0.1", "2.0.2", "2.1.0", "2.2.1")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    """A downstream's repository holding the kept series as ``patches/``, committed."""
    root = tmp_path / "acme-tomli"
    shutil.copytree(SERIES, root / "patches")
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "series"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    monkeypatch.chdir(root)
    return root


def test_init_writes_the_profile_and_pins_what_the_index_serves(tmp_path, capsys, cache_dir):
    code, out, err = run(capsys, "init", "--upstream", "tomli", "--patches", str(tmp_path / "p"), "--label", "acme",
                         "--releases", ">=2.0.1,<=2.2.1", "--cache-dir", str(cache_dir), "--json", str(tmp_path / "i.json"))
    assert code == 0, err
    made = tmp_path / "p"
    assert sorted(p.name for p in made.iterdir()) == ["build-number", "releases.toml", "series", "upstream.toml"]
    assert (made / "releases.toml").read_text().split("[[release]]", 1)[1] == \
        (SERIES / "releases.toml").read_text().split("[[release]]", 1)[1]  # the same pins as the kept series
    assert 'name = "tomli"' in (made / "upstream.toml").read_text() and 'label = "acme"' in (made / "upstream.toml").read_text()
    doc = json.loads((tmp_path / "i.json").read_text())
    assert doc["schema"] == "ketta-build/init/1" and [r["version"] for r in doc["releases"]] == list(RELEASES)
    again = run(capsys, "init", "--upstream", "tomli", "--patches", str(made), "--cache-dir", str(cache_dir))
    assert again[0] == 5 and "already here" in again[2]  # never over a series


def test_apply_export_lint_range_diff_status_on_every_release(checkout, capsys, cache_dir):
    cache = ("--cache-dir", str(cache_dir))
    for version in RELEASES:
        code, out, err = run(capsys, "apply", "--release", version, *cache, "--json", f"apply-{version}.json")
        assert code == 0, err
        report = json.loads(Path(f"apply-{version}.json").read_text())
        applied = {p["name"]: p["outcome"] for p in report["patches"]}
        assert applied["0001-say-which-build-parses.diff"] in ("clean", "offset"), applied
        assert ("0002-document-the-whitespace-set.diff" in applied) == (version == "2.2.1")
        assert "# acme: this parser is the acme build" in (checkout / "build" / version / "src/tomli/_parser.py").read_text()
    assert run(capsys, "export", "--tree", "build/2.2.1", "--check", *cache)[0] == 0  # the round trip: nothing differs
    code, out, _ = run(capsys, "export", "--tree", "build/2.2.1", *cache)
    assert code == 0 and "nothing to write" in out
    assert run(capsys, "lint", *cache)[0] == 0
    code, out, err = run(capsys, "range-diff", "--release", "2.2.1", "HEAD", "patches", *cache)
    assert code == 0 and "2 -> 2   unchanged                    Document the whitespace set" in out, err
    code, _, err = run(capsys, "status", *cache, "--json", "status.json")
    assert code == 0, err
    rows = {p["patch"]: p for p in json.loads(Path("status.json").read_text())["patches"]}
    assert set(rows["0001-say-which-build-parses.diff"]["releases"]) == set(RELEASES)
    code, _, err = run(capsys, "series", "--release", "2.1.0", *cache)
    assert code == 0 and "tomli 2.1.0 is outside [tomli>=2.2.1]" in _ + err


def test_port_to_a_newer_release_carries_a_patch_by_a_3_way_merge(checkout, capsys, cache_dir):
    code, out, err = run(capsys, "upstream", "check", "--cache-dir", str(cache_dir), "--json", "check.json")
    assert code == 11, err  # newer releases that need porting
    newer = {r["version"]: r for r in json.loads(Path("check.json").read_text())["releases"]}
    assert {p["name"]: p["outcome"] for p in newer["2.3.0"]["patches"]} == {
        "0001-say-which-build-parses.diff": "offset", "0002-document-the-whitespace-set.diff": "merged"}
    assert "tomli 2.3.0" in out and "letta" not in out
    code, out, err = run(capsys, "port", "--release", "2.3.0", "--cache-dir", str(cache_dir), "--json", "port.json")
    assert code == 0, err
    ported = {p["name"]: p["outcome"] for p in json.loads(Path("port.json").read_text())["patches"]}
    assert ported == {"0001-say-which-build-parses.diff": "offset", "0002-document-the-whitespace-set.diff": "merged"}
    series = (checkout / "patches" / "series").read_text()
    assert "0002-document-the-whitespace-set-2.3.0.diff    [tomli>=2.3.0]" in series.replace("  ", " ") or \
        "0002-document-the-whitespace-set-2.3.0.diff" in series and "[tomli>=2.3.0]" in series
    assert 'version = "2.3.0"' in (checkout / "patches" / "releases.toml").read_text()
    assert "tomli 2.3.0 is now supported" in out
    assert run(capsys, "lint", "--cache-dir", str(cache_dir))[0] == 0
    assert run(capsys, "export", "--tree", "build/2.3.0", "--check", "--cache-dir", str(cache_dir))[0] == 0


def test_what_only_letta_has_is_refused_in_one_line(checkout, capsys):
    code, _, err = run(capsys, "serve", "--release", "2.2.1")
    assert code == 2 and "kept for tomli" in err and err.count("\n") == 1, err


def test_the_wheel_is_the_upstream_backends_relabeled_reproducible_with_its_sbom(checkout, capsys, cache_dir, tmp_path):
    from ketta_build import sbom

    wheels = []
    for out_dir in ("dist-a", "dist-b"):
        code, out, err = run(capsys, "wheel", "--release", "2.2.1", "--dist-dir", out_dir, "--cache-dir", str(cache_dir))
        assert code == 0, err
        [wheel] = sorted(Path(out_dir).glob("*.whl"))
        wheels.append(wheel)
    assert wheels[0].name == "tomli-2.2.1+acme.1-py3-none-any.whl"
    assert wheels[0].read_bytes() == wheels[1].read_bytes()  # reproducible
    with zipfile.ZipFile(wheels[0]) as archive:
        names = archive.namelist()
        document = archive.read("tomli-2.2.1+acme.1.dist-info/sboms/ketta.cdx.json").decode()
        provenance = json.loads(archive.read("tomli/ketta_provenance.json"))
        parser = archive.read("tomli/_parser.py").decode()
    assert "# acme: whitespace is only space and tab" in parser
    assert provenance["project"] == "tomli" and provenance["release"] == "2.2.1" and "letta" not in provenance
    sbom.validate(document)
    component = json.loads(document)["metadata"]["component"]
    assert component["name"] == "tomli" and component["version"] == "2.2.1+acme.1"
    assert [p["diff"]["url"].rsplit("/", 1)[-1] for p in component["pedigree"]["patches"]] == \
        ["0001-say-which-build-parses.diff", "0002-document-the-whitespace-set.diff"]
    assert "tomli-2.2.1+acme.1.dist-info/RECORD" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheels[0])], check=True)
    probe = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); "
                            "import tomli, importlib.metadata as m; print(tomli.loads('a = 1')['a'], m.version('tomli'))"],
                           capture_output=True, text=True)
    assert probe.stdout.split() == ["1", "2.2.1+acme.1"], probe.stderr



def test_the_matrix_runs_the_upstream_cell_and_says_tomli_ships_no_tests(checkout, capsys, cache_dir):
    """tomli's sdists (2.0.1 … 2.2.1) ship src/ only, no tests/: the upstream cell builds both wheels and
    their environments, then is an error that says so, never a green cell with nothing tested."""
    code, out, err = run(capsys, "matrix", "--patches", str(checkout / "patches"), "--suite", "upstream",
                         "--release", "2.2.1", "--cache-dir", str(cache_dir), "--report-dir", "reports")
    assert code == 1, out + err
    [cell] = json.loads(Path("reports/matrix.json").read_text())["cells"]
    assert (cell["version"], cell["suite"], cell["env"], cell["status"]) == ("2.2.1", "upstream", "tomli221-upstream", "error")
    log = Path("reports", cell["log"]).read_text()
    assert "the patched wheel of tomli 2.2.1" in log and "the release has none of the test paths tests" in log
