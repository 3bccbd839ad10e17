"""ketta-build bisect on a synthetic upstream history: a small git repository with tagged releases
and commits that change, at known places, the context of a patch's hunk (no network)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import make_diff, write_series
from world import BODY, header

from ketta_build.bisect import bisect
from ketta_build.cli import main

RELEASES = '[[release]]\nversion = "0.16.7"\ndate = "2026-03-31"\n\n[[release]]\nversion = "0.16.8"\ndate = "2026-05-14"\n'
M1 = BODY.replace("line 15\n", "line fifteen (ketta)\n")  # what 0001 makes of letta/m.py
M2 = M1.replace("line 17\n", "line seventeen (ketta)\n")  # and 0002 after it (its context holds 0001's line)


class Upstream:
    """A Letta-like repository: each ``commit`` writes files (and the version) and returns the commit's sha."""

    def __init__(self, root: Path, prefix: str = "") -> None:
        self.root = root
        self.prefix = prefix
        self.count = 0
        root.mkdir()
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        env = {**os.environ, "GIT_AUTHOR_NAME": "Upstream", "GIT_AUTHOR_EMAIL": "up@example.org",
               "GIT_COMMITTER_NAME": "Upstream", "GIT_COMMITTER_EMAIL": "up@example.org",
               "GIT_AUTHOR_DATE": f"2026-01-{1 + self.count:02d}T12:00:00+00:00",
               "GIT_COMMITTER_DATE": f"2026-01-{1 + self.count:02d}T12:00:00+00:00"}
        return subprocess.run(["git", *args], cwd=self.root, env=env, capture_output=True, text=True,
                              check=True).stdout.strip()

    def commit(self, subject: str, *, version: str | None = None, m: str | None = None, tag: bool = False,
               files: dict[str, str] | None = None) -> str:
        if version is not None:
            (self.root / "pyproject.toml").write_text(f'[project]\nname = "letta"\nversion = "{version}"\n')
        for rel, text in {**({"letta/m.py": m} if m is not None else {}), **(files or {})}.items():
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.root / rel).write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", subject)
        self.count += 1
        if tag:
            text = (self.root / "pyproject.toml").read_text()
            self.git("tag", self.prefix + text.split('version = "')[1].split('"')[0])
        return self.git("rev-parse", "HEAD")

    def side_merge(self, subject: str, *changes: dict) -> tuple[str, list[str]]:
        """A merge (as Letta's release merges are) whose first parent is main's previous commit and whose
        second parent is a branch from it making ``changes``, one commit each; the merge and the branch's commits."""
        branch = f"side{self.count}"
        self.git("checkout", "-q", "-b", branch)
        made = [self.commit(f"{subject} (part {i})", **change) for i, change in enumerate(changes, 1)]
        self.git("checkout", "-q", "main")
        self.git("merge", "-q", "--no-ff", "-m", subject, branch)
        self.count += 1
        return self.git("rev-parse", "HEAD"), made


def _series(root: Path) -> Path:
    patches = root / "patches"
    patches.mkdir()
    (patches / "releases.toml").write_text(RELEASES)
    write_series(patches, "0001-change-m.diff", "0002-next-to-it.diff")
    (patches / "0001-change-m.diff").write_text(header("Ketta changes line 15", "0.16.7") + make_diff("letta/m.py", BODY, M1))
    (patches / "0002-next-to-it.diff").write_text(header("Ketta changes line 17", "0.16.7") + make_diff("letta/m.py", M1, M2))
    return patches


@pytest.fixture
def history(tmp_path):
    """0.16.7, then on main's first-parent path: a README commit, a merge whose branch rewrites line 20
    (the context of 0002's hunk) in the second of its three commits, two more commits, and 0.16.8."""
    up = Upstream(tmp_path / "letta")
    shas = {"0.16.7": up.commit("release 0.16.7", version="0.16.7", m=BODY, tag=True)}
    shas["readme"] = up.commit("docs: readme", files={"README.md": "Letta\n"})
    shas["break"], inside = up.side_merge("feat: rework the middle of m.py", {"files": {"letta/a.py": "a\n"}},
                                          {"m": BODY.replace("line 20\n", "line twenty (upstream)\n")},
                                          {"files": {"letta/b.py": "b\n"}})
    shas["inside"] = inside[1]
    shas["other"] = up.commit("chore: other file", files={"letta/other.py": "x = 1\n"})
    shas["more"] = up.commit("fix: further down m.py", m=BODY.replace("line 20\n", "line twenty (upstream)\n")
                             .replace("line 50\n", "line fifty\n"))
    shas["0.16.8"] = up.commit("chore: bump 0.16.8", version="0.16.8", tag=True)
    return up, shas, _series(tmp_path)


def test_finds_the_commit_that_changed_the_context_with_its_hunk(history):
    up, shas, patches = history
    result = bisect("0002-next-to-it.diff", str(up.root), series_dir=patches)
    assert (result.good, result.bad) == ("0.16.7", "0.16.8") and result.path_commits == 5
    assert result.found is not None and result.found.sha == shas["break"]
    assert result.found.subject == "feat: rework the middle of m.py" and result.found.date.startswith("2026-01-")
    assert result.found.version == "0.16.7"
    assert len(result.steps) <= 3  # log2 of the path, not the path
    [brk] = result.breaks
    assert (brk.path, brk.hunk, brk.outcome) == ("letta/m.py", 1, "failed")
    text = (patches / "0002-next-to-it.diff").read_text().splitlines()
    assert text[brk.patch_line - 1].startswith("@@ ")
    # the reason names the patch line the file lost
    lost = next(i for i, line in enumerate(text, 1) if line == " line 20")
    assert f"patch line {lost} 'line 20' is not in the file" in brk.reason
    assert result.monotone and result.first_break is None and result.applies_again == []
    assert result.checked == 3  # the commits that change m.py or pyproject.toml: the merge, "more", the bump
    assert result.exit_code == 0
    # the merge's branch is searched too: the commit in it that changed line 20
    inner = result.inside
    assert inner is not None and inner.found.sha == shas["inside"] and inner.path_commits == 3
    assert inner.found.subject == "feat: rework the middle of m.py (part 2)" and inner.inside is None
    assert [b.patch_line for b in inner.breaks] == [brk.patch_line]


def test_the_earlier_patches_are_applied_first(history):
    """0002's context holds the line 0001 adds: without 0001 it would not apply at 0.16.7 at all."""
    up, shas, patches = history
    result = bisect("0001-change-m.diff", str(up.root), series_dir=patches)
    assert result.found is None and result.exit_code == 1  # 0001 (line 15) never breaks
    assert bisect("0002-next-to-it.diff", str(up.root), series_dir=patches, bad=shas["readme"]).found is None


def test_v_prefixed_tags_and_explicit_refs(tmp_path):
    up = Upstream(tmp_path / "letta", prefix="v")
    up.commit("release", version="0.16.7", m=BODY, tag=True)
    broke = up.commit("change line 20", m=BODY.replace("line 20\n", "line 20!\n"))
    up.commit("bump", version="0.16.8", tag=True)
    patches = _series(tmp_path)
    result = bisect("0002-next-to-it.diff", str(up.root), series_dir=patches)
    assert (result.good, result.bad, result.found.sha) == ("v0.16.7", "v0.16.8", broke)
    # "0.16.7" finds tag v0.16.7; a sha is taken as it is
    again = bisect("0002-next-to-it.diff", str(up.root), series_dir=patches, good="0.16.7", bad=broke)
    assert again.found.sha == broke and again.bad == broke


def test_a_hunk_that_lands_upstream_is_a_break_too(tmp_path):
    up = Upstream(tmp_path / "letta")
    up.commit("release", version="0.16.7", m=BODY, tag=True)
    up.commit("unrelated", files={"README.md": "x\n"})
    landed = up.commit("upstream takes Ketta's lines 15 and 17", m=M2)
    up.commit("bump", version="0.16.8", tag=True)
    result = bisect("0002-next-to-it.diff", str(up.root), series_dir=_series(tmp_path))
    assert result.found.sha == landed
    assert [(b.outcome, b.reason) for b in result.breaks] == [("already-upstream", "the new lines are already present")]
    # 0001, applied first, no longer applies there (its context holds line 17): said, not hidden
    assert [(b.patch, b.outcome) for b in result.earlier] == [("0001-change-m.diff", "failed")]


def test_a_patch_that_breaks_and_applies_again_says_which_break_was_found(tmp_path):
    """Broken at b1, mended at fix, broken for good at b2: git bisect's answer depends on where the
    halves fall; the report names the first break and where it applied again."""
    up = Upstream(tmp_path / "letta")
    up.commit("release", version="0.16.7", m=BODY, tag=True)
    b1 = up.commit("break", m=BODY.replace("line 20\n", "line 20?\n"))
    fix = up.commit("revert", m=BODY)
    for i in range(4):
        up.commit(f"noise {i}", files={"README.md": f"{i}\n"})
    b2 = up.commit("break again", m=BODY.replace("line 19\n", "line 19?\n"))
    up.commit("bump", version="0.16.8", tag=True)
    result = bisect("0002-next-to-it.diff", str(up.root), series_dir=_series(tmp_path))
    assert result.found.sha == b2  # the binary search never looked at b1
    assert not result.monotone
    assert result.first_break.sha == b1 and [c.sha for c in result.applies_again] == [fix]


def test_good_must_apply_and_be_an_ancestor(history, tmp_path, capsys):
    up, shas, patches = history
    rc = main(["bisect", "0002-next-to-it.diff", "--letta-git", str(up.root), "--patches", str(patches),
               "--good", shas["break"]])
    assert rc == 2 and "does not apply exactly at" in capsys.readouterr().err
    rc = main(["bisect", "0002-next-to-it.diff", "--letta-git", str(up.root), "--patches", str(patches),
               "--good", "0.16.8", "--bad", "0.16.7"])
    assert rc == 2 and "is not an ancestor of" in capsys.readouterr().err
    rc = main(["bisect", "0009-nothing.diff", "--letta-git", str(up.root), "--patches", str(patches)])
    assert rc == 2 and "0009-nothing.diff is not a patch of this series" in capsys.readouterr().err
    rc = main(["bisect", "0002-next-to-it.diff", "--letta-git", str(tmp_path / "nowhere"), "--patches", str(patches)])
    assert rc == 3 and "cannot open git repository" in capsys.readouterr().err


def test_until_applies_finds_the_commit_that_made_a_newer_variant_necessary(history):
    """A variant made on 0.16.8 for the reworked line 20 applies from the merge on: that is the commit."""
    up, shas, patches = history
    m1 = BODY.replace("line 20\n", "line twenty (upstream)\n").replace("line 50\n", "line fifty\n").replace(
        "line 15\n", "line fifteen (ketta)\n")
    (patches / "0002-next-to-it-0.16.8.diff").write_text(
        header("Ketta changes line 17", "0.16.8") + make_diff("letta/m.py", m1, m1.replace("line 17\n", "line seventeen (ketta)\n")))
    (patches / "series").write_text("0001-change-m.diff\n0002-next-to-it.diff [letta<0.16.8]\n"
                                    "0002-next-to-it-0.16.8.diff [letta>=0.16.8]\n")
    result = bisect("0002-next-to-it-0.16.8.diff", str(up.root), series_dir=patches, good="0.16.7", until_applies=True)
    assert result.mode == "applies" and result.bad == "0.16.8" and result.found.sha == shas["break"]
    assert [b.outcome for b in result.breaks] == ["failed"]  # what did not apply just before it


def test_cli_text_and_json(history, capsys):
    up, shas, patches = history
    rc = main(["bisect", "0002-next-to-it.diff", "--letta-git", str(up.root), "--patches", str(patches), "--json", "-"])
    out, err = capsys.readouterr()
    data = json.loads(out)  # alone on stdout
    assert rc == 0 and data["schema"] == "ketta-build/bisect/1" and data["exit_code"] == 0
    assert data["found"]["sha"] == shas["break"] and data["found"]["short"] == shas["break"][:len(data["found"]["short"])]
    assert data["breaks"][0]["path"] == "letta/m.py" and data["monotone"] is True
    assert f"first commit where it stops applying exactly: {data['found']['short']} feat: rework the middle of m.py" in err
    assert f"failed: {patches / '0002-next-to-it.diff'}:{data['breaks'][0]['patch_line']}: hunk #1 of letta/m.py" in err
    assert data["inside"]["found"]["sha"] == shas["inside"]
    assert f"{data['found']['short']} is a merge: inside it, on the first-parent path" in err
    assert "first commit where it stops applying exactly: " + data["inside"]["found"]["short"] in err
    rc = main(["bisect", "0002-next-to-it.diff", "--letta-git", str(up.root), "--patches", str(patches),
               "--bad", shas["readme"]])
    assert rc == 1 and "no break to find" in capsys.readouterr().out


def test_the_earlier_patches_are_those_the_series_selects_for_each_commits_release(tmp_path):
    """0001 has a variant for 0.16.8 that words line 15 otherwise: from the commit that bumps the version
    on, 0002 sits on that variant, whose line its context does not hold."""
    up = Upstream(tmp_path / "letta")
    up.commit("release", version="0.16.7", m=BODY, tag=True)
    up.commit("unrelated", files={"README.md": "x\n"})
    bump = up.commit("bump", version="0.16.8", tag=True)
    patches = _series(tmp_path)
    (patches / "0001-change-m-0.16.8.diff").write_text(
        header("Ketta changes line 15", "0.16.8") + make_diff("letta/m.py", BODY, BODY.replace("line 15\n", "line 15 (ketta 8)\n")))
    (patches / "series").write_text("0001-change-m-0.16.8.diff [letta>=0.16.8]\n0001-change-m.diff [letta<0.16.8]\n"
                                    "0002-next-to-it.diff\n")
    result = bisect("0002-next-to-it.diff", str(up.root), series_dir=patches)
    assert result.found.sha == bump and result.found.version == "0.16.8"
    assert "'line fifteen (ketta)' is not in the file" in result.breaks[0].reason


# ----------------------------------------------------------------------------- the real history

REAL = os.environ.get("KETTA_LETTA_GIT")  # a clone of Letta's repository (tags X or vX), e.g. a bare mirror
REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not REAL, reason="set KETTA_LETTA_GIT to a clone of Letta's git repository")
@pytest.mark.parametrize("name,good,bad", [
    ("0003-keys-from-database-0.14.diff", None, "0.16.2"),
    ("0004-no-base-providers-0.16.2.diff", None, "0.16.7"),
])
def test_the_upstream_break_fields_are_what_bisect_finds(name, good, bad):
    """A variant's Upstream-Break field names the commit bisect finds (inside the release merge)."""
    from ketta_build.header import field_value
    from ketta_build.patchfile import parse_patch

    result = bisect(name, REAL, series_dir=REPO / "patches", good=good, bad=bad)
    assert result.monotone and result.found is not None and result.inside is not None
    inner = result.inside.found
    assert field_value(parse_patch(REPO / "patches" / name).header, "Upstream-Break") == f"{inner.short} {inner.subject}"


@pytest.mark.skipif(not REAL, reason="set KETTA_LETTA_GIT to a clone of Letta's git repository")
def test_the_0162_variant_of_0003_never_breaks_and_the_newer_one_says_why_it_exists():
    result = bisect("0003-keys-from-database-0.16.2.diff", REAL, series_dir=REPO / "patches")
    assert result.found is None and result.monotone
    newer = bisect("0003-keys-from-database.diff", REAL, series_dir=REPO / "patches", good="0.16.2", bad="0.16.4",
                   until_applies=True)
    inner = newer.inside.found
    releases = (REPO / "patches" / "0003-keys-from-database-0.16.2.diff").read_text().split("\nReleases: ", 1)[1].split("\n")[0]
    assert f"{inner.short} {inner.subject}" in releases
