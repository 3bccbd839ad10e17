"""Small jobs run with a release's own Python: Ketta's migration removal and its crypto helpers.

The environment is scrubbed of ``LETTA_*``/``KETTA_*`` so the job sees only what is passed to it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path


def venv_python_version(env: Path) -> list[str]:
    """The Python version an environment was made with, as its ``pyvenv.cfg`` says."""
    cfg = env / "pyvenv.cfg"
    return re.findall(r"(?m)^version(?:_info)?\s*=\s*(\S+)", cfg.read_text()) if cfg.is_file() else []


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("LETTA_", "KETTA_"))}


def remove_ketta(python: Path, pg_uri: str, cwd: Path) -> str:
    """``python -m letta.ketta_migrations remove`` on the database at ``pg_uri``; its output."""
    proc = subprocess.run([str(python), "-m", "letta.ketta_migrations", "remove"], capture_output=True, text=True,
                          timeout=600, env={**clean_env(), "LETTA_PG_URI": pg_uri}, cwd=cwd)
    if proc.returncode != 0:
        raise AssertionError(f"python -m letta.ketta_migrations remove failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


_CRYPTO_SCRIPT = """\
import json, sys
from letta.helpers.crypto_utils import CryptoUtils
data = json.load(sys.stdin)
out = []
for v in data['values']:
    try:
        plain = CryptoUtils.decrypt(v, data['key']) if data['key'] else None
    except ValueError:
        plain = None
    out.append({'encrypted': CryptoUtils.is_encrypted(v), 'plain': plain})
print(json.dumps(out))
"""


def crypto(python: Path, key: str | None, values: list[str], cwd: Path) -> list[dict]:
    """For each stored value: does it look encrypted (upstream's test), and what it decrypts to."""
    proc = subprocess.run([str(python), "-c", _CRYPTO_SCRIPT], input=json.dumps({"key": key, "values": values}),
                          capture_output=True, text=True, env=clean_env(), cwd=cwd, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"decrypting with {python} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
