"""A second real upstream, end to end: idna (flit-core; its tests ship in its sdist) from the package index.

``tests/upstreams/idna/`` keeps a two-patch series for it, made with ketta-build itself: 0001 applies
to every supported release (3.8 … 3.10, at an offset on the older ones); 0002 serves 3.10, and 3.11
changed a line of its context, so a port to 3.11 carries it by a 3-way merge. The matrix runs idna's
own tests on the stock and the patched wheel. ``tests/upstreams/tomli/`` (tomli, whose sdists ship
no tests) shows the upstream cell saying so. Network: the releases come from the index through the
user's pip configuration.
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
UPSTREAMS = Path(__file__).with_name("upstreams")
SERIES = UPSTREAMS / "idna"
RELEASES = ("3.8", "3.9", "3.10")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def cache_dir(shared_tmp) -> Path:
    """One cache for the module's tests, whichever xdist worker runs them (the cache locks what it makes)."""
    path = shared_tmp / "any-upstream-cache"
    path.mkdir(exist_ok=True)
    return path


def _checkout(tmp_path: Path, monkeypatch, series: Path) -> Path:
    root = tmp_path / f"acme-{series.name}"
    shutil.copytree(series, root / "patches")
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "series"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    """A downstream's repository holding the kept idna series as ``patches/``, committed."""
    return _checkout(tmp_path, monkeypatch, SERIES)


def test_init_writes_the_profile_and_pins_what_the_index_serves(tmp_path, capsys, cache_dir):
    code, out, err = run(capsys, "init", "--upstream", "idna", "--patches", str(tmp_path / "p"), "--label", "acme",
                         "--releases", ">=3.8,<=3.10", "--cache-dir", str(cache_dir), "--json", str(tmp_path / "i.json"))
    assert code == 0, err
    made = tmp_path / "p"
    assert sorted(p.name for p in made.iterdir()) == ["build-number", "releases.toml", "series", "upstream.toml"]
    assert (made / "releases.toml").read_text().split("[[release]]", 1)[1] == \
        (SERIES / "releases.toml").read_text().split("[[release]]", 1)[1]  # the same pins as the kept series
    assert 'name = "idna"' in (made / "upstream.toml").read_text() and 'label = "acme"' in (made / "upstream.toml").read_text()
    doc = json.loads((tmp_path / "i.json").read_text())
    assert doc["schema"] == "ketta-build/init/1" and [r["version"] for r in doc["releases"]] == list(RELEASES)
    again = run(capsys, "init", "--upstream", "idna", "--patches", str(made), "--cache-dir", str(cache_dir))
    assert again[0] == 5 and "already here" in again[2]  # never over a series


def test_apply_export_lint_range_diff_status_on_every_release(checkout, capsys, cache_dir):
    cache = ("--cache-dir", str(cache_dir))
    for version in RELEASES:
        code, out, err = run(capsys, "apply", "--release", version, *cache, "--json", f"apply-{version}.json")
        assert code == 0, err
        report = json.loads(Path(f"apply-{version}.json").read_text())
        applied = {p["name"]: p["outcome"] for p in report["patches"]}
        assert applied["0001-cite-the-label-length-limit.diff"] in ("clean", "offset"), applied
        assert ("0002-say-why-a-labels-are-lower-cased.diff" in applied) == (version == "3.10")
        assert "# acme: RFC 1035 section 2.3.4" in (checkout / "build" / version / "idna/core.py").read_text()
    base = subprocess.run(["git", "log", "--format=%s", "-1", "upstream/3.10"], cwd=checkout / "build" / "3.10",
                          capture_output=True, text=True).stdout.strip()
    assert base == "idna 3.10 (pristine upstream)", base
    assert run(capsys, "export", "--tree", "build/3.10", "--check", *cache)[0] == 0  # the round trip: nothing differs
    code, out, _ = run(capsys, "export", "--tree", "build/3.10", *cache)
    assert code == 0 and "nothing to write" in out
    assert run(capsys, "lint", *cache)[0] == 0
    code, out, err = run(capsys, "range-diff", "--release", "3.10", "HEAD", "patches", *cache)
    assert code == 0 and "2 -> 2   unchanged                    Say why A-labels are lower-cased" in out, err
    code, _, err = run(capsys, "status", *cache, "--json", "status.json")
    assert code == 0, err
    rows = {p["patch"]: p for p in json.loads(Path("status.json").read_text())["patches"]}
    assert set(rows["0001-cite-the-label-length-limit.diff"]["releases"]) == set(RELEASES)
    code, _, err = run(capsys, "series", "--release", "3.9", *cache)
    assert code == 0 and "idna 3.9 is outside [idna>=3.10]" in _ + err


def test_port_to_a_newer_release_carries_a_patch_by_a_3_way_merge(checkout, capsys, cache_dir):
    code, out, err = run(capsys, "upstream", "check", "--cache-dir", str(cache_dir), "--json", "check.json")
    assert code == 11, err  # newer releases that need porting
    newer = {r["version"]: r for r in json.loads(Path("check.json").read_text())["releases"]}
    assert {p["name"]: p["outcome"] for p in newer["3.11"]["patches"]} == {
        "0001-cite-the-label-length-limit.diff": "clean", "0002-say-why-a-labels-are-lower-cased.diff": "merged"}
    assert "idna 3.11" in out and "letta" not in out
    code, out, err = run(capsys, "port", "--release", "3.11", "--cache-dir", str(cache_dir), "--json", "port.json")
    assert code == 0, err
    ported = {p["name"]: p["outcome"] for p in json.loads(Path("port.json").read_text())["patches"]}
    assert ported == {"0001-cite-the-label-length-limit.diff": "clean", "0002-say-why-a-labels-are-lower-cased.diff": "merged"}
    lines = [line.split() for line in (checkout / "patches" / "series").read_text().splitlines() if line.startswith("0002")]
    assert ["0002-say-why-a-labels-are-lower-cased-3.11.diff", "[idna>=3.11]"] in lines, lines
    assert ["0002-say-why-a-labels-are-lower-cased.diff", "[idna>=3.10,<3.11]"] in lines, lines
    assert 'version = "3.11"' in (checkout / "patches" / "releases.toml").read_text()
    assert "idna 3.11 is now supported" in out
    assert run(capsys, "lint", "--cache-dir", str(cache_dir))[0] == 0
    assert run(capsys, "export", "--tree", "build/3.11", "--check", "--cache-dir", str(cache_dir))[0] == 0


def test_what_only_letta_has_is_refused_in_one_line(checkout, capsys):
    code, _, err = run(capsys, "serve", "--release", "3.10")
    assert code == 2 and "kept for idna" in err and err.count("\n") == 1, err


def test_the_wheel_is_the_upstream_backends_relabeled_reproducible_with_its_sbom(checkout, capsys, cache_dir, tmp_path):
    from ketta_build import sbom

    wheels = []
    for out_dir in ("dist-a", "dist-b"):
        code, out, err = run(capsys, "wheel", "--release", "3.10", "--dist-dir", out_dir, "--cache-dir", str(cache_dir))
        assert code == 0, err
        [wheel] = sorted(Path(out_dir).glob("*.whl"))
        wheels.append(wheel)
    assert wheels[0].name == "idna-3.10+acme.1-py3-none-any.whl"
    assert wheels[0].read_bytes() == wheels[1].read_bytes()  # reproducible
    with zipfile.ZipFile(wheels[0]) as archive:
        names = archive.namelist()
        document = archive.read("idna-3.10+acme.1.dist-info/sboms/ketta.cdx.json").decode()
        provenance = json.loads(archive.read("idna/ketta_provenance.json"))
        core = archive.read("idna/core.py").decode()
    assert "# acme: A-labels compare case-insensitively" in core
    assert provenance["project"] == "idna" and provenance["release"] == "3.10" and "letta" not in provenance
    sbom.validate(document)
    component = json.loads(document)["metadata"]["component"]
    assert component["name"] == "idna" and component["version"] == "3.10+acme.1"
    assert [p["diff"]["url"].rsplit("/", 1)[-1] for p in component["pedigree"]["patches"]] == \
        ["0001-cite-the-label-length-limit.diff", "0002-say-why-a-labels-are-lower-cased.diff"]
    assert "idna-3.10+acme.1.dist-info/RECORD" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheels[0])], check=True)
    probe = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); "
                            "import idna, importlib.metadata as m; print(idna.encode('bücher.de').decode(), m.version('idna'))"],
                           capture_output=True, text=True)
    assert probe.stdout.split() == ["xn--bcher-kva.de", "3.10+acme.1"], probe.stderr



def test_the_matrix_runs_idnas_own_tests_on_the_stock_and_the_patched_wheel(checkout, capsys, cache_dir):
    code, out, err = run(capsys, "matrix", "--patches", str(checkout / "patches"), "--suite", "upstream", "--release",
                         "3.9", "--release", "3.10", "-p", "1", "--cache-dir", str(cache_dir), "--report-dir", "reports")
    assert code == 0, out + err
    cells = {c["version"]: c for c in json.loads(Path("reports/matrix.json").read_text())["cells"]}
    assert set(cells) == {"3.9", "3.10"} and all(c["status"] == "pass" and c["passed"] > 20 for c in cells.values()), cells
    assert (Path("reports") / "matrix.html").is_file()


def test_the_matrix_runs_the_upstream_cell_and_says_tomli_ships_no_tests(tmp_path, monkeypatch, capsys, cache_dir):
    """tomli's sdists (2.0.1 … 2.2.1) ship src/ only, no tests/: the upstream cell builds both wheels and
    their environments, then is an error that says so, never a green cell with nothing tested."""
    checkout = _checkout(tmp_path, monkeypatch, UPSTREAMS / "tomli")
    code, out, err = run(capsys, "matrix", "--patches", str(checkout / "patches"), "--suite", "upstream",
                         "--release", "2.2.1", "--cache-dir", str(cache_dir), "--report-dir", "reports")
    assert code == 1, out + err
    [cell] = json.loads(Path("reports/matrix.json").read_text())["cells"]
    assert (cell["version"], cell["suite"], cell["env"], cell["status"]) == ("2.2.1", "upstream", "tomli221-upstream", "error")
    log = Path("reports", cell["log"]).read_text()
    assert "the patched wheel of tomli 2.2.1" in log and "the release has none of the test paths tests" in log
