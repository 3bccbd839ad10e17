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

#: The variables Letta's compatibility suites read besides the core's (ketta_build.suiteenv): name,
#: meaning, default, who sets it (matrix | tox | user | tool).
SUITE_VARIABLES = (
    ("KETTA_UPGRADE_WORKERS", "threads preparing upgrade pairs ahead of the tests", "2", "user"),
    ("KETTA_FUZZ_EXAMPLES", "generated requests per route in the fuzz suite", "10", "matrix"),
    ("KETTA_FUZZ_SEED", "the fuzz suite's seed (a failure prints it: replay with it)", "20261202", "user"),
    ("KETTA_FUZZ_STEPS", "steps of the fuzz suite's request sequences", "8", "user"),
    ("KETTA_PARITY_RECORD", "1 on the newest release: write the parity reference anew", "0", "user"),
    ("KETTA_PG_OPTIONS", "extra PostgreSQL server options for the suites' throw-away cluster", "", "user"),
    ("KETTA_FORK_STARTS", "1: servers are forked from a start helper per environment that preloaded the "
     "third-party modules (compat_tests/fork_helper.py); 0: every server starts cold", "1", "user"),
    ("KETTA_SERVER_STARTUP_TIMEOUT", "seconds a suite waits for a server to start", "180", "user"),
)
#: What tox passes on to Letta's suites besides the variables: a user's own PostgreSQL.
SUITE_PASS_ENV = ("LETTA_PG_URI",)


def build_release_wheel(tree, dist_dir, build_number: int, *, release: str, series_dir, series, profile):
    """The server wheel of ``tree`` and the release's constraints (``constraints-X.txt``) into ``dist_dir``."""
    from .wheel import build_wheel, export_constraints

    constraints = export_constraints(tree, dist_dir / f"constraints-{release}.txt")
    return build_wheel(tree, dist_dir, build_number, series_dir=series_dir, constraints=constraints,
                       series=series), constraints


def cell_release(version: str, *, patched: bool, series_dir, build_root, cache, index_url) -> dict:
    """What a matrix cell's key records of the release under test: the server wheel's and its
    constraints' sha256 (:mod:`ketta_build.cellkeys`); the wheel is made or found once."""
    from ..cache import sha256_file
    from .serverenv import prepare_wheel

    built = prepare_wheel(version, patched=patched, series_dir=series_dir, build_root=build_root, cache=cache,
                          index_url=index_url)
    return {"wheel": built.wheel.sha256, "constraints": sha256_file(built.constraints)}


def pair_sides(version: str, releases: tuple[str, ...], pairs_file, choice: str) -> set:
    """The (release, patched) sides of the upgrade pairs that end at ``version`` (``choice``: all or ci)."""
    from .upgradepairs import UpgradePairs

    return UpgradePairs.load(releases, pairs_file).sides(version, choice)
