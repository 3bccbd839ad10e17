"""Unpacking what an upstream source gives, so that it can neither reach outside the tree nor bring
version-control metadata into it.

An archive (an sdist, ``git archive`` of a source or of a build tree) is taken in four steps:

1. every member is judged by its name before anything is written: not absolute, no ``..``, no device
   or FIFO, no link whose target leaves the tree as written, no version-control metadata (``.git``,
   ``.hg``, ``.svn``, ``.bzr``, ``CVS``, ``_darcs`` anywhere: a ``.git/hooks/post-commit`` in an sdist
   would run when the pristine release is committed);
2. the archive is read to its end: tar's end-of-archive marker must be there and the compressed stream
   must be whole (a truncated or corrupt archive is refused instead of being extracted in part);
3. the members are unpacked by :func:`_unpack` into a fresh directory beside the destination:
   directories and regular files first, each file opened with ``O_NOFOLLOW | O_EXCL``, then hard links,
   then symlinks last, and a member that lies under another member that is a symlink is refused, so
   nothing is ever written through a link (tarfile's ``data`` filter is not relied on: before Python
   3.11.13 its ``realpath`` gave up silently at ``PATH_MAX``, and a chain of long link names let a
   member be written outside the tree, CVE-2025-4517). The declared sizes add up to at most
   :data:`MAX_UNPACKED_BYTES` and the archive has at most :data:`MAX_MEMBERS` members;
4. the finished tree is judged with its real links (:func:`verify_tree`): links are judged one by one
   in step 1, so a link listed before the link it goes through passed there; here every link is
   followed, hop by hop, and must stay inside the tree all the way. Only then is the directory renamed
   into place. A refusal removes it: nothing is left half-written.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from .errors import KettaError, UpstreamError

#: Directory (or file) names that hold a version-control system's metadata; ``.git`` and the others in
#: any case (git itself refuses ``.GIT`` in a tree), ``CVS`` as CVS writes it.
VCS_NAMES = frozenset({".git", ".hg", ".svn", ".bzr", "_darcs"})
_MAX_LINKS = 40  # as the kernel's ELOOP limit
#: What an archive may unpack to, in all (a large project's sdist unpacks to about 40 MB) and in members.
MAX_UNPACKED_BYTES = 1 << 30
MAX_MEMBERS = 200_000


def shown(name: str, limit: int = 200) -> str:
    """A member name as an error line shows it: control characters escaped, long names shortened."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)
    return text if len(text) <= limit else f"{text[:limit // 2]}…{text[-limit // 2:]}"


def vcs_name(name: str) -> bool:
    """Is ``name`` (one path component) version-control metadata?"""
    return name.lower() in VCS_NAMES or name == "CVS"


def check_member(m: tarfile.TarInfo, label: str, error: type[KettaError] = UpstreamError) -> None:
    """Step 1: refuse a member by its name and kind alone (``label`` names the archive in the error)."""
    name = m.name
    parts = PurePosixPath(name).parts
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise error(f"member '{shown(name)}' has an absolute path", path=label)
    if ".." in parts:
        raise error(f"member '{shown(name)}' contains '..'", path=label)
    if m.isdev() or m.isfifo():
        raise error(f"member '{shown(name)}' is a device or FIFO", path=label)
    vcs = next((p for p in parts if vcs_name(p)), None)
    if vcs is not None:
        raise error(f"member '{shown(name)}' is version-control metadata ({vcs}), which no source may bring: refusing the "
                    "archive", path=label)
    if m.issym() or m.islnk():
        link = PurePosixPath(m.linkname)
        base = PurePosixPath(name).parent if m.issym() else PurePosixPath()
        if link.is_absolute() or _escapes(base / link):
            raise error(f"member '{shown(name)}' is a link to '{shown(m.linkname)}' outside the tree", path=label)
        if any(vcs_name(p) for p in link.parts):
            raise error(f"member '{shown(name)}' is a link into version-control metadata ('{shown(m.linkname)}')", path=label)


def _escapes(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        if part == "..":
            depth -= 1
            if depth < 1:  # must stay inside the top-level directory
                return True
        elif part != ".":
            depth += 1
    return False


def read_to_end(tar: tarfile.TarFile, label: str, error: type[KettaError] = UpstreamError) -> list[tarfile.TarInfo]:
    """Step 2: the members of ``tar``, once the whole archive was read: refuses one that ends early
    (tarfile takes a header cut short after the first for the end of the archive) or is corrupt."""
    try:
        members = tar.getmembers()
        if members:
            tar.fileobj.seek(tar.offset)
            marker = tar.fileobj.read(tarfile.BLOCKSIZE)
            if marker != tarfile.NUL * tarfile.BLOCKSIZE:
                raise error(f"the archive is truncated or corrupt: it ends after {len(members)} members without tar's "
                            "end-of-archive marker; nothing was extracted", path=label)
            while tar.fileobj.read(1 << 20):  # the compressed stream's end: its length and checksum are checked
                pass
    except (EOFError, tarfile.ReadError, zlib.error, OSError) as exc:
        raise error(f"the archive is truncated or corrupt ({exc or exc.__class__.__name__}); nothing was extracted",
                    path=label) from None
    return members


def fresh_dir_beside(dest: Path) -> Path:
    """A new, empty directory next to ``dest`` (same file system, so a rename puts it in place), made with
    the user's umask as ``dest`` itself would be."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = dest.parent / f".{dest.name}.ketta-unpack-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def put_in_place(tmp: Path, dest: Path) -> None:
    """Rename the finished ``tmp`` to ``dest``, which must be missing or an empty directory."""
    if dest.is_dir() and not dest.is_symlink():
        dest.rmdir()  # fails, as it should, when dest is not empty
    os.rename(tmp, dest)


def extract_members(tar: tarfile.TarFile, members: Iterable[tarfile.TarInfo], dest: Path, label: str,
                    error: type[KettaError] = UpstreamError) -> None:
    """Steps 3 and 4: ``members`` (already judged and read, see above) into ``dest`` (missing or empty)."""
    tmp = fresh_dir_beside(dest)
    try:
        try:
            _unpack(tar, list(members), tmp, label, error)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise error(f"the archive is truncated or corrupt ({exc}); nothing was extracted", path=label) from None
        except OSError as exc:  # members that cannot both be there, a name too long for the file system
            where = shown(os.path.relpath(exc.filename, tmp)) if exc.filename else ""
            raise error(f"cannot unpack the archive: {exc.strerror or exc}: {where}", path=label) from None
        verify_tree(tmp, label, error)
        put_in_place(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _unpack(tar: tarfile.TarFile, members: list[tarfile.TarInfo], root: Path, label: str,
            error: type[KettaError]) -> None:
    """Step 3: ``members`` (judged by :func:`check_member`) under ``root``, never through a link."""
    if len(members) > MAX_MEMBERS:
        raise error(f"the archive has {len(members)} members, more than the {MAX_MEMBERS} any release may have",
                    path=label)
    declared = sum(m.size for m in members if m.isreg())
    if declared > MAX_UNPACKED_BYTES:
        raise error(f"the archive unpacks to {declared} bytes, more than the {MAX_UNPACKED_BYTES} any release may",
                    path=label)
    names = [PurePosixPath(m.name).as_posix() for m in members]
    links = {name for name, m in zip(names, members) if m.issym()}
    taken: set[str] = set()
    for name, m in zip(names, members):
        parts = PurePosixPath(name).parts
        under = next(("/".join(parts[:i]) for i in range(1, len(parts)) if "/".join(parts[:i]) in links), None)
        if under is not None:
            raise error(f"member '{shown(m.name)}' lies under '{shown(under)}', a link in the same archive: refusing "
                        "what would be written through it", path=label)
        if name in taken and not (m.isdir() and name not in links):
            raise error(f"member '{shown(m.name)}' is in the archive twice", path=label)
        taken.add(name)
    ordered = ([m for m in members if m.isdir()] + [m for m in members if m.isreg()]
               + [m for m in members if m.islnk()] + [m for m in members if m.issym()])
    for m in ordered:
        path = os.path.join(root, *PurePosixPath(m.name).parts)
        if m.isdir():
            os.makedirs(path, mode=0o755, exist_ok=True)
        elif m.isreg():
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            mode = 0o755 if m.mode & 0o100 else 0o644
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            with os.fdopen(fd, "wb") as out:
                source = tar.extractfile(m)
                written = 0
                while chunk := source.read(1 << 20):
                    written += len(chunk)
                    if written > m.size:
                        raise error(f"member '{shown(m.name)}' is longer than its header says", path=label)
                    out.write(chunk)
            if written != m.size:
                raise error(f"member '{shown(m.name)}' is shorter than its header says", path=label)
            os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)
        elif m.islnk():
            target = PurePosixPath(m.linkname).as_posix()
            if target not in taken or target in links:
                raise error(f"member '{shown(m.name)}' is a hard link to '{shown(m.linkname)}', which is no file of "
                            "the archive", path=label)
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            os.link(os.path.join(root, *PurePosixPath(target).parts), path, follow_symlinks=False)
        elif m.issym():
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            os.symlink(m.linkname, path)
        else:
            raise error(f"member '{shown(m.name)}' is of a kind no release holds", path=label)


def _walk_error(error: type[KettaError], label: str):
    def fail(exc: OSError) -> None:
        raise error(f"cannot read the unpacked tree: {exc.strerror or exc}", path=label)
    return fail


def verify_tree(root: Path, label: str, error: type[KettaError] = UpstreamError) -> None:
    """Step 4: refuse a tree under ``root`` that holds version-control metadata, a special file, a hard
    link to a file outside it, or a link that leaves it (absolute, or going above ``root`` at any hop
    of its resolution, links met on the way followed) or loops. Paths in errors are relative to
    ``root``; ``label`` names the source."""
    real_root = os.path.realpath(root)
    linked: dict[tuple[int, int], list] = {}
    for dirpath, dirnames, filenames in os.walk(root, onerror=_walk_error(error, label)):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if vcs_name(name):
                raise error(f"'{shown(rel)}' is version-control metadata ({name}), which no source may bring", path=label)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                where = _resolve_inside(root, rel)
                if where is None or not _within(os.path.realpath(path), real_root):
                    raise error(f"'{shown(rel)}' is a link to '{shown(target)}', which resolves outside the tree", path=label)
                if where == "loop":
                    raise error(f"'{shown(rel)}' is a link to '{shown(target)}' that never resolves (a loop)", path=label)
            elif stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    linked.setdefault((st.st_dev, st.st_ino), [st.st_nlink, 0, rel])[1] += 1
            elif not stat.S_ISDIR(st.st_mode):
                raise error(f"'{shown(rel)}' is a special file (device, FIFO or socket)", path=label)
    for nlink, seen, rel in linked.values():
        if seen < nlink:
            raise error(f"'{shown(rel)}' is a hard link to a file outside the tree", path=label)


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _resolve_inside(root: Path, rel: str) -> list[str] | str | None:
    """Resolve ``rel`` under ``root`` as the kernel would, following relative links, but without ever
    going above ``root``: the components it ends at, None if it leaves (an absolute link, or ``..`` above
    ``root`` at any step), "loop" after too many links."""
    pending = [p for p in rel.split(os.sep) if p]
    at: list[str] = []  # real directories (no links) from root down
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not at:
                return None
            at.pop()
            continue
        candidate = os.path.join(root, *at, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > _MAX_LINKS:
                return "loop"
            target = os.readlink(candidate)
            if os.path.isabs(target):
                return None
            pending = [p for p in target.split("/") if p] + pending
            continue
        at.append(part)
    return at
