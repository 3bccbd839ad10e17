"""Unpacking what an upstream source gives, so that it can neither reach outside the tree nor bring
version-control metadata into it.

An archive (an sdist, ``git archive`` of a source or of a build tree) is taken in four steps:

1. every member is judged by its name before anything is written: not absolute, no ``..``, no device
   or FIFO, no link whose target leaves the tree as written, no version-control metadata (``.git``,
   ``.hg``, ``.svn``, ``.bzr``, ``CVS``, ``_darcs`` anywhere: a ``.git/hooks/post-commit`` in an sdist
   would run when the pristine release is committed);
2. the archive is read to its end: tar's end-of-archive marker must be there and the compressed stream
   must be whole (a truncated or corrupt archive is refused instead of being extracted in part);
3. the members are extracted with tarfile's ``data`` filter (which resolves every member's path, links
   included, against what is already on disk, so nothing is written through a link) into a fresh
   directory beside the destination;
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


def vcs_name(name: str) -> bool:
    """Is ``name`` (one path component) version-control metadata?"""
    return name.lower() in VCS_NAMES or name == "CVS"


def check_member(m: tarfile.TarInfo, label: str, error: type[KettaError] = UpstreamError) -> None:
    """Step 1: refuse a member by its name and kind alone (``label`` names the archive in the error)."""
    name = m.name
    parts = PurePosixPath(name).parts
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise error(f"member '{name}' has an absolute path", path=label)
    if ".." in parts:
        raise error(f"member '{name}' contains '..'", path=label)
    if m.isdev() or m.isfifo():
        raise error(f"member '{name}' is a device or FIFO", path=label)
    vcs = next((p for p in parts if vcs_name(p)), None)
    if vcs is not None:
        raise error(f"member '{name}' is version-control metadata ({vcs}), which no source may bring: refusing the "
                    "archive", path=label)
    if m.issym() or m.islnk():
        link = PurePosixPath(m.linkname)
        base = PurePosixPath(name).parent if m.issym() else PurePosixPath()
        if link.is_absolute() or _escapes(base / link):
            raise error(f"member '{name}' is a link to '{m.linkname}' outside the tree", path=label)
        if any(vcs_name(p) for p in link.parts):
            raise error(f"member '{name}' is a link into version-control metadata ('{m.linkname}')", path=label)


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
            tar.extractall(tmp, members=list(members), filter="data")
        except tarfile.TarError as exc:  # the data filter: a member that would land or point outside
            raise error(f"unsafe archive member: {exc}", path=label) from None
        except (EOFError, zlib.error) as exc:
            raise error(f"the archive is truncated or corrupt ({exc}); nothing was extracted", path=label) from None
        except KeyError as exc:  # a hard link to a member the archive does not hold before it
            raise error(f"unsafe archive member: a hard link whose target is not in the archive ({exc.args[0]})",
                        path=label) from None
        except OSError as exc:  # members that cannot both be there: a file, then a directory below it
            raise error(f"cannot unpack the archive: {exc.strerror or exc}: "
                        f"{os.path.relpath(exc.filename, tmp) if exc.filename else ''}", path=label) from None
        verify_tree(tmp, label, error)
        put_in_place(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def verify_tree(root: Path, label: str, error: type[KettaError] = UpstreamError) -> None:
    """Step 4: refuse a tree under ``root`` that holds version-control metadata, a special file, a hard
    link to a file outside it, or a link that leaves it (absolute, or going above ``root`` at any hop
    of its resolution, links met on the way followed) or loops. Paths in errors are relative to
    ``root``; ``label`` names the source."""
    real_root = os.path.realpath(root)
    linked: dict[tuple[int, int], list] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if vcs_name(name):
                raise error(f"'{rel}' is version-control metadata ({name}), which no source may bring", path=label)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                where = _resolve_inside(root, rel)
                if where is None or not _within(os.path.realpath(path), real_root):
                    raise error(f"'{rel}' is a link to '{target}', which resolves outside the tree", path=label)
                if where == "loop":
                    raise error(f"'{rel}' is a link to '{target}' that never resolves (a loop)", path=label)
            elif stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    linked.setdefault((st.st_dev, st.st_ino), [st.st_nlink, 0, rel])[1] += 1
            elif not stat.S_ISDIR(st.st_mode):
                raise error(f"'{rel}' is a special file (device, FIFO or socket)", path=label)
    for nlink, seen, rel in linked.values():
        if seen < nlink:
            raise error(f"'{rel}' is a hard link to a file outside the tree", path=label)


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
