"""fuzz: what schemathesis sends to the provider, model and agent-creation routes (see fuzz.py).

Examples per route ``KETTA_FUZZ_EXAMPLES`` (default 10), sequence steps ``KETTA_FUZZ_STEPS``
(default 8), seed ``KETTA_FUZZ_SEED`` (default 20261202). A failure prints the seed and a curl
command per failing request; the same seed against the same release and series sends the same
requests. The run's figures go to ``$KETTA_REPORT_DIR/fuzz/<release>.json`` for the matrix report.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from ketta_build import suiteenv

from . import api
from .conftest import SUMMARIES
from .fuzz import FuzzRun

pytestmark = pytest.mark.fuzz

SEED = suiteenv.integer("KETTA_FUZZ_SEED")
EXAMPLES = suiteenv.integer("KETTA_FUZZ_EXAMPLES")
STEPS = suiteenv.integer("KETTA_FUZZ_STEPS")
ALLOWED = Path(__file__).with_name("fuzz-allowed.toml")


def test_the_api_survives_what_schemathesis_sends(server, vendors, pytestconfig):
    import schemathesis

    version = pytestconfig.getoption("--letta")
    document = api.ok(server.get("/openapi.json"))
    schema = schemathesis.openapi.from_dict(document)
    pool = [api.create_provider(server, api.unique("FuzzKeyed"), vendors["alpha"].base_url, "sk-fuzz-pool-key"),
            api.create_provider(server, api.unique("FuzzKeyless"), vendors["beta"].base_url, "")]
    allowed = [a for a in tomllib.loads(ALLOWED.read_text())["allowed"]
               if SpecifierSet(a.get("releases", ">=0")).contains(Version(version), prereleases=True)]
    run = FuzzRun(server.url, server.user_id, SEED, EXAMPLES, vendors["alpha"].base_url, allowed=allowed,
                  log_size=lambda: len(server.log_text()))
    seconds = run.run(schema, {"provider_id": [p["id"] for p in pool]}, STEPS)
    run.check_log(server.log_text(), own=(str(server.home), str(server.python.parent.parent), str(server.tree)))
    summary = {"letta": version, "seconds": round(seconds, 1), **run.summary()}
    report_dir = suiteenv.get("KETTA_REPORT_DIR")
    if report_dir:
        out = Path(report_dir) / "fuzz" / f"{version}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2) + "\n")
    SUMMARIES.append(f"fuzz on letta {version}: {summary['calls']} calls over {len(summary['routes'])} routes in "
                     f"{seconds:.0f} s (seed {SEED}, {EXAMPLES} examples per route), {summary['names_reused']} names "
                     f"reused, {sum(summary['allowed'].values())} allowed upstream 5xx, {len(run.failures)} failure(s)")
    assert not run.failures, (f"{len(run.failures)} failure(s); replay with KETTA_FUZZ_SEED={SEED} "
                              f"KETTA_FUZZ_EXAMPLES={EXAMPLES}:\n" + "\n".join(run.failures))
