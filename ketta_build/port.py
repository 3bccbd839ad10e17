"""``ketta-build port``: carry the series onto an upstream release it does not serve yet.

1. For each logical patch take the variant that serves the new release (its guard already
   admits it) or else the one serving the newest supported release; a patch retired before that
   release (like 0007, 0.14.0-0.15.1 only) stays behind.
2. Build ``build/<NEW>``: pristine NEW, then each patch, exactly where it can, else by 3-way merge
   against the file its ``Base-Release`` had (the apply engine's ``merged``).
3. On a conflict, stop: markers in the tree, one ``patches/NAME:LINE`` line per failed file, the
   patch's commit message prepared (``git commit -a --no-edit`` takes it), the state in
   ``.git/ketta-port.json``. ``port --continue`` takes the resolution (committed by the user in one
   commit, or left in the tree, which it commits with the patch's message) and goes on;
   ``port --skip`` leaves the stopped patch out (the new release does not need it: no variant
   is written, and a guard that admitted the release gains ``<NEW``; as ``git am --skip``) and goes on;
   ``port --abort`` removes the tree, and refuses when work was done there since the stop unless
   ``--force``, which first saves that work as a git bundle beside the tree. Nothing in
   ``patches/`` changes before the port finishes.
4. At the end, per patch: applied exactly → nothing to write (its guard is widened if it has to
   admit NEW); merged or resolved → a new variant ``NNNN-...-<NEW>.diff`` guarded
   ``[<project>>=NEW]`` beside the old one, whose guard gains ``<NEW`` (with ``in_place``, the patch
   itself is rewritten for NEW instead, when that leaves every older release it serves applying;
   otherwise a variant is written and the report says why); every hunk already upstream → its
   guard gains ``<NEW`` and it is proposed for dropping. Every ``Releases:`` field is brought in
   line with its guard. What would be written is first applied in memory to every release it
   claims (nothing is written if one would break), the tree's commit messages are brought in step
   with the files (so ``export --check`` on the port's tree passes), then NEW goes into
   ``releases.toml``, tox.ini is regenerated and the port's state is removed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from .applying import Outcome, apply_patch
from .buildtree import (PORT_STATE_FILE, ApplyOptions, PreimageFinder, PristineRepos, apply_series, backup_name,
                        check_out_dir, commit_patch, read_tree_state, record_head, reword_commits, series_lock,
                        stripspace)
from .atomic import replacing, uninterruptible, write_atomic
from .cache import Cache
from .memapply import check_claims, describe, group_failures
from .errors import BuildTreeError, ClaimError, DamagedPortState, KettaError, SeriesError
from .gitcmd import git, git_succeeds
from .gitdiff import canonical_diff, section_contexts
from .header import (commit_message, field_value, header_from_commit, parse_commit, render_header, updated_releases,
                     with_field)
from .patchfile import Patch, PatchHeader, diff_part, parse_patch_text
from .profile import load_profile
from .toxini import generated_files
from .releases import load_releases, with_release
from .report import result_failure_lines
from .series import Series, SeriesEntry, edit_series_text, guard_name, parse_series, read_series, variant_name
from .sources import IndexSource, UpstreamRelease, sdist_date

STATE = PORT_STATE_FILE


@dataclass
class PortedPatch:
    name: str
    outcome: str  # clean | offset | merged | resolved | skipped | already-upstream | failed | not-attempted
    commit: str | None = None
    hunks: dict[str, int] = field(default_factory=dict)  # outcome -> count
    action: str | None = None  # what the finish wrote for it


@dataclass
class PortState:
    version: str
    series_dir: str
    tree: str
    in_place: bool
    index_url: str | None
    upload_date: str | None
    patches: list[PortedPatch]
    stopped_at: str | None = None
    stopped_head: str | None = None  # HEAD when the port stopped
    stopped_worktree: str | None = None  # the work tree's content then (a tree id), to tell work done since
    sha256: str | None = None  # of the release's sdist: its pin in releases.toml once the port is finished

    def save(self) -> None:
        write_atomic(Path(self.tree) / ".git" / STATE, (json.dumps(asdict(self), indent=2) + "\n").encode())

    @classmethod
    def load(cls, tree: Path) -> "PortState":
        path = tree / ".git" / STATE
        if not path.is_file():
            raise KettaError(f"no port in progress in {tree} (no .git/{STATE}); start one with ketta-build port --release NEW")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            data["patches"] = [PortedPatch(**p) for p in data["patches"]]
            state = cls(**data)
            if not all(isinstance(v, str) for v in (state.version, state.series_dir, state.tree)):
                raise TypeError("version, series_dir and tree are strings")
            Version(state.version)
        except (ValueError, TypeError, KeyError, AttributeError):  # JSON, UTF-8 and versions raise ValueErrors
            raise DamagedPortState("the port's state is damaged (not what ketta-build wrote); the port cannot go on: "
                                   "give it up with ketta-build port --abort --force (it saves the tree as a git "
                                   "bundle first)", path=path) from None
        return state


@dataclass
class PortResult:
    state: PortState
    finished: bool
    written: list[Path] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)  # what to do next, when stopped


def carried_entries(series: Series, new: Version) -> list[SeriesEntry]:
    """The variant of each logical patch that goes onto ``new`` (see the module docstring).

    A variant whose guard admits ``new`` is taken as it is; otherwise the variant that serves the
    supported release nearest to ``new`` (the newest one for a new release, the oldest one when a
    release is carried backwards). A patch none of whose variants serves a release on that side
    of ``new`` (retired before it, or added after it) stays behind.
    """
    versions = series.releases.versions
    chosen = []
    for group, members in series.groups().items():
        admitting = [e for e in members if e.matches(new)]
        if admitting:
            chosen.append(admitting[0])
            continue
        best = None
        for e in members:
            served = [v for v in versions if e.matches(v)]
            if not served:
                continue
            newer = [v for v in served if v > new]
            older = [v for v in served if v < new]
            if new > versions[-1] and older and served[-1] == versions[-1]:
                distance = 0  # a new release takes the variant of the newest release
            elif newer and not older:
                distance = versions.index(newer[0]) - sum(1 for v in versions if v < new)
            else:
                continue
            if best is None or distance < best[0]:
                best = (distance, e)
        if best is not None:
            chosen.append(best[1])
    order = {e.name: i for i, e in enumerate(series.entries)}
    return sorted(chosen, key=lambda e: order[e.name])


def _to_carry_back(series: Series, version: Version) -> list[str]:
    """The logical patches with no variant for supported release ``version`` that serve newer releases
    (a patch whose variants all serve older ones was retired before it and is not missing)."""
    versions = series.releases.versions
    return [group for group, members in series.groups().items()
            if not any(e.matches(version) for e in members)
            and any(e.matches(v) for e in members for v in versions if v > version)]


def _registry(cache: Cache, series_dir: Path) -> Path:
    """Where the open ports of one series are listed (one file per tree), wherever their trees are."""
    key = hashlib.sha256(str(series_dir.absolute()).encode()).hexdigest()[:16]
    return cache.root / "ports" / key


def _register(cache: Cache, state: PortState) -> None:
    tree = Path(state.tree)
    entry = _registry(cache, Path(state.series_dir)) / (hashlib.sha256(str(tree).encode()).hexdigest()[:16] + ".json")
    write_atomic(entry, json.dumps({"tree": str(tree), "version": state.version}).encode())


def _unregister(cache: Cache, state: PortState) -> None:
    tree = Path(state.tree)
    entry = _registry(cache, Path(state.series_dir)) / (hashlib.sha256(str(tree).encode()).hexdigest()[:16] + ".json")
    entry.unlink(missing_ok=True)


def ports_in_progress(series_dir: Path, cache: Cache | None = None, roots: tuple[Path, ...] = ()) -> list[tuple[Path, PortState]]:
    """The trees with a port of ``series_dir`` in progress: those the cache lists, and any under ``roots``."""
    candidates = {state_file.parent.parent.resolve() for root in roots for state_file in root.glob(f"*/.git/{STATE}")}
    if cache is not None:
        for entry in sorted(_registry(cache, series_dir).glob("*.json")):
            try:
                candidates.add(Path(json.loads(entry.read_text())["tree"]).resolve())
            except (OSError, ValueError, KeyError):
                continue
    found = []
    for tree in sorted(candidates):
        try:
            state = PortState.load(tree)
        except (KettaError, OSError, ValueError, TypeError, KeyError):
            continue  # finished, aborted or removed by hand
        if Path(state.series_dir) == series_dir.absolute():
            found.append((tree, state))
    return found


def start_port(new: Version, series_dir: Path, *, out: Path | None = None, build_root: Path,
               cache: Cache | None = None,
               index_url: str | None = None, in_place: bool = False, force: bool = False,
               progress=lambda _: None) -> PortResult:
    cache = cache or Cache()
    series = read_series(series_dir)
    if series.releases.find(new) and not _to_carry_back(series, new):
        raise KettaError(f"{series.profile.name} {new} is a supported release already ({series.releases.path}) and every patch that "
                         "serves it has its variant: change its patches with ketta-build apply and export; port carries "
                         "the series onto a release it does not serve yet")
    out = (out or build_root / str(new)).absolute()
    for tree, state in ports_in_progress(series_dir, cache, (out.parent, build_root)):
        raise BuildTreeError(f"a port to {_name(state)} {state.version} is in progress in {tree}: finish it (ketta-build port "
                             f"--continue --tree {tree}) or give it up (--abort) before starting another", path=tree)
    source = IndexSource(cache, index_url, progress=progress, releases=series.releases, allow_unsupported=True)
    release: UpstreamRelease = source.resolve(new)
    check_out_dir(out, force, "--tree")
    entries = carried_entries(series, new)
    report = apply_series(release, source, series, out, options=ApplyOptions(force=force, out_flag="--tree"),
                          cache=cache, base_source=IndexSource(cache, index_url, allow_unsupported=True, releases=series.releases),
                          progress=progress, entries=entries)
    patches = [PortedPatch(r.name, r.outcome.value, r.commit, r.hunk_counts) for r in report.results]
    patches += [PortedPatch(name, "not-attempted") for name in report.not_attempted]
    date = source.upload_date(new) or sdist_date(source.sdist_path(release))
    state = PortState(str(new), str(series_dir.absolute()), str(out), in_place, index_url, date, patches,
                      sha256=release.sha256)
    _register(cache, state)
    if report.failed:
        _stop(state, out, report.failed[0].name, result_failure_lines(series_dir, report.failed))
        return PortResult(state, False, plan=_plan(state, result_failure_lines(series_dir, report.failed)))
    state.save()
    return finish_port(out, cache=cache)


def _tree_sdist_sha256(tree: Path) -> str | None:
    """The sha256 of the sdist the port's tree was made from, as its apply report says (a port started
    before the state kept it)."""
    try:
        return json.loads((tree / ".git" / "ketta-build.json").read_text())["upstream"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _worktree_id(tree: Path) -> str:
    """The id of a tree object holding the work tree as it is (tracked and untracked files)."""
    with tempfile.TemporaryDirectory(prefix="ketta-index-") as tmp:
        index = Path(tmp) / "index"
        if (tree / ".git" / "index").is_file():
            shutil.copyfile(tree / ".git" / "index", index)
        env = {"GIT_INDEX_FILE": str(index)}
        git(tree, "add", "-A", "-f", ".", env=env)
        return git(tree, "write-tree", env=env)


def _stop(state: PortState, tree: Path, name: str, lines: list[str]) -> None:
    state.stopped_at = name
    state.stopped_head = git(tree, "rev-parse", "HEAD")
    state.stopped_worktree = _worktree_id(tree)
    state.save()


def _plan(state: PortState, failures: list[str]) -> list[str]:
    tree = state.tree
    return [
        *failures,
        f"{state.stopped_at} does not apply to {_name(state)} {state.version}; {tree} holds what could be applied",
        "resolve the conflict markers (or .rej hunks) in the files above, then either commit the result "
        f"(git -C {tree} commit -a --no-edit takes the patch's prepared message) or leave it in the tree, and run "
        "ketta-build port --continue",
        f"or, if {_name(state)} {state.version} does not need {state.stopped_at}, leave it out: ketta-build port --skip",
        "or give up: ketta-build port --abort (nothing in patches/ has changed)",
    ]


def _conflicted(tree: Path, paths: list[str]) -> list[str]:
    out = []
    for rel in paths:
        path = tree / rel
        if path.is_file():
            text = path.read_bytes()
            if re.search(rb"^<<<<<<< ", text, re.MULTILINE) and re.search(rb"^>>>>>>> ", text, re.MULTILINE):
                out.append(rel)
        if (tree / f"{rel}.rej").exists():
            out.append(f"{rel}.rej")
    return out


def _resolution_message(message: str, name: str, patch: Patch) -> str:
    """The message a resolution commit must carry: the patch's, with the subject and description
    the user wrote, if they wrote both."""
    parsed = parse_commit(message)
    header = patch.header
    if parsed.subject and parsed.description.strip():
        header = PatchHeader(parsed.subject, header.author_name, header.author_email, parsed.description,
                             header.upstream_status, header.base_release, header.date, header.extra)
    return stripspace(commit_message(name, header))


def _take_resolution(tree: Path, state: PortState, patch: Patch) -> tuple[str, str | None]:
    """Commit (or adopt) the resolution of the patch the port stopped at; (commit, what was done)."""
    paths = [fp.path for fp in patch.files]
    left = _conflicted(tree, paths)
    if left:
        raise BuildTreeError(f"conflict markers or rejects are still in {', '.join(left)}; resolve them first", path=tree)
    for rel in paths:
        (tree / f"{rel}.orig").unlink(missing_ok=True)
    if state.stopped_head and not git_succeeds(tree, "merge-base", "--is-ancestor", state.stopped_head, "HEAD"):
        raise BuildTreeError(f"the commits before the stop changed (HEAD no longer contains {state.stopped_head[:10]}, "
                             "where the port stopped: git commit --amend folds into the previous patch's commit); "
                             f"undo it (git reset --soft HEAD@{{1}}) and commit the resolution of {patch.name} as a "
                             "commit of its own, or leave it uncommitted", path=tree)
    since = git(tree, "rev-list", "--reverse", f"{state.stopped_head}..HEAD").splitlines() if state.stopped_head else []
    changed = set(git(tree, "diff", "--name-only", "HEAD").splitlines())
    changed |= set(git(tree, "ls-files", "--others", "--exclude-standard").splitlines())
    if since and changed:
        raise BuildTreeError(f"you committed since the port stopped and there are uncommitted changes too "
                             f"({', '.join(sorted(changed)[:3])}); commit or stash them", path=tree)
    if len(since) > 1:
        raise BuildTreeError(f"{len(since)} commits since the port stopped; the resolution of {patch.name} is one commit: "
                             f"git reset --soft {state.stopped_head[:10]} and run port --continue again (it commits "
                             "what it finds with the patch's message)", path=tree)
    if since:
        commit = since[0]
        message = git(tree, "show", "-s", "--format=%B", commit)
        wanted = _resolution_message(message, patch.name, patch)
        author = git(tree, "show", "-s", "--format=%an <%ae>", commit)
        patch_author = f"{patch.header.author_name} <{patch.header.author_email}>"
        if stripspace(message + "\n") != wanted or author != patch_author:
            commit = reword_commits(tree, {commit: wanted}, f"port: the resolution of {patch.name} carries its message",
                                    authors={commit: (patch.header.author_name, patch.header.author_email)})[commit]
            return commit, (f"your commit now carries the patch's message and author {patch_author} "
                            "(git reflog has the one you made)")
        return commit, None
    if not changed or (state.stopped_worktree and _worktree_id(tree) == state.stopped_worktree):
        raise BuildTreeError(f"nothing resolved for {patch.name}: the tree is as the port left it; edit the files "
                             "(or commit a resolution) first", path=tree)
    stray = sorted(changed - set(paths))
    if stray:
        raise BuildTreeError(f"uncommitted changes outside {patch.name}'s files ({', '.join(stray)}); commit the "
                             "resolution yourself if it needs them, or stash them", path=tree)
    (tree / ".git" / "MERGE_MSG").unlink(missing_ok=True)
    return commit_patch(tree, patch, paths), None


def _skip_stopped(tree: Path, state: PortState) -> None:
    """Put the tree back as the port left it before the stopped patch (its attempt and markers gone)."""
    since = git(tree, "rev-list", f"{state.stopped_head}..HEAD").splitlines() if state.stopped_head else []
    if since:
        raise BuildTreeError(f"{len(since)} commit(s) since the port stopped at {state.stopped_at}: a committed "
                             "resolution is taken by port --continue; to skip the patch, git reset --hard "
                             f"{state.stopped_head[:10]} first", path=tree)
    git(tree, "reset", "-q", "--hard", "HEAD")
    git(tree, "clean", "-q", "-f", "-d")
    (tree / ".git" / "MERGE_MSG").unlink(missing_ok=True)


def continue_port(tree: Path, progress=lambda _: None, cache: Cache | None = None, skip: bool = False) -> PortResult:
    """Go on after a stop: take the resolution of the stopped patch, or with ``skip`` leave it out."""
    tree = tree.absolute()
    state = PortState.load(tree)
    series_dir = Path(state.series_dir)
    series = read_series(series_dir)
    cache = cache or Cache()
    notes: list[str] = []
    stopped = next((p for p in state.patches if p.name == state.stopped_at), None)
    if skip and stopped is None:
        raise BuildTreeError("the port is not stopped at a patch: nothing to skip", path=tree)
    if skip:
        _skip_stopped(tree, state)
        stopped.outcome, stopped.commit, stopped.hunks = "skipped", None, {}
        stopped.action = f"left out (port --skip): no variant serves {_name(state)} {state.version}"
        state.stopped_at = state.stopped_head = state.stopped_worktree = None
        state.save()
    elif stopped is not None:
        patch = series.load(next(e for e in series.entries if e.name == stopped.name))
        stopped.commit, note = _take_resolution(tree, state, patch)
        if note:
            stopped.action = note
        stopped.outcome = "resolved"
        state.stopped_at = state.stopped_head = state.stopped_worktree = None
        state.save()
    release_version = Version(state.version)
    finder = PreimageFinder(series, {}, IndexSource(cache, state.index_url, allow_unsupported=True,
                                                    releases=series.releases), cache)
    for ported in state.patches:
        if ported.outcome != "not-attempted":
            continue
        entry = next(e for e in series.entries if e.name == ported.name)
        raw = (series_dir / entry.name).read_bytes() if (series_dir / entry.name).is_file() else None
        patch = series.load(entry) if raw is None else parse_patch_text(raw, series_dir / entry.name, entry.name)
        progress(f"applying {ported.name}")
        result = apply_patch(tree, patch, preimage=finder, upstream_label=f"{_name(state)} {release_version}")
        ported.outcome = result.outcome.value
        ported.hunks = result.hunk_counts
        if result.outcome is Outcome.FAILED:
            (tree / ".git" / "MERGE_MSG").write_text(stripspace(commit_message(patch.name, patch.header)))
            lines = result_failure_lines(series_dir, [result])
            _stop(state, tree, ported.name, lines)
            return PortResult(state, False, plan=_plan(state, lines))
        if result.outcome is not Outcome.ALREADY_UPSTREAM:
            ported.commit = commit_patch(tree, patch, [f.path for f in result.files])
        record_head(tree, None, {ported.name: (raw, ported.commit)})  # the file this tree took, now
        state.save()
    state.save()
    result = finish_port(tree, cache=cache)
    result.plan = notes
    return result


def abort_port(tree: Path, *, force: bool = False, cache: Cache | None = None) -> tuple[Path, Path | None]:
    """Remove the port's build tree; nothing else was changed. Work done in the tree since the port
    stopped (commits, edits) is refused without ``force``, saved as a bundle beside it with."""
    tree = tree.absolute()
    try:
        state: PortState | None = PortState.load(tree)  # refuses a tree with no port in progress (a finished port has none)
    except DamagedPortState as exc:
        if not force:
            raise BuildTreeError(f"{exc.message.split(';')[0]}, so whether work was done here since the port stopped "
                                 "cannot be told: port --abort --force saves the tree (commits and files) as a git "
                                 "bundle beside it, then removes it", path=exc.path) from None
        state = None
    head = git(tree, "rev-parse", "HEAD")
    worked = state is None or (state.stopped_head is not None and head != state.stopped_head) or (
        state.stopped_worktree is not None and _worktree_id(tree) != state.stopped_worktree)
    saved = None
    if worked:
        if not force:
            raise BuildTreeError("work was done here since the port stopped (commits or edited files): port --abort "
                                 "--force saves it as a git bundle beside the tree, then removes the tree", path=tree)
        what = f"the port to {_name(state)} {state.version}" if state is not None else "a port"
        snapshot = git(tree, "commit-tree", _worktree_id(tree), "-p", head, "-m",
                       f"the work tree of {what} when it was aborted",
                       env={"GIT_AUTHOR_NAME": "ketta-build", "GIT_AUTHOR_EMAIL": "ketta-build@ketta.invalid",
                            "GIT_COMMITTER_NAME": "ketta-build", "GIT_COMMITTER_EMAIL": "ketta-build@ketta.invalid"})
        ref = backup_name("abort", snapshot)
        git(tree, "update-ref", ref, snapshot)
        saved = tree.parent / f"{tree.name}-aborted-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.bundle"
        git(tree, "bundle", "create", "-q", str(saved), ref)
    shutil.rmtree(tree)
    if state is not None:
        _unregister(cache or Cache(), state)
    else:  # the state named its series: find the tree's entry in any series' list
        for entry in (cache or Cache()).root.glob(f"ports/*/{hashlib.sha256(str(tree).encode()).hexdigest()[:16]}.json"):
            entry.unlink(missing_ok=True)
    return tree, saved


def _moved_under_port(tree: Path, state: PortState, series_dir: Path) -> list[str]:
    """The patches the port carries whose file changed in ``series_dir`` since the port took it, in a way
    its finish would undo: the diff (the tree holds the one it took), or, for a patch the finish writes
    from its commit (merged, resolved), a header the commit does not have. (A header alone changed
    under a patch that applied as it was is taken: the finish gives its commit the file's message.)"""
    took = read_tree_state(tree).synced
    moved = []
    for ported in state.patches:
        record, path = took.get(ported.name), series_dir / ported.name
        if not ported.commit or record is None or record.text is None or not path.is_file():
            continue
        then_bytes, now_bytes = record.text.encode("utf-8", errors="surrogateescape"), path.read_bytes()
        if then_bytes == now_bytes:
            continue
        then, now = parse_patch_text(then_bytes, path, ported.name).header, parse_patch_text(now_bytes, path, ported.name).header
        if (diff_part(then_bytes), then.base_release) != (diff_part(now_bytes), now.base_release):
            moved.append(f"{ported.name} (its diff)")
            continue
        if ported.outcome not in ("merged", "resolved") or render_header(replace(then, base_release=now.base_release)) == \
                render_header(now):
            continue
        name, email = git(tree, "log", "-1", "--format=%an%x00%ae", ported.commit).split("\x00")
        mine = header_from_commit(parse_commit(git(tree, "log", "-1", "--format=%B", ported.commit)), name, email,
                                  base_release=now.base_release, where=ported.commit[:10])
        if render_header(mine) != render_header(now):
            moved.append(f"{ported.name} (its header)")
    return moved


def _name(state: PortState) -> str:
    """The upstream's name, as the series the port writes to names it."""
    return load_profile(Path(state.series_dir)).name


def _narrow(guard: SpecifierSet | None, new: Version, name: str) -> str:
    """``guard`` ending before ``new`` (an upper bound at or above it is replaced)."""
    specs = sorted(str(s) for s in (guard or []) if not (s.operator in ("<", "<=") and Version(s.version) >= new))
    return name + ",".join(specs + [f"<{new}"])


def _widen(guard: SpecifierSet, new: Version, name: str) -> str | None:
    kept = [str(s) for s in guard if s.contains(new, prereleases=True)]
    return name + ",".join(kept) if kept else None


@dataclass
class _Carried:
    """What the finish makes of one merged or resolved patch."""

    entry: SeriesEntry
    commit: str
    header: PatchHeader
    diff: bytes


def finish_port(tree: Path, cache: Cache | None = None) -> PortResult:
    """Write what the port changed into the series, add the release, regenerate tox.ini."""
    tree = tree.absolute()
    cache = cache or Cache()
    with series_lock(cache, Path(PortState.load(tree).series_dir)):  # no export writes patches/ meanwhile
        return _finish_port(tree, cache)


def _finish_port(tree: Path, cache: Cache) -> PortResult:
    state = PortState.load(tree)
    new = Version(state.version)
    series_dir = Path(state.series_dir)
    series = read_series(series_dir)
    versions = sorted({*series.releases.versions, new})
    repos = PristineRepos(IndexSource(cache, state.index_url, allow_unsupported=True, releases=series.releases), cache)
    by_name = {e.name: e for e in series.entries}
    carried: dict[str, _Carried] = {}
    for ported in state.patches:
        entry = by_name[ported.name]
        if ported.outcome in ("clean", "offset", "already-upstream", "skipped"):
            continue
        if ported.outcome not in ("merged", "resolved") or not ported.commit:
            raise KettaError(f"{ported.name} has not been carried onto {_name(state)} {new} ({ported.outcome}); port --continue first")
        message = git(tree, "log", "-1", "--format=%B", ported.commit)
        author = git(tree, "log", "-1", "--format=%an%x00%ae", ported.commit).split("\x00")
        header = header_from_commit(parse_commit(message), author[0], author[1], base_release=new, where=ported.commit[:10])
        diff = canonical_diff(tree, f"{ported.commit}^", ported.commit, section_contexts(series.load(entry).files))
        carried[entry.name] = _Carried(entry, ported.commit, header, diff.encode("utf-8", errors="surrogateescape"))

    moved = _moved_under_port(tree, state, series_dir)
    if moved:
        raise BuildTreeError(f"{'; '.join(moved)} changed in {series_dir} since the port took it (a pull, or an export "
                             "from another tree): finishing would carry the file as it was and undo that; give the "
                             f"port up (ketta-build port --abort --tree {tree}, with --force if you worked there: it "
                             "saves the work as a bundle) and start it again from the series as it is now", path=tree)
    in_place = set(carried) if state.in_place else set()
    keep_old: set[str] = set()  # rewritten in place, and the previous file kept for the releases it serves
    backwards: dict[str, Version] = {}  # a variant carried backwards -> the first release it does not apply to
    while True:
        plan = _finish_plan(state, series, series_dir, carried, in_place, keep_old, new, backwards)
        new_series = parse_series(plan.series_text, series_dir)
        touched = set(plan.contents) | set(plan.guards)
        claimed = [v for v in versions if {e.name for e in new_series.select(v)} & touched]
        overrides = {name: parse_patch_text(content, series_dir / name, name) for name, content in plan.contents.items()}
        failures, _gaps = check_claims(new_series, claimed, repos, patches=overrides)
        broken = {f.patch for f in failures if f.patch in in_place and f.patch not in keep_old}
        behind = {f.patch: min(g.version for g in failures if g.patch == f.patch) for f in failures
                  if f.patch in plan.backwards and f.version > new and f.patch not in backwards}
        if not broken and not behind:
            break
        keep_old |= broken
        backwards.update(behind)
    if failures:
        lines = [f"{f.patch}: {describe(f, on, series.profile.name)}" for f, on in group_failures(failures)]
        raise ClaimError(f"nothing written: the ported series would not apply on releases it claims: {'; '.join(lines)}; "
                         "the port's tree is kept: fix it there and run ketta-build port --continue", path=series_dir)

    # The tree's commits name the files and headers written, so export --check on it passes.
    messages = {}
    for ported in state.patches:
        if not ported.commit:
            continue
        final = plan.variant_names.get(ported.name, ported.name)
        content = plan.contents.get(final) or (series_dir / final).read_bytes()
        wanted = stripspace(commit_message(final, parse_patch_text(content, series_dir / final, final).header))
        if stripspace(git(tree, "show", "-s", "--format=%B", ported.commit) + "\n") != wanted:
            messages[ported.commit] = wanted
    # patches/, releases.toml and tox.ini are put in place together or not at all (atomic.replacing),
    # and the tree's commits are reworded inside: should that fail, the files go back as they were.
    changes: dict[Path, bytes | None] = {}
    for name, content in plan.contents.items():
        path = series_dir / name
        if not path.exists() or path.read_bytes() != content:
            changes[path] = content
    if plan.series_text.encode() != series.series_file.read_bytes():
        changes[series.series_file] = plan.series_text.encode()
    releases_text = with_release(series_dir, new, state.upload_date or "unknown", state.sha256 or _tree_sdist_sha256(tree))
    if releases_text is not None:
        changes[load_releases(series_dir).path] = releases_text
    for path, content in generated_files(series_dir.absolute().parent, series_dir, versions).items():
        if not path.is_file() or path.read_bytes() != content:  # the plugin's files (a tox.ini, say)
            changes[path] = content
    written = list(changes)
    with uninterruptible(), replacing(changes):  # the tree's commits, patches/, releases.toml and tox.ini change together
        read_series(series_dir).explain(new)  # the written series must select one variant per patch for NEW
        mapping = reword_commits(tree, messages, f"port to {new}: commit messages in step with patches/")
        for ported in state.patches:
            if ported.commit in mapping:
                ported.commit = mapping[ported.commit]
            ported.action = ported.action or plan.actions.get(ported.name)
        synced = {}
        for ported in state.patches:
            final = plan.variant_names.get(ported.name, ported.name)
            if ported.commit and (series_dir / final).is_file():
                synced[final] = ((series_dir / final).read_bytes(), ported.commit)
        record_head(tree, git(tree, "rev-parse", "HEAD"), synced)
        (tree / ".git" / STATE).unlink()
        _unregister(cache, state)
    state.stopped_at = None
    return PortResult(state, True, written)


@dataclass
class _FinishPlan:
    contents: dict[str, bytes] = field(default_factory=dict)  # patch file name -> content
    guards: dict[str, str | None] = field(default_factory=dict)
    inserts: dict[str, tuple[str, str]] = field(default_factory=dict)
    variant_names: dict[str, str] = field(default_factory=dict)  # carried patch -> the file it went to
    headers: dict[str, PatchHeader] = field(default_factory=dict)  # file name -> header written
    actions: dict[str, str] = field(default_factory=dict)
    backwards: set[str] = field(default_factory=set)  # variants carried to an older release
    series_text: str = ""


def _finish_plan(state: PortState, series: Series, series_dir: Path, carried: dict[str, _Carried], in_place: set[str],
                 keep_old: set[str], new: Version, backwards: dict[str, Version]) -> _FinishPlan:
    plan = _FinishPlan()
    by_name = {e.name: e for e in series.entries}
    for ported in state.patches:
        entry = by_name[ported.name]
        if ported.outcome in ("clean", "offset"):
            if not entry.matches(new):
                plan.guards[entry.name] = _widen(entry.guard, new, guard_name(series_dir))
                plan.actions[entry.name] = f"guard widened to admit {new}"
            else:
                plan.actions[entry.name] = "applies as it is"
        elif ported.outcome == "skipped":
            plan.actions[entry.name] = ported.action or f"left out: no variant serves {new}"
            if entry.matches(new):  # the guard admitted it: it must not any more
                plan.guards[entry.name] = _narrow(entry.guard, new, guard_name(series_dir))
                plan.actions[entry.name] += f"; guard narrowed to [{plan.guards[entry.name]}]"
        elif ported.outcome == "already-upstream":
            plan.guards[entry.name] = _narrow(entry.guard, new, guard_name(series_dir))
            plan.actions[entry.name] = (f"already upstream in {new}: guard narrowed to [{plan.guards[entry.name]}]; "
                                        "consider dropping it")
    for name, c in carried.items():
        entry = c.entry
        served = [v for v in series.releases.versions if entry.matches(v)]
        if name in in_place:
            plan.contents[name] = render_header(c.header).encode() + c.diff
            plan.headers[name] = c.header
            if name in keep_old and served:  # the rewritten file does not apply to them: they keep the old one
                old = variant_name(entry.name, served[0])
                if old in by_name or (series_dir / old).exists():
                    raise SeriesError(f"{old} exists already; remove it or port without --in-place", path=series_dir / old)
                plan.contents[old] = (series_dir / name).read_bytes()
                plan.inserts[name] = (old, _narrow(entry.guard, new, guard_name(series_dir)))
                plan.guards[name] = f"{guard_name(series_dir)}>={new}"
                plan.actions[name] = (f"rewritten for {new} in place [{guard_name(series_dir)}>={new}]; it no longer applies to "
                                      f"{served[0]}-{served[-1]}, which keep the previous file as {old} [{_narrow(entry.guard, new, guard_name(series_dir))}]")
            else:
                if not entry.matches(new):
                    plan.guards[name] = _widen(entry.guard, new, guard_name(series_dir))
                plan.actions[name] = f"rewritten for {new} (in place; it still applies to every release it serves)"
            continue
        variant = variant_name(entry.name, new)
        if variant in by_name or (series_dir / variant).exists():
            raise SeriesError(f"{variant} exists already; remove it or port --in-place", path=series_dir / variant)
        plan.variant_names[name] = variant
        plan.contents[variant] = render_header(c.header).encode() + c.diff
        plan.headers[variant] = c.header
        if served and new < served[0]:  # carried backwards: the new variant serves up to the old one's first release
            upper = backwards.get(variant, served[0])
            guard = f"{guard_name(series_dir)}>={new},<{upper}"
            plan.inserts[name] = (variant, guard)
            plan.backwards.add(variant)
            plan.actions[name] = f"new variant {variant} [{guard}]; {name} unchanged"
            if upper != served[0]:
                left = [v for v in series.releases.versions if upper <= v < served[0]]
                plan.actions[name] += (f"; made on {new}, it does not apply to {_name(state)} {upper}, so "
                                       f"{', '.join(map(str, left))} still have no variant of it (port --release {upper})")
        else:
            # up to the first newer release another variant serves (a release ported before this one)
            others = [e for e in series.groups()[entry.group] if e is not entry]
            upper = next((v for v in series.releases.versions if v > new and any(e.matches(v) for e in others)), None)
            guard = f"{guard_name(series_dir)}>={new}" + (f",<{upper}" if upper else "")
            plan.inserts[name] = (variant, guard)
            plan.guards[name] = _narrow(entry.guard, new, guard_name(series_dir))
            plan.actions[name] = f"new variant {variant} [{guard}]; {name} now [{plan.guards[name]}]"
    plan.series_text = edit_series_text(series.series_file.read_text(encoding="utf-8"), guards=plan.guards,
                                        inserts=plan.inserts)
    # Every Releases: field in line with what its guard serves once NEW is supported.
    versions = sorted({*series.releases.versions, new})
    new_series = parse_series(plan.series_text, series_dir)
    for entry in new_series.entries:
        path = series_dir / entry.name
        content = plan.contents.get(entry.name) or (path.read_bytes() if path.exists() else None)
        if content is None:
            continue
        header = parse_patch_text(content, path, entry.name).header
        value = field_value(header, "Releases")
        served = [v for v in versions if entry.matches(v)]
        fixed = updated_releases(value, served, versions) if value is not None and served else None
        if fixed is not None:
            header = with_field(header, "Releases", fixed)
            plan.headers[entry.name] = header
            plan.contents[entry.name] = render_header(header).encode() + diff_part(content)
    return plan
