"""The package index: where it is (the user's pip/uv configuration, never a host of our own) and
what it lists for a project (PEP 691 JSON or the PEP 503 HTML page, PEP 592 yanks).

``urllib.request`` and ``html.parser`` are imported when a page is read: ``apply`` from a cached
sdist never reads one, and they are a tenth of its start-up (bench/scale.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packaging.version import InvalidVersion, Version

from .atomic import write_atomic
from .cache import default_cache_dir, is_sha256
from .errors import DeadlineExceeded, IndexUnreachable, KettaError, UpstreamError

_JSON_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1"
_TIMEOUT = 60


# --------------------------------------------------------------------------- index configuration


def _pip_config() -> dict[str, str]:
    """``pip config list`` as a dict; empty if pip is not available.

    Asked once per process and configuration, and remembered on disk (in the cache directory)
    together with the configuration files pip read: while none of them changed and the
    environment pip reads is the same, the answer is reused without starting pip (which costs a
    third of a second in-process, a second as ``pip config list``).
    """
    where = (sys.executable, *sorted((k, v) for k, v in os.environ.items()
                                     if k.startswith("PIP_") or k in ("HOME", "XDG_CONFIG_HOME", "XDG_CONFIG_DIRS", "VIRTUAL_ENV")))
    if where not in _PIP_CONFIG:
        memo = default_cache_dir() / "pip-config" / (hashlib.sha256(repr(where).encode()).hexdigest()[:24] + ".json")
        _PIP_CONFIG[where] = _remembered_pip_config(memo)
    return dict(_PIP_CONFIG[where])


_PIP_CONFIG: dict[tuple, dict[str, str]] = {}


def _stamp(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size]


def _remembered_pip_config(memo: Path) -> dict[str, str]:
    try:
        data = json.loads(memo.read_text())
        if all(_stamp(path) == stamp for path, stamp in data["files"].items()):
            return dict(data["config"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    found = _ask_pip_config()
    if found is None:
        return {}
    config, files = found
    if files is not None:
        try:
            write_atomic(memo, json.dumps({"files": {f: _stamp(f) for f in files}, "config": config}).encode())
        except OSError:
            pass  # a read-only cache: ask pip again next time
    return config


def _ask_pip_config() -> tuple[dict[str, str], list[str] | None] | None:
    """pip's configuration and the files it was read from (None: unknown, pip ran as a process)."""
    try:
        from pip._internal.configuration import Configuration  # the running interpreter's own pip
    except Exception:
        Configuration = None  # noqa: N806
    if Configuration is not None:
        try:
            conf = Configuration(isolated=False)
            conf.load()
            files = [f for _, paths in conf.iter_config_files() for f in paths]
            return {k: str(v) for k, v in conf.items()}, files
        except Exception:
            pass
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^([^=]+)='(.*)'$", line.strip())
        if m:
            out[m.group(1)] = m.group(2)
    return out, None


def _pip_default_index() -> str | None:
    try:
        from pip._internal.models.index import PyPI  # pip's own default, not ours
    except Exception:
        return None
    return PyPI.simple_url


def discover_index_urls(explicit: str | None = None) -> list[str]:
    """The indexes to ask, in order, as the user's pip/uv configuration names them.

    ``explicit`` (``--index-url``) wins; otherwise uv's and pip's environment
    variables, then pip's configuration files, then pip's built-in default;
    extra indexes follow the primary one.
    """
    if explicit:
        return [explicit.rstrip("/")]
    env = os.environ
    primary = env.get("UV_DEFAULT_INDEX") or env.get("UV_INDEX_URL") or env.get("PIP_INDEX_URL")
    extras = (env.get("UV_INDEX", "") + " " + env.get("UV_EXTRA_INDEX_URL", "") + " " + env.get("PIP_EXTRA_INDEX_URL", "")).split()
    config = _pip_config()
    if not primary:
        for key in (":env:.index-url", "global.index-url", "download.index-url", "install.index-url"):
            if config.get(key):
                primary = config[key]
                break
    for key in ("global.extra-index-url", "download.extra-index-url", "install.extra-index-url"):
        extras += config.get(key, "").split()
    if not primary:
        primary = _pip_default_index()
    urls = [u.rstrip("/") for u in [primary, *extras] if u]
    if not urls:
        raise IndexUnreachable("no package index is configured for pip or uv; pass --index-url URL")
    seen: list[str] = []
    for url in urls:
        if url not in seen:
            seen.append(url)
    return seen


def _usable(url: str) -> bool:
    """pip skips a ``file://`` index that does not exist (with a warning); uv would fail on it."""
    if url.startswith("file://"):
        return Path(urllib.parse.urlparse(url).path).exists()
    return True


def uv_environment(explicit: str | None = None) -> dict[str, str]:
    """Variables that make uv ask the same indexes pip would (uv does not read pip's config).

    Nothing is added when the user already configured uv itself; otherwise pip's primary index
    becomes ``UV_DEFAULT_INDEX`` and its extra indexes ``UV_INDEX``, searched as pip does (best
    match across indexes). uv never downloads a Python.
    """
    env = {"UV_PYTHON_DOWNLOADS": "never"}
    if not explicit and any(os.environ.get(k) for k in ("UV_DEFAULT_INDEX", "UV_INDEX_URL", "UV_INDEX")):
        return env
    urls = [u for u in discover_index_urls(explicit) if _usable(u)]
    if urls:
        env["UV_DEFAULT_INDEX"] = urls[0]
    if len(urls) > 1:
        env["UV_INDEX"] = " ".join(urls[1:])
        # pip picks the best version across all its indexes; uv must be told to do the same.
        env.setdefault("UV_INDEX_STRATEGY", os.environ.get("UV_INDEX_STRATEGY", "unsafe-best-match"))
    return env


# --------------------------------------------------------------------------- index pages



@dataclass(frozen=True)
class IndexFile:
    filename: str
    url: str
    sha256: str | None
    upload_time: str | None = None
    yanked: str | None = None  # None: not yanked; otherwise the reason ("" if none given)

    @property
    def is_sdist(self) -> bool:
        return self.filename.endswith((".tar.gz", ".zip"))

    @property
    def version(self) -> Version | None:
        stem = self.filename
        if self.is_sdist:
            stem = re.sub(r"\.(tar\.gz|zip)$", "", stem)
            parts = stem.rsplit("-", 1)
        else:
            parts = stem.split("-")
        if len(parts) < 2:
            return None
        try:
            return Version(parts[1])
        except InvalidVersion:
            return None


def _anchor_parser():
    """A parser that collects a simple index page's anchors (and PEP 592 yanked marks)."""
    import html.parser

    class AnchorParser(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.anchors: list[tuple[str, str]] = []
            self.yanked: dict[int, str] = {}  # anchor number -> PEP 592 data-yanked reason
            self._href: str | None = None
            self._text: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "a":
                found = dict(attrs)
                self._href = found.get("href") or ""
                self._text = []
                if "data-yanked" in found:
                    self.yanked[len(self.anchors)] = found["data-yanked"] or ""

        def handle_data(self, data: str) -> None:
            if self._href is not None:
                self._text.append(data)

        def handle_endtag(self, tag: str) -> None:
            if tag == "a" and self._href is not None:
                self.anchors.append((self._href, "".join(self._text).strip()))
                self._href = None

    return AnchorParser()


def _urllib_request():
    import urllib.request

    return urllib.request


DEADLINE_VARIABLE = "KETTA_DOWNLOAD_DEADLINE"
DOWNLOAD_DEADLINE = 300.0  # seconds for a whole sdist, unless $KETTA_DOWNLOAD_DEADLINE says otherwise
PAGE_DEADLINE = 60.0  # for a page or a piece of a wheel (never more than the download deadline)


#: The most an index page (one project's files) or a release's sdist may be. PyPI's page of a project with many releases
#: is about 300 KB and its sdists about 8 MB.
MAX_PAGE_BYTES = 64 << 20
MAX_DOWNLOAD_BYTES = 512 << 20


def download_deadline() -> float:
    """Seconds one download may take from its first byte asked to its last read ($KETTA_DOWNLOAD_DEADLINE)."""
    raw = os.environ.get(DEADLINE_VARIABLE)
    if raw is None or raw == "":
        return DOWNLOAD_DEADLINE
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise KettaError(f"{DEADLINE_VARIABLE}={raw!r}: expected a positive number of seconds")
    return value


def page_deadline() -> float:
    return min(PAGE_DEADLINE, download_deadline())


class _Deadline:
    """A whole-request deadline. Socket timeouts bound each read, not the request: an index that trickles
    a byte every 20 s would keep a download going for ever. When this one passes, the request's sockets
    are shut down (through duplicates of them held here, so no descriptor can have been reused in between),
    which ends any read blocked on them; the reader then raises :class:`DeadlineExceeded`."""

    def __init__(self, seconds: float, what: str) -> None:
        import threading

        self.seconds = seconds
        self.what = what
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list = []
        self._done = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock):
        """Keep a duplicate of ``sock`` (a connected socket of the request) to shut it down on expiry."""
        import socket

        with self._lock:
            if not self._done:
                try:
                    self._sockets.append(socket.fromfd(sock.fileno(), sock.family, sock.type))
                except OSError:
                    pass
                if self.expired:
                    self._shut()
        return sock

    def _shut(self) -> None:
        import socket

        for dup in self._sockets:
            try:
                dup.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            self._shut()

    def finish(self) -> bool:
        """Stop watching (the request is over) and close the duplicates; whether the deadline had passed."""
        self._timer.cancel()
        with self._lock:
            self._done = True
            for dup in self._sockets:
                dup.close()
            self._sockets = []
            return self.expired

    def error(self) -> "DeadlineExceeded":
        return DeadlineExceeded(f"{self.what} took longer than {self.seconds:g} s: the index is too slow or stalled; "
                                f"try again, or allow more time with {DEADLINE_VARIABLE}=SECONDS")


def _watched_opener(deadline: _Deadline):
    """urllib's default opener, whose HTTP(S) connections hand each socket they open to ``deadline``."""
    request = _urllib_request()

    def watched(http_class):
        class Watched(http_class):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                create = self._create_connection
                self._create_connection = lambda *a, **k: deadline.watch(create(*a, **k))

        return Watched

    class HTTP(request.HTTPHandler):
        def do_open(self, http_class, req, **kwargs):
            return super().do_open(watched(http_class), req, **kwargs)

    class HTTPS(request.HTTPSHandler):
        def do_open(self, http_class, req, **kwargs):
            return super().do_open(watched(http_class), req, **kwargs)

    return request.build_opener(HTTP(), HTTPS())


class _Response:
    """A response read under a :class:`_Deadline`: the deadline's error instead of whatever a shut-down
    socket makes a read raise or return; closing it stops the deadline."""

    def __init__(self, resp, deadline: _Deadline) -> None:
        self._resp = resp
        self._deadline = deadline
        self.headers = resp.headers
        self.status = resp.status

    def geturl(self) -> str:
        return self._resp.geturl()

    def read(self, amount: int | None = None) -> bytes:
        try:
            data = self._resp.read() if amount is None else self._resp.read(amount)
        except BaseException:
            if self._deadline.expired:
                raise self._deadline.error() from None
            raise
        if self._deadline.expired:
            raise self._deadline.error()
        return data

    def close(self) -> None:
        self._deadline.finish()
        self._resp.close()

    def __enter__(self) -> "_Response":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open(url: str, headers: dict[str, str] | None = None, *, deadline: float | None = None, what: str | None = None,
          method: str = "GET"):
    """``method`` ``url``; the whole request, body included, must be over within ``deadline`` seconds
    (default: a page's)."""
    watch = _Deadline(page_deadline() if deadline is None else deadline, what or f"reading {_redact(url)}")
    req = _urllib_request().Request(url, headers=headers or {}, method=method)
    try:
        resp = _watched_opener(watch).open(req, timeout=_TIMEOUT)  # noqa: S310 - index URLs come from the user's config
    except BaseException:
        if watch.finish():
            raise watch.error() from None
        raise
    return _Response(resp, watch)


def transport_errors() -> tuple[type[BaseException], ...]:
    """What reading from an index can raise: URL and socket errors, and http.client's own (a body that ends
    before its Content-Length, a malformed status line). http.client is loaded with urllib.request, not before."""
    import http.client

    return urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return url


def list_project_files(index_url: str, project: str) -> list[IndexFile] | None:
    """The files an index lists for ``project``; None if it does not have the project.

    Every entry is judged before anything uses it: a file name must be a plain name, a sha256 64
    lowercase hex digits, a link http(s) (or, on a ``file://`` index, a local file); a page that
    breaks any of these, or is not the JSON or HTML it claims to be, is refused as a whole (one line
    naming the page), never half read.
    """
    page = f"{index_url}/{project}/"
    try:
        if page.startswith("file:"):
            local = Path(_urllib_request().url2pathname(urllib.parse.urlsplit(page).path))
            if not local.exists():
                return None
            target = local / "index.html" if local.is_dir() else local
            with open(target, "rb") as fh:
                body, ctype, base = fh.read(MAX_PAGE_BYTES + 1), "text/html", target.as_uri()
        else:
            with _open(page, {"Accept": _JSON_ACCEPT}) as resp:
                body, ctype, base = resp.read(MAX_PAGE_BYTES + 1), resp.headers.get("Content-Type", ""), resp.geturl()
        if len(body) > MAX_PAGE_BYTES:
            raise IndexUnreachable(f"the index page {_redact(page)} is larger than {MAX_PAGE_BYTES} bytes: "
                                   "not a project page")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise IndexUnreachable(f"the index at {_redact(index_url)} answered HTTP {exc.code} for {project}") from None
    except transport_errors() as exc:
        reason = getattr(exc, "reason", None) or exc.__class__.__name__ + (f": {exc}" if str(exc) else "")
        raise IndexUnreachable(f"cannot reach the package index at {_redact(index_url)} ({reason})") from None

    where = _redact(page)
    if "json" in ctype:
        entries = _json_entries(body, where)
    else:
        entries = _html_entries(body)
    return [_judged(where, base, *entry) for entry in entries]


def _json_entries(body: bytes, where: str) -> list[tuple]:
    """(file name, href, sha256, upload time, yanked) of each file of a PEP 691 JSON page."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise UpstreamError(f"not a valid PEP 691 JSON page ({exc})", path=where) from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list):
        raise UpstreamError("not a PEP 691 JSON project page: it has no list of files", path=where)
    entries = []
    for number, f in enumerate(files, 1):
        hashes = f.get("hashes", {}) if isinstance(f, dict) else None
        if (not isinstance(f, dict) or not isinstance(f.get("filename"), str) or not isinstance(f.get("url"), str)
                or not isinstance(hashes, dict) or not isinstance(f.get("upload-time"), (str, type(None)))
                or not isinstance(f.get("yanked", False), (bool, str))):
            raise UpstreamError(f"file entry {number} of the PEP 691 JSON page is malformed (it needs a filename and "
                                "url string, a hashes table, and yanked true/false or a reason)", path=where)
        yanked = f.get("yanked")
        entries.append((f["filename"], f["url"], hashes.get("sha256"), f.get("upload-time"),
                        None if not yanked else (yanked if isinstance(yanked, str) else "")))
    return entries


def _html_entries(body: bytes) -> list[tuple]:
    """(file name, href, sha256, upload time, yanked) of each anchor of a PEP 503 HTML page."""
    parser = _anchor_parser()
    parser.feed(body.decode("utf-8", "replace"))
    entries = []
    for number, (href, text) in enumerate(parser.anchors):
        url, _, frag = href.partition("#")
        sha = frag.split("=", 1)[1] if frag.startswith("sha256=") else None
        name = text or urllib.parse.unquote(PurePosixPath(urllib.parse.urlsplit(url).path).name)
        entries.append((name, url, sha, None, parser.yanked.get(number)))
    return entries


def _judged(where: str, base: str, name: str, href: str, sha: object, upload_time: str | None,
            yanked: str | None) -> IndexFile:
    """One entry of a page as an :class:`IndexFile`, or the error that refuses the page."""
    if not is_plain_file_name(name):
        raise UpstreamError(f"the page lists {name!r}, which is not a plain file name (no '/', '\\', '..' or control "
                            "characters): refusing the page", path=where)
    if sha is not None and not is_sha256(sha):
        raise UpstreamError(f"the page gives {name} the sha256 {str(sha)!r}, which is not 64 lowercase hex digits: "
                            "refusing the page", path=where)
    url = urllib.parse.urljoin(base, href)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    allowed = ("http", "https", "file") if base.startswith("file:") else ("http", "https")
    if scheme not in allowed:
        raise UpstreamError(f"the page links {name} to a {scheme or 'relative'}: URL ({_redact(url)}); a page fetched "
                            f"over http(s) may only link http(s) files: refusing the page", path=where)
    return IndexFile(name, url, sha, upload_time, yanked)


def is_plain_file_name(name: object) -> bool:
    """A file name an index may give a file: not empty, no path separator, no ``..``, printable."""
    return (isinstance(name, str) and bool(name) and name.isprintable() and "/" not in name and "\\" not in name
            and ".." not in name)
