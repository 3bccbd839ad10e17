"""Every hunk outcome, on synthetic upstream trees (no network)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import make_diff, make_sdist, pin_index, server_files, write_patch, write_series, write_tree
from packaging.version import Version

from ketta_build.applying import Outcome, apply_hunks
from ketta_build.buildtree import ApplyOptions, apply_series
from ketta_build.patchfile import parse_patch
from ketta_build.releases import load_releases
from ketta_build.series import read_series
from ketta_build.sources import DirSource, IndexSource

BODY = "".join(f"line {i}\n" for i in range(1, 31))


def _git(path: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, check=True).stdout.strip()


def _run(tmp_path: Path, upstream: dict[str, str], patches: dict[str, str], *, version="0.16.8", fuzz=0, keep_going=False, series=None):
    tree = write_tree(tmp_path / f"letta-{version}", server_files(version, upstream))
    pdir = tmp_path / "patches"
    write_series(pdir, *(series or list(patches)))
    for name, diff in patches.items():
        write_patch(pdir, name, diff)
    source = DirSource(tree)
    release = source.resolve(Version(version))
    out = tmp_path / "out"
    report = apply_series(release, source, read_series(pdir), out, options=ApplyOptions(fuzz=fuzz, keep_going=keep_going))
    return report, out


def test_clean_patch_becomes_one_commit_on_pristine_upstream(tmp_path):
    new = BODY.replace("line 10\n", "line ten\n")
    report, out = _run(tmp_path, {"letta/a.py": BODY}, {"0001-a.diff": make_diff("letta/a.py", BODY, new)})
    assert report.exit_code == 0
    [result] = report.results
    assert result.outcome is Outcome.CLEAN
    assert [h.label for h in result.hunks] == ["clean"]
    assert (out / "letta/a.py").read_text() == new
    assert _git(out, "log", "--format=%an <%ae>|%s") .splitlines() == [
        "Test Author <test@example.org>|Patch 0001-a.diff",
        "Letta upstream <upstream@letta.invalid>|Letta 0.16.8 (pristine upstream)",
    ]
    assert _git(out, "tag") == "upstream/0.16.8"
    diff = _git(out, "diff", "--stat", "upstream/0.16.8")
    assert "letta/a.py | 2 +-" in diff
    # .gitignore of upstream must not hide files of the pristine tree
    assert (out / ".gitignore").exists() and _git(out, "status", "--porcelain") == ""


def test_offset_is_accepted_and_reported_with_sign(tmp_path):
    new = BODY.replace("line 20\n", "line twenty\n")
    moved = "extra a\nextra b\nextra c\n" + BODY
    report, out = _run(tmp_path, {"letta/a.py": moved}, {"0001-a.diff": make_diff("letta/a.py", BODY, new)})
    [hunk] = report.results[0].hunks
    assert hunk.outcome is Outcome.OFFSET and hunk.offset == 3 and hunk.label == "offset(+3)"
    assert (out / "letta/a.py").read_text() == "extra a\nextra b\nextra c\n" + new


def test_fuzz_only_with_explicit_option_and_reported(tmp_path):
    new = BODY.replace("line 15\n", "line fifteen\n")
    drifted = BODY.replace("line 12\n", "line twelve (changed upstream)\n")
    diff = make_diff("letta/a.py", BODY, new)
    report, _ = _run(tmp_path / "nofuzz", {"letta/a.py": drifted}, {"0001-a.diff": diff})
    assert report.results[0].outcome is Outcome.FAILED
    report, out = _run(tmp_path / "fuzz", {"letta/a.py": drifted}, {"0001-a.diff": diff}, fuzz=1)
    [hunk] = report.results[0].hunks
    assert hunk.outcome is Outcome.FUZZ and hunk.fuzz == 1 and "check it by hand" in hunk.reason
    assert "line fifteen\n" in (out / "letta/a.py").read_text()


def test_already_upstream_patch_is_not_committed_and_flagged(tmp_path):
    new = BODY.replace("line 10\n", "line ten\n")
    report, out = _run(tmp_path, {"letta/a.py": new}, {"0001-a.diff": make_diff("letta/a.py", BODY, new)})
    [result] = report.results
    assert result.outcome is Outcome.ALREADY_UPSTREAM
    assert result.commit is None and "dropping" in result.note
    assert report.exit_code == 0
    assert _git(out, "rev-list", "--count", "HEAD") == "1"


def test_partly_upstream_patch_says_how_many_hunks_landed_and_which_to_remove(tmp_path, capsys):
    """Three hunks over two files, two of them upstream already: "2 of 3 hunks landed upstream", a proposal
    to shrink the patch naming each landed hunk by file and patch line, in the JSON and the table."""
    import json

    from rich.console import Console

    from ketta_build.report import print_report, report_json

    new_a = BODY.replace("line 5\n", "line five\n").replace("line 25\n", "line twenty-five\n")
    diff = make_diff("letta/a.py", BODY, new_a) + make_diff("letta/b.py", BODY, BODY.replace("line 9\n", "line nine\n"))
    upstream_a = BODY.replace("line 25\n", "line twenty-five\n")  # a.py's second hunk landed
    upstream_b = BODY.replace("line 9\n", "line nine\n")  # and b.py's only one
    report, out = _run(tmp_path, {"letta/a.py": upstream_a, "letta/b.py": upstream_b}, {"0001-a.diff": diff})
    [result] = report.results
    assert result.outcome is Outcome.CLEAN and result.commit  # what is left still applies and is committed
    landing = result.landing
    assert (len(landing.landed), landing.of, landing.proposal) == (2, 3, "shrink")
    text = (tmp_path / "patches" / "0001-a.diff").read_text().splitlines()
    assert [(h.path, h.index) for h in landing.landed] == [("letta/a.py", 2), ("letta/b.py", 1)]
    assert all(text[h.patch_line - 1].startswith("@@ ") for h in landing.landed)
    assert result.note.startswith("2 of 3 hunks landed upstream: consider shrinking the patch to the other 1: remove hunk #2 of letta/a.py")
    data = json.loads(json.dumps(report_json(report)))["patches"][0]["landed_upstream"]
    assert data == {"hunks": 2, "of": 3, "proposal": "shrink", "landed": [
        {"path": "letta/a.py", "index": 2, "patch_line": landing.landed[0].patch_line},
        {"path": "letta/b.py", "index": 1, "patch_line": landing.landed[1].patch_line}]}
    print_report(report, Console(width=200, highlight=False))
    printed = capsys.readouterr().out
    assert "note: 0001-a.diff: 2 of 3 hunks landed upstream" in printed
    assert f"landed upstream: {tmp_path / 'patches' / '0001-a.diff'}:{landing.landed[1].patch_line}: hunk #1 of letta/b.py" in printed


def test_whole_patch_upstream_proposes_dropping_and_none_upstream_proposes_nothing(tmp_path):
    new = BODY.replace("line 10\n", "line ten\n")
    report, _ = _run(tmp_path / "all", {"letta/a.py": new}, {"0001-a.diff": make_diff("letta/a.py", BODY, new)})
    landing = report.results[0].landing
    assert (len(landing.landed), landing.of, landing.proposal) == (1, 1, "drop")
    assert report.results[0].note.startswith("1 of 1 hunk landed upstream: every hunk is already upstream")
    report, _ = _run(tmp_path / "none", {"letta/a.py": BODY}, {"0001-a.diff": make_diff("letta/a.py", BODY, new)})
    assert report.results[0].landing.proposal is None and report.results[0].note is None


def test_pure_insertion_already_upstream_beats_a_distant_forward_match(tmp_path):
    old = "a\nb\n" + BODY + "a\nb\n"
    new = "a\nX\nb\n" + BODY + "a\nb\n"
    diff = make_diff("letta/a.py", old, new, context=1)
    report, out = _run(tmp_path, {"letta/a.py": new}, {"0001-a.diff": diff})
    assert report.results[0].outcome is Outcome.ALREADY_UPSTREAM
    assert (out / "letta/a.py").read_text() == new


def test_failed_hunk_without_base_leaves_rej_and_stops(tmp_path):
    new = BODY.replace("line 10\n", "line ten\n")
    conflicting = BODY.replace("line 10\n", "line 10 changed upstream\n")
    second = make_diff("letta/b.py", "x\n", "y\n")
    report, out = _run(
        tmp_path,
        {"letta/a.py": conflicting, "letta/b.py": "x\n"},
        {"0001-a.diff": make_diff("letta/a.py", BODY, new), "0002-b.diff": second},
    )
    assert report.exit_code == 1
    assert report.results[0].outcome is Outcome.FAILED
    assert report.not_attempted == ["0002-b.diff"]
    [f] = report.results[0].files
    assert f.reject_file == "letta/a.py.rej"
    assert "-line 10\n+line ten\n" in (out / "letta/a.py.rej").read_text()
    assert "context not found" in f.hunks[0].reason
    assert (out / "letta/b.py").read_text() == "x\n"  # never attempted


def test_keep_going_applies_the_rest_and_resets_the_failed_patch(tmp_path):
    new = BODY.replace("line 10\n", "line ten\n")
    conflicting = BODY.replace("line 10\n", "line 10 changed upstream\n")
    report, out = _run(
        tmp_path,
        {"letta/a.py": conflicting, "letta/b.py": "x\n"},
        {"0001-a.diff": make_diff("letta/a.py", BODY, new), "0002-b.diff": make_diff("letta/b.py", "x\n", "y\n")},
        keep_going=True,
    )
    assert [r.outcome for r in report.results] == [Outcome.FAILED, Outcome.CLEAN]
    assert report.exit_code == 1
    assert (out / "letta/b.py").read_text() == "y\n"
    assert not (out / "letta/a.py.rej").exists()
    assert _git(out, "status", "--porcelain") == ""


def test_new_deleted_and_executable_files(tmp_path):
    add = make_diff("scripts/run.sh", None, "#!/bin/sh\necho hi\n").replace("new file mode 100644", "new file mode 100755")
    delete = make_diff("letta/old.py", "gone\n", None)
    report, out = _run(tmp_path, {"letta/old.py": "gone\n"}, {"0001-files.diff": add + delete})
    assert report.results[0].outcome is Outcome.CLEAN
    assert (out / "scripts/run.sh").stat().st_mode & 0o111
    assert not (out / "letta/old.py").exists()
    assert _git(out, "ls-files", "-s", "scripts/run.sh").startswith("100755")


def test_no_newline_at_end_of_file_both_ways(tmp_path):
    old = "a\nb\nc"
    new = "a\nb\nc\nd"
    report, out = _run(tmp_path, {"letta/n.py": old}, {"0001-n.diff": make_diff("letta/n.py", old, new)})
    assert report.results[0].outcome is Outcome.CLEAN
    assert (out / "letta/n.py").read_bytes() == b"a\nb\nc\nd"


def test_crlf_file_with_crlf_patch_applies_and_lf_patch_explains(tmp_path):
    crlf = BODY.replace("\n", "\r\n")
    new_crlf = crlf.replace("line 5\r\n", "line five\r\n")
    report, out = _run(tmp_path / "ok", {"letta/w.py": crlf}, {"0001-w.diff": make_diff("letta/w.py", crlf, new_crlf)})
    assert report.results[0].outcome is Outcome.CLEAN
    assert (out / "letta/w.py").read_bytes() == new_crlf.encode()
    lf_diff = make_diff("letta/w.py", BODY, BODY.replace("line 5\n", "line five\n"))
    report, _ = _run(tmp_path / "bad", {"letta/w.py": crlf}, {"0001-w.diff": lf_diff})
    [hunk] = report.results[0].hunks
    assert hunk.outcome is Outcome.FAILED and "line endings" in hunk.reason


def test_form_feed_in_a_line_is_not_a_line_break(tmp_path):
    old = "a\nb\x0cc\nd\n"
    new = "a\nb\x0cc\nD\n"
    report, out = _run(tmp_path, {"letta/f.py": old}, {"0001-f.diff": make_diff("letta/f.py", old, new)})
    assert report.results[0].outcome is Outcome.CLEAN
    assert (out / "letta/f.py").read_text() == new


def test_two_runs_give_the_same_tree_and_commits(tmp_path):
    new = BODY.replace("line 10\n", "line ten\n")
    r1, _ = _run(tmp_path / "one", {"letta/a.py": BODY}, {"0001-a.diff": make_diff("letta/a.py", BODY, new)})
    r2, _ = _run(tmp_path / "two", {"letta/a.py": BODY}, {"0001-a.diff": make_diff("letta/a.py", BODY, new)})
    assert r1.tree_hash == r2.tree_hash and r1.head == r2.head


def test_variants_select_exactly_one_per_release(tmp_path):
    pdir = write_series(
        tmp_path / "p",
        "0001-common.diff",
        "0002-feature.diff        [letta>=0.16.2]",
        "0002-feature-old.diff    [letta>=0.14,<0.16.2]",
        "0003-new-only.diff       [letta>=0.16.8]",
    )
    for name in ("0001-common.diff", "0002-feature.diff", "0002-feature-old.diff", "0003-new-only.diff"):
        write_patch(pdir, name, make_diff("letta/a.py", "a\n", "b\n"))
    series = read_series(pdir)
    assert [e.name for e in series.select(Version("0.16.8"))] == ["0001-common.diff", "0002-feature.diff", "0003-new-only.diff"]
    assert [e.name for e in series.select(Version("0.15.1"))] == ["0001-common.diff", "0002-feature-old.diff"]
    explained = {s.entry.name: s for s in series.explain(Version("0.15.1"))}
    assert "0002-feature-old.diff is used instead" in explained["0002-feature.diff"].reason
    assert "variant chosen over 0002-feature.diff" in explained["0002-feature-old.diff"].reason
    assert series.coverage_problems() == []


def test_apply_hunks_is_pure_and_tracks_offsets_between_hunks(tmp_path):
    lines = [f"{i}\n" for i in range(40)]
    text = "".join(lines)
    changed = text.replace("2\n", "two\n", 1).replace("31\n", "thirty\n")
    p = write_patch(tmp_path, "0001-x.diff", make_diff("letta/x.py", text, changed))
    patch = parse_patch(p)
    assert len(patch.files[0].hunks) == 2
    out, results = apply_hunks(lines, patch.files[0].hunks)
    assert [r.label for r in results] == ["clean", "clean"]
    assert out[2] == "two\n" and out[31] == "thirty\n"
    shifted = ["new\n"] * 5 + lines
    out, results = apply_hunks(shifted, patch.files[0].hunks)
    assert [r.label for r in results] == ["offset(+5)", "offset(+5)"]


# ----------------------------------------------------------------------------- 3-way merges


@pytest.fixture
def two_releases(tmp_path, local_index, cache):
    """letta 0.16.2 (the patch's base) and 0.16.8 (the target) on a local index."""

    def publish(base_text: str, target_text: str, extra_target: dict | None = None):
        pdir = write_series(tmp_path / "patches")  # its releases.toml, pinned to these made-up releases
        for version, text, extra in (("0.16.2", base_text, {}), ("0.16.8", target_text, extra_target or {})):
            files = server_files(version, {"letta/m.py": text, **extra})
            local_index.add(make_sdist(tmp_path / f"letta-{version}.tar.gz", version, files))
        pin_index(pdir, local_index)
        return IndexSource(cache, local_index.url, releases=load_releases(pdir))

    return publish


def _apply_release(tmp_path, source, cache, patches: dict[str, str], base="0.16.2"):
    pdir = write_series(tmp_path / "patches", *patches)
    for name, diff in patches.items():
        write_patch(pdir, name, diff, base=base)
    release = source.resolve(Version("0.16.8"))
    return apply_series(release, source, read_series(pdir), tmp_path / "out", cache=cache)


def test_three_way_merge_resolves_what_context_matching_cannot(tmp_path, two_releases, cache):
    base = BODY
    patched = base.replace("line 15\n", "line fifteen (ketta)\n")
    # Upstream changed a line inside the hunk's context (two lines above the change):
    target = base.replace("line 13\n", "line 13 changed upstream\n")
    source = two_releases(base, target)
    report = _apply_release(tmp_path, source, cache, {"0001-m.diff": make_diff("letta/m.py", base, patched)})
    [hunk] = report.results[0].hunks
    assert hunk.outcome is Outcome.MERGED, hunk.reason
    assert "3-way merge against release 0.16.2 (the patch's base)" in hunk.reason
    text = (tmp_path / "out/letta/m.py").read_text()
    assert "line 13 changed upstream\n" in text and "line fifteen (ketta)\n" in text
    assert report.exit_code == 0 and report.results[0].commit


def test_three_way_uses_earlier_patches_as_part_of_the_base(tmp_path, two_releases, cache):
    base = BODY
    after_first = base.replace("line 5\n", "line five\n")
    after_second = after_first.replace("line 15\n", "line fifteen\n")
    target = base.replace("line 13\n", "line 13 changed upstream\n")
    source = two_releases(base, target)
    report = _apply_release(
        tmp_path,
        source,
        cache,
        {
            "0001-first.diff": make_diff("letta/m.py", base, after_first),
            "0002-second.diff": make_diff("letta/m.py", after_first, after_second),
        },
    )
    assert [r.outcome for r in report.results] == [Outcome.CLEAN, Outcome.MERGED]
    text = (tmp_path / "out/letta/m.py").read_text()
    assert "line five\n" in text and "line fifteen\n" in text and "line 13 changed upstream\n" in text


def test_three_way_conflict_leaves_markers_and_fails(tmp_path, two_releases, cache):
    base = BODY
    patched = base.replace("line 15\n", "line fifteen (ketta)\n")
    target = base.replace("line 15\n", "line 15 (upstream)\n")
    source = two_releases(base, target)
    report = _apply_release(tmp_path, source, cache, {"0001-m.diff": make_diff("letta/m.py", base, patched)})
    assert report.exit_code == 1
    [f] = report.results[0].files
    assert f.conflicts == 1 and f.reject_file is None
    text = (tmp_path / "out/letta/m.py").read_text()
    assert "<<<<<<< letta 0.16.8" in text and ">>>>>>> 0001-m.diff" in text


def test_three_way_refuses_a_base_whose_blob_id_differs(tmp_path, two_releases, cache):
    base = BODY
    patched = base.replace("line 15\n", "line fifteen\n")
    target = base.replace("line 13\n", "line 13 changed upstream\n")
    source = two_releases(base.replace("line 1\n", "something else\n"), target)
    report = _apply_release(tmp_path, source, cache, {"0001-m.diff": make_diff("letta/m.py", base, patched)})
    [hunk] = report.results[0].hunks
    assert hunk.outcome is Outcome.FAILED
    assert "blob id" in hunk.reason


def test_commits_are_byte_for_byte_what_git_commit_makes(tmp_path):
    """The build tree's commits are written through one git fast-import stream; each must be the
    object `git add -A` + `git commit -m` made before: same tree, identities, dates, message."""
    from ketta_build.buildtree import _identity_env, _patch_date, stripspace
    from ketta_build.header import commit_message

    other = "".join(f"other {i}\n" for i in range(1, 9))
    patches = {
        "0001-a.diff": make_diff("letta/a.py", BODY, BODY.replace("line 3\n", "line three\n")),
        "0002-new.diff": make_diff("letta/newdir/b.py", None, "print('new')\n").replace("new file mode 100644", "new file mode 100755"),
        "0003-gone.diff": make_diff("letta/other.py", other, None),
        "0004-a-again.diff": make_diff("letta/a.py", BODY.replace("line 3\n", "line three\n"),
                                       BODY.replace("line 3\n", "line three\n").replace("line 20\n", "line 20 changed\n")),
    }
    report, out = _run(tmp_path, {"letta/a.py": BODY, "letta/other.py": other}, patches)
    assert report.exit_code == 0 and _git(out, "status", "--porcelain") == ""
    assert _git(out, "ls-files", "-s", "letta/newdir/b.py").startswith("100755 ")
    assert not (out / "letta/other.py").exists() and _git(out, "ls-files", "letta/other.py") == ""

    # The same series by porcelain, in a clone of the pristine commit.
    ref = tmp_path / "ref"
    subprocess.run(["git", "clone", "-q", str(out), str(ref)], check=True)
    _git(ref, "checkout", "-q", "upstream/0.16.8")
    series = read_series(tmp_path / "patches")
    for entry in series.entries:
        patch = series.load(entry)
        (tmp_path / "one.diff").write_text("".join(parse_patch_text(tmp_path / "patches" / entry.name)))
        _git(ref, "apply", str(tmp_path / "one.diff"))
        _git(ref, "add", "-A")
        env = _identity_env((patch.header.author_name, patch.header.author_email), ("ketta-build", "ketta-build@ketta.invalid"),
                            _patch_date(patch))
        subprocess.run(["git", "commit", "-q", "--no-verify", "--allow-empty", "-m", commit_message(patch.name, patch.header)],
                       cwd=ref, env={**__import__("os").environ, **env}, check=True)
    assert _git(ref, "rev-parse", "HEAD") == report.head
    assert [r.commit for r in report.results] == _git(ref, "rev-list", "--reverse", "upstream/0.16.8..HEAD").splitlines()
    message = commit_message("0001-a.diff", series.load(series.entries[0]).header)
    assert stripspace(message) == _git(ref, "log", "-1", "--format=%B", report.results[0].commit) + "\n"


def parse_patch_text(path: Path) -> list[str]:
    """The diff part of a patch file (from its first ``diff --git`` line)."""
    lines = path.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("diff --git"))
    return lines[start:]


def test_stripspace_matches_git(tmp_path):
    from ketta_build.buildtree import stripspace

    for text in ["a\n\n\n\nb  \n\n", "\n\nsubject\n\n\n", "x\t \ny\n", "", "only\n\n\n\n\n# kept\n"]:
        proc = subprocess.run(["git", "stripspace"], input=text, capture_output=True, text=True, check=True)
        assert stripspace(text) == proc.stdout, repr(text)


def test_a_failed_patch_keeps_earlier_commits_and_its_markers(tmp_path):
    good = make_diff("letta/a.py", BODY, BODY.replace("line 3\n", "line three\n"))
    bad = make_diff("letta/b.py", "nothing like upstream\n" * 5, "changed\n" * 5)
    upstream = {"letta/a.py": BODY, "letta/b.py": "upstream b\n" * 5}
    report, out = _run(tmp_path, upstream, {"0001-good.diff": good, "0002-bad.diff": bad})
    assert report.exit_code != 0
    assert _git(out, "log", "-1", "--format=%s") == "Patch 0001-good.diff"
    assert _git(out, "rev-parse", "HEAD") == report.results[0].commit
    assert "letta/a.py" not in _git(out, "status", "--porcelain"), "the committed patch is not shown as changed"


def test_a_patch_never_writes_through_a_symlink_out_of_the_tree(tmp_path):
    # The release tree (here a --letta-dir) holds a directory symlink that leads outside it; a
    # patch creating a file below it fails, and nothing appears outside. The directory check is
    # remembered per run, so a second patch into the same place is refused again, not waved through.
    outside = tmp_path / "outside"
    outside.mkdir()
    tree = write_tree(tmp_path / "letta-0.16.8", server_files("0.16.8", {"letta/a.py": BODY}))
    pdir = tmp_path / "patches"
    write_series(pdir, "0001-inside.diff", "0002-escape.diff")
    write_patch(pdir, "0001-inside.diff", make_diff("letta/new/b.py", None, "b = 1\n"))
    write_patch(pdir, "0002-escape.diff", make_diff("letta/out/evil.py", None, "evil = 1\n"))

    class LinkOutSource(DirSource):
        # A source now refuses a tree with a link out of it (tests/test_source_safety.py): the link is
        # put in after the export, to test the guard behind that check.
        def export(self, release, dest):
            super().export(release, dest)
            (dest / "letta" / "out").symlink_to(outside, target_is_directory=True)

    source = LinkOutSource(tree)
    report = apply_series(source.resolve(Version("0.16.8")), source, read_series(pdir), tmp_path / "out",
                          options=ApplyOptions(keep_going=True))
    inside, escape = report.results
    assert inside.outcome is Outcome.CLEAN
    assert escape.outcome is Outcome.FAILED
    assert "resolves outside the tree through a symlink" in escape.files[0].reason
    assert list(outside.iterdir()) == []


def test_tree_guard_checks_each_directory_once_and_keeps_refusing():
    import os
    import tempfile

    from ketta_build.applying import TreeGuard

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "tree" / "letta").mkdir(parents=True)
        (root / "elsewhere").mkdir()
        os.symlink(root / "elsewhere", root / "tree" / "letta" / "link")
        guard = TreeGuard(root / "tree")
        assert guard.target("letta/a.py") == root / "tree" / "letta" / "a.py"
        assert guard.target("letta/new/deeper/c.py").name == "c.py"  # not there yet: made as a real directory
        for _ in range(2):
            with pytest.raises(ValueError, match="outside the tree"):
                guard.target("letta/link/x.py")
