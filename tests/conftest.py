"""Fixtures: synthetic Letta trees, sdists, patches and a local package index (no network)."""

from __future__ import annotations

import ast
import difflib
import hashlib
import http.server
import io
import json
import os
import re
import tarfile
import textwrap
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ketta_build.applying import git_blob_id
from ketta_build.cache import Cache
from ketta_build.patchfile import split_lines

HEADER = """\
Subject: {subject}
Author: Test Author <test@example.org>
Upstream-Status: Inappropriate [test]
Base-Release: {base}
Forwarded: not-needed
Owner: Test Author <test@example.org>
Description: {subject}.
 Second line of the description.

"""


def server_files(version: str, files: dict[str, str]) -> dict[str, str]:
    """A minimal Letta server tree plus ``files``."""
    base = {
        "pyproject.toml": f'[project]\nname = "letta"\nversion = "{version}"\n',
        "letta/__init__.py": f'__version__ = "{version}"\n',
        "letta/server/__init__.py": "",
        ".gitignore": "*.log\nbuild/\n",
    }
    base.update(files)
    return base


def write_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_bytes(content.encode())
    return root


def make_diff(path: str, old: str | None, new: str | None, context: int = 3) -> str:
    """A git-style diff of one file, with index blob ids."""
    old_lines = split_lines(old or "")
    new_lines = split_lines(new or "")
    body = []
    for line in difflib.unified_diff(old_lines, new_lines, n=context):
        if line.startswith(("---", "+++")):
            continue
        if not line.endswith("\n"):
            line += "\n\\ No newline at end of file\n"
        body.append(line)
    old_id = git_blob_id((old or "").encode())[:7] if old is not None else "0000000"
    new_id = git_blob_id((new or "").encode())[:7] if new is not None else "0000000"
    head = [f"diff --git a/{path} b/{path}\n"]
    if old is None:
        head += ["new file mode 100644\n", f"index {old_id}..{new_id}\n", "--- /dev/null\n", f"+++ b/{path}\n"]
    elif new is None:
        head += ["deleted file mode 100644\n", f"index {old_id}..{new_id}\n", f"--- a/{path}\n", "+++ /dev/null\n"]
    else:
        head += [f"index {old_id}..{new_id} 100644\n", f"--- a/{path}\n", f"+++ b/{path}\n"]
    return "".join(head + body)


def write_patch(directory: Path, name: str, diff: str, *, base: str = "0.16.8", subject: str | None = None) -> Path:
    p = directory / name
    p.write_text(HEADER.format(subject=subject or f"Patch {name}", base=base) + diff)
    return p


REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"


# Parallel runs (pytest-xdist; docs/testing.md#parallel-runs) ------------------------------------------


def _a_directory_of_tests(arg: str, start: Path) -> bool:
    path = Path(start, arg).resolve()
    return path.is_dir() and (path == TESTS or TESTS in path.parents)


def default_workers() -> int:
    """Two workers per core (``PYTEST_XDIST_AUTO_NUM_WORKERS`` overrides, as for xdist's ``auto``): the
    offline tests spend much of their time waiting (subprocesses, locks, deadlines, signals), so one
    worker per core leaves the cores idle a third of the time. The offline subset on 2 cores: 177 s
    with 2 workers, 137 s with 3, 120 s with 4."""
    override = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    if override:
        return int(override)
    return 2 * len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2 * (os.cpu_count() or 1)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """A run of tests/ (``pytest``, ``pytest tests``, with any ``-m``/``-k``) is spread over two workers
    per core (:func:`default_workers`) with ``--dist loadgroup``. A run of named files or tests stays serial (no workers to
    start), and the command line always wins (``-n0``: serial; ``-n auto`` for one file, distributed
    by group too unless ``--dist`` says otherwise; ``-p no:xdist``). Not pyproject.toml's addopts: tox runs compat_tests/ under the same configuration,
    and a compatibility session shares one PostgreSQL and one default server that each worker would
    start again. Tests that must run on one worker carry ``pytest.mark.xdist_group(NAME)``."""
    if not config.pluginmanager.hasplugin("xdist") or hasattr(config, "workerinput"):
        return  # xdist not installed or turned off, or this is a worker
    if config.option.numprocesses is None and all(_a_directory_of_tests(arg, config.invocation_params.dir)
                                                  for arg in config.args):
        config.option.numprocesses = default_workers()  # not for named files or tests, nor for compat_tests/
    if config.option.numprocesses and config.option.dist == "no":
        config.option.dist = "loadgroup"  # xdist's default for -n is load, which ignores xdist_group


def module_groups() -> dict[str, str]:
    """The xdist_group each module of tests/ names in its module-level ``pytestmark``, by the module's
    path as node ids start (``tests/test_wheel_deploy.py``)."""
    groups = {}
    for path in sorted(TESTS.glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
                for call in ast.walk(node.value):
                    if (isinstance(call, ast.Call) and ast.unparse(call.func).endswith("mark.xdist_group") and call.args
                            and isinstance(call.args[0], ast.Constant)):
                        groups[path.relative_to(REPO).as_posix()] = str(call.args[0].value)
    return groups


def group_of(nodeid: str, groups: dict[str, str]) -> str:
    """The unit a test is handed to a worker in: its module's group, else the test on its own."""
    return groups.get(nodeid.split("::", 1)[0], nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadgroup`` whose groups are read from the modules' ``pytestmark``, not from the node
    ids: pytest 9.2 no longer lets xdist (3.8) put the group into a node id, so its own loadgroup
    hands grouped tests to any worker, silently (pytest-xdist issue 1386). Like xdist's, the groups go
    out first, largest first, then one test at a time."""
    if config.option.dist != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    groups = module_groups()

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(nodeid, groups)

    return GroupScheduling(config, log)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On xdist's workers, the network tests first (in their order): they are the long ones (servers,
    wheels, downloads), and started first they overlap with the offline tests instead of leaving one
    worker busy alone at the end. The groups (xdist_group) go first anyway: loadgroup hands out the
    largest first. A serial run keeps the files' order."""
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: item.get_closest_marker("network") is None)


@pytest.fixture(scope="session")
def shared_tmp(request, tmp_path_factory) -> Path:
    """The directory every xdist worker of this run shares: the run's base temporary directory, in
    which each worker has its own (``popen-gwN``); in a serial run, the run's own. For what a session
    makes once per run (a download cache, an npm install): a directory of a fixed name in it, made
    under a ``filelock.FileLock`` beside it when two workers must not both make it."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if hasattr(request.config, "workerinput") else base


def write_series(directory: Path, *lines: str) -> Path:
    """A series file (and the repository's releases.toml, unless the test wrote its own)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "series").write_text("# test series\n" + "".join(line + "\n" for line in lines))
    if not (directory / "releases.toml").exists():
        (directory / "releases.toml").write_bytes((REPO / "patches" / "releases.toml").read_bytes())
    return directory


def pin(directory: Path, version: str, sha256: str) -> None:
    """Pin ``version`` in ``directory/releases.toml`` to ``sha256`` (a test's made-up release, as a
    maintainer would: ketta-build fetches a supported release only to match its pin)."""
    path = directory / "releases.toml"
    text = path.read_text()
    pattern = re.compile(rf'(version = "{re.escape(version)}"\ndate = "[^"]*"\n)(sha256 = "[^"]*"\n)?')
    text, count = pattern.subn(lambda m: f'{m.group(1)}sha256 = "{sha256}"\n', text)
    assert count == 1, f"{version} is not listed in {path}"
    path.write_text(text)


def pin_sdists(directory: Path, *sdists: Path) -> None:
    """Pin each of ``sdists`` (``letta-VERSION.tar.gz``) in ``directory/releases.toml`` to its sha256."""
    for sdist in sdists:
        pin(directory, sdist.name.removeprefix("letta-").removesuffix(".tar.gz"), hashlib.sha256(sdist.read_bytes()).hexdigest())


def pin_index(directory: Path, index: "LocalIndex") -> None:
    """Pin every release ``directory/releases.toml`` lists and ``index`` publishes an sdist of to the
    sha256 the index publishes for it (right or, in a test of a lying index, wrong)."""
    listed = (directory / "releases.toml").read_text()
    for f in index.files:
        version = str(f["filename"]).removeprefix("letta-").removesuffix(".tar.gz")
        if str(f["filename"]).endswith(".tar.gz") and f'version = "{version}"' in listed:
            pin(directory, version, f["hashes"]["sha256"])


def make_sdist(path: Path, version: str, files: dict[str, str | bytes], extra_members: list[tarfile.TarInfo] | None = None,
               mtime: int = 0, name: str = "letta") -> Path:
    top = f"{name}-{version}"
    with tarfile.open(path, "w:gz") as tar:
        for rel, content in sorted(files.items()):
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(f"{top}/{rel}")
            info.size = len(data)
            info.mode = 0o644
            info.mtime = mtime
            tar.addfile(info, io.BytesIO(data))
        for member in extra_members or []:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return path


def make_wheel(path: Path, top_level: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{top_level}/__init__.py", "")
        zf.writestr(f"{path.name.split('-')[0]}-{path.name.split('-')[1]}.dist-info/METADATA", "Name: letta\n")
    return path


@dataclass
class LocalIndex:
    """A PEP 691 JSON index on 127.0.0.1 that also serves byte ranges."""

    root: Path
    url: str = ""
    files: list[dict] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    fake_sha: dict[str, str] = field(default_factory=dict)
    page_body: bytes | None = None  # served as the project page instead of the JSON of ``files``, when set
    project: str = "letta"  # the one project it serves

    def add(self, path: Path, *, sha256: str | None = None, yanked: str | bool = False) -> None:
        data = path.read_bytes()
        target = self.root / "files" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.files.append(
            {
                "filename": path.name,
                "url": f"../../files/{path.name}",
                "hashes": {"sha256": sha256 or hashlib.sha256(data).hexdigest()},
                "yanked": yanked,
            }
        )


@pytest.fixture
def local_index(tmp_path):
    index = LocalIndex(tmp_path / "index-root")
    index.root.mkdir()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _body(self):
            index.requests.append(self.path)
            page = f"/simple/{index.project}"
            if self.path.rstrip("/") == page and index.page_body is not None:
                return index.page_body, "application/vnd.pypi.simple.v1+json"
            if self.path.rstrip("/") == page:
                body = json.dumps({"meta": {"api-version": "1.0"}, "name": index.project, "files": index.files}).encode()
                return body, "application/vnd.pypi.simple.v1+json"
            if self.path.startswith("/files/"):
                f = index.root / "files" / self.path.split("/")[-1]
                if f.is_file():
                    return f.read_bytes(), "application/octet-stream"
            return None, None

        def do_HEAD(self):
            body, ctype = self._body()
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()

        def do_GET(self):
            body, ctype = self._body()
            if body is None:
                self.send_error(404)
                return
            rng = self.headers.get("Range")
            if rng:
                start, end = (int(x) for x in rng.split("=")[1].split("-"))
                chunk = body[start : end + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
                body = chunk
            else:
                self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    index.url = f"http://127.0.0.1:{server.server_address[1]}/simple"
    try:
        yield index
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cache(tmp_path) -> Cache:
    return Cache(tmp_path / "cache", lock_timeout=30)


@pytest.fixture
def dedent():
    return lambda s: textwrap.dedent(s)


@pytest.fixture
def world(tmp_path, local_index, capsys):
    """The maintenance loop's world (tests/world.py)."""
    from world import make_world

    return make_world(tmp_path, local_index, capsys)
