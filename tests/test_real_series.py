"""The real series on the real releases (network: the package index, once per run into one cache).

- apply followed by export --check is a no-op on every supported release;
- lint finds nothing;
- the 0.14 proof: without the three -0.14 variants, port --letta 0.14.0 from the remaining series,
  resolving each conflict with the recorded resolution (the hand-made variant itself), ends with
  the very tree the hand-made variants give;
- a made-up 0.16.9 (0.16.8 with an upstream-style change inside a patched function and a new
  alembic revision) on a local PEP 503 index directory: upstream check says "needs porting" and
  names the function; port carries the series; the ported series applies exactly and lints clean.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from packaging.version import Version

from ketta_build.applying import apply_patch
from ketta_build.cache import Cache
from ketta_build.cli import main
from ketta_build.releases import load_releases
from ketta_build.series import read_series

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.network


@pytest.fixture(scope="session")
def real_cache(shared_tmp) -> Path:
    """One cache for the run, shared by its xdist workers (the cache's own locks keep two processes
    from fetching or unpacking the same release at once, as for two maintainers' runs)."""
    path = shared_tmp / "real-cache"
    path.mkdir(exist_ok=True)
    return path


def _run(*argv: str, cwd: Path | None = None) -> int:
    here = os.getcwd()
    if cwd:
        os.chdir(cwd)
    try:
        return main(list(argv))
    finally:
        os.chdir(here)


def _tree_hash(tree: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD^{tree}"], cwd=tree, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("version", [str(v) for v in load_releases(REPO / "patches").versions])
def test_apply_then_export_check_is_a_no_op(version, tmp_path, real_cache, capsys):
    out = tmp_path / version
    assert _run("apply", "--letta", version, "--patches", str(REPO / "patches"), "--out", str(out),
                "--cache-dir", str(real_cache)) == 0
    rc = _run("export", "--tree", str(out), "--patches", str(REPO / "patches"), "--check")
    assert rc == 0, capsys.readouterr().err


def test_lint_finds_nothing(real_cache, capsys):
    rc = _run("lint", "--patches", str(REPO / "patches"), "--cache-dir", str(real_cache))
    assert rc == 0, capsys.readouterr().err


def test_status_names_an_owner_and_forwarded_status_for_every_patch_and_release(real_cache):
    from ketta_build.status import series_status

    status = series_status(REPO / "patches", cache=Cache(real_cache))
    assert not status.unavailable
    assert [p.name for p in status.patches] == [e.name for e in read_series(REPO / "patches").entries]
    for p in status.patches:
        assert p.owner and p.forwarded and p.review_by, p.name
        assert "failed" not in p.outcomes.values() and "unselectable" not in p.outcomes.values(), (p.name, p.outcomes)
    for version in map(str, status.versions):  # each logical patch serves each release through exactly one file
        for group in {p.group for p in status.patches}:
            served = [p.name for p in status.patches if p.group == group and p.outcomes[version] not in ("variant", "-")]
            assert len(served) <= 1, (version, group, served)


def _repo_copy(tmp_path: Path) -> Path:
    """patches/, tox.ini and the suite registry it is made from, in a repository of their own (committed,
    as a maintainer's are)."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "patches", copy / "patches")
    shutil.copy2(REPO / "tox.ini", copy / "tox.ini")
    (copy / "compat_tests").mkdir()
    shutil.copy2(REPO / "compat_tests" / "suites.toml", copy / "compat_tests" / "suites.toml")
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "copy"]):
        subprocess.run(["git", *args], cwd=copy, check=True)
    return copy


def test_port_0_14_0_from_the_newer_variants_gives_the_hand_made_tree(tmp_path, real_cache, capsys):
    copy = _repo_copy(tmp_path)
    patches = copy / "patches"
    hand_made = {}
    for name in ("0003-keys-from-database-0.14.diff", "0004-no-base-providers-0.14.diff", "0005-hard-delete-providers-0.14.diff"):
        hand_made[name[:4]] = (patches / name).read_bytes()
        (patches / name).unlink()
    series = patches / "series"
    series.write_text("".join(line for line in series.read_text().splitlines(True) if "-0.14.diff" not in line))

    expected = tmp_path / "hand-made"
    assert _run("apply", "--letta", "0.14.0", "--patches", str(REPO / "patches"), "--out", str(expected),
                "--cache-dir", str(real_cache)) == 0
    tree = tmp_path / "port"
    report = tmp_path / "port.json"
    rc = _run("port", "--letta", "0.14.0", "--tree", str(tree), "--cache-dir", str(real_cache), "--json", str(report),
              cwd=copy)
    resolved_by_hand, skipped = [], []
    while rc == 1:
        state = json.loads(report.read_text())
        stopped = next(p for p in state["patches"] if p["outcome"] == "failed")
        if stopped["name"][:4] not in hand_made:  # a patch 0.14.0 never had (0012: its bug came in 0.16.2)
            skipped.append(stopped["name"])
            rc = _run("port", "--skip", "--tree", str(tree), "--json", str(report), cwd=copy)
            continue
        resolved_by_hand.append(stopped["name"])
        # The recorded resolution: drop the conflicted attempt and apply the hand-made variant of that patch.
        subprocess.run(["git", "checkout", "-q", "HEAD", "--", "."], cwd=tree, check=True)
        subprocess.run(["git", "clean", "-q", "-f", "-d"], cwd=tree, check=True)
        variant = tmp_path / f"{stopped['name'][:4]}-recorded.diff"
        variant.write_bytes(hand_made[stopped["name"][:4]])
        from ketta_build.patchfile import parse_patch

        result = apply_patch(tree, parse_patch(variant))
        assert result.outcome.value in ("clean", "offset"), result
        rc = _run("port", "--continue", "--tree", str(tree), "--json", str(report), cwd=copy)
    err = capsys.readouterr().err
    assert rc == 0, err
    actions = {p["name"]: p["action"] for p in json.loads(report.read_text())["patches"]}
    # made on 0.14.0, 0005's variant does not apply to 0.16.1 (another docstring there): the port says so
    # and gives it only the releases it applies to, instead of a guard that claims 0.16.1 too
    assert "does not apply to letta" in actions["0005-hard-delete-providers.diff"], actions
    state = json.loads(report.read_text())
    by_name = {p["name"]: p for p in state["patches"]}
    hunks = {}
    for p in state["patches"]:
        for kind, n in p["hunks"].items():
            hunks[kind] = hunks.get(kind, 0) + n
    print(f"0.14 proof: {len(resolved_by_hand)} patches needed a hand ({', '.join(resolved_by_hand)}); hunks: {hunks}")
    assert resolved_by_hand, "the proof is about conflicts: some patch must have needed a hand"
    assert all(by_name[name]["outcome"] == "resolved" for name in resolved_by_hand)
    assert all(by_name[name]["outcome"] == "skipped" for name in skipped)
    assert _tree_hash(tree) == _tree_hash(expected), "the ported tree differs from the hand-made variants' tree"
    again = tmp_path / "again"
    assert _run("apply", "--letta", "0.14.0", "--patches", str(patches), "--out", str(again), "--cache-dir", str(real_cache)) == 0
    assert _tree_hash(again) == _tree_hash(expected)
    names = [e.name for e in read_series(patches).entries]
    assert {"0003-keys-from-database-0.14.0.diff", "0004-no-base-providers-0.14.0.diff",
            "0005-hard-delete-providers-0.14.0.diff"} <= set(names)


# ----------------------------------------------------------------------------- a made-up 0.16.9

NEW_REVISION = '''"""ketta test release 0.16.9: a note on each provider

Revision ID: f0e1d2c3b4a5
Revises: 1c28e167b74f
"""

import sqlalchemy as sa
from alembic import op

revision = "f0e1d2c3b4a5"
down_revision = "1c28e167b74f"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("providers", sa.Column("note", sa.String(), nullable=True))


def downgrade() -> None:
    op.drop_column("providers", "note")
'''

# Inside LLMClientBase.get_byok_overrides_async, which patch 0003 modifies: a reworded comment in
# the hunk's context, as upstream does between releases (the async twin is the one after "async def").
OLD_COMMENT_ASYNC = ('        Base providers use environment variables directly.\n        """\n        api_key = None\n'
                     "        # Only fetch API key from database for BYOK providers\n")
NEW_COMMENT_ASYNC = OLD_COMMENT_ASYNC.replace("# Only fetch API key from database", "# Only BYOK providers have their API key in")
# the sync twin comes first in the file and has the same lines: the async one is the second, so the
# made-up release replaces it after "async def get_byok_overrides_async"
ASYNC_ANCHOR = "async def get_byok_overrides_async"


def make_release_0_16_9(real_cache: Path, index_dir: Path) -> str:
    """letta 0.16.9 made up from the cached 0.16.8 sdist, and both on a PEP 503 index directory; its URL."""
    from compat_tests.made_up_release import make_release
    from ketta_build.sources import IndexSource

    source = IndexSource(Cache(real_cache))
    base = source.sdist_path(source.resolve(Version("0.16.8")))
    return make_release(base, "0.16.8", "0.16.9", index_dir, replace=[("letta/llm_api/llm_client_base.py", OLD_COMMENT_ASYNC,
                                                                       NEW_COMMENT_ASYNC, ASYNC_ANCHOR)],
                        add={"alembic/versions/f0e1d2c3b4a5_ketta_test_release_note.py": NEW_REVISION.encode()})


def test_a_new_release_is_checked_ported_and_applies_exactly(tmp_path, real_cache, capsys):
    assert _run("apply", "--letta", "0.16.8", "--patches", str(REPO / "patches"), "--out", str(tmp_path / "warm"),
                "--cache-dir", str(real_cache)) == 0
    url = make_release_0_16_9(real_cache, tmp_path / "index")
    copy = _repo_copy(tmp_path)
    check = tmp_path / "check.json"
    capsys.readouterr()
    rc = _run("upstream", "check", "--index-url", url, "--patches", str(copy / "patches"), "--cache-dir", str(real_cache),
              "--json", str(check))
    data = json.loads(check.read_text())
    assert rc == 11 and data["exit_code"] == 11, capsys.readouterr().err
    [release] = data["releases"]
    assert release["version"] == "0.16.9" and release["kind"] == "release" and release["status"] == "needs-porting"
    review = {f["path"]: f for f in release["review"]}
    functions = {f["name"]: f for f in review["letta/llm_api/llm_client_base.py"]["functions"]}
    assert functions["LLMClientBase.get_byok_overrides_async"]["changed_upstream"] is True
    assert functions["LLMClientBase.get_byok_overrides"]["changed_upstream"] is False
    assert "0003-keys-from-database.diff" in functions["LLMClientBase.get_byok_overrides_async"]["patched_by"]
    assert review["alembic/env.py"]["added"] == 0

    rc = _run("port", "--letta", "0.16.9", "--index-url", url, "--tree", str(tmp_path / "port"), "--cache-dir",
              str(real_cache), cwd=copy)
    assert rc == 0, capsys.readouterr().err
    patches = copy / "patches"
    assert "0.16.9" in (patches / "releases.toml").read_text()
    assert "letta0169: KETTA_RELEASE = 0.16.9" in (copy / "tox.ini").read_text()
    assert (patches / "0003-keys-from-database-0.16.9.diff").is_file()
    report = tmp_path / "apply.json"
    assert _run("apply", "--letta", "0.16.9", "--index-url", url, "--patches", str(patches), "--out", str(tmp_path / "a169"),
                "--cache-dir", str(real_cache), "--json", str(report)) == 0
    summary = json.loads(report.read_text())["summary"]["hunks"]
    assert summary["merged"] == 0 and summary["failed"] == 0 and summary["fuzz"] == 0
    assert (tmp_path / "a169" / "alembic" / "versions" / "f0e1d2c3b4a5_ketta_test_release_note.py").is_file()
    # Base releases from the real index, 0.16.9 from the made-up one, as pip would find them.
    os.environ["PIP_EXTRA_INDEX_URL"] = url
    try:
        rc = _run("lint", "--patches", str(patches), "--cache-dir", str(real_cache))
    finally:
        del os.environ["PIP_EXTRA_INDEX_URL"]
    assert rc == 0, capsys.readouterr().err


# ----------------------------------------------------------------------------- the README's walk-through


def _walk_through() -> str:
    """The shell block under the README's walk-through heading, as written."""
    text = (REPO / "README.md").read_text()
    section = text.split("## A maintainer's walk-through", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_the_readme_walk_through_runs_as_written(tmp_path, real_cache):
    """In a copy of this repository (its tracked files as they are now, committed), with the test's
    virtual environment on PATH and the session's cache: every line of the block, under set -e."""
    import sys

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for rel in filter(None, (t.decode() for t in tracked)):
        if (REPO / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, clone / rel)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], cwd=clone, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "the working tree"], cwd=clone, check=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "KETTA_BUILD_CACHE": str(real_cache), "GIT_AUTHOR_NAME": "Maintainer", "GIT_AUTHOR_EMAIL": "m@example.org",
           "GIT_COMMITTER_NAME": "Maintainer", "GIT_COMMITTER_EMAIL": "m@example.org"}
    env.pop("PIP_EXTRA_INDEX_URL", None)
    script = _walk_through()
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "refreshed 0001-ketta-flags.diff" in out and "nothing to write" in out and out.count("lint: no findings") == 2
    assert "0003-keys-from-database-0.16.9.diff" in out and "port aborted" in out
    assert " M patches/0001-ketta-flags.diff" in out and "?? patches/0003-keys-from-database-0.16.9.diff" in out
    status = subprocess.run(["git", "status", "--short"], cwd=clone, capture_output=True, text=True, check=True).stdout
    assert status == "", "the last line undoes the rehearsal"
