"""The verbs of ``ketta-build``, one module each (see :mod:`ketta_build.commands.common`).

:data:`VERBS` is the registry: a verb is its module here plus one line in it, in the order
``ketta-build --help`` lists them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

VERBS = (
    "init",
    "apply",
    "series",
    "export",
    "port",
    "upstream",
    "range_diff",
    "bisect",
    "wheel",
    "serve",
    "releases",
    "lint",
    "status",
    "matrix",
    "cache",
    "completion",
)


def modules() -> list[ModuleType]:
    """Every verb's module, in registry order."""
    return [importlib.import_module(f"{__name__}.{name}") for name in VERBS]
