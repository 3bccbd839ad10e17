"""A patch header in its two homes: the top of a patch file, and a build tree's commit message.

A patch file's header is written in one canonical order::

    Subject: ...
    Author: Name <email>
    Upstream-Status: ...
    Base-Release: 0.16.8
    Date: ...                (if the patch has one)
    Other-Field: ...         (any other fields, in their own order)
    Description: first line
     further lines, one space in; " ." for an empty line

In the build tree the same header is a commit: the subject line, the description as the body,
and the other fields as trailers after ``Ketta-Patch: <file name>``; the author is the commit's.
:func:`commit_message` and :func:`parse_commit` convert between the two without losing a field,
so ``apply`` followed by ``export`` gives the patch file back byte for byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import date

from packaging.version import InvalidVersion, Version

from .errors import KettaError
from .patchfile import UPSTREAM_STATUSES, PatchHeader, version_text

PATCH_TRAILER = "Ketta-Patch"
_TRAILER_RE = re.compile(r"^([A-Z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*):[ \t]?(.*)$")
# Fields a maintainer may add as trailers to a new commit (DEP-3 and ours); anything else in the
# last paragraph of a new commit's message is description.
_KNOWN_TRAILERS = {"Upstream-Status", "Base-Release", "Date", "Releases", "Upstream-Break", "Forwarded", "Origin", "Bug",
                   "Applied-Upstream", "Reviewed-By", "Last-Update", "Owner", "Review-By"}


def _folded(value: str) -> list[str]:
    """A multi-line value as continuation lines: one space in, ``.`` for an empty line."""
    return [" ." if not line.strip() else " " + line.strip() for line in value.split("\n")]


def _optional_fields(h: PatchHeader) -> list[str]:
    """Date and the other fields (Forwarded, Owner, ...), in order, continuation lines folded."""
    lines = [f"Date: {h.date}"] if h.date else []
    for name, value in h.extra:
        first, *rest = value.split("\n")
        lines.append(f"{name}: {first}")
        lines.extend(_folded("\n".join(rest)) if rest else [])
    return lines


def render_header(h: PatchHeader) -> str:
    """The header of a patch file in canonical form, ending with the blank line before the diff."""
    lines = [f"Subject: {h.subject}", f"Author: {h.author_name} <{h.author_email}>",
             f"Upstream-Status: {h.upstream_status}", f"Base-Release: {h.base_release}", *_optional_fields(h)]
    first, *rest = h.description.split("\n")
    lines.append(f"Description: {first}")
    if rest:
        lines.extend(_folded("\n".join(rest)))
    return "\n".join(lines) + "\n\n"


def commit_message(name: str, h: PatchHeader) -> str:
    """The build tree's commit message for patch ``name``."""
    trailers = [f"{PATCH_TRAILER}: {name}", f"Upstream-Status: {h.upstream_status}", f"Base-Release: {h.base_release}",
                *_optional_fields(h)]
    return f"{h.subject}\n\n{h.description}\n\n" + "\n".join(trailers) + "\n"


@dataclass(frozen=True)
class CommitHeader:
    """What a commit says about its patch."""

    patch: str | None  # the Ketta-Patch trailer: None for a commit made in the tree
    subject: str
    description: str
    fields: tuple[tuple[str, str], ...]  # trailers other than Ketta-Patch, in order


def _paragraphs(body: str) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for line in body.split("\n"):
        if line.strip():
            out[-1].append(line.rstrip())
        elif out[-1]:
            out.append([])
    return [p for p in out if p]


def _parse_trailers(lines: list[str], known_only: bool) -> list[tuple[str, str]] | None:
    fields: list[tuple[str, str]] = []
    for line in lines:
        if line[:1] in " \t" and fields:
            cont = line.strip()
            name, value = fields[-1]
            fields[-1] = (name, value + "\n" + ("" if cont == "." else cont))
            continue
        m = _TRAILER_RE.match(line)
        if not m or (known_only and m.group(1) not in _KNOWN_TRAILERS and m.group(1) != PATCH_TRAILER):
            return None
        fields.append((m.group(1), m.group(2).strip()))
    return fields


def parse_commit(message: str) -> CommitHeader:
    """Split a commit message into subject, description and trailers."""
    text = message.replace("\r\n", "\n").strip("\n")
    subject, _, body = text.partition("\n")
    paragraphs = _paragraphs(body)
    fields: list[tuple[str, str]] = []
    if paragraphs:
        last = paragraphs[-1]
        ours = last[0].startswith(f"{PATCH_TRAILER}:")
        parsed = _parse_trailers(last, known_only=not ours)
        if parsed is not None:
            fields = parsed
            paragraphs = paragraphs[:-1]
    patch = next((v for k, v in fields if k == PATCH_TRAILER), None)
    description = "\n\n".join("\n".join(p) for p in paragraphs)
    return CommitHeader(patch, subject.strip(), description, tuple((k, v) for k, v in fields if k != PATCH_TRAILER))


def header_from_commit(commit: CommitHeader, author_name: str, author_email: str, *,
                       base_release: Version, where: str) -> PatchHeader:
    """The patch header a commit describes; ``base_release`` when the commit names none (or moved it)."""
    fields = dict(commit.fields)
    if not commit.subject:
        raise KettaError(f"commit {where} has no subject line")
    if not commit.description.strip():
        raise KettaError(
            f"commit {where} ({commit.subject!r}) has no description: say in the commit body why the patch exists "
            "(it becomes the Description field; git commit --amend)"
        )
    status = fields.pop("Upstream-Status", "Pending")
    if status.split()[0] not in UPSTREAM_STATUSES:
        raise KettaError(f"commit {where}: Upstream-Status must start with one of {', '.join(UPSTREAM_STATUSES)}, got {status!r}")
    fields.pop("Base-Release", None)
    date = fields.pop("Date", None)
    extra = tuple((k, v) for k, v in commit.fields if k in fields)
    try:
        Version(str(base_release))
    except InvalidVersion:  # pragma: no cover - callers pass versions
        raise KettaError(f"commit {where}: bad Base-Release {base_release!r}") from None
    return PatchHeader(
        subject=commit.subject, author_name=author_name, author_email=author_email, description=commit.description,
        upstream_status=status, base_release=base_release, date=date, extra=extra,
    )


def trailer(commit: CommitHeader, name: str) -> str | None:
    return next((v for k, v in commit.fields if k == name), None)


# --------------------------------------------------------------------------- the Releases field
# ``Releases: 0.16.4-0.16.8 (variants: ...)``: which releases a patch serves, then prose. The range
# at its start is derived from the patch's guard and releases.toml; port and export keep it so,
# lint checks it. The prose after it is the author's.

_RELEASES_RANGE = re.compile(r"^(?P<all>all \()?(?P<first>\d[\w.+!-]*?)(?:-(?P<last>\d[\w.+!-]*?))?(?(all)\))(?=$|[\s;,)])")


def releases_range(value: str) -> tuple[str, str, int] | None:
    """(first, last, length of the range text) at the start of a ``Releases`` value; None if it has none."""
    m = _RELEASES_RANGE.match(value)
    if not m:
        return None
    return m.group("first"), m.group("last") or m.group("first"), m.end()


def served_range_text(served: list[Version], every: bool) -> str:
    """``0.16.4-0.16.8``, ``0.16.2``, or ``all (0.14.0-0.16.8)`` when ``every`` supported release is served."""
    text = str(served[0]) if len(served) == 1 else f"{served[0]}-{served[-1]}"
    return f"all ({text})" if every else text


def with_served_range(value: str, served: list[Version], every: bool) -> str:
    """``value`` with its leading range replaced by the releases actually served (prose kept)."""
    found = releases_range(value)
    text = served_range_text(served, every)
    return text + value[found[2]:] if found else f"{text}; {value}"


def updated_releases(value: str, served: list[Version], versions: list[Version]) -> str | None:
    """The ``Releases`` value with its range brought in line with ``served`` (of all ``versions``);
    None when it is right already."""
    every = served == versions
    found = releases_range(value)
    if found is not None and value[:found[2]] == served_range_text(served, every):
        return None
    return with_served_range(value, served, every)


def with_field(h: PatchHeader, name: str, value: str) -> PatchHeader:
    """``h`` with extra field ``name`` set to ``value`` (in place if present, else appended)."""
    extra = list(h.extra)
    for i, (k, _) in enumerate(extra):
        if k == name:
            extra[i] = (name, value)
            break
    else:
        extra.append((name, value))
    return replace(h, extra=tuple(extra))


def field_value(h: PatchHeader, name: str) -> str | None:
    return next((v for k, v in h.extra if k == name), None)


# --------------------------------------------------------------------------- status and ownership
# DEP-3's Forwarded and Applied-Upstream, and Ketta's Owner and Review-By: extra fields, kept where
# the author put them. ``lint`` (rule ``status``) checks them, ``status`` shows them.

FORWARDED_WORDS = ("no", "not-needed")
_URL = re.compile(r"^https?://[^\s]+")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_COMMIT = re.compile(r"^[0-9a-f]{7,40}$")


def forwarded_problem(value: str | None, upstream_status: str) -> str | None:
    """What is wrong with a ``Forwarded`` value (None if nothing): ``no``, ``not-needed`` or a URL,
    and not contradicting ``Upstream-Status``."""
    if not value or not value.strip():
        return "no Forwarded field: say no, not-needed, or the URL where the patch was sent upstream"
    word = value.split()[0]
    if word not in FORWARDED_WORDS and not _URL.match(word):
        return f"Forwarded must be no, not-needed or a URL, got {value.split(chr(10))[0][:40]!r}"
    status = upstream_status.split()[0]
    if status == "Inappropriate" and word != "not-needed":
        return "an Inappropriate patch is Forwarded: not-needed (it is not meant for upstream)"
    if status in ("Submitted", "Accepted", "Denied") and word in FORWARDED_WORDS:
        return f"Upstream-Status {status} says it was sent upstream: Forwarded is the URL where"
    if status == "Pending" and word == "not-needed":
        return "a Pending patch is meant for upstream: Forwarded is no (or the URL once sent)"
    return None


def owner_problem(value: str | None) -> str | None:
    """``Owner``: a team's name, or ``Name <email>``."""
    if not value or not value.strip():
        return "no Owner field: name who answers for the patch (Name <email>, or a team)"
    if ("<" in value or ">" in value) and not re.match(r"^[^<>]+?\s*<[^<>@\s]+@[^<>\s]+>$", value.strip()):
        return f"Owner must be a team's name or 'Name <email>', got {value.strip()[:40]!r}"
    return None


def review_date(value: str) -> date | None:
    """A ``Review-By`` value as a date (ISO 8601, YYYY-MM-DD), None if it is not one."""
    text = value.strip()
    if not _ISO_DATE.match(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def applied_upstream(value: str) -> Version | str | None:
    """What an ``Applied-Upstream`` value names first: a release (a Version), a commit id (str), or
    None when it is neither."""
    word = value.split()[0] if value.split() else ""
    if _COMMIT.match(word) and not re.match(r"^\d+$", word):
        return word
    try:
        return Version(version_text(word).strip("=,;"))
    except InvalidVersion:
        return None


def with_status_defaults(h: PatchHeader) -> PatchHeader:
    """A new patch's header (export makes one from a commit) with what its trailers did not say:
    ``Forwarded`` from ``Upstream-Status`` (not-needed for Inappropriate and Backport, no for Pending;
    the other statuses mean it was sent, and only the author knows the URL) and the commit's author
    as ``Owner``."""
    if field_value(h, "Forwarded") is None:
        word = {"Inappropriate": "not-needed", "Backport": "not-needed", "Pending": "no"}.get(h.upstream_status.split()[0])
        if word:
            h = with_field(h, "Forwarded", word)
    if field_value(h, "Owner") is None:
        h = with_field(h, "Owner", f"{h.author_name} <{h.author_email}>")
    return h
