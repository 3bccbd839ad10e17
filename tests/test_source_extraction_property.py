"""Property: whatever tar archive an index serves, unpacking it either is refused with one ketta
error, or gives a tree none of whose paths resolves outside it; and in both cases nothing outside
the destination is written, followed or left behind (issue 29, items 1, 2, 9).

Archives are drawn from members of every kind (files, directories, symlinks with relative,
absolute and chained targets, hard links, devices, FIFOs, .git members, duplicate names), with
names from a small alphabet so that they collide, link through each other and aim at a sentinel
file beside the destination."""

from __future__ import annotations

import io
import os
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ketta_build.errors import UpstreamError
from ketta_build.safetree import vcs_name
from ketta_build.sources import safe_extract_sdist

TOP = "letta-0.16.8"
# placeholders for paths known only once an example's directories exist
OUTSIDE, SENTINEL, DEST = "@outside", "@sentinel", "@dest"

plain = st.lists(st.sampled_from(["a", "b", "s", "letta"]), min_size=1, max_size=3).map("/".join)
odd = st.lists(st.sampled_from(["a", "s", ".git", ".hg", "CVS", "..", "."]), min_size=1, max_size=3).map("/".join)
good_name = plain.map(lambda r: f"{TOP}/{r}")
# most members are plain names under the top directory, so that archives get unpacked and their links
# tested; some are odd (metadata, '..', no or another top directory, absolute)
name = st.one_of(*[good_name] * 12, odd.map(lambda r: f"{TOP}/{r}"),
                 st.sampled_from([TOP, f"{TOP}/", "evil.txt", "/abs/evil", f"../{TOP}/x", "other-1.0/x"]))
relative = st.lists(st.sampled_from(["a", "b", "s", "letta", "..", ".", ".."]), min_size=1, max_size=5).map("/".join)
up_target = st.tuples(st.integers(1, 6), st.sampled_from(["", "outside", "outside/sentinel.txt", "a", "s", "s/.."]))
link_target = st.one_of(
    relative, relative,
    up_target.map(lambda t: "/".join([".."] * t[0] + ([t[1]] if t[1] else []))),
    st.sampled_from([OUTSIDE, SENTINEL, DEST, "/", "/etc/passwd", ".git/config"]),
)
link_target = st.one_of(*[relative] * 3, link_target)
hard_target = st.one_of(good_name, good_name, st.sampled_from([SENTINEL, "outside/sentinel.txt", f"{TOP}/../x", TOP]))
member = st.one_of(
    st.tuples(st.just("file"), name, st.binary(max_size=6)),
    st.tuples(st.just("file"), name, st.binary(max_size=6)),
    st.tuples(st.just("dir"), name, st.just(b"")),
    st.tuples(st.just("symlink"), name, link_target),
    st.tuples(st.just("symlink"), good_name, link_target),
    st.tuples(st.just("hardlink"), name, hard_target),
    st.tuples(st.sampled_from(["fifo", "chr", "blk"]), good_name, st.just(b"")),
    st.tuples(st.just("chain"), st.sampled_from(["a", "letta", "s"]), st.integers(1, 4)),
)
KINDS = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
         "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE}


def _place(text, places: dict[str, str]):
    for token, path in places.items():
        if isinstance(text, str):
            text = text.replace(token, path)
    return text


def _archive(members, places: dict[str, str]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for kind, arg, extra in members:
            if kind == "chain":  # a link that climbs through a hop listed after it (see test_source_safety)
                depth = extra
                zs = "/".join(f"z{i}" for i in range(depth))
                hop, leak = f"{TOP}/{arg}/{zs}/hop", f"{TOP}/{arg}/leak"
                for link, target in ((leak, f"{zs}/hop/" + "/".join([".."] * (depth + 2)) + "/" + places[SENTINEL].lstrip("/")),
                                     (hop, "/".join([".."] * depth))):
                    info = tarfile.TarInfo(link)
                    info.type, info.linkname = tarfile.SYMTYPE, target
                    tar.addfile(info)
                continue
            info = tarfile.TarInfo(_place(arg, places))
            if kind == "file":
                info.size = len(extra)
                tar.addfile(info, io.BytesIO(extra))
                continue
            info.type = KINDS[kind]
            if kind in ("symlink", "hardlink"):
                info.linkname = _place(extra, places)
            tar.addfile(info)
    return raw.getvalue()


def _listing(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (links not followed) with what it is and holds."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            st_ = p.lstat()
            found[str(p.relative_to(root))] = (st_.st_mode, st_.st_size, st_.st_mtime_ns,
                                                p.read_bytes() if p.is_file() and not p.is_symlink() else None)
    return found


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(member, min_size=1, max_size=8))
def test_an_archive_is_refused_or_unpacks_inside_its_destination(members):
    with tempfile.TemporaryDirectory(prefix="ketta-prop-") as tmp:
        root = Path(tmp)
        (root / "outside").mkdir()
        sentinel = root / "outside" / "sentinel.txt"
        sentinel.write_text("untouched\n")
        work = root / "work"
        work.mkdir()
        dest = work / "dest"
        places = {OUTSIDE: str(root / "outside"), SENTINEL: str(sentinel), DEST: str(dest)}
        archive = root / "letta-0.16.8.tar.gz"
        archive.write_bytes(_archive(members, places))
        before = {k: v for k, v in _listing(root).items() if not k.startswith("work")}

        try:
            safe_extract_sdist(archive, dest, archive.name, top=TOP)
            refused = None
        except UpstreamError as exc:
            refused = str(exc)
            assert "\n" not in refused and archive.name in refused

        after = {k: v for k, v in _listing(root).items() if not k.startswith("work")}
        assert after == before, "nothing outside the destination was written"
        assert sentinel.read_text() == "untouched\n"
        left = sorted(p.name for p in work.iterdir())
        if refused is not None:
            assert left == [], f"a refusal left {left} behind"
            event("refused: " + next((why for why in ("version-control", "resolves outside", "outside the tree",
                                                       "device or FIFO", "contains '..'", "absolute", "top-level",
                                                       "hard link", "cannot unpack", "loop", "special")
                                      if why in refused), refused))
            return
        event("unpacked" + (" with links" if any(k == "symlink" for k, *_ in members) else ""))
        assert left == ["dest"], left
        real_dest = os.path.realpath(dest)
        for dirpath, dirnames, filenames in os.walk(dest):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                assert not vcs_name(n), p
                resolved = os.path.realpath(p)
                assert resolved == real_dest or resolved.startswith(real_dest + os.sep), f"{p} resolves to {resolved}"
                if os.path.islink(p):
                    assert not os.path.isabs(os.readlink(p)), p
