"""``ketta-build export``: write a build tree's commits back to the patch series.

The build tree (``ketta-build apply``) holds the pristine release, tagged ``upstream/<version>``,
and one commit per patch, each naming its patch file in a ``Ketta-Patch:`` trailer. A maintainer
edits there (``git commit --amend``, ``git rebase -i``, new commits, dropped commits) and exports:

* a commit whose change is still exactly what its patch does keeps the patch's diff byte for
  byte; only its header is taken from the commit message (so a reworded description is exported);
* a commit whose change differs gets a canonical diff of that change
  (:func:`ketta_build.gitdiff.canonical_diff`), made against this tree's release, which becomes
  its ``Base-Release``; it goes back to the file it came from, variant included;
* a commit without a trailer becomes a new patch, numbered after the last one, entered in the
  series with the guard ``[<project>>=<this release>]`` (narrowed to the releases it applies to);
* a patch the series selects for this release but no commit carries is dropped from the series
  (and its file deleted) with ``prune``; otherwise it is reported. A patch apply never got to (it
  stopped at an earlier one) is neither.

Before anything is written, what export would write is applied in memory to every supported release
it claims (:mod:`ketta_build.memapply`): a refreshed patch that no longer applies to an older release
its guard covers stops the export (``split`` keeps the file as it was as a variant for those releases
instead). Then the commits' messages are brought in step with the files (a new patch's commit gets its
``Ketta-Patch`` trailer, a refreshed one its new ``Base-Release``), so a second export writes nothing.
``check`` writes nothing and lists the files that differ from what export would write.
Each file is replaced atomically.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.version import Version

from .applying import Outcome, apply_hunks, decode, encode, git_blob_id
from .buildtree import (PORT_STATE_FILE, PristineRepos, Synced, dirty_summary, read_tree_state, record_head,
                        reword_commits, stripspace, uncommitted)
from .atomic import replacing, uninterruptible
from .memapply import check_claims, describe, group_failures, images_at
from .errors import BuildTreeError, ClaimError, KettaError, SeriesError
from .gitcmd import blob, git
from .gitdiff import canonical_diff, section_contexts, tree_of_files
from .header import (commit_message, field_value, header_from_commit, parse_commit, render_header, with_field, with_served_range,
                     with_status_defaults)
from .patchfile import Patch, PatchHeader, diff_part, parse_patch_text, split_lines
from .series import Series, SeriesEntry, edit_series_text, guard_name, parse_series, read_series, variant_name

_NUMBER = re.compile(r"^(\d+)-")


@dataclass
class ExportedPatch:
    name: str
    status: str  # unchanged | reworded (header only) | refreshed | new | newer (in patches/) | dropped | pruned |
    #              not-applied | split
    commit: str | None
    guard: str | None = None
    note: str | None = None


@dataclass
class ExportPlan:
    tree: Path
    version: Version
    series_dir: Path
    series: Series
    patches: list[ExportedPatch] = field(default_factory=list)
    files: dict[Path, bytes | None] = field(default_factory=dict)  # path -> new content (None: delete)
    headers: dict[str, tuple[str, PatchHeader]] = field(default_factory=dict)  # commit -> (patch name, header)
    series_edits: dict = field(default_factory=dict)  # edit_series_text arguments
    # patches written with the diff patches/ has while the tree still holds the one it took: (Base-Release, diff)
    tree_diff: dict[str, tuple[Version, bytes]] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)  # releases the claim check could not look at

    def differences(self) -> list[Path]:
        """The files whose content export would change."""
        out = []
        for path, content in self.files.items():
            current = path.read_bytes() if path.exists() else None
            if current != content:
                out.append(path)
        return out

    def messages(self) -> dict[str, str]:
        """The commits whose message must change to name the patch and header export writes."""
        out = {}
        for sha, (name, header) in self.headers.items():
            wanted = stripspace(commit_message(name, header))
            if stripspace(git(self.tree, "show", "-s", "--format=%B", sha) + "\n") != wanted:
                out[sha] = wanted
        return out

    def taken(self, mapping: dict[str, str]) -> dict[str, tuple[bytes, str]]:
        """Per patch the tree and ``patches/`` agree on once the plan is written, the file as the tree
        holds it and its commit (``mapping``: old commit -> reworded one): the base the next export
        decides against. A newer patch is not among them (the tree has not taken it), and a patch
        written with a diff newer in ``patches/`` is kept with the diff the tree still holds."""
        headers = {name: header for name, header in self.headers.values()}
        out = {}
        for p in self.patches:
            path = self.series_dir / p.name
            if not p.commit or p.status not in ("unchanged", "reworded", "refreshed", "new") or not path.is_file():
                continue
            content = path.read_bytes()
            if p.name in self.tree_diff:
                release, diff = self.tree_diff[p.name]
                content = render_header(replace(headers[p.name], base_release=release)).encode() + diff
            out[p.name] = (content, mapping.get(p.commit, p.commit))
        return out

    def new_series(self) -> Series:
        """The series as export would leave it (in memory)."""
        if not self.series_edits:
            return self.series
        text = edit_series_text(self.series.series_file.read_text(encoding="utf-8"), **self.series_edits)
        return parse_series(text, self.series_dir)

    def new_patch(self, name: str) -> Patch:
        path = self.series_dir / name
        content = self.files.get(path)
        if content is None:
            return self.series.load(next(e for e in self.series.entries if e.name == name))
        return parse_patch_text(content, path, name)


def check_tree(tree: Path, series: Series | None = None) -> Version:
    """The release of a build tree that is fit to export from: a supported release, on a branch,
    clean, no git operation or port in progress."""
    version = read_tree_state(tree).version
    name = series.profile.name if series is not None else "release"
    if git(tree, "rev-parse", "-q", "--verify", f"refs/tags/upstream/{version}", check=False) == "":
        raise BuildTreeError(f"the tag upstream/{version} is missing: not a ketta-build tree", path=tree)
    if (tree / ".git" / PORT_STATE_FILE).is_file():
        raise BuildTreeError(f"a port to {name} {version} is in progress here; it writes patches/ itself when it "
                             "finishes: ketta-build port --continue (or --abort)", path=tree)
    if series is not None and series.releases.find(version) is None:
        raise BuildTreeError(f"the tree is {name} {version}, which the series does not support "
                             f"({series.releases.range_text()}): bring the series there with ketta-build port --release {version}",
                             path=tree)
    for marker, what in (("rebase-merge", "a rebase"), ("rebase-apply", "a rebase or git am"),
                         ("MERGE_HEAD", "a merge"), ("CHERRY_PICK_HEAD", "a cherry-pick")):
        if (tree / ".git" / marker).exists():
            raise BuildTreeError(f"{what} is in progress; finish or abort it first", path=tree)
    dirty = uncommitted(tree)
    if dirty:
        raise BuildTreeError(f"the tree has uncommitted changes in {dirty_summary(dirty)}; commit or stash them first",
                             path=tree)
    if not git(tree, "symbolic-ref", "-q", "HEAD", check=False):
        at = git(tree, "rev-parse", "--short", "HEAD")
        raise BuildTreeError(f"HEAD is detached at {at}, so the commits after it are not seen; export reads a branch: "
                             "git switch to it (or git switch -c NAME here)", path=tree)
    return version


@dataclass
class _Commit:
    sha: str
    message: str
    author_name: str
    author_email: str


def _commits(tree: Path, version: Version) -> list[_Commit]:
    merges = git(tree, "rev-list", "--merges", f"upstream/{version}..HEAD")
    if merges:
        raise BuildTreeError(f"merge commit {merges.splitlines()[0][:10]} cannot become a patch; rebase instead", path=tree)
    out = []
    for sha in git(tree, "rev-list", "--reverse", f"upstream/{version}..HEAD").splitlines():
        raw = git(tree, "show", "-s", "--format=%an%x00%ae%x00%B", sha)
        name, email, message = raw.split("\x00", 2)
        out.append(_Commit(sha, message, name, email))
    return out


def _files_of(tree: Path, sha: str) -> dict[str, tuple[str, str]]:
    """The files commit ``sha`` changes: path -> (mode before, mode after), ``000000`` where there is none."""
    raw = git(tree, "diff-tree", "-r", "--no-renames", "--no-commit-id", "--raw", f"{sha}^", sha)
    rows = {}
    for line in raw.splitlines():
        fields, path = line.split("\t", 1)
        old_mode, new_mode = fields.lstrip(":").split()[:2]
        rows[path] = (old_mode, new_mode)
    return rows


def _same_change(tree: Path, sha: str, patch: Patch) -> bool:
    """Does commit ``sha`` do exactly what ``patch`` does to the tree's release, file modes included?
    (A symlink or an executable bit has the blob of a plain file: the content alone cannot tell.)"""
    touched = _files_of(tree, sha)
    if set(touched) != {fp.path for fp in patch.files}:
        return False
    for fp in patch.files:
        before = blob(tree, f"{sha}^", fp.path)
        after = blob(tree, sha, fp.path)
        if fp.is_deleted:
            if after is not None:
                return False
            continue
        old_mode, new_mode = touched[fp.path]
        if new_mode != (fp.new_mode or ("100644" if fp.is_new else old_mode)):
            return False
        lines, results = apply_hunks(split_lines(decode(before or b"")), fp.hunks)
        if any(r.outcome not in (Outcome.CLEAN, Outcome.OFFSET) for r in results):
            return False
        if after is None or encode("".join(lines)) != after:
            return False
    return True


def _index_lines_hold(tree: Path, sha: str, patch: Patch) -> bool:
    """Do the patch's ``index`` lines name the blobs commit ``sha`` really has before and after?
    (An earlier patch changed under it and the pre-image moved: then the file is refreshed.)"""
    for fp in patch.files:
        for rev, short in ((f"{sha}^", fp.old_blob), (sha, fp.new_blob)):
            if not short or set(short) == {"0"}:
                continue
            content = blob(tree, rev, fp.path)
            if content is None or not git_blob_id(content).startswith(short):
                return False
    return True


def _does_what(tree: Path, sha: str, patch: Patch, version: Version) -> bool:
    """Does commit ``sha`` do exactly what ``patch`` does, and (on the patch's own base release) with
    the blobs its index lines name? Then its diff is the patch's."""
    return _same_change(tree, sha, patch) and (patch.header.base_release != version or _index_lines_hold(tree, sha, patch))


# A patch's header as fields, for deciding field by field which side changed it. Base-Release is not
# among them: it goes with the diff (a refresh moves it).
_FIXED_FIELDS = ("Subject", "Author", "Upstream-Status", "Date", "Description")


def _fields(h: PatchHeader) -> dict[str, str]:
    out = {"Subject": h.subject, "Author": f"{h.author_name} <{h.author_email}>", "Upstream-Status": h.upstream_status}
    if h.date:
        out["Date"] = h.date
    count: dict[str, int] = {}
    for name, value in h.extra:  # a field given twice is told apart by its place
        count[name] = count.get(name, 0) + 1
        out[name if count[name] == 1 else f"{name}\0{count[name]}"] = value
    out["Description"] = h.description
    return out


def _header_of(fields: dict[str, str], base_release: Version) -> PatchHeader:
    name, _, email = fields["Author"].rpartition(" <")
    extra = tuple((k.split("\0")[0], v) for k, v in fields.items() if k not in _FIXED_FIELDS)
    return PatchHeader(subject=fields["Subject"], author_name=name, author_email=email.removesuffix(">"),
                       description=fields["Description"], upstream_status=fields["Upstream-Status"],
                       base_release=base_release, date=fields.get("Date"), extra=extra)


def _same_value(a: str | None, b: str | None) -> bool:
    """Equal as the patch file keeps them (each line stripped, as the header is written)."""
    fold = lambda v: None if v is None else [line.strip() for line in v.strip().split("\n")]  # noqa: E731
    return fold(a) == fold(b)


@dataclass
class _ThreeWay:
    """What export makes of one patch from the tree, ``patches/`` and the file the tree took (the base)."""

    fields: dict[str, str]  # the header to write (Base-Release aside)
    diff: str  # "file": keep the file's diff; "tree": the commit's, refreshed
    newer: list[str]  # what changed in patches/ only, and is kept ("its diff" for the diff)
    mine: list[str]  # what changed in the tree only, and is written
    conflicts: list[str]  # what changed in both, differently
    tree_diff: tuple[Version, bytes] | None = None  # diff == "file" and newer: what the tree still holds


def _three_way(tree: Path, sha: str, version: Version, current_patch: Patch, current: bytes, tree_header: PatchHeader,
               synced: Synced | None) -> _ThreeWay:
    """Decide, field by field for the header and as a whole for the diff, which side changed a patch since
    the tree took it (``synced``): changed in the tree only → the tree's; in ``patches/`` only (a pull,
    another tree's export) → the file's, newer; in both, differently → a conflict."""
    tree_fields, file_fields = _fields(tree_header), _fields(current_patch.header)
    same = _does_what(tree, sha, current_patch, version)
    base: Patch | None = None
    base_bytes = b""
    if synced is None or (synced.text is None and synced.sha256 == hashlib.sha256(current).hexdigest()):
        base, base_bytes = current_patch, current  # no record (or only its sha256, and it matches): patches/ did not move
    elif synced.text is not None:
        base_bytes = synced.text.encode("utf-8", errors="surrogateescape")
        try:
            base = parse_patch_text(base_bytes, current_patch.path, current_patch.name)
        except SeriesError:
            base = None
    if base is None:  # a tree of an earlier ketta-build: only the sha256 of the file it took, and the file moved since
        untouched = synced is not None and synced.commit == sha  # the tree did not touch the commit
        differ = [k for k in dict.fromkeys([*file_fields, *tree_fields])
                  if not _same_value(file_fields.get(k), tree_fields.get(k))]
        if not same:
            differ.append("its diff")
        if untouched:
            return _ThreeWay(file_fields, "file", differ, [], [])
        return _ThreeWay(tree_fields, "file" if same else "tree", [], [], differ)

    base_fields = _fields(base.header)
    out: dict[str, str] = {}
    newer: list[str] = []
    mine: list[str] = []
    conflicts: list[str] = []
    for key in dict.fromkeys([*file_fields, *tree_fields, *base_fields]):
        b, t, f = base_fields.get(key), tree_fields.get(key), file_fields.get(key)
        label = key.split("\0")[0]
        if _same_value(t, f):
            value = t
        elif _same_value(t, b):
            value = f
            newer.append(label)
        elif _same_value(f, b):
            value = t
            mine.append(label)
        else:
            value = t
            conflicts.append(label)
        if value is not None:
            out[key] = value
    # the fields in the order of the side that moved them (the tree's when both did, with the file's new ones)
    order = list(file_fields) if not mine else [*tree_fields, *(k for k in file_fields if k not in tree_fields)]
    fields = {k: out[k] for k in dict.fromkeys([*order, *out]) if k in out}

    diff, tree_diff = "file", None
    if not same:
        file_moved = (diff_part(current), current_patch.header.base_release) != (diff_part(base_bytes), base.header.base_release)
        if file_moved and _does_what(tree, sha, base, version):  # the tree still does what it took
            newer.append("its diff")
            tree_diff = (base.header.base_release, diff_part(base_bytes))
        elif not file_moved:
            diff = "tree"
            mine.append("its diff")
        else:
            conflicts.append("its diff")
    return _ThreeWay(fields, diff, newer, mine, conflicts, tree_diff)


def _slug(subject: str) -> str:
    words = re.findall(r"[a-z0-9]+", subject.lower())
    slug = "-".join(words)[:48].rstrip("-")
    return slug or "patch"


def plan_export(tree: Path, series_dir: Path, *, prune: bool = False) -> ExportPlan:
    """What export writes for ``tree`` into ``series_dir`` (nothing is written here)."""
    tree = tree.absolute()
    series = read_series(series_dir)
    version = check_tree(tree, series)
    state = read_tree_state(tree)
    plan = ExportPlan(tree, version, series_dir, series)
    entries = {e.name: e for e in series.entries}
    selected = series.select(version)
    numbers = [int(m.group(1)) for e in series.entries if (m := _NUMBER.match(e.name))]
    width = max((len(m.group(1)) for e in series.entries if (m := _NUMBER.match(e.name))), default=4)
    next_number = max(numbers, default=0) + 1
    seen: dict[str, str] = {}
    new_entries: list[tuple[str, str]] = []
    order: list[str] = []  # patch names in the tree's commit order
    conflicts: list[str] = []  # patches changed both in patches/ and in the tree, and how

    for commit in _commits(tree, version):
        short = commit.sha[:10]
        parsed = parse_commit(commit.message)
        name = parsed.patch
        if name is not None and name not in entries and (series_dir / name).exists():
            raise SeriesError(f"commit {short} says Ketta-Patch: {name}, which the series does not list; remove the "
                              "trailer to export it as a new patch", path=series.series_file)
        if name is not None and name in entries:
            if name in seen:
                raise KettaError(f"commits {seen[name][:10]} and {short} both say Ketta-Patch: {name}; squash them "
                                 "(git rebase -i) or remove the trailer from the new one")
            if entries[name] not in selected:
                raise SeriesError(f"commit {short} carries {name}, which the series does not select for {series.profile.name} {version}",
                                  path=series.series_file, line=entries[name].line)
            seen[name] = commit.sha
            order.append(name)
            path = series_dir / name
            current = path.read_bytes()
            old = parse_patch_text(current, path, name)
            tree_header = header_from_commit(parsed, commit.author_name, commit.author_email, base_release=version,
                                             where=short)
            way = _three_way(tree, commit.sha, version, old, current, tree_header, state.synced.get(name))
            if way.conflicts:
                conflicts.append(f"{name} ({', '.join(way.conflicts)})")
                continue
            newer = ", ".join(way.newer)
            if way.newer and not way.mine:  # only patches/ changed it since the tree took it: keep the file as it is
                plan.patches.append(ExportedPatch(
                    name, "newer", commit.sha, entries[name].guard_text,
                    f"newer in patches/ than in this tree: {newer} changed there since the tree took it; kept as it is "
                    "(apply again to take it into the tree)"))
                continue
            header = _header_of(way.fields, old.header.base_release if way.diff == "file" else version)
            if way.diff == "file":
                content = render_header(header).encode() + diff_part(current)
                status = "unchanged" if content == current else "reworded"
                if way.tree_diff is not None:  # the tree still holds the diff it took
                    plan.tree_diff[name] = way.tree_diff
            else:
                content = render_header(header).encode() + canonical_diff(
                    tree, f"{commit.sha}^", commit.sha, section_contexts(old.files)).encode("utf-8", errors="surrogateescape")
                status = "refreshed"
            parse_patch_text(content, path, name)  # what export writes must read back
            plan.files[path] = content
            plan.headers[commit.sha] = (name, header)
            notes = []
            if status == "refreshed" and old.header.base_release != version:
                notes.append(f"Base-Release {old.header.base_release} -> {version}: the change was made on this release")
            if way.newer:
                notes.append(f"{newer} kept from patches/, newer there than in this tree")
            plan.patches.append(ExportedPatch(name, status, commit.sha, entries[name].guard_text, "; ".join(notes) or None))
            continue

        # A commit made in the tree (or one an interrupted export already named): a new patch.
        header = header_from_commit(parsed, commit.author_name, commit.author_email, base_release=version, where=short)
        header = with_status_defaults(header)
        if name is None:
            name = f"{next_number:0{width}d}-{_slug(header.subject)}.diff"
            next_number += 1
        diff = canonical_diff(tree, f"{commit.sha}^", commit.sha).encode("utf-8", errors="surrogateescape")
        content = render_header(header).encode() + diff
        parse_patch_text(content, series_dir / name, name)
        plan.files[series_dir / name] = content
        plan.headers[commit.sha] = (name, header)
        guard = f"{guard_name(series_dir)}>={version}"
        new_entries.append((name, guard))
        order.append(name)
        plan.patches.append(ExportedPatch(name, "new", commit.sha, guard,
                                          f"guard [{guard}]: widen it in {series.series_file} if it serves older releases"))

    if conflicts:
        raise BuildTreeError(
            f"{'; '.join(conflicts)}: changed both in {series_dir} since this tree took it and in this tree; export "
            "would throw one of the two away, so nothing is written. To go on, take the series as it is now and carry "
            f"your edit over: ketta-build apply --release {version} --tree {tree} --force (your commits stay in the new "
            "tree as a backup ref: git cherry-pick or rebase them onto it), or undo the edit here", path=tree)
    never_applied = {state.stopped_at, *state.not_attempted} - {None}
    dropped = [e for e in selected if e.name not in seen and e.name not in never_applied]
    for entry in selected:
        if entry.name in never_applied and entry.name not in seen:
            plan.patches.append(ExportedPatch(entry.name, "not-applied", None, entry.guard_text,
                                              f"apply stopped before it in this tree (at {state.stopped_at}); left as it is"))
    for entry in dropped:
        if prune:
            plan.files[series_dir / entry.name] = None
            plan.patches.append(ExportedPatch(entry.name, "pruned", None, entry.guard_text, "removed from the series"))
        else:
            plan.patches.append(ExportedPatch(entry.name, "dropped", None, entry.guard_text,
                                              "no commit carries it; --prune removes it from the series"))
    _check_order(tree, series, [n for n in order if n in entries])
    # A new patch goes where its commit is: before the first line of the patch whose commit follows it.
    inserts: dict[str, list[tuple[str, str]]] = {}
    appends = []
    for name, guard in new_entries:
        after = [n for n in order[order.index(name) + 1:] if n in entries]
        if after:
            first = next(e for e in series.entries if e.group == entries[after[0]].group)
            inserts.setdefault(first.name, []).append((name, guard))
        else:
            appends.append((name, guard))
    plan.series_edits = {"inserts": inserts, "appends": appends, "removes": {e.name for e in dropped} if prune else set()}
    if not new_entries and not (prune and dropped):
        plan.series_edits = {}
    return plan


def _check_order(tree: Path, series: Series, names: list[str]) -> None:
    """Refuse commits that carry their patches in another order than the series lists them: the
    order is the series' for every release, and export does not reorder it."""
    position = {e.name: i for i, e in enumerate(series.entries)}
    for earlier, later in zip(names, names[1:]):
        if position[earlier] > position[later]:
            raise BuildTreeError(f"the commits carry {earlier} before {later}, the series the other way round: export "
                                 "keeps the series' order (it is the same for every release); to reorder, change "
                                 f"{series.series_file} and apply again, or rebase the commits back", path=tree)


def verify_plan(plan: ExportPlan, repos: PristineRepos, *, split: bool = False, progress=lambda _: None) -> None:
    """Apply what ``plan`` writes, in memory, to every supported release it claims; raise ClaimError
    (nothing written) if a release would be left with a patch that does not apply, unless ``split``
    keeps the current file of a refreshed patch as a variant for those releases. A new patch's guard
    is narrowed to the releases it applies to. Releases that cannot be had are noted, not fatal."""
    versions = plan.series.releases.versions
    pruned = {p.name for p in plan.patches if p.status == "pruned"}
    if not pruned and not any(p.status in ("refreshed", "new") for p in plan.patches):
        return
    for _ in range(3):  # the check, then at most the split and the narrowed new guards checked again
        new_series = plan.new_series()
        names = {e.name for e in new_series.entries}
        written = {path.name for path, content in plan.files.items() if content is not None and path.name in names}
        claimed = [v for v in versions if {e.name for e in new_series.select(v)} & written
                   or {e.name for e in plan.series.select(v)} & pruned]
        overrides = {name: plan.new_patch(name) for name in written}
        progress(f"checking the patches export writes on the releases their guards claim: "
                 f"{plan.series.profile.name} {', '.join(map(str, claimed))}")
        failures, gaps = check_claims(new_series, claimed, repos, patches=overrides, progress=progress)
        plan.unchecked = [f"{plan.series.profile.name} {g.version}: {g.reason}" for g in gaps]
        if not failures:
            return
        if not _mend(plan, new_series, failures, split, repos):
            break
    lines = [f"{f.patch}: {describe(f, on, plan.series.profile.name)}" for f, on in group_failures(failures)]
    hint = ("--split keeps the current file as a variant for those releases" if not split else
            "--split cannot help: the releases are not at one end of the patch's range")
    raise ClaimError(f"nothing written: export would leave patches that do not apply on releases their guards claim: "
                     f"{'; '.join(lines)}; {hint}, or make the change apply there", path=plan.series_dir)


def _made_on(plan: ExportPlan, patch: Patch, version: Version, repos: PristineRepos, serves: list[Version]) -> bytes:
    """``patch`` as export writes it when made on ``version``: canonical diff there, Base-Release
    ``version``, and its Releases field saying it serves ``serves``."""
    series = plan.new_series()
    overrides = {path.name: plan.new_patch(path.name) for path, content in plan.files.items()
                 if content is not None and path.name in {e.name for e in series.entries} and path.name != patch.name}
    before, after = images_at(series, version, repos, patch.name, patches={**overrides, patch.name: patch})
    scratch = Path(tempfile.mkdtemp(prefix="ketta-export-"))
    try:
        git(scratch, "init", "-q", ".")
        old_modes = {fp.path: fp.old_mode or "100644" for fp in patch.files}
        new_modes = {fp.path: fp.new_mode or old_modes[fp.path] for fp in patch.files}
        diff = canonical_diff(scratch, tree_of_files(scratch, {p: (old_modes[p], c) for p, c in before.items()}),
                              tree_of_files(scratch, {p: (new_modes[p], c) for p, c in after.items()}),
                              section_contexts(patch.files))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    header = replace(patch.header, base_release=version)
    value = field_value(header, "Releases")
    if value is not None:
        header = with_field(header, "Releases", with_served_range(value, serves, False))
    return render_header(header).encode() + diff.encode("utf-8", errors="surrogateescape")


def _mend(plan: ExportPlan, series: Series, failures, split: bool, repos: PristineRepos) -> bool:
    """Answer claim failures where export may: narrow a new patch's guard to where it applies, and
    (with ``split``) give a refreshed patch's broken releases the current file as a variant. False if
    some failure remains that neither covers."""
    versions = series.releases.versions
    by_patch: dict[str, set[Version]] = {}
    for f in failures:
        by_patch.setdefault(f.patch, set()).add(f.version)
    entries = {e.name: e for e in series.entries}
    new = {p.name: p for p in plan.patches if p.status == "new"}
    mended = True
    for name, broken in by_patch.items():
        entry = entries.get(name)
        if entry is None:
            return False
        served = [v for v in versions if entry.matches(v)]
        if name in new:
            keep: list[Version] = []
            for v in served:  # the releases from this one up to the first it does not apply to
                if v in broken:
                    break
                keep.append(v)
            if not keep or keep[0] != plan.version:
                return False
            upper = next((v for v in served if v > keep[-1]), None)
            guard = f"{guard_name(plan.series_dir)}>={plan.version}" + (f",<{upper}" if upper else "")
            plan.series_edits["appends"] = [(n, guard if n == name else g) for n, g in plan.series_edits["appends"]]
            plan.series_edits["inserts"] = {anchor: [(n, guard if n == name else g) for n, g in added]
                                            for anchor, added in plan.series_edits["inserts"].items()}
            new[name].guard = guard
            new[name].note = (f"guard [{guard}]: it does not apply to {plan.series.profile.name} "
                              f"{', '.join(map(str, sorted(broken)))}; "
                              "give those releases a variant of their own")
            continue
        if not split:
            mended = False
            continue
        kept = [v for v in served if v not in broken]
        run = [v for v in served if v in broken]
        if not kept or run != served[:len(run)] and run != served[-len(run):]:
            return False
        variant = variant_name(name, run[0])
        if variant in entries or (plan.series_dir / variant).exists():
            raise SeriesError(f"{variant} exists already; split {name} by hand", path=plan.series_dir / variant)
        if run == served[:len(run)]:  # the older releases keep the old file
            variant_guard = f"{guard_name(plan.series_dir)}>={run[0]}" + f",<{kept[0]}"
            main_guard = _replace_lower(entry, kept[0], guard_name(plan.series_dir))
        else:
            variant_guard = f"{guard_name(plan.series_dir)}>={run[0]}" + (f",<{_upper_bound(entry)}" if _upper_bound(entry) else "")
            main_guard = _replace_upper(entry, run[0], guard_name(plan.series_dir))
        plan.series_edits.setdefault("guards", {})[name] = main_guard
        plan.series_edits.setdefault("inserts", {}).setdefault(name, []).append((variant, variant_guard))
        # The old file, made again on the newest release it keeps serving (its Base-Release must be one of them).
        old = series.load(entry)
        old = Patch(variant, plan.series_dir / variant, old.header, old.files)
        plan.files[plan.series_dir / variant] = _made_on(plan, old, run[-1], repos, run)
        new_path = plan.series_dir / name
        refreshed = plan.new_patch(name)
        value = field_value(refreshed.header, "Releases")
        if value is not None:
            header = with_field(refreshed.header, "Releases", with_served_range(value, kept, False))
            plan.files[new_path] = render_header(header).encode() + diff_part(plan.files[new_path])
            for sha, (n, _) in list(plan.headers.items()):
                if n == name:
                    plan.headers[sha] = (n, header)
        plan.patches.append(ExportedPatch(variant, "split", None, variant_guard,
                                          f"{name} as it was, for {plan.series.profile.name} {', '.join(map(str, run))}, where "
                                          f"the refreshed one does not apply: carry the change there by hand "
                                          f"(apply --release {run[0]})"))
    return mended


def _upper_bound(entry: SeriesEntry) -> str | None:
    return next((str(s.version) for s in entry.guard or [] if s.operator == "<"), None)


def _replace_lower(entry: SeriesEntry, lower: Version, name: str) -> str:
    kept = [str(s) for s in entry.guard or [] if s.operator not in (">=", ">", "==")]
    return name + ",".join([f">={lower}", *kept])


def _replace_upper(entry: SeriesEntry, upper: Version, name: str) -> str:
    kept = [str(s) for s in entry.guard or [] if s.operator not in ("<", "<=", "==")]
    return name + ",".join([*kept, f"<{upper}"])


def write_plan(plan: ExportPlan) -> list[Path]:
    """Bring the commits in step, then write what ``plan`` changes (each file whole); return those paths.

    The commit messages go first: should writing the files be interrupted, the next export finds
    commits that already name their patch files and writes them under those names (no duplicates)."""
    with uninterruptible():  # the commits and the files change together or not at all
        if plan.series_edits:
            text = edit_series_text(plan.series.series_file.read_text(encoding="utf-8"), **plan.series_edits)
            plan.files[plan.series.series_file] = text.encode()
        changed = plan.differences()
        head = git(plan.tree, "rev-parse", "HEAD")
        branch = git(plan.tree, "symbolic-ref", "-q", "HEAD", check=False) or "HEAD"
        mapping = reword_commits(plan.tree, plan.messages(), "export: commit messages in step with patches/")
        try:
            with replacing({path: plan.files[path] for path in changed}):  # every file or none
                record_head(plan.tree, git(plan.tree, "rev-parse", "HEAD"), plan.taken(mapping))
        except BaseException:
            if mapping:  # the commits' messages as they were (the reworded ones stay in the reflog)
                git(plan.tree, "update-ref", "-m", "ketta-build: export failed, messages as they were", branch, head)
            raise
        for p in plan.patches:
            p.commit = mapping.get(p.commit, p.commit)
    return changed


def report_json(plan: ExportPlan, written: list[Path], check: bool) -> dict:
    return {
        "schema": "ketta-build/export/2",
        "tree": str(plan.tree),
        "release": str(plan.version),
        "check": check,
        "patches": [vars(p) for p in plan.patches],
        "differences" if check else "written": [str(p) for p in written],
    }
