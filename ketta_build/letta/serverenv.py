"""A runnable Letta server for one release: build tree → wheel → its own locked environment.

``prepare_server`` is what the compatibility suites (and ``ketta-build matrix``) call. It is
incremental: the build tree is re-applied only when the release or the series changed, and the
environment is keyed by the wheel's sha256 and the constraints' sha256, so a warm run costs a
wheel build and a few stat calls. Plain ``pip install letta==X`` does not give a working server
any more (newer transitive releases break it), hence the constraints exported from the release's
``uv.lock``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from ..cache import Cache, sha256_file
from ..errors import KettaError
from ..releases import parse_version
from ..releasetree import ensure_tree
from ..uvcmd import run_uv
from ..wheel import BuiltWheel, read_build_number
from .wheel import SERVER_EXTRAS, build_wheel_once, export_constraints
from ..servercoverage import REQUIREMENT, install_startup_hook

ENV_LAYOUT = "bytecode-compiled\0"


@dataclass
class ServerBuild:
    version: str
    patched: bool
    tree: Path
    wheel: Path
    wheel_version: str
    wheel_sha256: str
    constraints: Path
    env: Path
    apply_report: dict | None

    @property
    def python(self) -> Path:
        return self.env / "bin" / "python"

    @property
    def letta(self) -> Path:
        return self.env / "bin" / "letta"

    def as_json(self) -> dict:
        data = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}


def server_python() -> str:
    """The interpreter for server environments: this one, if the releases support it (>=3.11,<3.14)."""
    if not ((3, 11) <= sys.version_info[:2] < (3, 14)):
        raise KettaError(f"Letta server releases need Python >=3.11,<3.14; this is {sys.version.split()[0]}")
    return sys.executable


def ensure_environment(
    wheel: BuiltWheel, constraints: Path, cache: Cache, progress=lambda _: None, extra_requirements: tuple[str, ...] = (),
    coverage: bool = False,
) -> Path:
    """A virtual environment with ``wheel[server,postgres]`` (plus ``extra_requirements``) installed
    under the release's constraints. With ``coverage``, coverage.py and its start-up hook are in it too
    (an environment of its own: servers of an ordinary run never carry them)."""
    if coverage:
        extra_requirements = (*extra_requirements, REQUIREMENT)
    # ENV_LAYOUT is part of the key: environments made another way are rebuilt, not reused.
    material = (ENV_LAYOUT + wheel.sha256 + sha256_file(constraints) + "\0".join(extra_requirements)
                + ("\0coverage-startup-hook" if coverage else ""))
    key = hashlib.sha256(material.encode()).hexdigest()[:20]
    env = cache.ensure("envs") / key
    ready = env / ".ketta-ready"
    with cache.lock(f"env-{key}", timeout=1800):
        if ready.is_file():
            return env
        progress(f"installing {wheel.path.name} into {env}")
        # Scripts in a venv hard-code its path, so install in place; the marker, written last,
        # is what makes the environment count: an interrupted install is wiped and redone.
        shutil.rmtree(env, ignore_errors=True)
        try:
            run_uv(["venv", "--quiet", "--python", server_python(), str(env)])
            spec = f"letta[server,postgres] @ {wheel.path.resolve().as_uri()}"
            # Bytecode is compiled at install time: a server or alembic run then imports Letta in
            # about a third of the time, and even under PYTHONDONTWRITEBYTECODE=1 (which would
            # otherwise make every start compile the whole dependency tree again).
            run_uv(["pip", "install", "--quiet", "--compile-bytecode", "--python", str(env / "bin" / "python"), "-c", str(constraints),
                    "--reinstall-package", "letta", spec, *extra_requirements])
            if coverage:
                install_startup_hook(env)
            ready.write_text(json.dumps({"wheel": str(wheel.path), "sha256": wheel.sha256}) + "\n")
        except BaseException:
            shutil.rmtree(env, ignore_errors=True)
            raise
    return env


@dataclass(frozen=True)
class ReleaseBuild:
    """What a server environment is made from: the build tree, its wheel and its constraints."""

    tree: Path
    wheel: BuiltWheel
    constraints: Path
    apply_report: dict | None


def prepare_wheel(
    version: str,
    *,
    patched: bool = True,
    series_dir: Path,
    build_root: Path,
    cache: Cache | None = None,
    index_url: str | None = None,
    progress=lambda _: None,
) -> ReleaseBuild:
    """The build tree, wheel and constraints of ``version`` (patched or not), each only remade when out
    of date; the matrix asks for it to know a cell's inputs before it decides to run the cell."""
    cache = cache or Cache()
    build_root = build_root.absolute()
    # Matrix cells run side by side and an upgrade cell builds other releases too: one builder
    # per build directory at a time.
    where = hashlib.sha256(str(build_root).encode()).hexdigest()[:12]
    with cache.lock(f"build-{where}-{parse_version(version)}-{'patched' if patched else 'upstream'}", timeout=1800):
        tree, report = ensure_tree(
            version, patched=patched, series_dir=series_dir, build_root=build_root, cache=cache,
            index_url=index_url, progress=progress,
        )
        dist = build_root / "dist"
        number = read_build_number(series_dir) if patched else None
        constraints = export_constraints(tree, build_root / f"{tree.name}.constraints.txt")
        progress(f"building the wheel of {tree.name}")
        wheel = build_wheel_once(tree, dist / tree.name, number, series_dir=series_dir, constraints=constraints)
    return ReleaseBuild(tree, wheel, constraints, report)


def prepare_server(version: str, *, coverage: bool = False, cache: Cache | None = None, **options) -> ServerBuild:
    """The build of ``version`` and an environment to run its server in; with ``coverage`` (``matrix
    --coverage``) every Python process of that environment runs under coverage.py whenever
    ``COVERAGE_PROCESS_START`` names a configuration (see :mod:`ketta_build.servercoverage`).
    ``options`` are :func:`prepare_wheel`'s (``patched``, ``series_dir``, ``build_root``, ``index_url``,
    ``progress``)."""
    cache = cache or Cache()
    built = prepare_wheel(version, cache=cache, **options)
    env = ensure_environment(built.wheel, built.constraints, cache, options.get("progress", lambda _: None), coverage=coverage)
    return ServerBuild(
        version=version, patched=options.get("patched", True), tree=built.tree, wheel=built.wheel.path, wheel_version=built.wheel.version,
        wheel_sha256=built.wheel.sha256, constraints=built.constraints, env=env, apply_report=built.apply_report,
    )


# What the release's own provider tests need besides the server (versions come from its uv.lock).
TEST_REQUIREMENTS = ("pytest", "pytest-asyncio", "pytest-mock", "pytest-order")


def test_constraints_path(build: ServerBuild) -> Path:
    """Where :func:`prepare_test_environment` writes the constraints its environment is installed under."""
    return build.constraints.with_name(f"{build.tree.name}.test-constraints.txt")


def prepare_test_environment(build: ServerBuild, cache: Cache | None = None, progress=lambda _: None) -> Path:
    """An environment for running the release's own tests against ``build``'s wheel.

    Separate from the server's environment so the suites never run a server next to test-only
    packages; pinned by the same lock (its ``dev`` extra), so test tools match the release.
    """
    cache = cache or Cache()
    constraints = export_constraints(build.tree, test_constraints_path(build), (*SERVER_EXTRAS, "dev"))
    wheel = BuiltWheel(path=build.wheel, version=build.wheel_version, sha256=build.wheel_sha256)
    return ensure_environment(wheel, constraints, cache, progress, extra_requirements=TEST_REQUIREMENTS)
