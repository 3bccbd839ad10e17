"""One Ketta patch file: a DEP-3 style header followed by a git-style unified diff.

Format::

    Subject: Handles use the provider's own name
    Author: Jane Doe <jane@example.org>
    Upstream-Status: Inappropriate [Ketta design choice]
    Base-Release: 0.16.8
    Description: OpenAI-compatible providers with a custom base URL exposed
     their models as openai-proxy/<model>; use the provider name instead.
     .
     A line holding only " ." is a paragraph break, as in DEP-3.

    diff --git a/pkg/x.py b/pkg/x.py
    ...

Header fields end at the first blank line; after it comes the diff, nothing
else.  ``unidiff`` parses the hunks; this module checks what unidiff lets pass
(hunk line counts, missing prefixes, binary diffs, unsafe paths, converted
line endings) so that every error names the patch file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import unidiff
from packaging.version import InvalidVersion, Version

from .errors import SeriesError

REQUIRED_FIELDS = ("Subject", "Author", "Description", "Upstream-Status", "Base-Release")
UPSTREAM_STATUSES = ("Inappropriate", "Pending", "Submitted", "Accepted", "Backport", "Denied")
_AUTHOR_RE = re.compile(r"^(?P<name>[^<>]+?)\s*<(?P<email>[^<>@\s]+@[^<>\s]+)>$")
_HUNK_RE = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$")
_DIFF_GIT_RE = re.compile(r"^diff --git a/(\S+) b/(\S+)$")
_INDEX_RE = re.compile(r"^index ([0-9a-f]{7,64})\.\.([0-9a-f]{7,64})(?: ([0-7]{6}))?$")
_MODES = ("old mode ", "new mode ", "new file mode ", "deleted file mode ")
_EXTENDED = (*_MODES, "index ")
#: The file modes a patch may name: regular files. A symlink (120000) a patch made would be a path
#: later writes could follow out of the tree, and a wheel does not keep links; a gitlink (160000)
#: is a submodule. Python releases' sdists hold neither.
REGULAR_MODES = ("100644", "100755")
#: The largest line number or line count a hunk header may claim: no source file is that long, and
#: the claim bounds nothing else (the hunk search is bounded by the file it searches).
MAX_LINE = 10_000_000
_UNSUPPORTED_EXTENDED = ("similarity index", "dissimilarity index", "rename from", "rename to", "copy from", "copy to")


_NAMED_VERSION = re.compile(r"^(?:[A-Za-z][A-Za-z0-9_.-]*\s+|[A-Za-z][A-Za-z_.-]*?(?=[=\d]))?=*v?(?=\d)")


def version_text(text: str) -> str:
    """A version as a header may give it: ``0.16.8``, ``v0.16.8``, ``idna 3.10``, ``mypkg0.16.8``, ``mypkg==0.16.8``
    all give the bare version (a project name or ``v`` before it is dropped)."""
    text = text.strip()
    match = _NAMED_VERSION.match(text)
    return text[match.end():] if match else text


@dataclass(frozen=True)
class PatchHeader:
    subject: str
    author_name: str
    author_email: str
    description: str
    upstream_status: str
    base_release: Version
    date: str | None = None
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Hunk:
    """One hunk; lines keep their end-of-line characters (none on a last line without newline)."""

    index: int
    old_start: int
    old_lines: tuple[str, ...]
    new_lines: tuple[str, ...]
    # 1-based line of the '@@' header in the patch file.
    patch_line: int
    # For fuzz: how many leading / trailing lines are pure context.
    leading_context: int
    trailing_context: int
    # The hunk as it stands in the patch, for .rej files.
    text: str = ""


@dataclass(frozen=True)
class FilePatch:
    old_path: str | None  # None for a new file
    new_path: str | None  # None for a deleted file
    hunks: tuple[Hunk, ...]
    patch_line: int  # line of 'diff --git'
    old_blob: str | None = None  # abbreviated blob hashes from the 'index' line
    new_blob: str | None = None
    new_mode: str | None = None  # e.g. 100755 for new files / mode changes
    old_mode: str | None = None  # the file's mode before: "old mode", "deleted file mode", or the index line's

    @property
    def path(self) -> str:
        return self.new_path or self.old_path or ""

    @property
    def is_new(self) -> bool:
        return self.old_path is None

    @property
    def is_deleted(self) -> bool:
        return self.new_path is None


@dataclass(frozen=True)
class Patch:
    name: str
    path: Path
    header: PatchHeader
    files: tuple[FilePatch, ...] = field(default_factory=tuple)

    @property
    def touched_paths(self) -> list[str]:
        return [f.path for f in self.files]


def diff_part(raw: bytes) -> bytes:
    """The diff of a patch file's bytes (everything from its first ``diff --git`` line)."""
    cut = raw.find(b"\ndiff --git ")
    return raw[cut + 1:] if cut >= 0 else raw


def split_lines(text: str) -> list[str]:
    """Split on '\\n' only, keeping it: diff lines end at LF, not at form feeds or U+2028."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def check_tree_path(raw: str, *, source: Path, line: int) -> str:
    """Return a normalised relative POSIX path or raise if it would leave the tree."""
    if raw.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", raw) or raw.startswith("\\"):
        raise SeriesError(f"path '{raw}' is absolute; patches may only touch files inside the tree", path=source, line=line)
    parts = PurePosixPath(raw).parts
    if any(p == ".." for p in parts) or "\\" in raw:
        raise SeriesError(f"path '{raw}' escapes the tree", path=source, line=line)
    if not parts or raw.startswith(".git/") or parts[0] == ".git":
        raise SeriesError(f"path '{raw}' is not a file of the upstream tree", path=source, line=line)
    return str(PurePosixPath(*parts))


def _parse_header(lines: list[str], source: Path) -> tuple[PatchHeader, int]:
    """Parse header fields; return the header and the index of the first diff line."""
    fields: dict[str, str] = {}
    field_lines: dict[str, int] = {}
    order: list[str] = []
    current: str | None = None
    i = 0
    while i < len(lines):
        text = lines[i].rstrip("\n")
        lineno = i + 1
        if text.endswith("\r"):
            raise SeriesError("CRLF line ending in the patch header: the file was converted (run dos2unix on it)", path=source, line=lineno)
        if text == "":
            i += 1
            break
        if text.startswith("diff --git "):
            raise SeriesError("the header must be followed by a blank line before the diff", path=source, line=lineno)
        if text[0] in " \t":
            if current is None:
                raise SeriesError("continuation line before any header field", path=source, line=lineno)
            cont = text.strip()
            fields[current] += "\n" + ("" if cont == "." else cont)
        else:
            m = re.match(r"^([A-Za-z][A-Za-z0-9-]*):\s*(.*)$", text)
            if not m:
                raise SeriesError(f"expected a header field 'Name: value', got {text[:40]!r}", path=source, line=lineno)
            name = m.group(1)
            canon = "-".join(part.capitalize() for part in name.split("-"))
            if canon in fields:
                raise SeriesError(f"header field '{name}' given twice", path=source, line=lineno)
            fields[canon] = m.group(2).strip()
            field_lines[canon] = lineno
            order.append(canon)
            current = canon
        i += 1
    else:
        raise SeriesError("no diff after the header (the header ends at the first blank line)", path=source, line=len(lines))

    for name in REQUIRED_FIELDS:
        if not fields.get(name, "").strip():
            raise SeriesError(f"header field '{name}' is missing or empty (required: {', '.join(REQUIRED_FIELDS)})", path=source, line=1)
    author = _AUTHOR_RE.match(fields["Author"])
    if not author:
        raise SeriesError(f"Author must be 'Name <email>', got {fields['Author']!r}", path=source, line=field_lines["Author"])
    status = fields["Upstream-Status"].split()[0]
    if status not in UPSTREAM_STATUSES:
        raise SeriesError(
            f"Upstream-Status must start with one of {', '.join(UPSTREAM_STATUSES)}, got {status!r}",
            path=source,
            line=field_lines["Upstream-Status"],
        )
    base_text = version_text(fields["Base-Release"])
    try:
        base = Version(base_text)
    except InvalidVersion:
        raise SeriesError(
            f"Base-Release must be a release of the upstream such as 0.16.8, got {fields['Base-Release']!r}",
            path=source,
            line=field_lines["Base-Release"],
        ) from None
    known = set(REQUIRED_FIELDS) | {"Date"}
    header = PatchHeader(
        subject=fields["Subject"].splitlines()[0],
        author_name=author.group("name"),
        author_email=author.group("email"),
        description=fields["Description"].strip(),
        upstream_status=fields["Upstream-Status"],
        base_release=base,
        date=fields.get("Date"),
        extra=tuple((k, fields[k]) for k in order if k not in known),
    )
    return header, i


def _validate_diff(lines: list[str], start: int, source: Path) -> list[tuple[int, int]]:
    """Check the diff's structure line by line; return (patch_line, hunk_count) per file section."""
    if start >= len(lines) or not lines[start].startswith("diff --git "):
        got = lines[start].rstrip("\n")[:40] if start < len(lines) else "end of file"
        raise SeriesError(f"expected 'diff --git a/... b/...' after the header, got {got!r}", path=source, line=start + 1)
    sections: list[tuple[int, int]] = []
    i = start
    n = len(lines)
    while i < n:
        lineno = i + 1
        text = lines[i].rstrip("\n")
        if text.endswith("\r"):
            raise SeriesError("CRLF line ending on a diff line: the patch file was converted (run dos2unix on it)", path=source, line=lineno)
        m = _DIFF_GIT_RE.match(text)
        if not m:
            raise SeriesError(f"expected 'diff --git a/... b/...', got {text[:50]!r}", path=source, line=lineno)
        a_path = check_tree_path(m.group(1), source=source, line=lineno)
        b_path = check_tree_path(m.group(2), source=source, line=lineno)
        if a_path != b_path:
            raise SeriesError(f"renames are not supported ('{a_path}' -> '{b_path}'); split into delete + add", path=source, line=lineno)
        section_line = lineno
        i += 1
        # Extended header lines.
        while i < n and not lines[i].startswith(("--- ", "diff --git ")):
            ext = lines[i].rstrip("\n")
            if ext.startswith(("Binary files ", "GIT binary patch")):
                raise SeriesError(f"binary diff for '{a_path}' is not supported; ship binary files another way", path=source, line=i + 1)
            if ext.startswith(_UNSUPPORTED_EXTENDED):
                raise SeriesError(f"'{ext.split(' ')[0]} {ext.split(' ')[1]}' (rename/copy) is not supported", path=source, line=i + 1)
            if not ext.startswith(_EXTENDED):
                raise SeriesError(f"unexpected line in the header of the diff for '{a_path}': {ext[:50]!r}", path=source, line=i + 1)
            if ext.startswith("index ") and not _INDEX_RE.match(ext):
                raise SeriesError(f"malformed index line {ext!r}", path=source, line=i + 1)
            if ext.startswith(_MODES):
                mode = ext.rsplit(" ", 1)[1]
            else:
                index = _INDEX_RE.match(ext)
                mode = index.group(3) if index else None
            if mode is not None and mode not in REGULAR_MODES:
                raise SeriesError(f"mode {mode} of '{a_path}' is {_mode_name(mode)}: patches make and change regular "
                                  f"files only ({' or '.join(REGULAR_MODES)})", path=source, line=i + 1)
            i += 1
        hunks = 0
        if i < n and lines[i].startswith("--- "):
            old = lines[i].rstrip("\n")[4:]
            if i + 1 >= n or not lines[i + 1].startswith("+++ "):
                raise SeriesError("'--- ' line not followed by '+++ '", path=source, line=i + 1)
            new = lines[i + 1].rstrip("\n")[4:]
            for label, value, want, ln in (("---", old, "a/", i + 1), ("+++", new, "b/", i + 2)):
                if value != "/dev/null" and check_tree_path(value.removeprefix(want), source=source, line=ln) != a_path:
                    raise SeriesError(f"'{label} {value}' does not match the 'diff --git' path '{a_path}'", path=source, line=ln)
            i += 2
            if i >= n or not lines[i].startswith("@@"):
                raise SeriesError(f"no hunk for '{a_path}'", path=source, line=i + 1)
            while i < n and lines[i].startswith("@@"):
                hm = _HUNK_RE.match(lines[i].rstrip("\n"))
                if not hm:
                    raise SeriesError(f"malformed hunk header {lines[i].rstrip()[:50]!r}", path=source, line=i + 1)
                for number in hm.group(1, 2, 3, 4):
                    if number is not None and (len(number) > len(str(MAX_LINE)) or int(number) > MAX_LINE):
                        shown = number if len(number) <= 20 else f"{number[:20]}... ({len(number)} digits)"
                        raise SeriesError(f"hunk header claims line {shown}, more than {MAX_LINE} (no source file is "
                                          "that long): the header is damaged", path=source, line=i + 1)
                old_left = int(hm.group(2)) if hm.group(2) is not None else 1
                new_left = int(hm.group(4)) if hm.group(4) is not None else 1
                header_line = i + 1
                i += 1
                while old_left > 0 or new_left > 0:
                    if i >= n:
                        raise SeriesError(
                            f"hunk is shorter than its header says ({old_left} old / {new_left} new lines missing)",
                            path=source,
                            line=header_line,
                        )
                    body = lines[i]
                    tag = body[:1]
                    if tag == " ":
                        old_left -= 1
                        new_left -= 1
                    elif tag == "-":
                        old_left -= 1
                    elif tag == "+":
                        new_left -= 1
                    elif tag == "\\":
                        pass
                    elif body in ("\n", "\r\n"):
                        raise SeriesError(
                            "empty line inside a hunk: a context line lost its leading space (an editor stripped trailing whitespace?)",
                            path=source,
                            line=i + 1,
                        )
                    elif body.startswith(("@@", "diff --git ")):
                        raise SeriesError(
                            f"hunk is shorter than its header says ({old_left} old / {new_left} new lines missing)",
                            path=source,
                            line=header_line,
                        )
                    else:
                        raise SeriesError(
                            f"a line inside a hunk must start with ' ', '+' or '-', got {body.rstrip()[:40]!r}: a context "
                            "line lost its leading space (an editor?), or the hunk is shorter than its header says",
                            path=source,
                            line=i + 1,
                        )
                    if old_left < 0 or new_left < 0:
                        raise SeriesError("hunk is longer than its header says", path=source, line=i + 1)
                    i += 1
                if i < n and lines[i].startswith("\\"):
                    i += 1
                hunks += 1
                if i < n and not lines[i].startswith(("@@", "diff --git ")) and not _only_blank(lines, i):
                    if lines[i][:1] in (" ", "-", "+"):
                        raise SeriesError("hunk is longer than its header says", path=source, line=i + 1)
                    raise SeriesError(f"unexpected line after a hunk: {lines[i].rstrip()[:50]!r}", path=source, line=i + 1)
        sections.append((section_line, hunks))
        if _only_blank(lines, i):
            break
    return sections


def _mode_name(mode: str) -> str:
    return {"120000": "a symlink", "160000": "a submodule (gitlink)", "040000": "a directory"}.get(
        mode, "not a regular file's mode")


def _only_blank(lines: list[str], start: int) -> bool:
    return all(not ln.strip() for ln in lines[start:])


def _hunk_from_unidiff(index: int, hunk: unidiff.Hunk, patch_line: int) -> Hunk:
    old: list[str] = []
    new: list[str] = []
    kinds: list[str] = []
    for ln in hunk:
        tag = ln.line_type
        if tag == unidiff.constants.LINE_TYPE_NO_NEWLINE:
            # The previous line has no end-of-line in the file it came from.
            prev = kinds[-1] if kinds else None
            if prev in (" ", "-") and old:
                old[-1] = old[-1].removesuffix("\n")
            if prev in (" ", "+") and new:
                new[-1] = new[-1].removesuffix("\n")
            continue
        kinds.append(tag)
        if tag in (" ", "-"):
            old.append(ln.value)
        if tag in (" ", "+"):
            new.append(ln.value)
    leading = next((k for k, tag in enumerate(kinds) if tag != " "), len(kinds))
    trailing = next((k for k, tag in enumerate(reversed(kinds)) if tag != " "), len(kinds))
    return Hunk(
        index=index,
        old_start=hunk.source_start,
        old_lines=tuple(old),
        new_lines=tuple(new),
        patch_line=patch_line,
        leading_context=leading,
        trailing_context=trailing,
        text=str(hunk),
    )


def parse_patch(path: Path, name: str | None = None) -> Patch:
    """Read and validate one patch file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SeriesError("patch file does not exist", path=path) from None
    return parse_patch_text(raw, path, name)


def parse_patch_text(raw: bytes, path: Path, name: str | None = None) -> Patch:
    """Validate the bytes of a patch file (``path`` names it in errors)."""
    if b"\0" in raw:
        raise SeriesError("patch file contains NUL bytes (binary content is not supported)", path=path)
    if raw.startswith(b"\xef\xbb\xbf"):
        raise SeriesError("the file starts with a UTF-8 byte-order mark (an editor added it); save it without one",
                          path=path, line=1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SeriesError("patch file is not valid UTF-8", path=path, line=line) from None
    lines = split_lines(text)
    if not lines:
        raise SeriesError("patch file is empty", path=path, line=1)
    header, diff_start = _parse_header(lines, path)
    sections = _validate_diff(lines, diff_start, path)

    try:
        patch_set = unidiff.PatchSet(lines[diff_start:])
    except unidiff.UnidiffParseError as exc:  # our validator should have caught it first
        raise SeriesError(f"unparseable diff: {exc}", path=path, line=diff_start + 1) from None
    if len(patch_set) != len(sections):
        raise SeriesError(f"found {len(patch_set)} file sections, expected {len(sections)}", path=path, line=diff_start + 1)

    files: list[FilePatch] = []
    seen: dict[str, int] = {}
    for pf, (section_line, hunk_count) in zip(patch_set, sections):
        rel = check_tree_path(pf.path, source=path, line=section_line)
        if rel in seen:
            raise SeriesError(f"'{rel}' appears twice in one patch (first at line {seen[rel]})", path=path, line=section_line)
        seen[rel] = section_line
        info = [str(x).rstrip("\n") for x in (pf.patch_info or [])]
        old_blob = new_blob = new_mode = old_mode = None
        for ext in info:
            im = _INDEX_RE.match(ext)
            if im:
                old_blob, new_blob = im.group(1), im.group(2)
                old_mode = old_mode or im.group(3)  # unchanged mode: on the index line
            elif ext.startswith(("new file mode ", "new mode ")):
                new_mode = ext.rsplit(" ", 1)[1]
            elif ext.startswith(("old mode ", "deleted file mode ")):
                old_mode = ext.rsplit(" ", 1)[1]
        hunks = []
        hunk_lines = [section_line + _offset for _offset in _hunk_offsets(lines, section_line - 1, hunk_count)]
        for k, h in enumerate(pf):
            hunks.append(_hunk_from_unidiff(k + 1, h, hunk_lines[k]))
        files.append(
            FilePatch(
                old_path=None if pf.is_added_file else rel,
                new_path=None if pf.is_removed_file else rel,
                hunks=tuple(hunks),
                patch_line=section_line,
                old_blob=old_blob,
                new_blob=new_blob,
                new_mode=new_mode,
                old_mode=old_mode,
            )
        )
    return Patch(name=name or path.name, path=path, header=header, files=tuple(files))


def _hunk_offsets(lines: list[str], section_index: int, count: int) -> list[int]:
    """Offsets (from the section's 'diff --git' line) of its first ``count`` '@@' lines."""
    offsets = []
    i = section_index + 1
    while len(offsets) < count and i < len(lines):
        if lines[i].startswith("diff --git "):
            break
        if lines[i].startswith("@@ "):
            offsets.append(i - section_index)
        i += 1
    return offsets
