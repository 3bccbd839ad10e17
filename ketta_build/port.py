"""``ketta-build port``: carry the series onto a Letta release it does not serve yet.

1. For each logical patch take the variant that serves the new release (its guard already
   admits it) or else the one serving the newest supported release; a patch retired before that
   release (like 0007, 0.14.0-0.15.1 only) stays behind.
2. Build ``build/<NEW>``: pristine NEW, then each patch, exactly where it can, else by 3-way merge
   against the file its ``Base-Release`` had (the apply engine's ``merged``).
3. On a conflict, stop: markers in the tree, a short plan, the state in ``.git/ketta-port.json``.
   ``port --continue`` takes the resolved files (committed by the user, or staged/changed in the
   tree, which it commits with the patch's message) and goes on; ``port --abort`` removes the
   tree. Nothing in ``patches/`` changes before the port finishes.
4. At the end, per patch: applied exactly → nothing to write (its guard is widened if it has to
   admit NEW); merged or resolved → a new variant ``NNNN-...-<NEW>.diff`` guarded
   ``[letta>=NEW]`` beside the old one, whose guard gains ``<NEW`` (with ``in_place``, the patch
   itself is rewritten for NEW instead, for when older releases are dropped); every hunk already
   upstream → its guard gains ``<NEW`` and it is proposed for dropping. NEW is added to
   ``releases.toml`` and tox.ini is regenerated.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from .applying import Outcome, apply_patch
from .buildtree import ApplyOptions, PreimageFinder, apply_series, check_out_dir, commit_patch, git
from .cache import Cache
from .errors import BuildTreeError, KettaError, SeriesError
from .gitdiff import canonical_diff, section_contexts
from .header import header_from_commit, parse_commit, render_header
from .patchfile import parse_patch_text
from .releases import add_release, load_releases
from .series import Series, SeriesEntry, read_series
from .upstream import IndexSource, UpstreamRelease

STATE = "ketta-port.json"
_VERSION_SUFFIX = re.compile(r"-\d+(?:\.\d+)+$")


@dataclass
class PortedPatch:
    name: str
    outcome: str  # clean | offset | merged | resolved | already-upstream | failed | not-attempted
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

    def save(self) -> None:
        path = Path(self.tree) / ".git" / STATE
        tmp = path.with_name(STATE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, tree: Path) -> "PortState":
        path = tree / ".git" / STATE
        if not path.is_file():
            raise BuildTreeError("no port in progress here (no .git/ketta-port.json); start one with ketta-build port --letta NEW",
                                 path=tree)
        data = json.loads(path.read_text())
        data["patches"] = [PortedPatch(**p) for p in data["patches"]]
        return cls(**data)


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


def _hunk_counts(result) -> dict[str, int]:
    counts: dict[str, int] = {}
    for h in result.hunks:
        counts[h.outcome.value] = counts.get(h.outcome.value, 0) + 1
    return counts


def start_port(new: Version, series_dir: Path, *, out: Path | None = None, cache: Cache | None = None,
               index_url: str | None = None, in_place: bool = False, force: bool = False,
               progress=lambda _: None) -> PortResult:
    cache = cache or Cache()
    series = read_series(series_dir)
    if series.releases.find(new) and _served(series, new):
        raise KettaError(f"letta {new} is supported and every patch has a variant for it: nothing to port (ketta-build apply)")
    source = IndexSource(cache, index_url, progress=progress, releases=series.releases, allow_unsupported=True)
    release: UpstreamRelease = source.resolve(new)
    out = (out or Path("build") / str(new)).absolute()
    check_out_dir(out, force)
    entries = carried_entries(series, new)
    report = apply_series(release, source, series, out, options=ApplyOptions(force=force), cache=cache,
                          base_source=IndexSource(cache, index_url, allow_unsupported=True), progress=progress,
                          entries=entries)
    patches = [PortedPatch(r.name, r.outcome.value, r.commit, _hunk_counts(r)) for r in report.results]
    patches += [PortedPatch(name, "not-attempted") for name in report.not_attempted]
    state = PortState(str(new), str(series_dir.absolute()), str(out), in_place, index_url,
                      _upload_date(cache, new), patches)
    failed = [p for p in patches if p.outcome == "failed"]
    if failed:
        state.stopped_at = failed[0].name
        state.save()
        return PortResult(state, False, plan=_plan(out, failed[0].name, report))
    state.save()
    return finish_port(out)


def _served(series: Series, version: Version) -> bool:
    """Does every logical patch of the series have a variant for ``version``?"""
    return all(any(e.matches(version) for e in members) for members in series.groups().values())


def _upload_date(cache: Cache, version: Version) -> str | None:
    record = cache.read_release(str(version)) or {}
    stamp = record.get("upload_time")
    return stamp[:10] if isinstance(stamp, str) and len(stamp) >= 10 else None


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


def _plan(tree: Path, name: str, report) -> list[str]:
    result = next(r for r in report.results if r.name == name)
    files = [f.path for f in result.files if f.outcome is Outcome.FAILED]
    return [
        f"{name} does not apply to letta {report.release.version}; the tree {tree} holds what could be applied",
        f"resolve the conflict markers (or .rej hunks) in: {', '.join(files)}",
        "then either commit the result (keep the Ketta-Patch trailer) or just leave it in the tree, and run "
        "ketta-build port --continue",
        "or give up: ketta-build port --abort (nothing in patches/ has changed)",
    ]


def continue_port(tree: Path, progress=lambda _: None) -> PortResult:
    tree = tree.absolute()
    state = PortState.load(tree)
    series_dir = Path(state.series_dir)
    series = read_series(series_dir)
    cache = Cache()
    stopped = next((p for p in state.patches if p.name == state.stopped_at), None)
    if stopped is not None:
        entry = next(e for e in series.entries if e.name == stopped.name)
        patch = series.load(entry)
        paths = [fp.path for fp in patch.files]
        left = _conflicted(tree, paths)
        if left:
            raise BuildTreeError(f"conflict markers or rejects are still in {', '.join(left)}; resolve them first", path=tree)
        head_msg = git(tree, "log", "-1", "--format=%B")
        committed = parse_commit(head_msg).patch == stopped.name
        for rel in paths:
            (tree / f"{rel}.orig").unlink(missing_ok=True)
        changed = set(git(tree, "diff", "--name-only", "HEAD").splitlines())
        changed |= set(git(tree, "ls-files", "--others", "--exclude-standard").splitlines())
        if changed:
            stray = sorted(changed - set(paths))
            if committed or stray:
                raise BuildTreeError(f"uncommitted changes outside {stopped.name}'s files ({', '.join(stray or sorted(changed))}); "
                                     "commit or stash them", path=tree)
            stopped.commit = commit_patch(tree, patch, paths)
        elif committed:
            stopped.commit = git(tree, "rev-parse", "HEAD")
        else:
            raise BuildTreeError(f"nothing resolved for {stopped.name}: change the files (or commit) first", path=tree)
        stopped.outcome = "resolved"
        state.stopped_at = None
    release_version = Version(state.version)
    finder = PreimageFinder(series, {}, IndexSource(cache, state.index_url, allow_unsupported=True), cache)
    for ported in state.patches:
        if ported.outcome != "not-attempted":
            continue
        entry = next(e for e in series.entries if e.name == ported.name)
        patch = series.load(entry)
        progress(f"applying {ported.name}")
        result = apply_patch(tree, patch, preimage=finder, upstream_label=f"letta {release_version}")
        ported.outcome = result.outcome.value
        ported.hunks = _hunk_counts(result)
        if result.outcome is Outcome.FAILED:
            state.stopped_at = ported.name
            state.save()
            files = [f.path for f in result.files if f.outcome is Outcome.FAILED]
            return PortResult(state, False, plan=[
                f"{ported.name} does not apply either; resolve the markers in {', '.join(files)}",
                "then ketta-build port --continue (or --abort)"])
        if result.outcome is not Outcome.ALREADY_UPSTREAM:
            ported.commit = commit_patch(tree, patch, [f.path for f in result.files])
    state.save()
    return finish_port(tree)


def abort_port(tree: Path) -> Path:
    """Remove the port's build tree; nothing else was changed."""
    tree = tree.absolute()
    PortState.load(tree)  # refuses a tree with no port in progress
    shutil.rmtree(tree)
    return tree


def _narrow(guard: SpecifierSet | None, new: Version) -> str:
    specs = sorted(str(s) for s in (guard or []))
    return "letta" + ",".join(specs + [f"<{new}"])


def _widen(guard: SpecifierSet, new: Version) -> str | None:
    kept = [str(s) for s in guard if s.contains(new, prereleases=True)]
    return "letta" + ",".join(kept) if kept else None


def _variant_name(entry: SeriesEntry, new: Version) -> str:
    stem = entry.name.rsplit(".", 1)[0]
    stem = _VERSION_SUFFIX.sub("", stem)
    return f"{stem}-{new}.diff"


def finish_port(tree: Path) -> PortResult:
    """Write what the port changed into the series, add the release, regenerate tox.ini."""
    tree = tree.absolute()
    state = PortState.load(tree)
    new = Version(state.version)
    series_dir = Path(state.series_dir)
    series = read_series(series_dir)
    by_name = {e.name: e for e in series.entries}
    files: dict[Path, bytes | None] = {}
    guards: dict[str, str | None] = {}  # entry name -> new guard text (None: no guard)
    inserts: dict[str, tuple[str, str]] = {}  # before entry -> (new name, guard)
    for ported in state.patches:
        entry = by_name[ported.name]
        if ported.outcome in ("clean", "offset"):
            if not entry.matches(new):
                guards[entry.name] = _widen(entry.guard, new)
                ported.action = f"guard widened to admit {new}"
            else:
                ported.action = "applies as it is"
            continue
        if ported.outcome == "already-upstream":
            guards[entry.name] = _narrow(entry.guard, new)
            ported.action = f"already upstream in {new}: guard narrowed to [{guards[entry.name]}]; consider dropping it"
            continue
        if ported.outcome not in ("merged", "resolved") or not ported.commit:
            raise KettaError(f"{ported.name} has not been carried onto letta {new} ({ported.outcome}); port --continue first")
        old = series.load(entry)
        message = git(tree, "log", "-1", "--format=%B", ported.commit)
        author = git(tree, "log", "-1", "--format=%an%x00%ae", ported.commit).split("\x00")
        header = header_from_commit(parse_commit(message), author[0], author[1], base_release=new, where=ported.commit[:10])
        diff = canonical_diff(tree, f"{ported.commit}^", ported.commit, section_contexts(old.files))
        content = render_header(header).encode() + diff.encode("utf-8", errors="surrogateescape")
        if state.in_place:
            files[series_dir / entry.name] = content
            parse_patch_text(content, series_dir / entry.name, entry.name)
            if not entry.matches(new):
                guards[entry.name] = _widen(entry.guard, new)
            ported.action = f"rewritten for {new} (in place)"
        else:
            name = _variant_name(entry, new)
            if name in by_name or (series_dir / name).exists():
                raise SeriesError(f"{name} exists already; remove it or port --in-place", path=series_dir / name)
            parse_patch_text(content, series_dir / name, name)
            files[series_dir / name] = content
            served = [v for v in series.releases.versions if entry.matches(v)]
            if served and new < served[0]:
                # carried backwards: the new variant serves up to the old one's first release
                guard = f"letta>={new},<{served[0]}"
                inserts[entry.name] = (name, guard)
                ported.action = f"new variant {name} [{guard}]; {entry.name} unchanged"
            else:
                guard = f"letta>={new}"
                inserts[entry.name] = (name, guard)
                guards[entry.name] = _narrow(entry.guard, new)
                ported.action = f"new variant {name} [{guard}]; {entry.name} now [{guards[entry.name]}]"
    files[series.series_file] = _rewrite_series(series, guards, inserts)
    written = []
    for path, content in files.items():
        if content is None:
            continue
        if path.exists() and path.read_bytes() == content:
            continue
        tmp = path.with_name(f".{path.name}.ketta-port")
        tmp.write_bytes(content)
        os.replace(tmp, path)
        written.append(path)
    date = state.upload_date or datetime.date.today().isoformat()
    if add_release(series_dir, new, date):
        written.append(load_releases(series_dir).path)
    from . import toxini

    project = series_dir.absolute().parent
    if (project / "tox.ini").exists() and toxini.write(project):
        written.append(project / "tox.ini")
    state.stopped_at = None
    state.save()
    read_series(series_dir).explain(new)  # the written series must select one variant per patch for NEW
    return PortResult(state, True, written)


def _rewrite_series(series: Series, guards: dict[str, str | None], inserts: dict[str, tuple[str, str]]) -> bytes:
    out = []
    lines = series.series_file.read_text(encoding="utf-8").splitlines()
    columns = [line.index("[") for line in lines if "[" in line.split("#", 1)[0]]
    width = (max(set(columns), key=columns.count) if columns else 41) - 1  # where most guards start
    for line in lines:
        body, hash_, comment = line.partition("#")
        name = body.split()[0] if body.strip() else None
        if name in inserts:
            new_name, guard = inserts[name]
            out.append(f"{new_name:<{width}} [{guard}]")
        if name in guards:
            guard = guards[name]
            text = f"{name:<{width}} [{guard}]" if guard else name
            out.append(text + (f"  #{comment}" if hash_ else ""))
        else:
            out.append(line)
    return ("\n".join(out) + "\n").encode()

