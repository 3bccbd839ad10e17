"""upstream suite: the release's own provider tests, patched against unpatched.

Both builds of the release run the same shipped test files (see upstream_runner.UPSTREAM_FILES).
A test that fails on the patched build but passes on the unpatched one must be listed, with its
reason, in upstream-expected-failures.toml; a listed test that does not fail that way is a stale
entry. Tests failing on both builds (network, missing keys, upstream's own breakage) are not
Ketta's doing: they are printed, not counted. With ``--no-patches`` the release is compared with
itself, so this suite is the one that stays green there.

The stock run does not depend on the series: it is stored under its inputs (ketta_build.runstore)
and a later cell with the same inputs reuses it, unless the verdict would then blame Ketta or
excuse a failure that did not happen the same way in every stock run of those inputs (at least
two, see upstream_runner.stored_baseline_holds); those are judged against a stock run made now. ``matrix --rerun`` runs it again. verdict.json and each test's ``stock_run``
property name the stored run used.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ketta_build.cache import Cache
from ketta_build.runstore import RunStore, StoredRun, reuse_allowed, stock_run_key
from ketta_build.letta.serverenv import prepare_server, prepare_test_environment

from .letta_server import migrated_template
from .upstream_runner import (
    UPSTREAM_FILES,
    UpstreamRun,
    baseline_inputs,
    compare,
    load_expected,
    merged_record,
    run_from_record,
    run_upstream_tests,
    stored_baseline_holds,
    summary_line,
)

pytestmark = pytest.mark.upstream


@dataclass
class Baseline:
    """The stock run the patched one is judged against: made now, or a stored one (ketta_build.runstore)."""

    run: UpstreamRun
    stored: StoredRun | None = None  # the stored run that stands in for a fresh one
    set_aside: list[str] = field(default_factory=list)  # why a stored run was not good enough for this verdict

    def describe(self) -> str:
        if self.stored is not None:
            return f"{summary_line(self.run)} (stored run of {self.stored.date} reused, key {self.stored.key[:12]})"
        if self.set_aside:
            return f"{summary_line(self.run)} (run again: the stored one was set aside: {'; '.join(self.set_aside)})"
        return summary_line(self.run)


@pytest.fixture(scope="module")
def upstream_runs(letta_build, pg, pytestconfig):
    build_root = Path(pytestconfig.getoption("--build-root"))
    workroot = build_root / "upstream-tests" / letta_build.tree.name

    def run(build, python, label):
        # The database: a copy of the template the release's servers start from (the session's own
        # build has one already; alembic runs once per build, not once per run).
        return run_upstream_tests(
            label=label, python=python, tree=build.tree, pg=pg,
            database=f"up_{uuid.uuid4().hex[:10]}", workdir=workroot / label,
            template=migrated_template(pg, build.python, build.tree),
        )

    under_test_python = prepare_test_environment(letta_build) / "bin" / "python"
    label = "patched" if letta_build.patched else "unpatched"
    if not letta_build.patched:
        under_test = run(letta_build, under_test_python, label)
        print(summary_line(under_test))
        return under_test, Baseline(under_test)
    store = RunStore(Cache().root / "stock-runs")

    def fresh(set_aside: list[str]) -> Baseline:
        made = run(baseline_build, python, "unpatched")
        try:  # best effort: a cache that cannot be written costs the next run time, not this verdict
            with store.locked(key):
                previous = store.lookup(key)
                store.save(key, merged_record(made, previous.data if previous else None), {"pytest.log": made.log})
        except OSError as exc:
            print(f"the stock run was not stored ({exc})")
        return Baseline(made, set_aside=set_aside)

    # The run under test starts at once; the stock side is prepared beside it and, when no stored run can
    # stand in, run beside it too: two processes on their own databases, so a free core halves the
    # suite's time (both ran one after the other before).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="upstream-patched") as beside:
        running = beside.submit(run, letta_build, under_test_python, label)
        baseline_build = prepare_server(
            letta_build.version, patched=False, series_dir=Path(pytestconfig.getoption("--patches")),
            build_root=build_root, index_url=pytestconfig.getoption("--index-url"),
        )
        python = prepare_test_environment(baseline_build) / "bin" / "python"
        key = stock_run_key(baseline_inputs(baseline_build, python, pg))
        with store.locked(key):
            stored = store.lookup(key) if reuse_allowed() else None
        baseline = fresh([]) if stored is None else None
        under_test = running.result()
    print(summary_line(under_test))
    if baseline is None:
        assert stored is not None
        baseline = Baseline(run_from_record(stored.data, stored.files["pytest.log"]), stored)
        reasons = stored_baseline_holds(compare(letta_build.version, under_test, baseline.run, load_expected()), stored.data)
        if reasons:
            baseline = fresh(reasons)
    print(baseline.describe())
    return under_test, baseline


@pytest.fixture(scope="module")
def verdict(letta_build, upstream_runs, pytestconfig):
    patched, baseline = upstream_runs
    unpatched = baseline.run
    result = compare(letta_build.version, patched, unpatched, load_expected())
    # Kept next to the runs' logs: the record of which upstream tests fail, and whose doing it is.
    out = Path(pytestconfig.getoption("--build-root")) / "upstream-tests" / letta_build.tree.name / "verdict.json"
    out.write_text(json.dumps({
        "release": letta_build.version, "patched": letta_build.patched,
        "runs": [summary_line(patched), baseline.describe()],
        "stored_stock_run": {"key": baseline.stored.key, "date": baseline.stored.date} if baseline.stored else None,
        "caused_by_ketta": {t: o.message for t, o in sorted(result.caused_by_ketta.items())},
        "expected": {t: e.reason for t, e in sorted(result.expected.items())},
        "stale": sorted(result.stale),
        "fails_unpatched_too": {t: o.message for t, o in sorted(result.upstream.items())},
    }, indent=2) + "\n")
    return result


@pytest.mark.parametrize("path", UPSTREAM_FILES)
def test_upstream_file(path, letta_build, upstream_runs, verdict, record_property):
    patched, baseline = upstream_runs
    record_property("stock_run", baseline.describe())
    if not (letta_build.tree / path).is_file():
        pytest.skip(f"letta {letta_build.version} does not ship {path}")
    tests = patched.in_file(path)
    assert tests, f"no test of {path} ran (collection broken? see {patched.log})"
    for test in sorted(t for t in verdict.upstream if t.split("::", 1)[0] == path):
        print(f"fails unpatched too (not Ketta's doing): {test}: {verdict.upstream[test].message}")
    for test in sorted(t for t in verdict.expected if t.split("::", 1)[0] == path):
        print(f"expected (listed): {test}: {verdict.expected[test].reason}")
    broken = {t: o for t, o in verdict.caused_by_ketta.items() if t.split("::", 1)[0] == path}
    assert not broken, "Ketta makes these upstream tests fail and they are not in upstream-expected-failures.toml:\n" + "\n".join(
        f"  {t}: {o.message}" for t, o in sorted(broken.items())
    )


def test_expected_failures_are_current(letta_build, verdict):
    """Every listed failure for this release still fails because of Ketta (the list stays honest)."""
    if not letta_build.patched:
        pytest.skip("--no-patches: the release is compared with itself, the list does not apply")
    assert not verdict.stale, "listed in upstream-expected-failures.toml but not failing because of Ketta:\n" + "\n".join(
        f"  {t} ({e.releases})" for t, e in sorted(verdict.stale.items())
    )
