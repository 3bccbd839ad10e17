"""A made-up Letta release on a local index, to rehearse ``upstream check`` and ``port`` before upstream
publishes one.

``python -m compat_tests.made_up_release --from 0.16.8 --to 0.16.9 --index build/made-up \\
    --replace letta/llm_api/llm_client_base.py OLD NEW [--add-file PATH SOURCE]``

takes the ``--from`` release's sdist (through the cache and the configured index, as ``apply`` does),
renames it ``--to`` (its top directory, ``pyproject.toml`` and ``PKG-INFO``), replaces the first
occurrence of OLD by NEW in each file named (an error if OLD is not there), adds files, and writes
both sdists to a PEP 503 index directory: ``DIR/files/`` and ``DIR/simple/letta/index.html`` with
their sha256. It prints the index URL
(``file://…/DIR/simple``), e.g. for ``PIP_EXTRA_INDEX_URL`` or ``--index-url``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import shutil
import sys
import tarfile
from pathlib import Path

from ketta_build.cache import Cache
from ketta_build.releases import parse_version
from ketta_build.sources import IndexSource


def make_release(base_sdist: Path, old: str, new: str, index_dir: Path, *,
                 replace: list[tuple[str, ...]] = (), add: dict[str, bytes] | None = None) -> str:
    """Write letta ``new`` (``base_sdist``, release ``old``, changed) and the base to ``index_dir``; the URL.
    Each of ``replace`` is (path, old text, new text[, anchor]): the first old text (after the anchor) is replaced."""
    files = index_dir / "files"
    files.mkdir(parents=True, exist_ok=True)
    shutil.copy2(base_sdist, files / f"letta-{old}.tar.gz")
    pending = {path: (before, after, *anchor) for path, before, after, *anchor in replace}
    done = set()
    target = files / f"letta-{new}.tar.gz"
    # gzip without a time stamp in its header: the same inputs give the same file (and sha256)
    with tarfile.open(base_sdist) as src, gzip.GzipFile(target, "wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            name = member.name.replace(f"letta-{old}", f"letta-{new}", 1)
            rel = name.split("/", 1)[1] if "/" in name else ""
            if data is not None and rel == "pyproject.toml":
                data = data.replace(f'version = "{old}"'.encode(), f'version = "{new}"'.encode(), 1)
            if data is not None and rel == "PKG-INFO":  # ketta-build checks the version an sdist says it is
                data = data.replace(f"\nVersion: {old}\n".encode(), f"\nVersion: {new}\n".encode(), 1)
            if data is not None and rel in pending:
                before, after, *anchor = pending[rel]
                start = data.find(anchor[0].encode()) if anchor else 0
                at = data.find(before.encode(), max(start, 0)) if start >= 0 else -1
                if at < 0:
                    raise SystemExit(f"made_up_release: {rel} of letta {old} has no {before!r}"
                                     + (f" after {anchor[0]!r}" if anchor else ""))
                data = data[:at] + after.encode() + data[at + len(before.encode()):]
                done.add(rel)
            member.pax_headers = {k: v for k, v in member.pax_headers.items() if k != "path"}  # long names live there
            member.name = name
            if data is not None:
                member.size = len(data)
                dst.addfile(member, io.BytesIO(data))
            else:
                dst.addfile(member)
        for rel, content in (add or {}).items():
            info = tarfile.TarInfo(f"letta-{new}/{rel}")
            info.size = len(content)
            info.mode = 0o644
            info.mtime = max((m.mtime for m in src.getmembers()), default=0)
            dst.addfile(info, io.BytesIO(content))
    missing = set(pending) - done
    if missing:
        raise SystemExit(f"made_up_release: letta {old} has no {', '.join(sorted(missing))}")
    simple = index_dir / "simple" / "letta"
    simple.mkdir(parents=True, exist_ok=True)
    links = []
    for path in sorted(files.iterdir()):
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        links.append(f'<a href="../../files/{path.name}#sha256={sha}">{path.name}</a><br>')
    (simple / "index.html").write_text("<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n")
    return (index_dir / "simple").absolute().as_uri()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compat_tests.made_up_release", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="base", required=True, metavar="VERSION", help="the release to start from")
    p.add_argument("--to", dest="new", required=True, metavar="VERSION", help="the made-up release")
    p.add_argument("--index", required=True, type=Path, metavar="DIR", help="the index directory to write")
    p.add_argument("--replace", nargs=3, action="append", default=[], metavar=("PATH", "OLD", "NEW"),
                   help="replace the first OLD in PATH by NEW (OLD and NEW take \\n for a line break)")
    p.add_argument("--add-file", nargs=2, action="append", default=[], metavar=("PATH", "SOURCE"),
                   help="add PATH to the release, with SOURCE's content")
    p.add_argument("--index-url", metavar="URL", help="where the --from release comes from (default: pip's configuration)")
    p.add_argument("--cache-dir", type=Path, metavar="DIR")
    args = p.parse_args(argv)
    cache = Cache(args.cache_dir)
    source = IndexSource(cache, args.index_url)
    release = source.resolve(parse_version(args.base))
    url = make_release(source.sdist_path(release), str(release.version), str(parse_version(args.new)), args.index,
                       replace=[(path, old.replace("\\n", "\n"), new.replace("\\n", "\n")) for path, old, new in args.replace],
                       add={path: Path(src).read_bytes() for path, src in args.add_file})
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
