"""The ``upstream`` suite for any upstream: a release's own tests, on the stock and on the patched build.

For one release of a series of wheel kind ``any`` (:mod:`ketta_build.profile`):

1. two trees: the pristine release and the series applied to it (:func:`ketta_build.releasetree.ensure_tree`,
   the tool's own trees, re-applied only when out of date);
2. two wheels: the stock one, built by the upstream's own backend from the pristine tree
   (:func:`ketta_build.wheelfinish.build_upstream_wheel`), and the patched one, ``X+LABEL.N``
   (:func:`ketta_build.wheel.build_any_wheel`);
3. two uv environments (:func:`make_environment`: the wheel and ``[tests] requirements``, through the
   user's index configuration);
4. the release's test paths (``[tests] paths``, with the root's pytest configuration files) copied out
   of the tree into a directory of their own, so that ``import pkg`` finds the installed wheel, never
   the tree's sources (a flat layout's package is not copied; a ``src/`` one never was on the path);
5. pytest with ``--junitxml`` in each environment, and the outcomes compared test by test
   (:func:`compare`) against the reviewed list of intended failures, ``[tests] expected_failures`` in
   the series directory::

       [[failure]]
       test = "tests/test_misc.py::test_version"   # the pytest node id
       releases = ">=2.2"                          # the releases it applies to (PEP 440 specifier)
       why = "the patched build reports its own version"

A test that fails (or errors, or no longer runs) on the patched build and passes on the stock one is a
*regression*, unless the list has it (then it is *expected*, with its reason); a listed test that does
not fail that way is a *stale* expectation; a test the stock build fails and the patched one passes is
*fixed*; one failing on both is the upstream's own (network, missing tools), shown, never counted.
The verdict holds when there is no regression and no stale expectation. ``no_patches``: the stock
build is compared with itself (nothing is the series' doing; the list is not judged).

The result is :class:`UpstreamTestsResult` (``ketta-build/upstream-tests/1``). ``ketta-build matrix``
runs :func:`run_cell` once per release (one cell: release x ``upstream``): its JUnit file holds one
case per upstream test, judged as above, and the document goes to ``upstream/<release>.json`` of the
report directory with the runs' logs beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from .atomic import write_atomic
from .cache import Cache, sha256_file
from .errors import KettaError, SeriesError
from .gitcmd import extract_tree, git
from .index import uv_environment
from .releases import load_releases, parse_version
from .releasetree import ensure_tree
from .uvcmd import run_uv
from .wheel import build_any_wheel, read_build_number, series_state
from .wheelfinish import build_upstream_wheel

SCHEMA = "ketta-build/upstream-tests/1"
RECORDS_DIR = "upstream"  # in the matrix's report directory: <release>.json and the runs' logs
RUN_TIMEOUT = 1800
FAILING = ("failed", "error", "missing")
# The root's files that configure pytest: copied with the tests (none of them makes the sources importable).
PYTEST_CONFIG = ("conftest.py", "pytest.ini", ".pytest.ini", "pyproject.toml", "setup.cfg", "tox.ini")
_SCRUB_PREFIXES = ("KETTA_", "PYTEST_")


@dataclass(frozen=True)
class Outcome:
    status: str  # passed | failed | error | skipped | missing (ran on the stock build only)
    message: str = ""


@dataclass(frozen=True)
class Expectation:
    """One ``[[failure]]`` of the reviewed list: ``test`` fails patched on ``releases``, on purpose."""

    test: str
    releases: SpecifierSet
    why: str

    def applies(self, version: str) -> bool:
        return self.releases.contains(Version(version), prereleases=True)


@dataclass
class TestRun:
    label: str  # stock | patched
    wheel: str
    outcomes: dict[str, Outcome]
    returncode: int
    seconds: float
    log: Path

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for outcome in self.outcomes.values():
            found[outcome.status] = found.get(outcome.status, 0) + 1
        return dict(sorted(found.items()))

    def summary(self) -> str:
        parts = ", ".join(f"{n} {s}" for s, n in self.counts().items()) or "no test"
        return f"{self.label} ({self.wheel}): {parts} in {self.seconds:.0f}s"


@dataclass
class UpstreamTestsResult:
    """How the patched build's run of the release's own tests compares with the stock build's."""

    release: str
    patched: bool
    stock: TestRun
    under_test: TestRun  # the patched run (the stock one again with no_patches)
    regressions: dict[str, Outcome] = field(default_factory=dict)  # fail patched, pass stock, not listed
    fixed: dict[str, Outcome] = field(default_factory=dict)  # fail stock (this outcome), pass patched
    expected: dict[str, str] = field(default_factory=dict)  # fail patched, pass stock, listed: test -> why
    stale: dict[str, Expectation] = field(default_factory=dict)  # listed, but not failing because of the series
    failing_both: dict[str, Outcome] = field(default_factory=dict)  # the upstream's own failures
    expectations_file: str = ""

    @property
    def ok(self) -> bool:
        return not self.regressions and not self.stale

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def as_json(self) -> dict:
        def run(r: TestRun) -> dict:
            return {"wheel": r.wheel, "counts": r.counts(), "returncode": r.returncode, "seconds": round(r.seconds, 1),
                    "log": r.log.name}

        return {
            "schema": SCHEMA,
            "release": self.release,
            "patched": self.patched,
            "ok": self.ok,
            "runs": {"stock": run(self.stock), "patched": run(self.under_test)},
            "regressions": [{"test": t, "status": o.status, "message": o.message} for t, o in sorted(self.regressions.items())],
            "fixed": [{"test": t, "stock_status": o.status, "message": o.message} for t, o in sorted(self.fixed.items())],
            "expected": [{"test": t, "why": why} for t, why in sorted(self.expected.items())],
            "stale": [{"test": t, "releases": str(e.releases), "why": e.why} for t, e in sorted(self.stale.items())],
            "failing_both": [{"test": t, "status": o.status, "message": o.message}
                             for t, o in sorted(self.failing_both.items())],
            "expected_failures_file": self.expectations_file,
        }

    def lines(self) -> list[str]:
        """The verdict for a log: the runs, then every test that is not simply passing on both."""
        out = [self.stock.summary()] + ([self.under_test.summary()] if self.patched else [])
        out += [f"REGRESSION {t}: {o.status}: {o.message}" for t, o in sorted(self.regressions.items())]
        out += [f"STALE expectation {t} ({e.releases}): {e.why}" for t, e in sorted(self.stale.items())]
        out += [f"expected {t}: {why}" for t, why in sorted(self.expected.items())]
        out += [f"fixed {t} (stock: {o.status}: {o.message})" for t, o in sorted(self.fixed.items())]
        out += [f"fails on the stock build too {t}: {o.message}" for t, o in sorted(self.failing_both.items())]
        out.append("verdict: " + ("pass" if self.ok else f"{len(self.regressions)} regression(s), "
                                  f"{len(self.stale)} stale expectation(s)"))
        return out


# ---------------------------------------------------------------------------- the reviewed list


def load_expectations(path: Path) -> list[Expectation]:
    """The ``[[failure]]`` entries of ``path`` (none when there is no such file); one-line errors name
    the entry's line."""
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SeriesError(f"not valid TOML: {exc}", path=path, line=getattr(exc, "lineno", None)) from None
    unknown = set(data) - {"failure"}
    if unknown:
        raise SeriesError(f"unknown key(s) {', '.join(sorted(unknown))}; the list is [[failure]] tables", path=path)
    starts = [n for n, line in enumerate(text.splitlines(), 1) if line.strip() == "[[failure]]"]
    result = []
    for number, entry in enumerate(data.get("failure", [])):
        line = starts[number] if number < len(starts) else None
        if not isinstance(entry, dict) or set(entry) != {"test", "releases", "why"} \
                or not all(isinstance(v, str) and v.strip() for v in entry.values()):
            raise SeriesError("each [[failure]] has test (a pytest node id), releases (a PEP 440 specifier, e.g. "
                              "\">=0\" for every release) and why, each a non-empty string, and no other key",
                              path=path, line=line)
        try:
            releases = SpecifierSet(entry["releases"])
        except InvalidSpecifier:
            raise SeriesError(f"releases {entry['releases']!r} is not a PEP 440 specifier", path=path, line=line) from None
        result.append(Expectation(entry["test"].strip(), releases, " ".join(entry["why"].split())))
    return result


# ---------------------------------------------------------------------------- comparing


def compare(version: str, stock: TestRun, under_test: TestRun, expectations: list[Expectation], *,
            patched: bool = True, expectations_file: str = "") -> UpstreamTestsResult:
    """The verdict on ``under_test`` against ``stock`` (see the module's docstring)."""
    result = UpstreamTestsResult(str(version), patched, stock, under_test, expectations_file=expectations_file)
    if not patched:
        result.failing_both = {t: o for t, o in stock.outcomes.items() if o.status in FAILING}
        return result
    listed = {e.test: e for e in expectations if e.applies(str(version))}
    after = dict(under_test.outcomes)
    for test, before in stock.outcomes.items():  # ran on the stock build, not on the patched one
        if test not in after and before.status != "skipped":
            after[test] = Outcome("missing", "ran on the stock build, not on the patched one")
    for test, outcome in sorted(after.items()):
        before = stock.outcomes.get(test)
        if outcome.status in FAILING:
            if before is not None and before.status in FAILING:
                result.failing_both[test] = outcome
            elif test in listed:
                result.expected[test] = listed[test].why
            else:
                result.regressions[test] = outcome
        elif outcome.status == "passed" and before is not None and before.status in FAILING:
            result.fixed[test] = before
    result.stale = {t: e for t, e in listed.items() if t not in result.expected}
    return result


# ---------------------------------------------------------------------------- running


def _test_id(case: ET.Element) -> str:
    """A JUnit case's pytest node id: ``file::Class::name`` (xunit1 records the file)."""
    path = case.get("file") or ""
    classname = case.get("classname") or ""
    module = path[:-3].replace("/", ".") if path.endswith(".py") else ""
    classes = classname[len(module) + 1:].split(".") if module and classname.startswith(module + ".") else []
    if not path:  # no file recorded (a collection error): the dotted class name is all there is
        return "::".join(filter(None, [classname, case.get("name") or ""]))
    return "::".join([path, *[c for c in classes if c], case.get("name") or ""])


def parse_junit(path: Path) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    for case in ET.parse(path).iter("testcase"):
        status, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                status = {"failure": "failed"}.get(child.tag, child.tag)
                first = (child.get("message") or child.text or "").strip().splitlines()[:1]
                message = first[0][:300] if first else ""
                break
        test = _test_id(case)
        if status == "error" and outcomes.get(test, Outcome("")).status in ("passed", "failed"):
            test += " (teardown)"  # pytest reports a teardown error as a second case of the same test
        outcomes[test] = Outcome(status, message)
    return outcomes


def make_environment(dest: Path, wheel: Path, requirements: tuple[str, ...], index_url: str | None = None) -> Path:
    """A uv virtual environment at ``dest`` with ``wheel`` and ``requirements`` (the user's index
    configuration; ``index_url`` when given); its Python."""
    env = uv_environment(index_url) if index_url else None
    shutil.rmtree(dest, ignore_errors=True)
    run_uv(["venv", "--quiet", "--python", sys.executable, str(dest)], env=env)
    python = dest / "bin" / "python"
    run_uv(["pip", "install", "--quiet", "--python", str(python), str(wheel), *requirements], env=env)
    return python


def copy_tests(tree: Path, paths: tuple[str, ...], dest: Path) -> list[str]:
    """The release's test ``paths`` (and the root's pytest configuration) copied from ``tree`` to
    ``dest``; the paths the release has (none: refused)."""
    found = [p for p in paths if (tree / p).exists()]
    if not found:
        raise KettaError(f"the release has none of the test paths {', '.join(paths)} ([tests] paths in upstream.toml)",
                         path=tree)
    dest.mkdir(parents=True)
    for rel in found + [name for name in PYTEST_CONFIG if (tree / name).is_file()]:
        target = dest / rel
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if (tree / rel).is_dir():
            shutil.copytree(tree / rel, target, symlinks=True)
        else:
            shutil.copy2(tree / rel, target)
    return found


def _clean_environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(_SCRUB_PREFIXES) and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update(HOME=str(home), PYTHONDONTWRITEBYTECODE="1")
    return env


def run_tests(label: str, python: Path, tree: Path, paths: tuple[str, ...], args: tuple[str, ...], workdir: Path,
              wheel: str) -> TestRun:
    """pytest on the release's test ``paths`` (copied out of ``tree`` into ``workdir``) with ``python``."""
    shutil.rmtree(workdir, ignore_errors=True)
    found = copy_tests(tree, paths, workdir / "tests-copy")
    (workdir / "home").mkdir()
    junit, log = workdir / "junit.xml", workdir / "pytest.log"
    started = time.monotonic()
    with log.open("w") as out:
        try:
            proc = subprocess.run(
                [str(python), "-m", "pytest", "-p", "no:cacheprovider", "-o", "junit_family=xunit1",
                 "--rootdir", str(workdir / "tests-copy"), "-rfE", "--junitxml", str(junit), *args, *found],
                check=False, cwd=workdir / "tests-copy", env=_clean_environment(workdir / "home"), stdout=out,
                stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise KettaError(f"{label}: the tests ran longer than {RUN_TIMEOUT}s (see {log})") from None
    seconds = time.monotonic() - started
    # pytest: 0 all passed, 1 some failed; anything else (no test collected, usage, internal) is no run.
    if proc.returncode not in (0, 1) or not junit.is_file():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-20:])
        raise KettaError(f"{label}: pytest exited {proc.returncode} (see {log}):\n{tail}")
    return TestRun(label, wheel, parse_junit(junit), proc.returncode, seconds, log)


@dataclass(frozen=True)
class Built:
    """A tree of the release and its wheel."""

    tree: Path
    wheel: Path
    report: dict | None  # the tree's apply report


def _stock_wheel(tree: Path, version: str, dist: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="ketta-stock-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        extract_tree(tree, "HEAD", src)
        return build_upstream_wheel(src, dist, epoch=int(git(tree, "log", "-1", "--format=%ct")), upstream_version=version)


def build_both(version: str, *, series_dir: Path, build_root: Path, cache: Cache, index_url: str | None = None,
               no_patches: bool = False, progress=lambda _: None) -> tuple[Built, Built | None]:
    """The stock and (unless ``no_patches``) the patched tree and wheel of ``version``."""
    profile = load_releases(series_dir).profile
    if profile.has_suite_registry:
        raise KettaError(f"the series is kept for {profile.what}: its upstream suite is the one in the suite registry "
                         "(ketta-build matrix --suite upstream runs it)", path=series_dir)
    dist = build_root / "upstream-tests" / version / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    progress(f"the stock tree of {profile.release_name(version)}")
    stock_tree, stock_report = ensure_tree(version, patched=False, series_dir=series_dir, build_root=build_root,
                                           cache=cache, index_url=index_url, progress=progress)
    progress(f"the stock wheel of {profile.release_name(version)}")
    stock = Built(stock_tree, _stock_wheel(stock_tree, version, dist / "stock"), stock_report)
    if no_patches:
        return stock, None
    progress(f"applying {series_dir} to {profile.release_name(version)}")
    tree, report = ensure_tree(version, patched=True, series_dir=series_dir, build_root=build_root, cache=cache,
                               index_url=index_url, progress=progress)
    progress(f"the patched wheel of {profile.release_name(version)}")
    wheel = build_any_wheel(tree, dist / "patched", read_build_number(series_dir), series_dir=series_dir,
                            series=series_state(series_dir), profile=profile)
    return stock, Built(tree, wheel.path, report)


def run_release(version: str, *, series_dir: Path, build_root: Path, cache: Cache | None = None,
                index_url: str | None = None, no_patches: bool = False, progress=lambda _: None) -> UpstreamTestsResult:
    """The upstream suite on one release of the kind-``any`` series in ``series_dir``: build both, run the
    release's own tests in each, compare (see the module's docstring). Work goes under
    ``build_root/upstream-tests/<release>``."""
    return _run_release(version, series_dir=series_dir, build_root=build_root, cache=cache, index_url=index_url,
                        no_patches=no_patches, progress=progress)[0]


def cell_inputs(version: str, stock: Built, patched: Built | None, series_dir: Path) -> dict:
    """What a matrix cell of the ``upstream`` suite depends on (its key, :func:`ketta_build.cellstore.cell_key`):
    both wheels (builds are reproducible: the same series gives the same bytes), the sdist the tests
    come from and the patches applied to its tree, the profile's ``[tests]``, the reviewed list of
    expected failures and this Python."""
    profile = load_releases(series_dir).profile
    expected = series_dir / profile.tests.expected_failures
    report = (patched or stock).report or {}
    return {"version": version, "suite": "upstream", "patched": patched is not None,
            "release": {"stock": sha256_file(stock.wheel), "patched": sha256_file(patched.wheel) if patched else None,
                        "sdist": (stock.report or {}).get("upstream", {}).get("sha256"),
                        "patches": [[p["name"], p.get("sha256")] for p in report.get("patches", [])] if patched else []},
            "tests": {"paths": list(profile.tests.paths), "requirements": list(profile.tests.requirements),
                      "args": list(profile.tests.args)},
            "expected_failures": sha256_file(expected) if expected.is_file() else None,
            "python": f"{sys.version_info.major}.{sys.version_info.minor}"}


def _run_release(version: str, *, series_dir: Path, build_root: Path, cache: Cache | None, index_url: str | None,
                 no_patches: bool, progress, built: tuple[Built, Built | None] | None = None
                 ) -> tuple[UpstreamTestsResult, list[tuple[Built, bool]]]:
    """:func:`run_release`, and what it built (each with whether it is the patched build); ``built``:
    the two builds, made already (:func:`build_both`)."""
    version = str(parse_version(version))
    series_dir = series_dir.absolute()
    build_root = build_root.absolute()
    profile = load_releases(series_dir).profile
    tests = profile.tests
    expectations_path = series_dir / tests.expected_failures
    expectations = load_expectations(expectations_path)  # a broken list is refused before anything is built
    stock, patched = built or build_both(version, series_dir=series_dir, build_root=build_root, cache=cache or Cache(),
                                         index_url=index_url, no_patches=no_patches, progress=progress)
    work = build_root / "upstream-tests" / version
    runs = []
    for label, built in (("stock", stock), ("patched", patched)):
        if built is None:
            continue
        progress(f"the {label} environment ({built.wheel.name})")
        python = make_environment(work / f"{label}-env", built.wheel, tests.requirements, index_url)
        progress(f"{profile.release_name(version)}'s own tests on the {label} build")
        runs.append(run_tests(label, python, built.tree, tests.paths, tests.args, work / f"{label}-run", built.wheel.name))
    result = compare(version, runs[0], runs[-1], expectations, patched=not no_patches,
                     expectations_file=tests.expected_failures if expectations_path.exists() else "")
    return result, [(stock, False)] + ([(patched, True)] if patched is not None else [])


# ---------------------------------------------------------------------------- a matrix cell


def write_cell_junit(result: UpstreamTestsResult, path: Path) -> None:
    """The cell's JUnit file: one case per upstream test, judged (a regression or a stale expectation
    fails; an expected failure is an xfail; a failure of both builds and a skipped test are skipped)."""
    suite = ET.Element("testsuite", name="upstream")
    tests = set(result.under_test.outcomes) | set(result.regressions) | set(result.expected) | set(result.failing_both)
    for test in sorted(tests):
        file, _, rest = test.partition("::")
        case = ET.SubElement(suite, "testcase", classname=file, name=rest or file)
        outcome = result.under_test.outcomes.get(test) or result.regressions.get(test)
        if test in result.regressions:
            o = result.regressions[test]
            ET.SubElement(case, "failure", message=f"{o.status} on the patched build, passes on the stock one: {o.message}")
        elif test in result.expected:
            ET.SubElement(case, "skipped", type="pytest.xfail", message=f"expected: {result.expected[test]}")
        elif test in result.failing_both:
            ET.SubElement(case, "skipped", message=f"fails on the stock build too: {result.failing_both[test].message}")
        elif outcome is not None and outcome.status == "skipped":
            ET.SubElement(case, "skipped", message=outcome.message)
    for test, entry in sorted(result.stale.items()):
        case = ET.SubElement(suite, "testcase", classname=result.expectations_file or "expected-failures",
                             name=f"stale: {test}")
        ET.SubElement(case, "failure", message=f"listed for {entry.releases} ({entry.why}) but does not fail "
                                                "patched while passing stock")
    write_atomic(path, ET.tostring(suite, encoding="utf-8", xml_declaration=True))


def _build_record(report_dir: Path, version: str, built: Built, patched: bool) -> None:
    """What the cell tested, as the matrix report's ``builds`` records it."""
    report = built.report or {}
    upstream = report.get("upstream", {})
    record = {"version": version, "patched": patched, "sdist": upstream.get("filename"),
              "sdist_sha256": upstream.get("sha256"), "wheel": built.wheel.name, "wheel_sha256": sha256_file(built.wheel),
              "patches": [{"name": p["name"], "sha256": p.get("sha256")} for p in report.get("patches", [])]}
    out = report_dir / "builds" / f"{version}{'' if patched else '-upstream'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, (json.dumps(record, indent=2) + "\n").encode())


def run_cell(version: str, *, series_dir: Path, build_root: Path, report_dir: Path, log: Path, junit: Path,
             cache: Cache | None = None, index_url: str | None = None, no_patches: bool = False,
             built: tuple[Built, Built | None] | None = None, steps: list[str] = ()) -> int:
    """One matrix cell (release x ``upstream``): :func:`run_release`, its verdict written to ``log``, the
    cell's JUnit file to ``junit``, the document and both runs' pytest logs to ``report_dir/upstream/``.
    Its exit code: 0 the verdict holds, 1 it does not, 2 no verdict (the error is in ``log``). ``built``:
    the two builds made already, ``steps`` the lines that said how (they open the log)."""
    version = str(parse_version(version))
    records = report_dir / RECORDS_DIR
    records.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") as out:
        def say(line: str) -> None:
            out.write(line + "\n")
            out.flush()

        for line in steps:
            say(line)
        try:
            result, made = _run_release(version, series_dir=series_dir, build_root=build_root, cache=cache,
                                        index_url=index_url, no_patches=no_patches, progress=say, built=built)
        except (KettaError, OSError, subprocess.SubprocessError) as exc:
            say(f"no verdict: {exc}")
            return 2
        for item, patched in made:
            _build_record(report_dir, version, item, patched)
        for run in {id(r): r for r in (result.stock, result.under_test)}.values():
            shutil.copy2(run.log, records / f"{version}-{run.label}.log")
            say(f"--- the {run.label} run's pytest log: {RECORDS_DIR}/{version}-{run.label}.log")
        write_atomic(records / f"{version}.json", (json.dumps(result.as_json(), indent=2) + "\n").encode())
        for line in result.lines():
            say(line)
        write_cell_junit(result, junit)
        return result.exit_code

