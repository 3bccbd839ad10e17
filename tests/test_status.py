"""Patch status and ownership: lint's rule ``status`` and the ``status`` verb, on the small world."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import date

import pytest
from world import git

from ketta_build.cache import Cache
from ketta_build.status import series_status


def _set(world, name: str, old: str, new: str) -> None:
    path = world.patches / name
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _lint(world) -> tuple[int, list[str]]:
    rc, _, err = world.run("lint")
    return rc, [ln for ln in err.splitlines() if ln.startswith("ketta-build: lint:")]


@pytest.mark.parametrize("old,new,expected", [
    ("Forwarded: not-needed\n", "", "0002-new-module.diff:1: [status] no Forwarded field"),
    ("Owner: Test Author <test@example.org>\n", "", "0002-new-module.diff:1: [status] no Owner field"),
    ("Forwarded: not-needed", "Forwarded: maybe later", "[status] Forwarded must be no, not-needed or a URL, got 'maybe later'"),
    ("Forwarded: not-needed", "Forwarded: no", "[status] an Inappropriate patch is Forwarded: not-needed"),
    ("Owner: Test Author <test@example.org>", "Owner: Test Author <nobody>", "[status] Owner must be a team's name"),
])
def test_forwarded_and_owner_are_required_and_well_formed(world, old, new, expected):
    _set(world, "0002-new-module.diff", old, new)
    rc, lines = _lint(world)
    assert rc == 4 and any(expected in line for line in lines), lines


def test_a_submitted_patch_is_forwarded_to_a_url(world):
    _set(world, "0002-new-module.diff", "Upstream-Status: Inappropriate [test]", "Upstream-Status: Submitted")
    rc, lines = _lint(world)
    assert rc == 4 and any("Upstream-Status Submitted says it was sent upstream" in line for line in lines), lines
    _set(world, "0002-new-module.diff", "Forwarded: not-needed", "Forwarded: https://github.com/letta-ai/letta/pull/1")
    assert _lint(world) == (0, [])


def test_a_passed_review_date_warns_and_a_wrong_one_fails(world):
    _set(world, "0002-new-module.diff", "Forwarded: not-needed\n", "Forwarded: not-needed\nReview-By: 2020-01-31\n")
    rc, lines = _lint(world)
    line = next(ln for ln in lines if "Review-By" in ln or "review date" in ln)
    assert rc == 0 and "0002-new-module.diff:6: [status] warning: the review date 2020-01-31 has passed" in line, lines
    _set(world, "0002-new-module.diff", "Review-By: 2020-01-31", "Review-By: next spring")
    rc, lines = _lint(world)
    assert rc == 4 and any("0002-new-module.diff:6: [status] Review-By must be a date, YYYY-MM-DD" in ln for ln in lines), lines


def test_applied_upstream_may_not_name_a_release_the_patch_still_serves(world):
    # 0003-tail-0.16.7 serves only 0.16.7: saying upstream has the change from 0.16.8 on is consistent.
    _set(world, "0003-tail-0.16.7.diff", "Forwarded: not-needed\n", "Forwarded: not-needed\nApplied-Upstream: 0.16.8\n")
    assert _lint(world) == (0, [])
    # 0001 serves every release: upstream having it from 0.16.8 means the guard should stop there.
    _set(world, "0001-change-m.diff", "Forwarded: not-needed\n", "Forwarded: not-needed\nApplied-Upstream: 0.16.8\n")
    rc, lines = _lint(world)
    assert rc == 4 and any(
        "0001-change-m.diff:6: [status] Applied-Upstream says letta 0.16.8 has this change, but the guard "
        "[no guard: every release] still serves letta 0.16.8 (and still changes letta 0.16.8: is Applied-Upstream right?)"
        in ln for ln in lines), lines
    _set(world, "0001-change-m.diff", "Applied-Upstream: 0.16.8", "Applied-Upstream: soon")
    rc, lines = _lint(world)
    assert rc == 4 and any("Applied-Upstream must start with the release or commit" in ln for ln in lines), lines


def test_export_gives_a_new_patch_forwarded_and_owner(world):
    tree = world.apply("0.16.8")
    (tree / "letta" / "n.py").write_text("N = 1\n")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "A new module\n\nBecause the providers need a home for N.\n\nUpstream-Status: Pending")
    rc, _, err = world.run("export", "--tree", str(tree))
    assert rc == 0, err
    new = next(p for p in world.patches.glob("0004-*.diff"))
    text = new.read_text()
    assert "Forwarded: no\n" in text and "Owner: Maintainer <m@example.org>\n" in text
    assert _lint(world) == (0, [])


def test_status_shows_owner_age_size_and_every_release(world, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # the table's rows on one line each
    # A release where upstream has 0003's change already, and a patch touched in a later commit.
    sdist = world.publish("0.16.9", m="".join(f"line {i}\n" for i in range(1, 61)).replace("line 40\n", "line forty\n"))
    (world.patches / "releases.toml").write_text((world.patches / "releases.toml").read_text()
                                                 + '\n[[release]]\nversion = "0.16.9"\ndate = "2026-06-01"\n'
                                                 + f'sha256 = "{hashlib.sha256(sdist.read_bytes()).hexdigest()}"\n')
    _set(world, "0002-new-module.diff", "Forwarded: not-needed\n", "Forwarded: not-needed\nReview-By: 2026-07-01\n")
    git(world.root / "repo", "commit", "-qam", "review date for 0002")

    rc, out, err = world.run("status", "--patches", str(world.patches), "--index-url", world.index.url,
                             "--cache-dir", str(world.cache), "--json", str(world.root / "status.json"))
    assert rc == 0, err
    doc = json.loads((world.root / "status.json").read_text())
    assert doc["schema"] == "ketta-build/status/1" and doc["releases"] == ["0.16.7", "0.16.8", "0.16.9"]
    rows = {p["patch"]: p for p in doc["patches"]}
    assert list(rows) == ["0001-change-m.diff", "0002-new-module.diff", "0003-tail.diff", "0003-tail-0.16.7.diff"]
    assert rows["0003-tail.diff"]["releases"] == {"0.16.7": "variant", "0.16.8": "exact", "0.16.9": "already-upstream"}
    assert rows["0003-tail-0.16.7.diff"]["releases"] == {"0.16.7": "exact", "0.16.8": "variant", "0.16.9": "variant"}
    assert rows["0001-change-m.diff"]["releases"] == {"0.16.7": "exact", "0.16.8": "exact", "0.16.9": "exact"}
    assert rows["0002-new-module.diff"]["owner"] == "Test Author <test@example.org>"
    assert rows["0002-new-module.diff"]["forwarded"] == "not-needed"
    assert rows["0002-new-module.diff"]["size"] == {"hunks": 1, "added": 1, "removed": 0}
    assert rows["0002-new-module.diff"]["commits"] == 2 and rows["0001-change-m.diff"]["commits"] == 1
    assert rows["0002-new-module.diff"]["added"] == date.today().isoformat()
    assert rows["0002-new-module.diff"]["review_by"] == "2026-07-01"
    assert rows["0002-new-module.diff"]["review_passed"] == (date.today() > date(2026, 7, 1))
    for name in ("0001-change-m.diff", "0003-tail.diff", "already-upstream 0.16.9", "exact 0.16.8", "variant 0.16.7"):
        assert name in out, (name, out)


def test_status_on_an_uncommitted_series_and_an_unreachable_release(world):
    # The same series outside git: no history, but every outcome.
    outside = world.root / "loose-patches"
    shutil.copytree(world.patches, outside)
    status = series_status(outside, cache=Cache(world.cache), index_url=world.index.url)
    assert [p.history.commits for p in status.patches] == [0, 0, 0, 0]
    assert status.patches[0].age_days(date.today()) is None
    assert status.patches[2].outcomes == {"0.16.7": "variant", "0.16.8": "exact"}
    (world.patches / "releases.toml").write_text((world.patches / "releases.toml").read_text()
                                                 + '\n[[release]]\nversion = "0.16.9"\ndate = "2026-06-01"\n')
    rc, _, err = world.run("status", "--patches", str(world.patches), "--index-url", world.index.url,
                           "--cache-dir", str(world.cache))
    assert rc == 3 and "ketta-build: status: letta 0.16.9 not checked:" in err
