"""parity: the same script on every release, compared with 0.16.8's results (see parity.py).

The reference is ``compat_tests/parity/0.16.8.json``; ``KETTA_PARITY_RECORD=1`` on 0.16.8 writes it
anew (review the diff). The comparison goes to ``$KETTA_REPORT_DIR/parity/<release>.json``.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from ketta_build import suiteenv

from .conftest import SUMMARIES
from .parity import Script, allowed_for, differences, judge
from .vendor import FakeVendor

pytestmark = pytest.mark.parity

HERE = Path(__file__).parent
REFERENCE_RELEASE = "0.16.8"
REFERENCE = HERE / "parity" / f"{REFERENCE_RELEASE}.json"
ALLOWED = HERE / "parity-allowed.toml"


@pytest.fixture(scope="module")
def parity_vendors():
    started = [FakeVendor("parity-keyed").start(), FakeVendor("parity-keyless").start()]
    yield started
    for vendor in started:
        vendor.stop()


def test_every_release_answers_the_script_as_0_16_8_does(server, parity_vendors, pytestconfig, patched):
    version = pytestconfig.getoption("--letta")
    steps = Script(server, *parity_vendors).run()
    if suiteenv.flag("KETTA_PARITY_RECORD"):
        assert version == REFERENCE_RELEASE and patched, f"the reference is {REFERENCE_RELEASE}'s, patched"
        REFERENCE.write_text(json.dumps(steps, indent=2, ensure_ascii=False) + "\n")
    reference = json.loads(REFERENCE.read_text())
    entries = tomllib.loads(ALLOWED.read_text()).get("allowed", [])
    unexplained, explained, stale = judge(differences(steps, reference), allowed_for(entries, version))
    report = {"letta": version, "steps": steps, "differences": unexplained, "allowed": explained,
              "stale_allowances": stale}
    report_dir = suiteenv.get("KETTA_REPORT_DIR")
    if report_dir:
        out = Path(report_dir) / "parity" / f"{version}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    SUMMARIES.append(f"parity on letta {version}: {len(steps)} steps, {len(explained)} allowed difference(s), "
                     f"{len(unexplained)} not allowed, {len(stale)} allowance(s) that no longer apply")
    problems = [f"{d['step']}: {d['field']} is {d['got']!r}, 0.16.8 gives {d['expected']!r}" for d in unexplained]
    problems += [f"parity-allowed.toml: {e['step']} / {e['field']} ({e['reason']}) no longer happens on {version}: "
                 "remove it" for e in stale]
    assert not problems, "\n".join(problems)
