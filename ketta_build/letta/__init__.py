"""The Letta profile: what only a series kept for the Letta agent server needs.

The core reads a series' profile (:mod:`ketta_build.profile`), never a project's name. Letta was
this tool's first user and needs more than the core gives any upstream, so its profile comes with a
plugin, this package:

* :data:`PROFILE`, the profile of a series directory without ``upstream.toml`` (``patches/upstream.toml``
  of this repository spells the same out);
* the server wheel (provenance and upstream's migrations inside ``letta/``, constraints from
  ``uv.lock``), built by :mod:`ketta_build.wheel` when ``[wheel] kind = "letta"``;
* a runnable server per release (:mod:`.serverenv`), the embedded PostgreSQL (:mod:`.postgres`),
  the ``serve`` verb (:mod:`.serve`, :mod:`.serve_command`);
* the compatibility suites' contract: ``compat_tests/`` and its registry, the variables a suite
  reads (:mod:`.suiteenv`), the upgrade pairs (:mod:`.upgradepairs`), tox.ini (:mod:`.toxini`), the
  servers' coverage of the patches' hunks (:mod:`.servercoverage`);
* the spellings Letta's maintainers have used since the first release of this tool: ``--letta``,
  ``--letta-git``, ``--letta-dir`` (aliases of ``--release``, ``--upstream-git``, ``--upstream-dir``).

Importing this package is cheap: the modules above are imported where they are used.
"""

from __future__ import annotations

from packaging.version import Version

from ..profile import OtherProduct, Profile

#: A series kept for the Letta agent server (the server line ended at 0.16.8; PyPI's ``letta`` 0.32+
#: is Letta Code, a different product: detected, never patched).
PROFILE = Profile(
    name="letta", package="letta", label="ketta", git="https://github.com/letta-ai/letta", tag="v{version}",
    must_contain=("letta/__init__.py", "letta/server"),
    other_product=OtherProduct("Letta Code", Version("0.32.0"), ("letta_code",)),
    wheel_kind="letta", extras=("server", "postgres"), product="the Letta agent server", title="Letta",
    release_word="server release",
    # The design document's merge checklist (section 7.2): files and functions to look at on every upgrade.
    watch=(("letta/schemas/providers/base.py", ()),
           ("letta/schemas/providers/openai.py", ()),
           ("letta/services/provider_manager.py", ("create_provider_async", "list_providers_async")),
           ("letta/llm_api/llm_client_base.py", ())),
)

#: The flags Letta's maintainers know, as aliases of the generic ones (every verb accepts both).
FLAG_ALIASES = {"--release": ("--letta",), "--upstream-git": ("--letta-git",), "--upstream-dir": ("--letta-dir",)}

#: The verbs only this profile has: their modules, in this package.
VERBS = ("serve_command",)


def generated_files(project, series_dir, versions=None) -> dict:
    """The checkout's files kept in step with ``releases.toml`` (``versions``: the releases to write them
    for, default the series'): ``tox.ini``, one environment per release and suite, when the project
    has one and a suite registry to write it from."""
    from ..releases import load_releases
    from ..suites import project_suites
    from . import toxini

    if not toxini.managed(project):
        return {}
    versions = versions if versions is not None else load_releases(series_dir).versions
    return {project / "tox.ini": toxini.render(list(versions), project_suites(project)).encode()}


def build_release_wheel(tree, dist_dir, build_number: int, *, release: str, series_dir, series, profile):
    """The server wheel of ``tree`` and the release's constraints (``constraints-X.txt``) into ``dist_dir``."""
    from .wheel import build_wheel, export_constraints

    constraints = export_constraints(tree, dist_dir / f"constraints-{release}.txt")
    return build_wheel(tree, dist_dir, build_number, series_dir=series_dir, constraints=constraints,
                       series=series), constraints
