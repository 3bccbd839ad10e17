"""A second, independent CycloneDX validator for the tests: the JavaScript CycloneDX library's strict
JSON validator (``@cyclonedx/cyclonedx-library``; its README: JSON validation on Node.js needs ``ajv``,
``ajv-formats`` and ``ajv-formats-draft2019``), installed from the npm registry once per test run.

Tests using it are network tests. Without node or npm they fail, saying what is missing: CI is
expected to have both, and a skipped validator would look like a passing one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGES = ("@cyclonedx/cyclonedx-library", "ajv", "ajv-formats", "ajv-formats-draft2019")

# Reads the document on stdin; prints the validator's errors as JSON (null: valid).
SCRIPT = """\
const { Spec, Validation } = require('@cyclonedx/cyclonedx-library')
const chunks = []
process.stdin.on('data', c => chunks.push(c))
process.stdin.on('end', async () => {
  const validator = new Validation.JsonStrictValidator(Spec.Version.v1dot6)
  const errors = await validator.validate(Buffer.concat(chunks).toString('utf8'))
  process.stdout.write(JSON.stringify(errors) + '\\n')
})
"""


class JsValidator:
    def __init__(self, prefix: Path, node: str) -> None:
        self.prefix = prefix
        self.node = node
        self.script = prefix / "validate.js"

    @staticmethod
    def write_script(prefix: Path) -> None:
        (prefix / "validate.js").write_text(SCRIPT)

    def errors(self, text: str) -> list | None:
        """The validator's errors for ``text`` (None: a valid CycloneDX 1.6 document)."""
        proc = subprocess.run([self.node, str(self.script)], input=text, capture_output=True, text=True, timeout=120, check=False,
                              cwd=self.prefix)
        if proc.returncode != 0:
            pytest.fail(f"the CycloneDX JavaScript validator did not run: {proc.stderr.strip()[-2000:]}")
        return json.loads(proc.stdout)

    @property
    def version(self) -> str:
        package = self.prefix / "node_modules" / "@cyclonedx" / "cyclonedx-library" / "package.json"
        return json.loads(package.read_text())["version"]


@pytest.fixture(scope="session")
def cyclonedx_js(shared_tmp) -> JsValidator:
    """Installed once per run, into a directory every xdist worker of the run shares (the first worker
    to get here installs it, under a lock the other waits on)."""
    from filelock import FileLock

    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("the second CycloneDX validator needs Node.js (>= 20.18, the library's engines) and npm on PATH: "
                    f"{'node' if node is None else 'npm'} not found")
    prefix = shared_tmp / "cyclonedx-js"
    with FileLock(shared_tmp / "cyclonedx-js.lock"):
        done = prefix / ".installed"
        if not done.is_file():
            prefix.mkdir(exist_ok=True)
            proc = subprocess.run([npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(prefix), *PACKAGES],
                                  capture_output=True, text=True, timeout=600, check=False)
            if proc.returncode != 0:
                pytest.fail(f"npm install {' '.join(PACKAGES)} failed: {proc.stderr.strip()[-2000:]}")
            JsValidator.write_script(prefix)
            done.write_text("")
    return JsValidator(prefix, node)
