"""Hunk coverage (matrix --coverage) on a synthetic series over a tiny package, with coverage data made by
really running coverage.py on it: placing added lines in the final tree (shifted and changed by a later
patch), executable lines, statuses, the allow-list, the report sections, and the servers' start-up hook
(data saved on SIGTERM the way uvicorn passes it on)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ketta_build import hunkcoverage as hc
from ketta_build import servercoverage as sc
from ketta_build.matrixreport import report_html, report_json, report_markdown
from ketta_build.patchfile import parse_patch

from conftest import make_diff, write_patch

FILLER = "".join(f"\n\ndef filler{n}():\n    return {n}\n" for n in range(4))

PRISTINE = '"""Tiny module."""\n\n\ndef beta(x):\n    return x + 1\n' + FILLER + "\n\ndef gamma(x):\n    return x * 2\n" + FILLER

# 0001: alpha after the docstring (hunk 1), gamma's body changed (hunk 2), delta added at the end (hunk 3).
AFTER_0001 = ('"""Tiny module."""\n\n\ndef alpha(x):\n    if x > 100:\n        return "big"\n    return "small"\n'
              "\n\ndef beta(x):\n    return x + 1\n" + FILLER + "\n\ndef gamma(x):\n    return x * 3\n" + FILLER
              + "\n\ndef delta():\n    total = 0\n    return total\n")

# 0002: five lines at the top (everything of 0001 moves down), one of 0001's lines changed, a guard in beta
# (never called), and a comment only.
FINAL = ('"""Tiny module."""\nimport os\n\nLIMIT = 3\nNAME = os.sep\n\n\ndef alpha(x):\n    if x > 100:\n'
         '        return "huge"\n    return "small"\n'
         "\n\ndef beta(x):\n    if x < 0:\n        raise ValueError(x)\n    return x + 1\n" + FILLER
         + "\n\ndef gamma(x):\n    # tripled since 0001\n    return x * 3\n" + FILLER
         + "\n\ndef delta():\n    total = 0\n    return total\n")

README_0002 = "# tiny\n\nA package.\n"


def line_of(text: str, needle: str) -> int:
    return text.split("\n").index(needle) + 1


@pytest.fixture
def world(tmp_path):
    """The series (two patches), the pristine and final trees, and coverage data of a run that calls alpha(1)
    and gamma(2) only."""
    patches_dir = tmp_path / "patches"
    patches_dir.mkdir()
    p1 = write_patch(patches_dir, "0001-alpha.diff", make_diff("pkg/mod.py", PRISTINE, AFTER_0001))
    p2 = write_patch(patches_dir, "0002-more.diff",
                     make_diff("pkg/mod.py", AFTER_0001, FINAL, context=1) + make_diff("pkg/README.md", None, README_0002))
    patches = [parse_patch(p1), parse_patch(p2)]
    tree = tmp_path / "tree"
    (tree / "pkg").mkdir(parents=True)
    (tree / "pkg" / "__init__.py").write_text("")
    (tree / "pkg" / "mod.py").write_text(FINAL)
    (tree / "pkg" / "README.md").write_text(README_0002)
    pristine = {"pkg/mod.py": PRISTINE.encode()}

    def final(path: str) -> bytes | None:
        return (tree / path).read_bytes() if (tree / path).is_file() else None

    data = tmp_path / "data" / ".coverage"
    data.parent.mkdir()
    script = tmp_path / "drive.py"
    script.write_text("import pkg.mod as m\nm.alpha(1)\nm.gamma(2)\n")
    subprocess.run([sys.executable, "-m", "coverage", "run", f"--data-file={data}", f"--include={tree}/*", str(script)],
                   cwd=tree, check=True, env={**os.environ, "PYTHONPATH": str(tree)})
    return patches, pristine.get, final, data, tree


def by_hunk(results) -> dict[tuple[str, str, int], object]:
    return {(r.patch, r.path, r.index): r for r in results}


def test_added_lines_are_placed_in_the_final_file_through_a_later_patch(world):
    patches, pristine, final, _, _ = world
    placed = {(h.patch, h.path, h.index): h for h in hc.place_hunks(patches, pristine, final)}
    alpha = placed["0001-alpha.diff", "pkg/mod.py", 1]
    # Four lines added; 0002 moved them five lines down and replaced one ("big" -> "huge").
    assert alpha.added == 6  # def, if, return, return, and the two blank lines after
    expected = [line_of(FINAL, "def alpha(x):"), line_of(FINAL, "    if x > 100:"), line_of(FINAL, '    return "small"')]
    assert [n for n in alpha.lines if FINAL.split("\n")[n - 1].strip()] == expected
    assert alpha.note == "1 of its 6 added lines were changed by a later patch"
    huge = next(h for h in placed.values() if h.patch == "0002-more.diff" and line_of(FINAL, '        return "huge"') in h.lines)
    assert huge.path == "pkg/mod.py"
    gamma = placed["0001-alpha.diff", "pkg/mod.py", 2]
    assert gamma.lines == [line_of(FINAL, "    return x * 3")]
    readme = placed["0002-more.diff", "pkg/README.md", 1]
    assert readme.lines == [1, 2, 3]


def test_statuses_from_a_real_coverage_run(world):
    patches, pristine, final, data, tree = world
    placed = hc.place_hunks(patches, pristine, final)
    executed = sc.executed_lines(data, [tree])
    assert line_of(FINAL, "    return x * 3") in executed["pkg/mod.py"]
    record = hc.release_coverage("0.16.8", placed, final, executed, [])
    results = {(h["patch"], h["path"], h["index"]): h for p in record["patches"] for h in p["detail"]}
    assert results["0001-alpha.diff", "pkg/mod.py", 1]["status"] == hc.COVERED  # alpha(1) ran
    assert results["0001-alpha.diff", "pkg/mod.py", 2]["status"] == hc.COVERED  # gamma(2) ran
    delta = results["0001-alpha.diff", "pkg/mod.py", 3]
    assert delta["status"] == hc.NOT_COVERED  # only its def line ran, at import
    assert (delta["executable"], delta["executed"]) == (3, 1)
    assert "only its def/class lines ran" in delta["note"]
    assert results["0002-more.diff", "pkg/README.md", 1]["status"] == hc.NOT_EXECUTABLE
    mod_0002 = [h for k, h in results.items() if k[:2] == ("0002-more.diff", "pkg/mod.py")]
    top, huge, guard, comment = sorted(mod_0002, key=lambda h: h["patch_line"]) if len(mod_0002) == 4 else (None,) * 4
    assert top is not None, f"0002 should have 4 hunks in pkg/mod.py, has {len(mod_0002)}"
    assert top["status"] == hc.COVERED  # import os, LIMIT, NAME run at import
    assert huge["status"] == hc.NOT_COVERED and huge["executable"] == 1  # alpha(1) never returns "huge"
    assert guard["status"] == hc.NOT_COVERED and guard["executed"] == 0  # beta is never called
    assert comment["status"] == hc.NOT_EXECUTABLE  # a comment
    assert record["summary"] == {"hunks": 8, "covered": 3, "not_covered": 3, "not_executable": 2, "allowed": 0,
                                 "unlisted": 3, "stale_allowances": 0}


def test_a_file_that_is_not_the_exact_application_is_searched_by_content(world):
    patches, pristine, final, _, tree = world
    (tree / "pkg" / "mod.py").write_text("# a line a 3-way merge left\n" + FINAL)
    placed = {(h.patch, h.path, h.index): h for h in hc.place_hunks(patches, pristine, final)}
    gamma = placed["0001-alpha.diff", "pkg/mod.py", 2]
    # 0001's gamma hunk no longer matches as a block (0002 changed its context): not found, and said so.
    assert gamma.lines == [] and "not in the build tree's file" in gamma.note
    delta = placed["0001-alpha.diff", "pkg/mod.py", 3]
    assert "found by its new lines" in delta.note
    moved = line_of(FINAL, "def delta():") + 1  # one line more above it than in FINAL
    assert delta.lines == [moved - 2, moved - 1, moved, moved + 1, moved + 2]  # two blank lines, then delta


ALLOWED = """\
[[allowed]]
patch = "0001-alpha.diff"
file = "pkg/mod.py"
hunk = 3
reason = "delta is for the CLI, which no suite runs"

[[allowed]]
patch = "0001-alpha.diff"
file = "pkg/mod.py"
hunk = 1
reason = "listed before a suite reached alpha"

[[allowed]]
patch = "0002-more.diff"
file = "pkg/other.py"
reason = "a file the patch does not touch"
"""


def _record_with_allow_list(world, tmp_path):
    """0.16.8's record of the world's coverage data under the test allow-list: (record, allowed, its path)."""
    patches, pristine, final, data, tree = world
    path = tmp_path / "coverage-allowed.toml"
    path.write_text(ALLOWED)
    allowed = hc.load_allowed(path)
    record = hc.release_coverage("0.16.8", hc.place_hunks(patches, pristine, final), final,
                                 sc.executed_lines(data, [tree]), allowed)
    return record, allowed, path


def test_allow_list_allowed_stale_and_unlisted(world, tmp_path):
    patches, pristine, final, data, tree = world
    record, allowed, _ = _record_with_allow_list(world, tmp_path)
    results = {(h["patch"], h["path"], h["index"]): h for p in record["patches"] for h in p["detail"]}
    assert results["0001-alpha.diff", "pkg/mod.py", 3]["allowed"] == "delta is for the CLI, which no suite runs"
    assert record["summary"]["allowed"] == 1 and record["summary"]["unlisted"] == 2
    assert record["stale_allowances"] == [{"patch": "0001-alpha.diff", "file": "pkg/mod.py", "hunk": 1,
                                           "reason": "listed before a suite reached alpha", "statuses": ["covered"]}]
    problems = hc.allowance_problems(allowed, {p.name: p for p in patches})
    assert problems == ["0002-more.diff pkg/other.py (every hunk): the patch does not touch pkg/other.py"]
    # An entry limited to other releases allows nothing here.
    only_old = [hc.Allowance("0001-alpha.diff", "pkg/mod.py", 3, "old releases", ("0.16.2",))]
    again = hc.release_coverage("0.16.8", hc.place_hunks(patches, pristine, final), final,
                                sc.executed_lines(data, [tree]), only_old)
    assert again["summary"]["allowed"] == 0 and again["stale_allowances"] == []


@pytest.mark.parametrize("text, message", [
    ("[[allowed]]\npatch = 'x.diff'\nfile = 'a.py'\n", "'reason' must be a non-empty string"),
    ("[[allowed]]\npatch = 'x.diff'\nfile = 'a.py'\nreason = 'r'\nhunk = 0\n", "'hunk' is the hunk's number"),
    ("[[allowed]]\npatch = 'x.diff'\nfile = 'a.py'\nreason = 'r'\nline = 3\n", "unknown key(s) line"),
    ("[[allowed]\n", "not TOML"),
])
def test_a_malformed_allow_list_is_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "coverage-allowed.toml"
    path.write_text(text)
    with pytest.raises(hc.CoverageAllowedError) as info:
        hc.load_allowed(path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_the_matrix_report_shows_each_uncovered_hunk_with_its_reason(world, tmp_path):
    patches, pristine, final, data, tree = world
    path = tmp_path / "coverage-allowed.toml"
    path.write_text(ALLOWED)
    record = hc.release_coverage("0.16.8", hc.place_hunks(patches, pristine, final), final,
                                 sc.executed_lines(data, [tree]), hc.load_allowed(path))
    (tmp_path / "r" / "coverage").mkdir(parents=True)
    (tmp_path / "r" / "coverage" / "0.16.8.json").write_text(json.dumps(record))
    context = {"coverage": hc.records(tmp_path / "r")}
    md = report_markdown([], False, context)
    assert "### 0.16.8: 3 of 6 executable hunks covered (2 not executable; 1 allowed, 2 not listed" in md
    assert "| 0001-alpha.diff | 3 | 2 | 1 (1) | 0 |" in md
    patch_line = next(h.patch_line for h in patches[0].files[0].hunks if h.index == 3)
    assert (f"- 0001-alpha.diff pkg/mod.py hunk #3 (patch line {patch_line}): 1/3 executable lines ran; "
            "allowed: delta is for the CLI, which no suite runs") in md
    assert md.count("**not listed in the allow-list**") == 2
    assert "**stale allowance** 0001-alpha.diff pkg/mod.py hunk #1: now covered" in md
    page = report_html([], False, context)
    assert "delta is for the CLI, which no suite runs" in page and "stale allowance" in page
    assert report_json([], False, context)["context"]["coverage"]["0.16.8"]["summary"]["covered"] == 3


def test_rc_and_paths(tmp_path):
    rc = sc.write_rc(tmp_path, "0.16.8", ["letta/ketta.py", "alembic/versions/x.py"])
    text = rc.read_text()
    assert "parallel = true" in text and "sigterm = true" in text
    assert f"data_file = {tmp_path / '0.16.8' / 'data' / '.coverage'}" in text
    assert "    */alembic/versions/x.py\n    */letta/ketta.py\n" in text
    tree = tmp_path / "build" / "0.16.8"
    tree.mkdir(parents=True)
    assert sc.relative_path("/c/envs/k/lib/python3.11/site-packages/letta/ketta.py", [tree]) == "letta/ketta.py"
    assert sc.relative_path(f"{tree.resolve()}/alembic/versions/x.py", [tree]) == "alembic/versions/x.py"
    assert sc.relative_path("/elsewhere/letta/ketta.py", [tree]) is None


UVICORN_LIKE = """\
import signal, sys, time
sys.path.insert(0, {tree!r})
import pkg.mod as m
m.gamma(1)
captured = []
original = signal.signal(signal.SIGTERM, lambda sig, frame: captured.append(sig))
print("ready", flush=True)
while not captured:
    time.sleep(0.05)
m.alpha(500)  # the graceful shutdown runs code too
signal.signal(signal.SIGTERM, original)
signal.raise_signal(signal.SIGTERM)  # as uvicorn does after its shutdown
time.sleep(5)
"""


def test_the_startup_hook_saves_data_of_a_process_stopped_like_uvicorn(world, tmp_path):
    """The .pth starts coverage from COVERAGE_PROCESS_START; a SIGTERM handled, then raised again with the
    handler found at start (uvicorn's way), still saves the process's data: sigterm = true."""
    _, _, _, _, tree = world
    env_dir = tmp_path / "env"
    (env_dir / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    pth = sc.install_startup_hook(env_dir)
    root = tmp_path / "cov"
    rc = sc.write_rc(root, "0.16.8", ["pkg/mod.py"])
    script = tmp_path / "server.py"
    # site.addsitedir runs the .pth files of a directory as Python's start-up does for site-packages.
    script.write_text(f"import site\nsite.addsitedir({str(pth.parent)!r})\n" + UVICORN_LIKE.format(tree=str(tree)))
    env = {**os.environ, "COVERAGE_PROCESS_START": str(rc)}
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
    combined = sc.combine(root, "0.16.8")
    assert combined is not None and combined[1] == 1
    lines = sc.executed_lines(combined[0], [tree])["pkg/mod.py"]
    assert line_of(FINAL, '        return "huge"') in lines  # ran after the signal arrived
    assert line_of(FINAL, "    return x * 3") in lines


def test_no_process_wrote_data(tmp_path):
    assert sc.combine(tmp_path, "0.16.8") is None


def test_coverage_refuses_no_patches(tmp_path):
    from ketta_build import matrix
    from ketta_build.errors import KettaError

    with pytest.raises(KettaError, match="leave out --no-patches"):
        matrix.run_matrix(["0.16.8"], ["handle"], report_dir=tmp_path, no_patches=True, coverage=True,
                          project=Path(__file__).resolve().parent.parent)


def test_the_suites_receive_the_coverage_directory():
    tox = (Path(__file__).resolve().parent.parent / "tox.ini").read_text()
    assert "    KETTA_COVERAGE\n" in tox


def test_hunks_that_apply_at_an_offset_are_placed_exactly(world, tmp_path):
    """The release has a line more at the top than the files the patches were made from: every hunk applies
    one line further down, and is still placed by tracking (no content search)."""
    patches, pristine, _, _, tree = world
    head = "# the release's own first line\n"
    placed = hc.place_hunks(patches, lambda path: head.encode() + pristine(path) if pristine(path) else None,
                            lambda path: (head + FINAL).encode() if path == "pkg/mod.py" else README_0002.encode())
    plain = hc.place_hunks(patches, pristine, lambda path: (tree / path).read_bytes())
    assert not any(h.note and "found by" in h.note for h in placed)
    for moved, base in zip(placed, plain):
        assert moved.lines == ([n + 1 for n in base.lines] if moved.path == "pkg/mod.py" else base.lines)


MULTILINE = """\
def f(a):
    value = max(
        a,
        0)
    return value
"""


def test_a_continuation_line_counts_as_its_statement():
    statements = hc.python_statements(MULTILINE)
    assert statements is not None and statements.statement_of(3) == 2 and statements.statement_of(1) == 1
    hunk = hc.PlacedHunk("p.diff", "m.py", 1, 10, added=1, lines=[3])  # only "a," was added
    # coverage.py may record a line inside the statement rather than its first line
    assert hc.hunk_status(hunk, statements, {4}).status == hc.COVERED
    assert hc.hunk_status(hunk, statements, {2}).status == hc.COVERED
    assert hc.hunk_status(hunk, statements, {5}).status == hc.NOT_COVERED
    assert hc.python_statements("def broken(:\n") is None


def test_gaps_make_the_answer_no_and_name_each_hunk_and_allowance(world, tmp_path):
    patches = world[0]
    record, allowed, path = _record_with_allow_list(world, tmp_path)
    record.update(processes=2, allowed_file=str(path),
                  allowance_problems=hc.allowance_problems(allowed, {p.name: p for p in patches}))
    found = hc.gaps({"0.16.8": record})
    unlisted = [line for line in found if "ran in no suite and is not in" in line]
    assert len(unlisted) == record["summary"]["unlisted"] == 2
    assert all(line.startswith("0.16.8: 0") and str(path) in line for line in unlisted)
    assert "0.16.8: stale allowance 0001-alpha.diff pkg/mod.py hunk #1 (its hunks are covered)" in found
    assert any("the patch does not touch pkg/other.py" in line for line in found)
    assert len(found) == 4
    # Everything covered or allowed, no stale or broken entry, data written: nothing to look at.
    clean = {**record, "patches": [], "stale_allowances": [], "allowance_problems": []}
    assert hc.gaps({"0.16.8": clean}) == []
    assert hc.gaps({"0.16.8": {**clean, "processes": 0, "note": "no server process wrote coverage data"}}) == [
        "0.16.8: no server process wrote coverage data"]
