"""The verbs of ``ketta-build``, one module each (see :mod:`ketta_build.commands.common`).

:data:`VERBS` is the registry: a verb is its module here plus one line in it, in the order
``ketta-build --help`` lists them. A built-in plugin (:data:`ketta_build.profile.PLUGINS`) adds the
verbs only its upstream has (its ``VERBS``, modules of the plugin's package), after these.
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
    "releases",
    "lint",
    "status",
    "matrix",
    "cache",
    "completion",
)


def modules() -> list[ModuleType]:
    """Every verb's module, in registry order, then the built-in plugins' verbs."""
    from ..profile import PLUGINS, plugin_module

    core = [importlib.import_module(f"{__name__}.{name}") for name in VERBS]
    for kind in PLUGINS:
        plugin = plugin_module(kind)
        core += [importlib.import_module(f"{plugin.__name__}.{name}") for name in getattr(plugin, "VERBS", ())]
    return core
