"""Running a release's own provider tests (from its sdist) against a built wheel.

The tests are copied out of the build tree before they run, so ``import letta`` resolves to the
wheel installed in the test environment, never to the tree's sources. Each run gets a fresh
database migrated by the tree's alembic scripts (Ketta's migration included when patched).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from ketta_build.cache import sha256_file
from ketta_build.runstore import digest_tree
from ketta_build.letta.serverenv import TEST_REQUIREMENTS, ServerBuild, test_constraints_path

from .letta_server import run_alembic
from .pgcluster import PgTarget
from .release_python import venv_python_version

# The provider tests named by the series issue. Files a release does not ship are reported as such.
UPSTREAM_FILES = (
    "tests/managers/test_provider_manager.py",
    "tests/test_server_providers.py",
    "tests/test_byok_api_key_routing.py",
    "tests/test_providers.py",
)
EXPECTED_FILE = Path(__file__).with_name("upstream-expected-failures.toml")
RUN_TIMEOUT = 1800
_SCRUB_PREFIXES = ("LETTA_", "KETTA_", "PYTEST_")


@dataclass(frozen=True)
class CaseOutcome:
    status: str  # passed | failed | error | skipped
    message: str = ""


@dataclass
class UpstreamRun:
    label: str
    files: tuple[str, ...]
    outcomes: dict[str, CaseOutcome]
    returncode: int
    seconds: float
    log: Path

    def failing(self) -> dict[str, CaseOutcome]:
        return {k: v for k, v in self.outcomes.items() if v.status in ("failed", "error")}

    def in_file(self, path: str) -> dict[str, CaseOutcome]:
        return {k: v for k, v in self.outcomes.items() if k.split("::", 1)[0] == path}


@dataclass(frozen=True)
class ExpectedFailure:
    test: str
    releases: SpecifierSet
    reason: str

    def applies(self, version: str) -> bool:
        return self.releases.contains(Version(version), prereleases=True)


@dataclass
class Verdict:
    """How one release's patched run compares with its unpatched run."""

    caused_by_ketta: dict[str, CaseOutcome] = field(default_factory=dict)  # fail patched, pass unpatched, unlisted
    expected: dict[str, ExpectedFailure] = field(default_factory=dict)  # fail patched, pass unpatched, listed
    stale: dict[str, ExpectedFailure] = field(default_factory=dict)  # listed, but not failing because of Ketta
    upstream: dict[str, CaseOutcome] = field(default_factory=dict)  # fail both ways: not Ketta's doing


def load_expected(path: Path = EXPECTED_FILE) -> list[ExpectedFailure]:
    """The reviewed list of upstream tests that Ketta makes fail on purpose."""
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: {exc}") from None
    result = []
    for number, entry in enumerate(data.get("failure", []), 1):
        missing = {"test", "releases", "reason"} - set(entry)
        if missing:
            raise ValueError(f"{path}: [[failure]] #{number} lacks {', '.join(sorted(missing))}")
        if not entry["reason"].strip():
            raise ValueError(f"{path}: [[failure]] #{number} ({entry['test']}) has an empty reason")
        result.append(ExpectedFailure(entry["test"], SpecifierSet(entry["releases"]), entry["reason"].strip()))
    return result


def compare(version: str, patched: UpstreamRun, unpatched: UpstreamRun, expected: list[ExpectedFailure]) -> Verdict:
    listed = {e.test: e for e in expected if e.applies(version)}
    verdict = Verdict()
    for test, outcome in patched.failing().items():
        before = unpatched.outcomes.get(test)
        if before is not None and before.status in ("failed", "error"):
            verdict.upstream[test] = outcome
        elif test in listed:
            verdict.expected[test] = listed[test]
        else:
            verdict.caused_by_ketta[test] = outcome
    for test, entry in listed.items():
        if test not in verdict.expected:
            verdict.stale[test] = entry
    return verdict


def _test_id(case: ET.Element) -> str:
    path = case.get("file") or ""
    classname = case.get("classname") or ""
    module = path[:-3].replace("/", ".") if path.endswith(".py") else ""
    classes = classname[len(module) + 1:].split(".") if module and classname.startswith(module + ".") else []
    return "::".join([path, *[c for c in classes if c], case.get("name") or ""])


def parse_junit(path: Path) -> dict[str, CaseOutcome]:
    outcomes: dict[str, CaseOutcome] = {}
    for case in ET.parse(path).iter("testcase"):
        status, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                status = {"failure": "failed"}.get(child.tag, child.tag)
                message = (child.get("message") or child.text or "").strip().splitlines()[0:1]
                message = message[0][:300] if message else ""
                break
        outcomes[_test_id(case)] = CaseOutcome(status, message)
    return outcomes


def _clean_environment(home: Path, pg_uri: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(_SCRUB_PREFIXES) and not k.endswith("_API_KEY") and k != "VIRTUAL_ENV"
    }
    env.update(HOME=str(home), LETTA_PG_URI=pg_uri, PYTHONDONTWRITEBYTECODE="1")
    return env


def run_upstream_tests(
    *, label: str, python: Path, tree: Path, pg: PgTarget, database: str, workdir: Path, template: str | None = None
) -> UpstreamRun:
    """Run the shipped provider tests of ``tree`` with ``python``; one fresh database per run: a copy of
    ``template`` (a database ``tree``'s alembic migrated to head, as the suites' servers get theirs),
    else migrated here."""
    files = tuple(f for f in UPSTREAM_FILES if (tree / f).is_file())
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "home").mkdir(parents=True)
    shutil.copytree(tree / "tests", workdir / "tests")
    if template is not None:
        pg.clone_database(template, database)
    else:
        pg.create_database(database)
        run_alembic(python, tree, pg.alembic_uri(database), "upgrade", "head")
    junit = workdir / "junit.xml"
    log = workdir / "pytest.log"
    started = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            [str(python), "-m", "pytest", "-p", "no:cacheprovider", "-o", "junit_family=xunit1", "--rootdir", str(workdir),
             "-rfE", "--junitxml", str(junit), *files],
            cwd=workdir, env=_clean_environment(workdir / "home", pg.server_uri(database)),
            stdout=out, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT,
        )
    seconds = time.monotonic() - started
    # pytest: 0 all passed, 1 some failed; anything else means the run itself broke.
    if proc.returncode not in (0, 1) or not junit.is_file():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{label}: pytest exited {proc.returncode} (see {log}):\n{tail}")
    return UpstreamRun(label, files, parse_junit(junit), proc.returncode, seconds, log)


def summary_line(run: UpstreamRun) -> str:
    counts: dict[str, int] = {}
    for outcome in run.outcomes.values():
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return f"{run.label}: {parts} in {run.seconds:.0f}s"


# ---------------------------------------------------------------------------- stored stock runs


def baseline_inputs(build: ServerBuild, python: Path, pg: PgTarget) -> dict:
    """What a stock run of the release's tests depends on: the key it is stored under."""
    here = Path(__file__).parent
    return {
        "letta": build.version, "wheel": build.wheel_sha256, "constraints": sha256_file(test_constraints_path(build)),
        "requirements": list(TEST_REQUIREMENTS), "python": venv_python_version(python.parent.parent),
        "tests": digest_tree(build.tree / "tests"), "files": list(UPSTREAM_FILES), "postgres": pg.server_version(),
        "runner": {name: sha256_file(here / name) for name in ("upstream_runner.py", "letta_server.py", "pgcluster.py")},
    }


def run_record(run: UpstreamRun) -> dict:
    """What is stored of a run (ketta_build.runstore); its log is stored beside it."""
    return {"label": run.label, "files": list(run.files), "returncode": run.returncode, "seconds": run.seconds,
            "outcomes": {test: [o.status, o.message] for test, o in sorted(run.outcomes.items())}}


def run_from_record(record: dict, log: Path) -> UpstreamRun:
    outcomes = {test: CaseOutcome(status, message) for test, (status, message) in record["outcomes"].items()}
    return UpstreamRun(record["label"], tuple(record["files"]), outcomes, record["returncode"], record["seconds"], log)


# Ids and addresses differ from run to run in the same failure (and timestamps, ids made of digits):
# uuids, hex addresses, short hex ids (six or more hex digits, one a digit at least, standing alone
# between non-alphanumerics: the names upstream's tests make) and numbers of five digits or more. Short numbers, status codes among
# them ("assert 500 == 200"), are part of what a failure says.
# (Alternatives in this order: a hex id that starts with five digits is one id, not a number and a word.)
_VARYING = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|0x[0-9a-f]+"
                      r"|(?<![0-9A-Za-z])(?=[0-9a-f]*\d)[0-9a-f]{6,}(?![0-9A-Za-z])|\d{5,}")  # test-byok-a5e478b7
STOCK_RUNS_TO_TRUST = 2  # stock runs a stored failure must have happened in before it excuses anything


def message_shape(message: str) -> str:
    """A failure message with what varies between runs of the same failure blanked."""
    return _VARYING.sub("#", message)


def merged_record(made: UpstreamRun, previous: dict | None) -> dict:
    """What to store after a fresh stock run: its outcomes, how many stock runs this key has had, and the
    failures every one of them had (``stable_failures``, test -> [status, message shape])."""
    record = run_record(made)
    failing = {t: [o.status, message_shape(o.message)] for t, o in made.failing().items()}
    if previous is not None:
        before = previous.get("stable_failures", {})
        failing = {t: f for t, f in failing.items() if before.get(t) == f}
        record["stock_runs"] = int(previous.get("stock_runs", 1)) + 1
    else:
        record["stock_runs"] = 1
    record["stable_failures"] = failing
    return record


def stored_baseline_holds(verdict: Verdict, record: dict) -> list[str]:
    """Why the stored stock run ``record`` may not stand in for a fresh one in ``verdict`` (empty: it may).

    A stored run never blames Ketta (a test failing only on the patched build, a listed failure no
    longer failing because of Ketta), and excuses a patched failure only when every stock run of
    the same inputs failed that test with the same status and message (ids and long numbers
    aside), in at least STOCK_RUNS_TO_TRUST runs: a flaky stock failure frozen into the store never
    excuses anything. Everything else is judged against a stock run made now.
    """
    reasons = []
    runs = int(record.get("stock_runs", 1))
    if verdict.caused_by_ketta:
        reasons.append(f"{len(verdict.caused_by_ketta)} test(s) fail patched and did not fail in the stored stock run")
    if verdict.stale:
        reasons.append(f"{len(verdict.stale)} listed failure(s) are not failing because of Ketta")
    if verdict.upstream and runs < STOCK_RUNS_TO_TRUST:
        reasons.append(f"the stored failures come from {runs} stock run(s); {STOCK_RUNS_TO_TRUST} must agree before they excuse one")
    stable = record.get("stable_failures", {})
    for test, outcome in sorted(verdict.upstream.items()):
        if runs >= STOCK_RUNS_TO_TRUST and stable.get(test) != [outcome.status, message_shape(outcome.message)]:
            reasons.append(f"{test} fails otherwise than in every stored stock run ({outcome.status}: {outcome.message[:120]!r})")
    return reasons
