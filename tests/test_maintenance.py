"""The maintenance loop on synthetic releases: export (refresh), port (--continue/--abort), lint, upstream check, range-diff.

Releases 0.16.7 and 0.16.8 are "supported" by a series of three logical patches (one with a
variant per release); 0.16.9 and others are published on a local index as each test needs them.
No network: the index is on 127.0.0.1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_diff
from world import BODY, RELEASES_TOML, git, header

from ketta_build.cli import main

# ----------------------------------------------------------------------------- export


def test_apply_then_export_check_is_a_no_op_on_every_release(world):
    for version in ("0.16.7", "0.16.8"):
        tree = world.apply(version)
        before = world.snapshot()
        rc, _, err = world.run("export", "--tree", str(tree), "--check")
        assert rc == 0, err
        rc, out, _ = world.run("export", "--tree", str(tree))
        assert rc == 0 and "nothing to write" in out
        assert world.snapshot() == before


def test_amended_commit_is_refreshed_into_its_own_variant(world):
    tree = world.apply("0.16.7")
    git(tree, "checkout", "-q", "-b", "work")
    (tree / "letta/m.py").write_text((tree / "letta/m.py").read_text().replace("line forty\n", "line FORTY\n"))
    git(tree, "commit", "-q", "-a", "--amend", "--no-edit")
    main_before = (world.patches / "0003-tail.diff").read_bytes()
    rc, _, err = world.run("export", "--tree", str(tree), "--check")
    assert rc == 4 and "0003-tail-0.16.7.diff differs" in err
    rc, out, _ = world.run("export", "--tree", str(tree))
    assert rc == 0 and "refreshed" in out
    variant = (world.patches / "0003-tail-0.16.7.diff").read_text()
    assert "+line FORTY\n" in variant and "Base-Release: 0.16.7" in variant
    assert (world.patches / "0003-tail.diff").read_bytes() == main_before, "the other variant must not change"
    assert world.run("export", "--tree", str(world.apply("0.16.7")), "--check")[0] == 0


def test_changing_an_earlier_patch_refreshes_the_index_lines_of_later_ones(world):
    """0001 changes line 14 too: 0003's hunk (line 40) still applies the same way, but the blob its
    index line names is gone; on 0003's own base release export rewrites it, and lint agrees."""
    tree = world.apply("0.16.8")
    first = git(tree, "log", "--format=%H", "--grep", "Ketta-Patch: 0001-change-m.diff").strip()
    git(tree, "checkout", "-q", "-b", "work")
    m = (tree / "letta/m.py")
    git(tree, "checkout", "-q", first)
    m.write_text(m.read_text().replace("line 14\n", "line fourteen (ketta)\n"))
    git(tree, "commit", "-q", "-a", "--amend", "--no-edit")
    amended = git(tree, "rev-parse", "HEAD").strip()
    git(tree, "checkout", "-q", "work")
    git(tree, "rebase", "-q", "--onto", amended, first)
    rc, out, err = world.run("export", "--tree", str(tree))
    assert rc == 0, err
    assert "refreshed 0001-change-m.diff" in out and "refreshed 0003-tail.diff" in out, out
    # 0001 serves 0.16.7 too, so 0.16.7's own variant of 0003 is stale now: lint says so ...
    rc, _, err = world.run("lint")
    assert rc == 4 and "0003-tail-0.16.7.diff: [base-release] letta/m.py" in err
    # ... and exporting the 0.16.7 tree (built with the new 0001) refreshes it.
    rc, out, _ = world.run("export", "--tree", str(world.apply("0.16.7")))
    assert rc == 0 and "refreshed 0003-tail-0.16.7.diff" in out and "unchanged 0001-change-m.diff" in out
    assert world.run("lint")[0] == 0
    for version in ("0.16.7", "0.16.8"):
        assert world.run("export", "--tree", str(world.apply(version)), "--check")[0] == 0


def test_reworded_description_changes_the_header_only(world):
    tree = world.apply("0.16.8")
    msg = git(tree, "log", "-1", "--format=%B", "HEAD~1")  # the 0002 commit is HEAD~1
    git(tree, "rebase", "-q", "--exec", "true", "upstream/0.16.8")  # a no-op rebase keeps everything
    git(tree, "checkout", "-q", "HEAD~1")
    git(tree, "commit", "-q", "--amend", "-m", msg.replace("Because Ketta needs this change", "Ketta needs this new module"))
    reworded = git(tree, "rev-parse", "HEAD").strip()
    git(tree, "checkout", "-q", "main")
    git(tree, "rebase", "-q", "--onto", reworded, "HEAD~2", "main")
    diff_before = (world.patches / "0002-new-module.diff").read_text().split("\ndiff --git", 1)[1]
    rc, out, _ = world.run("export", "--tree", str(tree))
    assert rc == 0
    text = (world.patches / "0002-new-module.diff").read_text()
    assert "Description: Ketta needs this new module" in text
    assert text.split("\ndiff --git", 1)[1] == diff_before


def test_new_commit_becomes_a_numbered_patch_with_a_visible_guard(world):
    tree = world.apply("0.16.8")
    (tree / "letta/extra.py").write_text("X = 1\n")
    git(tree, "add", "letta/extra.py")
    git(tree, "commit", "-q", "-m", "Add letta/extra.py", "-m", "The extra module carries a constant Ketta reads elsewhere.")
    rc, out, _ = world.run("export", "--tree", str(tree))
    assert rc == 0 and "0004-add-letta-extra-py.diff" in out
    series = (world.patches / "series").read_text()
    assert "0004-add-letta-extra-py.diff" in series and "[letta>=0.16.8]" in series.splitlines()[-1]
    text = (world.patches / "0004-add-letta-extra-py.diff").read_text()
    assert "Upstream-Status: Pending" in text and "Base-Release: 0.16.8" in text
    assert world.run("export", "--tree", str(world.apply("0.16.8")), "--check")[0] == 0


def test_new_commit_without_a_body_is_refused_and_nothing_written(world):
    tree = world.apply("0.16.8")
    (tree / "letta/extra.py").write_text("X = 1\n")
    git(tree, "add", "letta/extra.py")
    git(tree, "commit", "-q", "-m", "No reason given")
    before = world.snapshot()
    rc, _, err = world.run("export", "--tree", str(tree))
    assert rc == 2 and "no description" in err
    assert world.snapshot() == before


def test_dropped_commit_is_reported_and_pruned_only_on_request(world):
    tree = world.apply("0.16.8")
    git(tree, "rebase", "-q", "--onto", "HEAD~2", "HEAD~1")  # drop 0002
    rc, _, err = world.run("export", "--tree", str(tree), "--check")
    assert rc == 4 and "0002-new-module.diff has no commit" in err
    rc, out, _ = world.run("export", "--tree", str(tree))
    assert rc == 0 and "dropped" in out and (world.patches / "0002-new-module.diff").exists()
    rc, out, _ = world.run("export", "--tree", str(tree), "--prune")
    assert rc == 0 and not (world.patches / "0002-new-module.diff").exists()
    assert "0002-new-module.diff" not in (world.patches / "series").read_text()


def test_crlf_and_no_newline_files_round_trip(world):
    crlf = "one\r\ntwo\r\nthree\r\n"
    world.index.files.clear()
    world.cache = world.root / "cache-crlf"  # the fixture cached the releases without these files
    world.publish("0.16.7", {"letta/w.txt": crlf, "letta/n.txt": "no newline"})
    world.publish("0.16.8", {"letta/w.txt": crlf, "letta/n.txt": "no newline"})
    (world.patches / "0002-new-module.diff").write_text(
        header("Two awkward files", "0.16.8")
        + make_diff("letta/w.txt", crlf, "one\r\nTWO\r\nthree\r\n") + make_diff("letta/n.txt", "no newline", "still no newline"))
    tree = world.apply("0.16.8")
    assert world.run("export", "--tree", str(tree), "--check")[0] == 0
    (tree / "letta/w.txt").write_bytes(b"one\r\nTWO!\r\nthree\r\n")
    (tree / "letta/n.txt").write_bytes(b"changed, no newline")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "--fixup", "HEAD~1")
    git(tree, "-c", "sequence.editor=true", "rebase", "-q", "-i", "--autosquash", "upstream/0.16.8")
    assert world.run("export", "--tree", str(tree))[0] == 0
    text = (world.patches / "0002-new-module.diff").read_bytes()
    assert b"+TWO!\r\n" in text and b"\\ No newline at end of file" in text
    again = world.apply("0.16.8")
    assert (again / "letta/w.txt").read_bytes() == b"one\r\nTWO!\r\nthree\r\n"
    assert (again / "letta/n.txt").read_bytes() == b"changed, no newline"
    assert world.run("export", "--tree", str(again), "--check")[0] == 0


@pytest.mark.parametrize("spoil,message", [
    (lambda t: (t / "letta/m.py").write_text("dirty\n"), "uncommitted changes"),
    (lambda t: (t / ".git" / "ketta-build.json").unlink(), "not a ketta-build tree"),
    (lambda t: git(t, "tag", "-d", "upstream/0.16.8"), "upstream/0.16.8 is missing"),
])
def test_export_refuses_a_dirty_or_foreign_tree(world, spoil, message):
    tree = world.apply("0.16.8")
    spoil(tree)
    before = world.snapshot()
    rc, _, err = world.run("export", "--tree", str(tree))
    assert rc == 5 and message in err and len([ln for ln in err.splitlines() if ln.startswith("ketta-build: error:")]) == 1
    assert world.snapshot() == before


# ----------------------------------------------------------------------------- port


def test_port_onto_an_identical_release_adds_it_and_regenerates_tox(world):
    world.publish("0.16.9")
    before = world.snapshot()
    rc, out, err = world.run("port", "--letta", "0.16.9", "--tree", str(world.root / "build" / "0.16.9"))
    assert rc == 0, err
    assert "0.16.9" in (world.patches / "releases.toml").read_text()
    assert "letta0169: KETTA_RELEASE = 0.16.9" in (world.root / "repo" / "tox.ini").read_text()
    after = world.snapshot()
    assert {k: v for k, v in after.items() if k != "releases.toml"} == {k: v for k, v in before.items() if k != "releases.toml"}
    assert world.run("apply", "--letta", "0.16.9", "--out", str(world.root / "again"), "--force")[0] == 0


def test_port_to_a_release_upstream_never_made_says_so(world):
    before = world.snapshot()
    rc, _, err = world.run("port", "--release", "9.9")
    assert rc == 2 and "letta 9.9 is not on" in err and "no such release upstream" in err, err
    assert "supported" not in err  # porting is how a release becomes supported: that is not the problem
    assert world.snapshot() == before and not (world.root / "build" / "9.9").exists()


def test_port_with_a_merged_hunk_writes_a_new_variant_and_narrows_the_old(world):
    world.publish("0.16.9", m=BODY.replace("line 13\n", "line 13 (upstream)\n"))
    rc, out, err = world.run("port", "--letta", "0.16.9", "--tree", str(world.root / "build" / "0.16.9"))
    assert rc == 0, err
    assert "merged" in out
    series = (world.patches / "series").read_text()
    assert "0001-change-m-0.16.9.diff" in series and "[letta>=0.16.9]" in series and "0001-change-m.diff" in series
    assert "[letta<0.16.9]" in series
    variant = (world.patches / "0001-change-m-0.16.9.diff").read_text()
    assert "Base-Release: 0.16.9" in variant and " line 13 (upstream)\n" in variant
    for version in ("0.16.8", "0.16.9"):
        rc, out, err = world.run("apply", "--letta", version, "--out", str(world.root / f"a{version}"), "--force", "--json", "-")
        assert rc == 0, err
        assert json.loads(out[out.index("{"):])["summary"]["hunks"]["merged"] == 0


def test_port_conflict_stops_continues_after_resolution_and_abort_leaves_nothing(world):
    world.publish("0.16.9", m=BODY.replace("line 15\n", "line 15 rewritten upstream\n"))
    tree = world.root / "build" / "0.16.9"
    before = world.snapshot()
    rc, _, err = world.run("port", "--letta", "0.16.9", "--tree", str(tree))
    assert rc == 1 and "resolve the conflict markers" in err and "letta/m.py" in err
    assert world.snapshot() == before, "nothing in patches/ may change before the port finishes"
    assert "<<<<<<<" in (tree / "letta/m.py").read_text()
    rc, _, err = world.run("port", "--continue", "--tree", str(tree))
    assert rc == 5 and "conflict markers" in err
    rc, _, _ = world.run("port", "--abort", "--tree", str(tree))
    assert rc == 0 and not tree.exists() and world.snapshot() == before

    rc, _, _ = world.run("port", "--letta", "0.16.9", "--tree", str(tree))
    assert rc == 1
    resolved = BODY.replace("line 15\n", "line fifteen (ketta) rewritten upstream\n")
    (tree / "letta/m.py").write_text(resolved)
    rc, out, err = world.run("port", "--continue", "--tree", str(tree))
    assert rc == 0, err
    assert "resolved" in out
    variant = (world.patches / "0001-change-m-0.16.9.diff").read_text()
    assert "+line fifteen (ketta) rewritten upstream\n" in variant
    assert world.run("apply", "--letta", "0.16.9", "--out", str(world.root / "again"), "--force")[0] == 0


def test_port_skip_leaves_the_stopped_patch_out_and_writes_nothing_for_it(world):
    # A release that does not need a patch (its bug is not there): port --skip, as git am --skip.
    world.publish("0.16.9", m=BODY.replace("line 15\n", "line 15 rewritten upstream\n"))
    tree = world.root / "build" / "0.16.9"
    before = (world.patches / "0001-change-m.diff").read_bytes()
    rc, _, err = world.run("port", "--letta", "0.16.9", "--tree", str(tree))
    assert rc == 1 and "ketta-build port --skip" in err
    (tree / "letta/m.py").write_text("half a resolution\n")  # work on the attempt is discarded by the skip
    rc, out, err = world.run("port", "--skip", "--tree", str(tree))
    assert rc == 0, err
    assert "skipped" in out and "0001-change-m.diff" in out
    skipped = BODY.replace("line 15\n", "line 15 rewritten upstream\n").replace("line 40\n", "line forty\n")
    assert (tree / "letta/m.py").read_text() == skipped, "0001 left out, the patches after it applied"
    assert not (world.patches / "0001-change-m-0.16.9.diff").exists()
    assert (world.patches / "0001-change-m.diff").read_bytes() == before
    assert "0001-change-m.diff [letta<0.16.9]" in " ".join((world.patches / "series").read_text().split()), \
        "the skipped patch's guard still admits 0.16.9"
    assert '"0.16.9"' in (world.patches / "releases.toml").read_text()
    again = world.root / "again"
    assert world.run("apply", "--letta", "0.16.9", "--out", str(again))[0] == 0
    assert (again / "letta/m.py").read_text() == skipped
    rc, _, err = world.run("port", "--skip", "--tree", str(again))
    assert rc == 2 and "no port in progress" in err


def test_port_continue_without_a_port_in_progress(world):
    tree = world.apply("0.16.8")
    rc, _, err = world.run("port", "--continue", "--tree", str(tree))
    assert rc == 2 and "no port in progress" in err


def test_port_proposes_dropping_a_patch_that_is_upstream(world):
    world.publish("0.16.9", files={"letta/k.py": "KETTA = True\n"})
    rc, out, err = world.run("port", "--letta", "0.16.9", "--tree", str(world.root / "build" / "0.16.9"))
    assert rc == 0, err
    assert "already upstream" in out
    assert "0002-new-module.diff" in (world.patches / "series").read_text()
    assert "[letta<0.16.9]" in [ln for ln in (world.patches / "series").read_text().splitlines() if "0002" in ln][0]


def test_port_in_place_rewrites_the_patch_and_the_older_releases_keep_the_old_file(world):
    """Rewritten for 0.16.9, 0001's context holds 0.16.9's line 13, which 0.16.7 and 0.16.8 lack: the main
    file becomes 0.16.9's and the previous one serves them as a variant named by its first release."""
    world.publish("0.16.9", m=BODY.replace("line 13\n", "line 13 (upstream)\n"))
    old = (world.patches / "0001-change-m.diff").read_bytes()
    rc, out, err = world.run("port", "--letta", "0.16.9", "--in-place", "--tree", str(world.root / "build" / "0.16.9"))
    assert rc == 0, err
    assert not (world.patches / "0001-change-m-0.16.9.diff").exists()
    assert "Base-Release: 0.16.9" in (world.patches / "0001-change-m.diff").read_text()
    assert (world.patches / "0001-change-m-0.16.7.diff").read_bytes() == old
    series = (world.patches / "series").read_text()
    assert "0001-change-m-0.16.7.diff" in series and "[letta<0.16.9]" in series and "[letta>=0.16.9]" in series
    assert "keep the previous file as 0001-change-m-0.16.7.diff" in " ".join(out.split())
    assert _lint(world) == (0, [])
    for version in ("0.16.7", "0.16.8", "0.16.9"):
        assert world.run("apply", "--letta", version, "--out", str(world.root / f"a{version}"), "--force")[0] == 0


def test_port_refuses_letta_code(world):
    from conftest import make_wheel

    world.index.add(make_wheel(world.root / "letta-0.33.0-py3-none-any.whl", "letta_code"))
    before = world.snapshot()
    rc, _, err = world.run("port", "--letta", "0.33.0")
    assert rc == 2 and "Letta Code" in err and world.snapshot() == before


# ----------------------------------------------------------------------------- upstream check


def test_upstream_check_nothing_new(world):
    rc, out, _ = world.run("upstream", "check")
    assert rc == 0 and "nothing newer than 0.16.8" in out


def test_upstream_check_classifies_and_reviews(world, tmp_path):
    from conftest import make_wheel

    world.publish("0.16.9rc1", yanked="broken")
    world.publish("0.16.9", m=BODY.replace("line 15\n", "line 15 rewritten upstream\n"))
    world.index.add(make_wheel(world.root / "letta-0.33.0-py3-none-any.whl", "letta_code"))
    report = tmp_path / "check.json"
    rc, out, _ = world.run("upstream", "check", "--json", str(report), "--issue-dir", str(tmp_path / "issues"))
    data = json.loads(report.read_text())
    assert rc == 11 and data["exit_code"] == 11
    assert out.splitlines()[-1] == "exit 11: 0.16.9 needs porting: ketta-build port --release 0.16.9", out
    # one tracking-issue body per new server release (not for Letta Code), titled as the workflow looks for it
    assert sorted(p.name for p in (tmp_path / "issues").iterdir()) == ["0.16.9.md", "0.16.9rc1.md"]
    body = (tmp_path / "issues" / "0.16.9.md").read_text()
    assert body.startswith("# Upstream Letta 0.16.9: Ketta port report\n") and "the series needs porting" in body
    assert "| `0001-change-m.diff` | failed |" in body and "`lines 12-18`: **changed upstream**" in body
    assert "(pre-release, yanked)" in (tmp_path / "issues" / "0.16.9rc1.md").read_text()
    by_version = {r["version"]: r for r in data["releases"]}
    assert list(by_version) == ["0.16.9rc1", "0.16.9", "0.33.0"]
    assert by_version["0.16.9rc1"]["prerelease"] and by_version["0.16.9rc1"]["yanked"] == "broken"
    assert by_version["0.33.0"]["kind"] == "other-product" and by_version["0.33.0"]["issue_title"] is None
    assert by_version["0.16.9"]["issue_title"] == "Upstream Letta 0.16.9: Ketta port report"  # what CI looks for
    new = by_version["0.16.9"]
    assert new["status"] == "needs-porting"
    assert {p["name"]: p["outcome"] for p in new["patches"]}["0001-change-m.diff"] == "failed"
    review = {f["path"]: f for f in new["review"]}
    assert review["letta/m.py"]["touched_by"] == ["0001-change-m.diff", "0003-tail.diff"]
    assert review["letta/m.py"]["added"] == 1 and review["letta/m.py"]["removed"] == 1
    changed = {f["name"]: f["changed_upstream"] for f in review["letta/m.py"]["functions"]}
    assert changed["lines 12-18"] is True and changed["lines 37-43"] is False


def test_upstream_checks_review_list_sorts_line_ranges_by_number(world, tmp_path):
    """lines 2-8 before lines 12-18 (as text, "lines 12-18" < "lines 2-8")."""
    two = BODY.replace("line 5\n", "line five (ketta)\n").replace("line 15\n", "line fifteen (ketta)\n")
    (world.patches / "0001-change-m.diff").write_text(
        header("Ketta changes lines 5 and 15", "0.16.8") + make_diff("letta/m.py", BODY, two))
    world.publish("0.16.9")
    report = tmp_path / "check.json"
    rc, out, err = world.run("upstream", "check", "--json", str(report))
    assert rc == 10, err
    [m] = [f for f in json.loads(report.read_text())["releases"][0]["review"] if f["path"] == "letta/m.py"]
    assert [fn["name"] for fn in m["functions"]] == ["lines 2-8", "lines 12-18", "lines 37-43"]
    text = out.splitlines()
    assert text.index("      lines 2-8: unchanged (0001-change-m.diff)") < text.index(
        "      lines 12-18: unchanged (0001-change-m.diff)"), out


def test_upstream_check_carries_over(world):
    world.publish("0.16.9")
    rc, out, _ = world.run("upstream", "check")
    assert rc == 10 and "carries-over" in out
    assert out.splitlines()[-1] == "exit 10: the series carries over to 0.16.9 exactly: ketta-build port --release 0.16.9 adds it"


def test_upstream_check_says_how_many_hunks_landed_and_proposes_shrinking_or_dropping(world, tmp_path):
    """0.16.9 has 0001's line and one of the two hunks 0003 now has: 0001 is to be dropped, 0003 shrunk."""
    m8 = BODY.replace("line 15\n", "line fifteen (ketta)\n")
    (world.patches / "0003-tail.diff").write_text(header("Ketta changes lines 40 and 50", "0.16.8") + make_diff(
        "letta/m.py", m8, m8.replace("line 40\n", "line forty\n").replace("line 50\n", "line fifty\n")))
    world.publish("0.16.9", m=BODY.replace("line 15\n", "line fifteen (ketta)\n").replace("line 50\n", "line fifty\n"))
    report = tmp_path / "check.json"
    rc, out, err = world.run("upstream", "check", "--json", str(report), "--issue-dir", str(tmp_path / "issues"))
    assert rc == 11, err  # a whole patch upstream needs porting (its guard narrowed)
    patches = {p["name"]: p for p in json.loads(report.read_text())["releases"][0]["patches"]}
    assert patches["0001-change-m.diff"]["landed_upstream"]["proposal"] == "drop"
    tail = patches["0003-tail.diff"]["landed_upstream"]
    assert (tail["hunks"], tail["of"], tail["proposal"]) == (1, 2, "shrink")
    [landed] = tail["landed"]
    assert landed["path"] == "letta/m.py" and landed["index"] == 2
    assert patches["0003-tail.diff"]["outcome"] == "clean"
    text = " ".join(out.split())
    assert "1 of 1 hunk landed upstream: drop the patch" in text
    assert f"1 of 2 hunks landed upstream: shrink it (remove hunk #2 of letta/m.py, patch line {landed['patch_line']})" in text
    body = (tmp_path / "issues" / "0.16.9.md").read_text()
    assert "| `0003-tail.diff` | clean | 1 already-upstream, 1 clean | 1 of 2 hunks landed upstream: shrink it" in body


def test_upstream_check_with_an_unreachable_index(world, tmp_path):
    before = world.snapshot()
    rc = main(["upstream", "check", "--patches", str(world.patches), "--index-url", "http://127.0.0.1:9/simple",
               "--cache-dir", str(tmp_path / "c")])
    err = world.capsys.readouterr().err
    assert rc == 3 and "cannot reach the package index" in err and world.snapshot() == before


# ----------------------------------------------------------------------------- lint


def _gap(p: Path) -> None:
    """A release between 0.16.7 and 0.16.8 that no variant of 0003 serves."""
    (p / "releases.toml").write_text(RELEASES_TOML.replace(
        '[[release]]\nversion = "0.16.8"', '[[release]]\nversion = "0.16.7.1"\ndate = "2026-04-01"\n\n[[release]]\nversion = "0.16.8"', 1))
    (p / "series").write_text((p / "series").read_text().replace("[letta<0.16.8]", "[letta<0.16.7.1]"))


def _lint(world) -> tuple[int, list[str]]:
    rc, _, err = world.run("lint")
    return rc, [ln for ln in err.splitlines() if ln.startswith("ketta-build: lint:")]


def test_lint_passes_the_fixture_series(world):
    assert _lint(world) == (0, [])


@pytest.mark.parametrize("rule,spoil", [
    ("header", lambda p: (p / "0002-new-module.diff").write_text((p / "0002-new-module.diff").read_text().replace(
        "Upstream-Status: Inappropriate [test]", "Upstream-Status: Whenever"))),
    ("why", lambda p: (p / "0002-new-module.diff").write_text((p / "0002-new-module.diff").read_text().replace(
        "Description: Because Ketta needs this change for its unified providers.", "Description: A Ketta module."))),
    ("base-release", lambda p: (p / "0002-new-module.diff").write_text((p / "0002-new-module.diff").read_text().replace(
        "Base-Release: 0.16.8", "Base-Release: 0.16.3"))),
    ("base-release", lambda p: (p / "0001-change-m.diff").write_text(header("Ketta changes line 15", "0.16.8")
        + make_diff("letta/m.py", "line 0\n" + BODY, "line 0\n" + BODY.replace("line 15\n", "line fifteen (ketta)\n")))),
    ("variants", lambda p: (p / "series").write_text((p / "series").read_text().replace("[letta<0.16.8]", "[letta<=0.16.8]"))),
    ("variants", lambda p: _gap(p)),
    ("whitespace", lambda p: (p / "0002-new-module.diff").write_text(header("A Ketta module", "0.16.8")
        + make_diff("letta/k.py", None, "KETTA = True   \n"))),
    ("canonical", lambda p: (p / "0001-change-m.diff").write_text(header("Ketta changes line 15", "0.16.8")
        + make_diff("letta/m.py", BODY, BODY.replace("line 15\n", "line fifteen (ketta)\n"), context=5).replace(
            "@@ -10,11 +10,11 @@", "@@ -10,11 +10,11 @@ trailing text"))),
    ("generated", lambda p: (p.parent / "tox.ini").write_text("[tox]\n")),
])
def test_every_lint_rule_fires(world, rule, spoil):
    spoil(world.patches)
    rc, lines = _lint(world)
    assert rc == 4 and any(f"[{rule}]" in line for line in lines), lines


def test_lint_fix_rewrites_into_canonical_form(world):
    path = world.patches / "0001-change-m.diff"
    path.write_text(path.read_text().replace("index ", "index ", 1).replace("@@ -12,7 +12,7 @@", "@@ -12,7 +12,7 @@ stray"))
    assert _lint(world)[0] == 4
    rc, out, _ = world.run("lint", "--fix")
    assert "rewrote" in out
    assert _lint(world) == (0, [])


# ----------------------------------------------------------------------------- range-diff


def test_range_diff_pairs_patches_between_two_series(world, tmp_path):
    old = tmp_path / "old-patches"
    import shutil

    shutil.copytree(world.patches, old)
    path = world.patches / "0001-change-m.diff"
    path.write_text(path.read_text().replace("+line fifteen (ketta)", "+line FIFTEEN (ketta)"))
    (world.patches / "0003-tail.diff").write_text((world.patches / "0003-tail.diff").read_text().replace(
        "line fifteen (ketta)", "line FIFTEEN (ketta)"))
    report = tmp_path / "rd.json"
    rc, out, err = world.run("range-diff", "--letta", "0.16.8", str(old), str(world.patches), "--json", str(report))
    assert rc == 0, err
    statuses = {p["subject"]: p["status"] for p in json.loads(report.read_text())["pairs"]}
    assert statuses["Ketta changes line 15"] == "changed"
    assert statuses["A Ketta module"] == "unchanged"
    assert "FIFTEEN" in out



def _series_dir(root: Path, patches: dict[str, str]) -> Path:
    """A patch directory for range-diff: ``patches`` (name -> (subject, new m.py or module text)) on 0.16.8."""
    root.mkdir()
    (root / "releases.toml").write_text(RELEASES_TOML)
    (root / "series").write_text("".join(f"{name}\n" for name in patches))
    for name, text in patches.items():
        (root / name).write_text(text)
    return root


def test_range_diff_classes_unchanged_context_only_content_and_message(world, tmp_path):
    import shutil

    old = tmp_path / "old-patches"
    shutil.copytree(world.patches, old)
    # 0001 now also inserts a line above 0003's hunk: 0003 does the same, one line further down
    path = world.patches / "0001-change-m.diff"
    m1 = BODY.replace("line 15\n", "line fifteen (ketta)\n")
    path.write_text(header("Ketta changes line 15", "0.16.8") + make_diff("letta/m.py", BODY, m1.replace("line 16\n", "line 16\nline 16a\n")))
    # 0002: a new description only
    p2 = world.patches / "0002-new-module.diff"
    p2.write_text(p2.read_text().replace("Because Ketta needs this change", "Ketta needs this module"))
    report = tmp_path / "rd.json"
    rc, out, err = world.run("range-diff", "--letta", "0.16.8", str(old), str(world.patches), "--json", str(report))
    assert rc == 0, err
    pairs = {p["new_patch"]: p for p in json.loads(report.read_text())["pairs"]}
    assert pairs["0001-change-m.diff"]["class"] == "content"
    assert pairs["0003-tail.diff"]["class"] == "context-only" and pairs["0003-tail.diff"]["status"] == "unchanged"
    assert pairs["0002-new-module.diff"]["class"] == "unchanged" and pairs["0002-new-module.diff"]["message_changed"] is True
    assert pairs["0002-new-module.diff"]["status"] == "changed"  # git range-diff sees the message
    assert pairs["0003-tail.diff"]["old_patch"] == "0003-tail.diff"
    summary = out[out.index("per patch (old -> new, class):"):]
    assert "  2 -> 2   unchanged (message only)" in summary and "context-only" in summary and "content" in summary


def test_range_diff_calls_a_new_patch_new_even_when_it_shares_boilerplate_lines(world, tmp_path):
    """A new patch whose added lines are mostly ones an unchanged patch adds too (a blank line,
    ``return 1``) is new: the old patch is still whole in its counterpart, nothing was split."""
    module = "def a():\n    return 1\n\n\ndef z():\n    return 1\n"
    more = module + "\n\ndef b():\n    return 1\n"
    first = header("A Ketta module", "0.16.8") + make_diff("letta/k.py", None, module)
    old = _series_dir(tmp_path / "old", {"0001-module.diff": first})
    new = _series_dir(tmp_path / "new", {"0001-module.diff": first,
                                         "0002-more.diff": header("One more function", "0.16.8")
                                         + make_diff("letta/k.py", module, more)})
    report = tmp_path / "rd.json"
    rc, out, err = world.run("range-diff", "--letta", "0.16.8", str(old), str(new), "--json", str(report))
    assert rc == 0, err
    classes = {(p["old_patch"], p["new_patch"]): p["class"] for p in json.loads(report.read_text())["pairs"]}
    assert classes == {("0001-module.diff", "0001-module.diff"): "unchanged", (None, "0002-more.diff"): "new"}, classes
    assert "split" not in out


def test_range_diff_finds_a_split_and_a_merge(world, tmp_path):
    two = BODY.replace("line 10\n", "line ten\n").replace("line 50\n", "line fifty\n")
    ten = BODY.replace("line 10\n", "line ten\n")
    whole = _series_dir(tmp_path / "whole", {
        "0001-ten-and-fifty.diff": header("Lines 10 and 50", "0.16.8") + make_diff("letta/m.py", BODY, two),
        "0002-new-module.diff": header("A Ketta module", "0.16.8") + make_diff("letta/k.py", None, "KETTA = True\n")})
    parts = _series_dir(tmp_path / "parts", {
        "0001-ten.diff": header("Line 10", "0.16.8") + make_diff("letta/m.py", BODY, ten),
        "0002-fifty.diff": header("Line 50", "0.16.8") + make_diff("letta/m.py", ten, two),
        "0003-new-module.diff": header("A Ketta module", "0.16.8") + make_diff("letta/k.py", None, "KETTA = True\n")})
    report = tmp_path / "split.json"
    rc, out, err = world.run("range-diff", "--letta", "0.16.8", str(whole), str(parts), "--json", str(report))
    assert rc == 0, err
    pairs = json.loads(report.read_text())["pairs"]
    split = [p for p in pairs if p["class"] == "split"]
    assert {p["new_patch"] for p in split} == {"0001-ten.diff", "0002-fifty.diff"}
    assert all(p["group"] == {"old": [1], "new": [1, 2]} for p in split)
    assert [p["class"] for p in pairs if p["new_patch"] == "0003-new-module.diff"] == ["unchanged"]
    assert "split" in out and "[old 1 -> new 1, 2]" in out
    report = tmp_path / "merged.json"
    rc, out, err = world.run("range-diff", "--letta", "0.16.8", str(parts), str(whole), "--json", str(report))
    assert rc == 0, err
    merged = [p for p in json.loads(report.read_text())["pairs"] if p["class"] == "merged"]
    assert {p["old_patch"] for p in merged} == {"0001-ten.diff", "0002-fifty.diff"}
    assert all(p["group"] == {"old": [1, 2], "new": [1]} for p in merged)


def test_lint_takes_what_export_writes_for_mode_changes_and_executable_deletions(world):
    """A patch that only makes a file executable was called non-canonical by lint, and lint --fix
    emptied its diff; deleting an executable file was rewritten as a 0644 deletion."""
    from world import git

    tree = world.apply("0.16.8")
    (tree / "letta" / "m.py").chmod(0o755)
    git(tree, "commit", "-q", "-a", "-m", "Make m executable\n\nBecause Ketta runs it as a script from the shell.")
    rc, _, err = world.run("export", "--tree", str(tree))
    assert rc == 0, err
    [made] = [p for p in world.patches.glob("0004-*.diff")]
    assert "old mode 100644\nnew mode 100755" in made.read_text()
    before = made.read_bytes()
    rc, _, err = world.run("lint", "--fix")
    assert rc == 0, err
    assert made.read_bytes() == before
    (tree / "letta" / "k.py").chmod(0o755)
    git(tree, "commit", "-q", "-a", "-m", "Make k executable\n\nBecause Ketta runs it as a script from the shell too.")
    git(tree, "rm", "-q", "letta/k.py")
    git(tree, "commit", "-q", "-m", "Drop k\n\nBecause Ketta no longer needs the module at all here.")
    rc, _, err = world.run("export", "--tree", str(tree))
    assert rc == 0, err
    [dropped] = [p for p in world.patches.glob("0006-*.diff")]
    assert "deleted file mode 100755" in dropped.read_text()
    before = dropped.read_bytes()
    assert world.run("lint", "--fix")[0] == 0 and dropped.read_bytes() == before


def test_range_diff_when_one_side_has_no_patch(world, capsys):
    """git range-diff refuses an empty range: comparing a first patch with the empty series a new
    project starts from failed with the tail of git's usage text."""
    from ketta_build.cli import main

    empty = world.root / "empty"
    empty.mkdir()
    for name in ("releases.toml", "build-number"):
        if (world.patches / name).is_file():
            (empty / name).write_bytes((world.patches / name).read_bytes())
    (empty / "series").write_text("# nothing yet\n")
    common = ["--letta", "0.16.8", "--index-url", world.index.url, "--cache-dir", str(world.cache), "--patches",
              str(world.patches)]
    assert main(["range-diff", *common, "--json", str(world.root / "rd.json"), str(empty), str(world.patches)]) == 0
    out = capsys.readouterr().out
    pairs = json.loads((world.root / "rd.json").read_text())["pairs"]
    assert [p["status"] for p in pairs] == ["added"] * 3 and [p["new"] for p in pairs] == [1, 2, 3], out
    assert main(["range-diff", *common, str(world.patches), str(empty)]) == 0
    assert capsys.readouterr().out.count("dropped") == 3
