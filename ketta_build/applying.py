"""Applying one patch to a tree, hunk by hunk, and saying exactly what happened.

Per hunk the outcome is one of:

``clean``            the old lines matched where the patch says
``offset``           they matched ``n`` lines away (reported with the sign)
``fuzz``             they matched only after ignoring ``n`` context lines at
                     each end; only with an explicit ``fuzz`` > 0, and loud
``merged``           no context match; a 3-way merge against the file the
                     patch was made against (its ``Base-Release`` plus the
                     earlier patches) resolved it without conflicts
``already-upstream`` the new lines are already there (the hunk reverse-applies)
``failed``           none of the above; conflict markers or a ``.rej`` file
                     are left in the tree

The matching works on lists of lines that keep their end-of-line characters,
so CRLF files and a missing newline at the end of a file are compared exactly.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import GitError, UpstreamError
from .gitcmd import run
from .patchfile import FilePatch, Hunk, Patch, split_lines


class Outcome(str, enum.Enum):
    CLEAN = "clean"
    OFFSET = "offset"
    FUZZ = "fuzz"
    MERGED = "merged"
    ALREADY_UPSTREAM = "already-upstream"
    FAILED = "failed"


# How bad an outcome is, for summarising a file or patch (already-upstream handled apart).
_SEVERITY = {Outcome.CLEAN: 0, Outcome.OFFSET: 1, Outcome.FUZZ: 2, Outcome.MERGED: 3, Outcome.FAILED: 5}


@dataclass
class HunkResult:
    index: int
    outcome: Outcome
    patch_line: int
    old_start: int
    applied_at: int | None = None  # 1-based line in the file before this hunk applied
    offset: int = 0
    fuzz: int = 0
    reason: str | None = None

    @property
    def label(self) -> str:
        if self.outcome is Outcome.OFFSET:
            return f"offset({self.offset:+d})"
        if self.outcome is Outcome.FUZZ:
            return f"fuzz({self.fuzz})" + (f" offset({self.offset:+d})" if self.offset else "")
        return self.outcome.value


@dataclass
class FileResult:
    path: str
    action: str  # modify | create | delete
    hunks: list[HunkResult] = field(default_factory=list)
    outcome: Outcome = Outcome.CLEAN
    conflicts: int = 0
    reject_file: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class LandedHunk:
    path: str
    index: int
    patch_line: int


@dataclass(frozen=True)
class Landing:
    """How much of a patch is already upstream, and what to do about it: ``drop`` the patch when every
    hunk is, ``shrink`` it (remove the hunks listed) when some are, nothing when none is."""

    landed: tuple[LandedHunk, ...]
    of: int

    @property
    def proposal(self) -> str | None:
        if not self.landed:
            return None
        return "drop" if len(self.landed) == self.of else "shrink"

    def summary(self) -> str:
        """``3 of 5 hunks landed upstream``."""
        return f"{len(self.landed)} of {self.of} hunk{'s' if self.of != 1 else ''} landed upstream"

    def note(self) -> str | None:
        if self.proposal == "drop":
            return f"{self.summary()}: every hunk is already upstream: consider dropping this patch from the series"
        if self.proposal == "shrink":
            which = "; ".join(f"hunk #{h.index} of {h.path} (patch line {h.patch_line})" for h in self.landed)
            return (f"{self.summary()}: consider shrinking the patch to the other {self.of - len(self.landed)}: "
                    f"remove {which}")
        return None

    def as_json(self) -> dict:
        return {"hunks": len(self.landed), "of": self.of, "proposal": self.proposal,
                "landed": [{"path": h.path, "index": h.index, "patch_line": h.patch_line} for h in self.landed]}


@dataclass
class PatchResult:
    name: str
    subject: str
    outcome: Outcome
    files: list[FileResult]
    commit: str | None = None
    note: str | None = None
    author: str | None = None  # "Name <email>" from the patch header

    @property
    def hunks(self) -> list[HunkResult]:
        return [h for f in self.files for h in f.hunks]

    @property
    def hunk_counts(self) -> dict[str, int]:
        """The patch's hunks by outcome (``{"clean": 2, "offset": 1}``): one count every report uses."""
        counts: dict[str, int] = {}
        for h in self.hunks:
            counts[h.outcome.value] = counts.get(h.outcome.value, 0) + 1
        return counts

    @property
    def landing(self) -> Landing:
        """Which of the patch's hunks are already upstream (a file the patch creates or deletes counts
        as its hunks)."""
        landed = tuple(LandedHunk(f.path, h.index, h.patch_line) for f in self.files for h in f.hunks
                       if h.outcome is Outcome.ALREADY_UPSTREAM)
        return Landing(landed, len(self.hunks))


#: Given a patch and one of its files, return the exact bytes that file had
#: when the patch was made (or None, with the reason, when that cannot be had).
PreimageResolver = Callable[[Patch, FilePatch], "tuple[bytes | None, str | None]"]


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def decode(content: bytes) -> str:
    return content.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _search_order(expected: int, floor: int, last: int, within: int | None = None) -> Iterator[int]:
    """The positions a search for a hunk tries, nearest to ``expected`` first (on a tie the earlier
    one): from ``floor`` to ``last``, no further than ``within`` lines from ``expected``. A claimed
    position beyond either end starts the search at that end, so the work is bounded by the file,
    never by the line a hunk header claims."""
    if last < floor:
        return
    start = min(max(expected, floor), last)
    reach = max(start - floor, last - start)
    if within is not None:
        skipped = abs(start - expected)
        if within < skipped:
            return
        reach = min(reach, within - skipped)
    yield start
    for d in range(1, reach + 1):
        if start - d >= floor:
            yield start - d
        if start + d <= last:
            yield start + d


def _find(lines: Sequence[str], needle: Sequence[str], expected: int, floor: int, within: int | None = None) -> int | None:
    """Nearest position >= floor where ``needle`` occurs, searching outwards from ``expected``
    (on a tie the earlier position wins), and no further than ``within`` lines from it. The cost
    is the distance searched, at most the file's length."""
    n = len(needle)
    if n == 0:
        return min(max(expected, floor), len(lines))
    wanted = list(needle)
    first = wanted[0]
    for pos in _search_order(expected, floor, len(lines) - n, within):
        if lines[pos] == first and list(lines[pos : pos + n]) == wanted:
            return pos
    return None


def apply_hunks(lines: list[str], hunks: Sequence[Hunk], fuzz: int = 0) -> tuple[list[str], list[HunkResult]]:
    """Apply hunks in order to ``lines``; failed hunks leave the lines as they were."""
    out = list(lines)
    results: list[HunkResult] = []
    growth = 0  # lines added minus removed by the hunks applied so far, as the patch numbers them
    drift = 0  # how far the file has moved against the patch's numbering (where to look first)
    floor = 0  # hunks apply in order and never overlap
    for hunk in hunks:
        # Where the hunk belongs by the patch's own numbering (reported offsets are against this).
        planned = max((hunk.old_start if not hunk.old_lines else hunk.old_start - 1) + growth, 0)
        expected = max(planned + drift, 0)
        forward = _find(out, hunk.old_lines, expected, floor)
        # Already applied? Only a match strictly nearer than the forward one could win.
        nearer = None if forward is None else abs(forward - expected) - 1
        reverse = (_find(out, hunk.new_lines, expected, floor, within=nearer)
                   if hunk.new_lines and hunk.new_lines != hunk.old_lines and (nearer is None or nearer >= 0) else None)
        if forward is not None and (reverse is None or abs(forward - expected) <= abs(reverse - expected)):
            offset = forward - planned
            out[forward : forward + len(hunk.old_lines)] = hunk.new_lines
            kind = Outcome.CLEAN if offset == 0 else Outcome.OFFSET
            results.append(HunkResult(hunk.index, kind, hunk.patch_line, hunk.old_start, forward + 1, offset))
            growth += len(hunk.new_lines) - len(hunk.old_lines)
            drift = offset
            floor = forward + len(hunk.new_lines)
            continue
        if reverse is not None:
            offset = reverse - planned
            results.append(
                HunkResult(
                    hunk.index,
                    Outcome.ALREADY_UPSTREAM,
                    hunk.patch_line,
                    hunk.old_start,
                    reverse + 1,
                    offset,
                    reason="the new lines are already present",
                )
            )
            growth += len(hunk.new_lines) - len(hunk.old_lines)
            drift = offset
            floor = reverse + len(hunk.new_lines)
            continue
        fuzzed = _apply_fuzzed(out, hunk, expected, floor, fuzz)
        if fuzzed is not None:
            pos, used, lead, new_part = fuzzed
            old_len = len(hunk.old_lines) - lead - min(used, hunk.trailing_context)
            out[pos : pos + old_len] = new_part
            offset = pos - (planned + lead)
            results.append(
                HunkResult(
                    hunk.index,
                    Outcome.FUZZ,
                    hunk.patch_line,
                    hunk.old_start,
                    pos + 1,
                    offset,
                    used,
                    reason=f"matched only after ignoring {used} context line(s) at each end: check it by hand",
                )
            )
            growth += len(hunk.new_lines) - len(hunk.old_lines)
            drift = offset
            floor = pos + len(new_part)
            continue
        results.append(
            HunkResult(hunk.index, Outcome.FAILED, hunk.patch_line, hunk.old_start, reason=_why_no_match(out, hunk))
        )
    return out, results


def _apply_fuzzed(
    lines: list[str], hunk: Hunk, expected: int, floor: int, fuzz: int
) -> tuple[int, int, int, tuple[str, ...]] | None:
    for used in range(1, fuzz + 1):
        lead = min(used, hunk.leading_context)
        trail = min(used, hunk.trailing_context)
        if lead == 0 and trail == 0:
            continue
        old = hunk.old_lines[lead : len(hunk.old_lines) - trail]
        new = hunk.new_lines[lead : len(hunk.new_lines) - trail]
        if not old:
            continue
        pos = _find(lines, old, expected + lead, floor)
        if pos is not None:
            return pos, used, lead, new
    return None


def _why_no_match(lines: Sequence[str], hunk: Hunk) -> str:
    stripped = [ln.rstrip("\r\n") for ln in lines]
    want = [ln.rstrip("\r\n") for ln in hunk.old_lines]
    if want and _find(stripped, want, 0, 0) is not None:
        patch_crlf = any(ln.endswith("\r\n") for ln in hunk.old_lines)
        return "context matches only if line endings are ignored: " + (
            "the patch has CRLF, the file LF" if patch_crlf else "the file has CRLF, the patch LF"
        )
    return "context not found"


def _reject_text(fp: FilePatch, failed: list[HunkResult]) -> str:
    by_index = {h.index: h for h in fp.hunks}
    head = f"--- a/{fp.path}\n+++ b/{fp.path}\n"
    return head + "".join(by_index[r.index].text for r in failed)


def _merge_file(ours: bytes, base: bytes, theirs: bytes, labels: tuple[str, str, str],
                favour_theirs: bool = False) -> tuple[bytes, int]:
    """3-way merge with git; return the merged bytes and the number of conflicts (with
    ``favour_theirs`` the conflicts are counted but resolved in the patch's favour, no markers)."""
    with tempfile.TemporaryDirectory(prefix="ketta-merge-") as tmp:
        paths = []
        for name, data in (("ours", ours), ("base", base), ("theirs", theirs)):
            p = Path(tmp) / name
            p.write_bytes(data)
            paths.append(str(p))
        args = ("-L", labels[0], "-L", labels[1], "-L", labels[2], *paths)
        # In the temporary directory: no repository's configuration (merge.conflictStyle) applies.
        proc = run(Path(tmp), "merge-file", "-p", *args)
        if proc.returncode < 0 or proc.returncode > 127:
            raise GitError(f"git merge-file failed: {proc.stderr.decode(errors='replace').strip()}")
        if favour_theirs and proc.returncode:
            resolved = run(Path(tmp), "merge-file", "-p", "--theirs", *args)
            return resolved.stdout, proc.returncode
        return proc.stdout, proc.returncode


class TreeGuard:
    """Where a patched file may be written: never through a symlink that leads out of ``tree``.

    Each directory is resolved once. Patches make only regular files and real directories, so a
    directory found inside the tree stays inside for the rest of the run (a long series writes the
    same few directories again and again). The file itself (a patched file, a new file, a ``.rej``)
    is opened by :func:`write_regular`, which refuses a symlink or hard link there.
    """

    def __init__(self, tree: Path) -> None:
        self.tree = tree
        self._real_tree = os.path.realpath(tree)
        self._inside: set[str] = set()

    def target(self, rel: str) -> Path:
        target = self.tree / rel
        directory = os.path.dirname(rel)
        if directory not in self._inside:
            parent = os.path.realpath(target.parent)
            if parent != self._real_tree and not parent.startswith(self._real_tree + os.sep):
                raise ValueError(f"{rel} resolves outside the tree through a symlink")
            if parent != os.path.join(self._real_tree, directory).rstrip(os.sep):
                # Inside, but elsewhere: the file would be another path of the tree than the patch names.
                raise ValueError(f"{rel} goes through a symlink to {os.path.relpath(parent, self._real_tree)}/ "
                                 "in the tree; patches write only below real directories")
            self._inside.add(directory)
        return target


def _through_link(rel: str, label: str, what: str) -> UpstreamError:
    return UpstreamError(f"is {what} in {label}, where ketta-build writes only a regular file of the tree's own (a "
                         "patched file, a new file or a .rej), never through a link; remove it from the release's "
                         "source", path=rel)


def write_regular(target: Path, rel: str, content: bytes | None, *, label: str, new: bool = False,
                  mode: int | None = None) -> None:
    """Write ``content`` (None: leave it) to ``target`` and give it ``mode``, but only as a regular file
    of its own: its last component is never followed (``O_NOFOLLOW``), a hard link to another file
    is never written into, and ``new`` files must not exist. ``rel`` and ``label`` name it in the
    :class:`UpstreamError` (exit 3: the release brought the link) that refuses anything else."""
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if new:
        flags |= os.O_CREAT | os.O_EXCL
    elif content is not None:
        flags |= os.O_CREAT
    try:
        fd = os.open(target, flags, 0o644)
    except OSError as exc:
        if target.is_symlink():
            raise _through_link(rel, label, "a symlink") from None
        if exc.errno == errno.ENXIO:
            raise _through_link(rel, label, "a named pipe") from None
        if exc.errno == errno.EISDIR:
            raise _through_link(rel, label, "a directory") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _through_link(rel, label, "not a regular file")
        if info.st_nlink > 1:
            raise _through_link(rel, label, f"a hard link (one of {info.st_nlink} names of one file)")
        if content is not None:
            os.ftruncate(fd, 0)
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
        if mode is not None:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _mode(fp: FilePatch) -> int | None:
    return (0o755 if fp.new_mode.endswith("755") else 0o644) if fp.new_mode else None


def apply_file(
    tree: Path,
    patch: Patch,
    fp: FilePatch,
    *,
    fuzz: int = 0,
    preimage: PreimageResolver | None = None,
    upstream_label: str = "upstream",
    guard: TreeGuard | None = None,
    favour_patch: bool = False,
) -> FileResult:
    """Apply one file section of ``patch`` inside ``tree``. With ``favour_patch`` (dry runs) a 3-way
    merge's conflicts are resolved in the patch's favour instead of leaving markers."""
    try:
        target = (guard or TreeGuard(tree)).target(fp.path)
    except ValueError as exc:
        return _all_failed(fp, "modify", str(exc))
    if target.is_symlink():
        raise _through_link(fp.path, upstream_label, "a symlink")
    if fp.is_new:
        return _create_file(target, fp, upstream_label)
    if not target.is_file():
        if fp.is_deleted:
            return _whole_file(fp, "delete", Outcome.ALREADY_UPSTREAM, "the file is already gone")
        return _all_failed(fp, "modify", f"{fp.path} does not exist in {upstream_label}")

    original = target.read_bytes()
    lines = split_lines(decode(original))
    new_lines, results = apply_hunks(lines, fp.hunks, fuzz)
    action = "delete" if fp.is_deleted else "modify"
    result = FileResult(fp.path, action, results)

    failed = [r for r in results if r.outcome is Outcome.FAILED]
    content = encode("".join(new_lines))
    if failed and preimage is not None:
        base, why_not = preimage(patch, fp)
        if base is not None:
            theirs_lines, base_results = apply_hunks(split_lines(decode(base)), fp.hunks, 0)
            if all(r.outcome in (Outcome.CLEAN, Outcome.OFFSET) for r in base_results):
                labels = (upstream_label, f"release {patch.header.base_release} (patch base)", patch.name)
                merged, conflicts = _merge_file(original, base, encode("".join(theirs_lines)), labels, favour_patch)
                content = merged
                result.conflicts = conflicts
                for r in failed:
                    if conflicts == 0:
                        r.outcome, r.reason = Outcome.MERGED, f"3-way merge against release {patch.header.base_release} (the patch's base)"
                    elif favour_patch:
                        r.reason = f"3-way merge has {conflicts} conflict(s) (resolved in the patch's favour for this dry run)"
                    else:
                        r.reason = f"3-way merge left {conflicts} conflict(s): markers are in the file"
                failed = [r for r in results if r.outcome is Outcome.FAILED]
            else:
                why_not = "the patch does not apply to its own base release"
        if why_not:
            for r in failed:
                r.reason = f"{r.reason}; no 3-way merge: {why_not}"

    if failed and result.conflicts == 0:
        reject = target.with_name(target.name + ".rej")
        write_regular(reject, f"{fp.path}.rej", encode(_reject_text(fp, failed)), label=upstream_label)
        result.reject_file = f"{fp.path}.rej"

    if fp.is_deleted and not failed:
        if content:
            return _all_failed(fp, "delete", "the file has content the patch does not delete")
        target.unlink()
    elif content != original or (fp.new_mode and not fp.is_deleted):
        write_regular(target, fp.path, content if content != original else None, label=upstream_label,
                      mode=None if fp.is_deleted else _mode(fp))
    result.outcome = summarise([r.outcome for r in results])
    return result


def _create_file(target: Path, fp: FilePatch, label: str) -> FileResult:
    content = encode("".join(line for h in fp.hunks for line in h.new_lines))
    if target.exists():
        if target.is_file() and target.read_bytes() == content:
            return _whole_file(fp, "create", Outcome.ALREADY_UPSTREAM, "the file already exists with this content")
        return _all_failed(fp, "create", f"{fp.path} already exists with other content")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_regular(target, fp.path, content, label=label, new=True, mode=_mode(fp))
    return _whole_file(fp, "create", Outcome.CLEAN, None)


def _whole_file(fp: FilePatch, action: str, outcome: Outcome, reason: str | None) -> FileResult:
    hunks = [HunkResult(h.index, outcome, h.patch_line, h.old_start, reason=reason) for h in fp.hunks]
    return FileResult(fp.path, action, hunks, outcome, reason=reason)


def _all_failed(fp: FilePatch, action: str, reason: str) -> FileResult:
    return _whole_file(fp, action, Outcome.FAILED, reason)


def summarise(outcomes: Sequence[Outcome]) -> Outcome:
    """One outcome for several: already-upstream only if all are, else the worst of the rest."""
    rest = [o for o in outcomes if o is not Outcome.ALREADY_UPSTREAM]
    if not rest:
        return Outcome.ALREADY_UPSTREAM if outcomes else Outcome.CLEAN
    return max(rest, key=lambda o: _SEVERITY[o])


def apply_patch(
    tree: Path,
    patch: Patch,
    *,
    fuzz: int = 0,
    preimage: PreimageResolver | None = None,
    upstream_label: str = "upstream",
    guard: TreeGuard | None = None,
    favour_patch: bool = False,
) -> PatchResult:
    """Apply every file of ``patch`` inside ``tree`` (files not committed here); a series passes one
    ``guard`` for all its patches."""
    guard = guard or TreeGuard(tree)
    files = [
        apply_file(tree, patch, fp, fuzz=fuzz, preimage=preimage, upstream_label=upstream_label, guard=guard,
                   favour_patch=favour_patch)
        for fp in patch.files
    ]
    outcome = summarise([f.outcome for f in files])
    result = PatchResult(patch.name, patch.header.subject, outcome, files,
                         author=f"{patch.header.author_name} <{patch.header.author_email}>")
    result.note = result.landing.note()
    return result
