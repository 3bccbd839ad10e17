"""The build tree: a git repository holding pristine upstream plus one commit per patch.

* first commit: the pristine release, tagged ``upstream/<version>``;
* then one commit per applied patch, with the patch header's author, subject
  and description, so ``git diff upstream/<version>`` is exactly Ketta's change.

Commit identities and dates are fixed (the patch's ``Date:`` or
``SOURCE_DATE_EPOCH``), so two runs give the same tree *and* commit hashes.
The tree is built in a temporary sibling of ``--out`` and renamed into place
only when the run is over; an interrupted run leaves no tree that looks done.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import Version

from .applying import FilePatch, Outcome, PatchResult, TreeGuard, apply_hunks, apply_patch, decode, encode, git_blob_id
from .atomic import uninterruptible, write_atomic
from .cache import Cache
from .errors import BuildTreeError, KettaError, SeriesError
from .gitcmd import blob, git, git_bytes, keep_bytes_as_they_are, popen
from .header import commit_message
from .patchfile import Patch, parse_patch_text, split_lines
from .profile import Profile, default_profile
from .report import report_json
from .series import Selection, Series
from .sources import IndexSource, UpstreamRelease, UpstreamSource

STATE_FILE = "ketta-build.json"  # inside .git/ of the build tree
_TOOL_IDENTITY = ("ketta-build", "ketta-build@ketta.invalid")
_DEFAULT_EPOCH = 315532800  # 1980-01-01, the zip epoch
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


_MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z: the last second git shows (and Python's datetime holds)


def _epoch() -> int:
    """``SOURCE_DATE_EPOCH`` (whole seconds since 1970, up to the year 9999), else 1980-01-01."""
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if not raw:
        return _DEFAULT_EPOCH
    if not re.fullmatch(r"[0-9]+", raw) or int(raw) > _MAX_EPOCH:
        raise KettaError(f"SOURCE_DATE_EPOCH must be a whole number of seconds from 0 to {_MAX_EPOCH} "
                         f"(9999-12-31), got {raw!r}")
    return int(raw)


def _identity_env(author: tuple[str, str], committer: tuple[str, str], date: str) -> dict[str, str]:
    return {
        "GIT_AUTHOR_NAME": author[0],
        "GIT_AUTHOR_EMAIL": author[1],
        "GIT_COMMITTER_NAME": committer[0],
        "GIT_COMMITTER_EMAIL": committer[1],
        "GIT_AUTHOR_DATE": date,
        "GIT_COMMITTER_DATE": date,
    }


def _patch_date(patch: Patch) -> str:
    if patch.header.date:
        from email.utils import parsedate_to_datetime  # only patches with a Date: header need it

        try:
            return f"@{int(parsedate_to_datetime(patch.header.date).timestamp())} +0000"
        except (TypeError, ValueError):
            pass
    return f"@{_epoch()} +0000"


def _check_author(patch: Patch) -> None:
    """git takes a commit's author as ``Name <email>`` on one line: refuse one the header folded over
    several lines (bad input, not a git failure)."""
    h = patch.header
    if any(c in h.author_name + h.author_email for c in "\r\n"):
        lines = patch.path.read_text(encoding="utf-8", errors="replace").splitlines() if patch.path.is_file() else []
        line = next((i for i, text in enumerate(lines, 1) if text.startswith("Author:")), None)
        raise SeriesError(f"Author spans several lines ({h.author_name} <{h.author_email}>); write 'Name <email>' on "
                          "one line", path=patch.path, line=line)


# --------------------------------------------------------------------------- pristine trees


def _source_profile(source) -> Profile:
    """The profile of the upstream ``source`` reads (git and directory sources carry it, the index's
    through its releases); the default profile when it says none."""
    return (getattr(source, "profile", None) or getattr(getattr(source, "releases", None), "profile", None)
            or default_profile())


def _commit_pristine(tree: Path, version: Version, profile: Profile | None = None) -> None:
    profile = profile or default_profile()
    git(tree, "init", "-q", ".")
    keep_bytes_as_they_are(tree / ".git")  # the release's .gitattributes change no byte
    git(tree, "add", "-A", "-f", ".")
    name, who = profile.display, (f"{profile.display} upstream", f"upstream@{profile.project}.invalid")
    env = _identity_env(who, _TOOL_IDENTITY, f"@{_epoch()} +0000")
    git(tree, "commit", "-q", "--no-verify", "--allow-empty", "-m", f"{name} {version} (pristine upstream)", env=env)
    git(tree, "tag", f"upstream/{version}")


def _pristine_record(cache: Cache, sha256: str) -> Path:
    """What the cached pristine repository of the sdist ``sha256`` was made as: its tag, commit and tree."""
    return cache.pristine_repo(sha256).with_suffix(".json")


def _pristine_state(repo: Path, version: Version) -> list[str] | None:
    """[commit, tree] that tag ``upstream/<version>`` of ``repo`` names now (None: no such tag)."""
    if not (repo / "HEAD").is_file():
        return None
    tag = f"refs/tags/upstream/{version}"
    found = [git(repo, "rev-parse", "-q", "--verify", f"{tag}^{{{kind}}}", check=False) for kind in ("commit", "tree")]
    return found if all(found) else None


def _pristine_intact(repo: Path, release: UpstreamRelease, cache: Cache) -> tuple[bool, str | None]:
    """(is the cached repository what it was made as, why not when it had a record to say so)."""
    if not (repo / "HEAD").is_file():
        return False, None  # not made yet, or removed: made (again) without a word
    try:
        record = json.loads(_pristine_record(cache, release.sha256).read_text())
    except (OSError, ValueError):
        return False, None  # made before records were kept, or half made: rebuilt without a word
    state = _pristine_state(repo, release.version)
    wanted = [record.get("commit"), record.get("tree")] if isinstance(record, dict) else None
    if state is not None and state == wanted and record.get("sdist_sha256") == release.sha256:
        return True, None
    now = f"tag upstream/{release.version} is {'missing' if state is None else f'commit {state[0]}, tree {state[1]}'}"
    return False, f"{now}, it was made as commit {wanted[0] if wanted else '?'}, tree {wanted[1] if wanted else '?'}"


def _pristine_changed(repo: Path, release: UpstreamRelease, why: str) -> None:
    print(f"ketta-build: warning: {repo}: the cached pristine repository of release {release.version} was changed since it "
          f"was made ({why}); discarded and made again from its sdist (sha256 {release.sha256})", file=sys.stderr)


def ensure_pristine_repo(release: UpstreamRelease, source: UpstreamSource, cache: Cache) -> Path | None:
    """A cached bare repository of ``release`` (index releases only); built on first use.

    Keyed by the sdist's sha256 (its pin), with a record beside it of the commit and tree tag
    ``upstream/<version>`` named when it was made. Every use checks tag → commit → tree against the
    record; a repository that differs (amended, tag moved) or has no record is discarded and made again
    from the sdist, itself checked against its sha256."""
    if release.sha256 is None:
        return None
    repo = cache.pristine_repo(release.sha256)
    if _pristine_intact(repo, release, cache)[0]:
        return repo
    with cache.lock(f"pristine-{release.sha256}"):
        intact, why = _pristine_intact(repo, release, cache)
        if intact:
            return repo
        if why is not None:
            _pristine_changed(repo, release, why)
        work = Path(tempfile.mkdtemp(prefix=".pristine-", dir=cache.ensure("pristine")))
        try:
            tree = work / "tree"
            tree.mkdir()
            source.export(release, tree)
            _commit_pristine(tree, release.version, _source_profile(source))
            git(work, "clone", "-q", "--bare", "--no-local", str(tree), str(work / "repo.git"))
            made = _pristine_state(work / "repo.git", release.version)
            if made is None:
                raise BuildTreeError(f"the pristine repository of release {release.version} made in {work} has no tag "
                                     f"upstream/{release.version}")
            commit, tree_id = made
            if repo.exists():
                os.replace(repo, work / "discarded.git")
            write_atomic(_pristine_record(cache, release.sha256), json.dumps(
                {"sdist_sha256": release.sha256, "tag": f"upstream/{release.version}", "commit": commit, "tree": tree_id},
                indent=2).encode() + b"\n")
            os.replace(work / "repo.git", repo)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return repo


def _worktree_tree(tree: Path) -> str:
    """The tree id of ``tree``'s files as they are on disk, every file read and hashed again (a fresh
    index: nothing is taken from the object ids checkout wrote down)."""
    with tempfile.TemporaryDirectory(prefix="ketta-index-") as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git(tree, "add", "-A", "-f", ".", env=env)
        return git(tree, "write-tree", env=env)


def populate_pristine(dest: Path, release: UpstreamRelease, source: UpstreamSource, cache: Cache | None) -> None:
    """Make ``dest`` (empty) a git work tree whose only commit is the pristine release.

    From the cached pristine repository, the checked-out files are hashed again and must make the tree
    that repository was made with: an object changed in place (under its own id) is caught here, and
    the repository is made again from the sdist."""
    repo = ensure_pristine_repo(release, source, cache) if cache is not None else None
    if repo is None:
        dest.mkdir(parents=True, exist_ok=True)
        source.export(release, dest)
        _commit_pristine(dest, release.version, _source_profile(source))
        return
    for attempt in (1, 2):
        git(dest.parent, "clone", "-q", "--local", "--no-checkout", str(repo), str(dest))
        keep_bytes_as_they_are(dest / ".git")
        git(dest, "remote", "remove", "origin")
        git(dest, "checkout", "-q", "-f", "-B", "main", f"upstream/{release.version}")
        wanted = git(dest, "rev-parse", f"upstream/{release.version}^{{tree}}")
        got = _worktree_tree(dest)
        if got == wanted:
            return
        shutil.rmtree(dest)
        if attempt == 2:
            raise BuildTreeError(f"the pristine tree of release {release.version} checked out from {repo} hashes to tree "
                                 f"{got}, not {wanted}, even after the repository was made again from its sdist")
        with cache.lock(f"pristine-{release.sha256}"):
            _pristine_changed(repo, release, f"a checked-out file is not the object it was stored as (tree {got}, "
                                             f"not {wanted})")
            _pristine_record(cache, release.sha256).unlink(missing_ok=True)
        repo = ensure_pristine_repo(release, source, cache)


# --------------------------------------------------------------------------- 3-way preimages


class PristineRepos:
    """The cached bare repository of each release a run reads (resolved and built once per run)."""

    def __init__(self, source: UpstreamSource | None, cache: Cache | None, progress=lambda _: None) -> None:
        self.source = source
        self.cache = cache
        self.progress = progress  # one line per release read the first time (a fetch can take a while)
        self._repos: dict[Version, Path | str] = {}

    def get(self, version: Version) -> Path | str:
        """The repository holding tag ``upstream/<version>``, or why there is none."""
        if version not in self._repos:
            if self.source is None or self.cache is None:
                self._repos[version] = "no source for other releases"
            else:
                name = _source_profile(self.source).name
                self.progress(f"reading {name} {version} (from the cache, else the index)")
                try:
                    release = self.source.resolve(version)
                    self._repos[version] = ensure_pristine_repo(release, self.source, self.cache) or "no cache"
                except KettaError as exc:
                    self._repos[version] = f"{name} {version} unavailable ({exc.message})"
        return self._repos[version]


class PreimageFinder:
    """Recreates the exact file a patch was made against, for 3-way merges.

    That is the file in the patch's ``Base-Release`` with the series' earlier
    patches (as selected for that release) applied; when the patch carries
    ``index`` blob ids, the result must match them.
    """

    def __init__(self, series: Series, patches: dict[str, Patch], base_source: UpstreamSource | None, cache: Cache | None,
                 progress=lambda _: None):
        self.series = series
        self.patches = patches
        self.repos = PristineRepos(base_source, cache, progress)

    def _load(self, name: str) -> Patch:
        if name not in self.patches:
            self.patches[name] = self.series.load(next(e for e in self.series.entries if e.name == name))
        return self.patches[name]

    def __call__(self, patch: Patch, fp: FilePatch) -> tuple[bytes | None, str | None]:
        base = patch.header.base_release
        repo = self.repos.get(base)
        if isinstance(repo, str):
            return None, repo
        content = blob(repo, f"upstream/{base}", fp.path)  # None until an earlier patch creates the file
        candidates = [content] if content is not None else []
        group = next((e.group for e in self.series.entries if e.name == patch.name), patch.name)
        for entry in self.series.select(base):
            if entry.group == group:
                break
            earlier = self._load(entry.name)
            for other in earlier.files:
                if other.path != fp.path:
                    continue
                if other.is_new:
                    content = encode("".join(line for h in other.hunks for line in h.new_lines))
                elif content is None:
                    return None, f"earlier patch {entry.name} changes {fp.path}, which {self.series.profile.name} {base} does not have"
                else:
                    lines, results = apply_hunks(split_lines(decode(content)), other.hunks)
                    if any(r.outcome not in (Outcome.CLEAN, Outcome.OFFSET) for r in results):
                        return None, f"earlier patch {entry.name} does not apply to {self.series.profile.name} {base}"
                    content = encode("".join(lines))
                candidates.append(content)
        if content is None:
            return None, f"{fp.path} does not exist in {self.series.profile.name} {base} (nor does an earlier patch create it)"
        if fp.old_blob is None:
            return content, None
        for candidate in reversed(candidates):
            if git_blob_id(candidate).startswith(fp.old_blob):
                return candidate, None
        return None, f"no file in {self.series.profile.name} {base} (+ earlier patches) has the patch's blob id {fp.old_blob}"


# --------------------------------------------------------------------------- the run


@dataclass
class ApplyOptions:
    fuzz: int = 0
    keep_going: bool = False
    force: bool = False
    # Dry runs only (upstream check): after a failed patch go on as if its conflicts had been resolved
    # in the patch's favour, so later patches are judged on the lines they expect, not on a cascade.
    assume_resolved: bool = False
    out_flag: str = "--out"  # how the command names the tree, for its refusals


@dataclass
class ApplyReport:
    release: UpstreamRelease
    series_dir: Path
    selections: list[Selection]
    results: list[PatchResult] = field(default_factory=list)
    not_attempted: list[str] = field(default_factory=list)
    out: Path | None = None
    head: str | None = None
    tree_hash: str | None = None
    options: ApplyOptions = field(default_factory=ApplyOptions)
    backup_ref: str | None = None  # where the replaced tree's unexported commits were kept
    backup_refs: list[str] = field(default_factory=list)  # its other refs and stashes, kept
    kept_ignored: list[str] = field(default_factory=list)  # its git-ignored files and directories, carried over

    @property
    def failed(self) -> list[PatchResult]:
        return [r for r in self.results if r.outcome is Outcome.FAILED]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.not_attempted else 0


PORT_STATE_FILE = "ketta-port.json"  # inside .git/ of a tree a port is working in


def uncommitted(tree: Path) -> list[str]:
    """The paths ``git status`` shows as changed or untracked in ``tree``."""
    raw = git_bytes(tree, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames")
    return [entry[3:].decode("utf-8", errors="surrogateescape") for entry in raw.split(b"\0") if len(entry) > 3]


def dirty_summary(paths: list[str]) -> str:
    """``pkg/m.py`` or ``3 files (pkg/a.py, pkg/b.py, pkg/c.py)``."""
    if len(paths) == 1:
        return paths[0]
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return f"{len(paths)} files ({shown})"


def check_out_dir(out: Path, force: bool, flag: str = "--out") -> None:
    """May ``out`` be written? Empty or missing, or (with ``force``) a clean ketta-build tree with no
    port in progress. ``flag`` is how the command calls the directory. A symbolic link is refused,
    whatever it points to: the tree is renamed into place, which would replace the link itself."""
    if out.is_symlink():
        raise BuildTreeError(f"{flag} is a symbolic link (to {os.readlink(out)}); a build tree is put in place by a "
                             "rename, which would replace the link: give the directory it points to", path=out)
    if out.exists() and not out.is_dir():
        raise BuildTreeError(f"{flag} exists and is not a directory", path=out)
    for parent in out.absolute().parents:
        if parent.exists() and not parent.is_dir():
            raise KettaError(f"{parent} is a file, so {flag} cannot be made inside it", path=out)
    if out.is_dir() and any(out.iterdir()):
        if (out / ".git" / PORT_STATE_FILE).is_file():
            raise BuildTreeError("a port is in progress in this tree: finish it with ketta-build port --continue or "
                                 "give it up with ketta-build port --abort", path=out)
        if not force:
            raise BuildTreeError(f"{flag} is not empty; pass --force to replace it (commits made there and not "
                                 "exported are kept as a backup ref)", path=out)
        if not (out / ".git" / STATE_FILE).is_file():
            raise BuildTreeError(f"{flag} is not a ketta-build tree; refusing to replace it even with --force", path=out)
        changed = uncommitted(out)
        if changed:
            raise BuildTreeError(f"{flag} has uncommitted changes in {dirty_summary(changed)}; commit, stash or remove "
                                 "them first", path=out)


def series_lock(cache: Cache, series_dir: Path):
    """The lock a verb holds while it reads and then writes ``series_dir`` (export, a port's finish):
    two at once would each write what they planned from the same series (a new patch listed twice)."""
    return cache.lock("series-" + hashlib.sha256(str(series_dir.resolve()).encode()).hexdigest()[:16])


BACKUP_PREFIX = "refs/ketta/backup/"


def backup_name(what: str, commit: str) -> str:
    """``refs/ketta/backup/20261202T150102Z-apply-1a2b3c4d5e``: a ref that keeps ``commit``, which a verb
    is about to drop (the commit in the name: two in the same second never share one)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{BACKUP_PREFIX}{stamp}-{what}-{commit[:10]}"


@dataclass(frozen=True)
class Synced:
    """A patch as the tree and ``patches/`` last agreed on it (apply, export, port): the export's base
    for telling a change made in the tree from one made in ``patches/`` (a pull, another tree's export)."""

    sha256: str | None  # of the patch file as the tree took it
    commit: str | None  # the commit that carried it then
    text: str | None = None  # the file itself; None in trees made before it was kept


@dataclass(frozen=True)
class TreeState:
    """What ``.git/ketta-build.json`` says about a build tree."""

    version: Version
    head: str | None  # the commit the tool itself left at HEAD (apply, or the last export or port)
    stopped_at: str | None  # the patch apply stopped at (it did not apply), if it stopped
    not_attempted: tuple[str, ...]  # the patches after it
    synced: dict[str, Synced]  # patch name -> the file and commit when the tree and patches/ last agreed on it


def synced_record(content: bytes, commit: str | None) -> dict:
    """How ``.git/ketta-build.json`` keeps a :class:`Synced` (``synced``: name -> this)."""
    return {"sha256": hashlib.sha256(content).hexdigest(), "commit": commit,
            "file": content.decode("utf-8", errors="surrogateescape")}


def _synced(record) -> Synced:
    if isinstance(record, dict):
        text = record.get("file")
        return Synced(record.get("sha256"), record.get("commit"), text if isinstance(text, str) else None)
    return Synced(record[0], record[1])  # [sha256, commit]: trees made before the file was kept


def read_tree_state(tree: Path) -> TreeState:
    """The state of build tree ``tree``; refuses a directory that is not one."""
    path = tree / ".git" / STATE_FILE
    if not (tree / ".git").is_dir() or not path.is_file():
        raise BuildTreeError(f"not a ketta-build tree (no .git/{STATE_FILE}); make one with ketta-build apply", path=tree)
    try:
        data = json.loads(path.read_text())
        version = Version(data["upstream"]["version"])
    except (ValueError, KeyError, TypeError):
        raise BuildTreeError(f"its .git/{STATE_FILE} is not readable", path=tree) from None
    failed = [p["name"] for p in data.get("patches", []) if p.get("outcome") == "failed"]
    # trees made before "synced" was kept: what apply recorded (a false alarm beats a silent revert)
    synced = data.get("synced") or {p["name"]: [p.get("sha256"), p.get("commit")] for p in data.get("patches", [])
                                    if p.get("commit")}
    try:
        kept = {name: _synced(record) for name, record in synced.items()}
    except (AttributeError, IndexError, KeyError, TypeError):
        raise BuildTreeError(f"its .git/{STATE_FILE} is not readable", path=tree) from None
    return TreeState(version, (data.get("tree") or {}).get("head"), failed[0] if failed and not data.get("options", {}).get(
        "keep_going") else None, tuple(data.get("not_attempted", [])), kept)


def recorded_head(tree: Path) -> str | None:
    try:
        return read_tree_state(tree).head
    except BuildTreeError:
        return None


def record_head(tree: Path, head: str | None, synced: dict[str, tuple[bytes, str | None]] | None = None) -> None:
    """Remember ``head`` (unless None) as the commit the tool left (after it rewrote commit messages), and
    for the patches in ``synced`` (name -> (file, commit)) the file and commit that now agree."""
    state_file = tree / ".git" / STATE_FILE
    data = json.loads(state_file.read_text())
    if head is not None:
        data.setdefault("tree", {})["head"] = head
    if synced is not None:
        known = data.get("synced") or {name: [s.sha256, s.commit] for name, s in read_tree_state(tree).synced.items()}
        known.update({name: synced_record(content, commit) for name, (content, commit) in synced.items()})
        data["synced"] = known
    write_atomic(state_file, (json.dumps(data, indent=2) + "\n").encode())


def carry_backups(old: Path, new: Path, what: str) -> tuple[str | None, list[str]]:
    """Before ``old`` is replaced by ``new``: keep, in ``new``, the old tree's backup refs, (as a new backup
    ref) its HEAD when someone committed there since the tool left it, and every other ref that holds
    commits the tool did not leave there (a branch, a tag, each stash) as
    ``refs/ketta/backup/<time>-<what>/<ref without refs/>`` (stashes: ``.../stash/0``, ``1``, ...).
    The names of the new refs: HEAD's (or None), the others."""
    if not (old / ".git").is_dir():
        return None, []
    head = git(old, "rev-parse", "-q", "--verify", "HEAD", check=False)
    left = recorded_head(old)
    refs = [line.split(" ", 1) for line in git(old, "for-each-ref", "--format=%(objectname) %(refname)",
                                               check=False).splitlines() if line.strip()]
    backups = [(commit, ref) for commit, ref in refs if ref.startswith(BACKUP_PREFIX)]
    specs = [f"+{ref}:{ref}" for _, ref in backups]
    made = None
    if head and head != left and head not in {commit for commit, _ in backups}:
        made = backup_name(what, head)
        specs.append(f"+{head}:{made}")
    # every other ref with commits the tool did not leave (those of the series are in HEAD's history)
    merged = set(git(old, "for-each-ref", f"--merged={left}", "--format=%(refname)", check=False).splitlines()) if left else set()
    current = git(old, "symbolic-ref", "-q", "HEAD", check=False)
    group = f"{BACKUP_PREFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{what}"
    while any(ref.startswith(group + "/") for _, ref in backups):  # two runs in one second
        group += "-again"
    others: list[tuple[str, str]] = []
    for commit, ref in refs:
        if ref.startswith(BACKUP_PREFIX) or ref in merged or ref == "refs/stash" or (ref == current and made):
            continue
        others.append((commit, f"{group}/{ref.removeprefix('refs/')}"))
    if git(old, "rev-parse", "-q", "--verify", "refs/stash", check=False):
        stashes = git(old, "log", "--walk-reflogs", "--format=%H", "refs/stash", check=False).splitlines()
        others += [(commit, f"{group}/stash/{n}") for n, commit in enumerate(stashes)]
    specs += [f"+{commit}:{name}" for commit, name in others]
    if specs:  # (a stash older than the last is in no ref, only in a reflog: fetched by its id)
        git(new, "-c", "uploadpack.allowAnySHA1InWant=true", "fetch", "-q", "--no-tags", str(old), *specs)
    return made, [name for _, name in others]


CARRY_FILE = "ketta-carry.json"  # in .git/ of a tree being replaced: its ignored files to carry over


def ignored_entries(tree: Path) -> list[str]:
    """The git-ignored files of ``tree`` (a directory all of whose content is: its name and a slash)."""
    raw = git_bytes(tree, "ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory",
                    "--no-empty-directory")
    return [entry.decode("utf-8", errors="surrogateescape") for entry in raw.split(b"\0") if entry]


def _carry_problems(old: Path, new: Path, entries: list[str]) -> list[str]:
    """Why ignored files of ``old`` cannot go to the same place in ``new``: ``new`` has something there,
    or would not ignore them (they would make it dirty)."""
    problems = []
    for rel in entries:
        parts = Path(rel.rstrip("/")).parts
        spots = [new.joinpath(*parts[:i]) for i in range(1, len(parts) + 1)]
        if any(spot.is_symlink() or spot.exists() and (spot == spots[-1] or not spot.is_dir()) for spot in spots):
            problems.append(f"{rel} (the new tree has it)")
    if (old / ".git" / "info" / "exclude").is_file():  # patterns the user added there go along
        (new / ".git" / "info").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(old / ".git" / "info" / "exclude", new / ".git" / "info" / "exclude")
    ignored = _ignored_in(new, entries)
    for rel in entries:
        if rel in ignored:
            continue
        if rel.endswith("/"):  # a directory not ignored as such (logs/ of *.log files): each of its files must be
            inside = [str(Path(base, f).relative_to(old)) for base, _, files in os.walk(old / rel) for f in files]
            if len(_ignored_in(new, inside)) == len(inside):
                continue
        problems.append(f"{rel} (the new tree does not ignore it)")
    return problems


def _ignored_in(tree: Path, paths: list[str]) -> set[str]:
    """Those of ``paths`` the ignore rules of ``tree`` ignore (whether they exist there or not)."""
    if not paths:
        return set()
    out = git_bytes(tree, "check-ignore", "--no-index", "-z", "--stdin", check=False,
                    input=b"".join(p.encode("utf-8", errors="surrogateescape") + b"\0" for p in paths))
    return {p.decode("utf-8", errors="surrogateescape") for p in out.split(b"\0") if p}


def _carry(old: Path, new: Path, entries: list[str]) -> None:
    """Move the ignored files ``entries`` of ``old`` to the same places in ``new`` (where free)."""
    for rel in entries:
        source, target = old / rel.rstrip("/"), new / rel.rstrip("/")
        if (source.exists() or source.is_symlink()) and not (target.exists() or target.is_symlink()):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)


def reword_commits(tree: Path, messages: dict[str, str], reason: str,
                   authors: dict[str, tuple[str, str]] | None = None) -> dict[str, str]:
    """Give the commits ``messages`` names (sha -> message) those messages (and those ``authors`` names
    those authors), keeping every tree and date; the commits after them are recreated on top. Only
    messages and authors change, so the work tree and index stay as they are; the old commits stay in
    the branch's reflog. Returns old -> new sha."""
    authors = authors or {}
    if not messages and not authors:
        return {}
    version = read_tree_state(tree).version
    chain = git(tree, "rev-list", "--reverse", "--topo-order", f"upstream/{version}..HEAD").splitlines()
    mapping: dict[str, str] = {}
    parent = None
    for sha in chain:
        if parent is None and sha not in messages and sha not in authors:
            continue
        if parent is None:
            parent = git(tree, "rev-parse", f"{sha}^")
        fields = git_bytes(tree, "show", "-s", "--format=%an%x00%ae%x00%ad%x00%cn%x00%ce%x00%cd%x00%T", "--date=raw", sha)
        an, ae, ad, cn, ce, cd, tree_id = fields.decode("utf-8", errors="surrogateescape").rstrip("\n").split("\x00")
        if sha in messages:
            message = stripspace(messages[sha]).encode("utf-8", errors="surrogateescape")
        else:  # kept byte for byte
            message = git_bytes(tree, "cat-file", "commit", sha).split(b"\n\n", 1)[1]
        an, ae = authors.get(sha, (an, ae))
        env = {"GIT_AUTHOR_NAME": an, "GIT_AUTHOR_EMAIL": ae, "GIT_AUTHOR_DATE": ad,
               "GIT_COMMITTER_NAME": cn, "GIT_COMMITTER_EMAIL": ce, "GIT_COMMITTER_DATE": cd}
        parent = git_bytes(tree, "commit-tree", tree_id, "-p", parent, "-F", "-", env=env, input=message).decode().strip()
        mapping[sha] = parent
    if parent is None:
        return {}
    head = git(tree, "rev-parse", "HEAD")
    ref = git(tree, "symbolic-ref", "-q", "HEAD", check=False) or "HEAD"
    git(tree, "update-ref", "-m", f"ketta-build: {reason}", ref, parent, head)
    return mapping


def _clean_stale_temp_dirs(out: Path) -> None:
    """Remove what an earlier run that died left beside ``out``: its temporary tree (named with
    its pid inside) and the replaced tree it did not get to delete (named with its pid)."""
    for stale in out.parent.glob(f".{out.name}.ketta-tmp-*"):
        try:
            pid = int((stale / ".ketta-pid").read_text())
            os.kill(pid, 0)
            continue  # its owner is alive
        except (OSError, ValueError):
            shutil.rmtree(stale, ignore_errors=True)
    for stale in out.parent.glob(f".{out.name}.ketta-old-*"):
        try:
            os.kill(int(stale.name.rsplit("-", 1)[1]), 0)
            continue
        except (OSError, ValueError):
            pass
        if not out.exists():  # it died between the two renames: the replaced tree goes back
            os.replace(stale, out)
            continue
        marker = stale / ".git" / CARRY_FILE
        if marker.is_file():  # it died before it carried the ignored files over: carry them now
            try:
                entries = [e for e in json.loads(marker.read_text()) if isinstance(e, str)]
            except (OSError, ValueError, TypeError):
                continue  # left for the user to look at
            _carry(stale, out, entries)
            if any((stale / rel.rstrip("/")).exists() for rel in entries):
                continue  # some had nowhere to go: left where they are
        shutil.rmtree(stale, ignore_errors=True)


def stripspace(message: str) -> str:
    """What ``git commit -m`` stores (its "whitespace" clean-up): trailing blanks gone from every line,
    runs of empty lines folded to one, none at either end, one final newline."""
    lines = [line.rstrip() for line in message.split("\n")]
    out: list[str] = []
    for line in lines:
        if not line and (not out or not out[-1]):
            continue
        out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n" if out else ""


def _quote_path(path: str) -> str:
    if not any(c in path for c in '"\\\n') and not path.startswith('"'):
        return path
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class CommitWriter:
    """Writes a run's commits through one ``git fast-import`` process instead of an add, a commit and
    a rev-parse per patch (process start-up was most of the cost of a long series). The commits are
    byte for byte what ``git commit -m`` made: same tree, identities, dates and cleaned message.
    ``close()`` moves the branch and brings the index in line with the work tree."""

    def __init__(self, tree: Path) -> None:
        self.tree = tree
        self.parent = git(tree, "rev-parse", "HEAD")
        self.symbolic = git(tree, "symbolic-ref", "-q", "HEAD", check=False) or None
        self.branch = self.symbolic or "refs/ketta-build/detached"  # a detached HEAD is moved at close()
        self.proc: subprocess.Popen | None = None
        self.mark = 0
        self.marks_file = tree / ".git" / "ketta-build.marks"

    def _start(self) -> subprocess.Popen:
        if self.proc is None:
            self.proc = popen(self.tree, "fast-import", "--quiet", "--done", "--date-format=raw",
                              f"--export-marks={self.marks_file}",
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self.proc

    def _fail(self) -> BuildTreeError:
        err = b""
        if self.proc is not None:
            self.proc.kill()
            err = self.proc.stderr.read() if self.proc.stderr else b""
            self.proc.wait()
            self.proc = None
        return BuildTreeError(f"git fast-import failed in {self.tree}: {err.decode(errors='replace').strip()[-300:]}")

    def commit(self, patch: Patch, paths: list[str]) -> int:
        """Queue a commit of what ``patch`` did to ``paths`` (as they are on disk now); its mark.
        Nothing waits for git here: ``close()`` says which commit each mark became."""
        proc = self._start()
        self.mark += 1
        h = patch.header
        when = _patch_date(patch).lstrip("@")
        message = stripspace(commit_message(patch.name, h)).encode()
        chunks = [
            f"commit {self.branch}\nmark :{self.mark}\n".encode(),
            f"author {h.author_name} <{h.author_email}> {when}\n".encode(),
            f"committer {_TOOL_IDENTITY[0]} <{_TOOL_IDENTITY[1]}> {when}\n".encode(),
            f"data {len(message)}\n".encode(), message,
            (f"from {self.parent}\n" if self.mark == 1 else f"from :{self.mark - 1}\n").encode(),
        ]
        for path in dict.fromkeys(paths):
            target = self.tree / path
            if target.is_symlink():
                data = os.readlink(target).encode()
                mode = "120000"
            elif target.is_file():
                data = target.read_bytes()
                mode = "100755" if os.access(target, os.X_OK) else "100644"
            else:
                chunks.append(f"D {_quote_path(path)}\n".encode())
                continue
            chunks += [f"M {mode} inline {_quote_path(path)}\ndata {len(data)}\n".encode(), data, b"\n"]
        try:
            proc.stdin.write(b"".join(chunks))
        except OSError:
            raise self._fail() from None
        return self.mark

    def close(self) -> dict[int, str]:
        """Finish the stream: the branch points at the last commit, the index matches it. Returns
        the commit id of every mark queued since the last close()."""
        if self.proc is None:
            return {}
        proc, self.proc = self.proc, None
        try:
            proc.stdin.write(b"done\n")
            proc.stdin.close()
        except OSError:
            pass
        err = proc.stderr.read()
        commits = {}
        if proc.wait() == 0 and self.marks_file.is_file():
            for line in self.marks_file.read_text().splitlines():
                mark, commit = line.split()
                commits[int(mark.lstrip(":"))] = commit
            self.marks_file.unlink()
        if len(commits) != self.mark:
            raise BuildTreeError(f"git fast-import failed in {self.tree}: {err.decode(errors='replace').strip()[-300:]}")
        if self.symbolic is None:
            git(self.tree, "update-ref", "--no-deref", "HEAD", self.branch)
            git(self.tree, "update-ref", "-d", self.branch)
        self.parent = git(self.tree, "rev-parse", "HEAD")
        self.mark = 0
        git(self.tree, "reset", "-q")  # the index was the pristine release's; the work tree is already right
        return commits

    def kill(self) -> None:
        """Abandon the stream (an error elsewhere): nothing of it is kept."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def _resolve(commits: dict[int, str], pending: dict[int, PatchResult]) -> None:
    for mark, commit in commits.items():
        pending.pop(mark).commit = commit


def commit_patch(tree: Path, patch: Patch, paths: list[str]) -> str:
    """Commit what ``patch`` did to ``paths`` in ``tree`` on its own (one commit, e.g. for port)."""
    writer = CommitWriter(tree)
    mark = writer.commit(patch, paths)
    return writer.close()[mark]


def _move_into_place(tmp: Path, out: Path, carry: list[str] | None = None) -> None:
    """``tmp`` becomes ``out``; the git-ignored files ``carry`` of the tree it replaces go along."""
    trash = None
    if out.exists():
        trash = out.with_name(f".{out.name}.ketta-old-{os.getpid()}")
        if carry:  # should this run die before it moved them, the next one does (_clean_stale_temp_dirs)
            (out / ".git" / CARRY_FILE).write_text(json.dumps(carry))
        os.replace(out, trash)
    os.replace(tmp, out)
    if trash is not None:
        _carry(trash, out, carry or [])
        shutil.rmtree(trash, ignore_errors=True)


def apply_series(
    release: UpstreamRelease,
    source: UpstreamSource,
    series: Series,
    out: Path,
    *,
    options: ApplyOptions | None = None,
    cache: Cache | None = None,
    base_source: UpstreamSource | None = None,
    progress: Progress = _quiet,
    on_patch: Callable[[PatchResult], None] | None = None,
    entries: list | None = None,
) -> ApplyReport:
    """Build ``out`` from ``release`` plus the patches ``series`` selects for it (or ``entries``,
    which port uses for a release the series does not serve yet)."""
    options = options or ApplyOptions()
    out = out.absolute()
    selections = series.explain(release.version)
    selected = [s.entry for s in selections if s.selected] if entries is None else list(entries)
    raw: dict[str, bytes] = {}  # the files as read: what the tree takes (its state keeps them, for export)
    for e in selected:
        try:
            raw[e.name] = (series.directory / e.name).read_bytes()
        except OSError:
            series.load(e)  # says what is wrong with it
            raise
    # parse everything before touching disk
    patches = {e.name: parse_patch_text(raw[e.name], series.directory / e.name, e.name) for e in selected}
    for patch in patches.values():
        _check_author(patch)
    _epoch()  # a SOURCE_DATE_EPOCH git cannot take is refused before anything is made
    check_out_dir(out, options.force, options.out_flag)
    if base_source is None and isinstance(source, IndexSource):
        base_source = source
    report = ApplyReport(release, series.directory, selections, options=options)

    out.parent.mkdir(parents=True, exist_ok=True)
    lock_cache = cache or Cache()
    with lock_cache.lock("out-" + git_blob_id(str(out).encode())[:16], timeout=5):
        _clean_stale_temp_dirs(out)  # (first: it may put back a tree a dead run had moved aside)
        check_out_dir(out, options.force, options.out_flag)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.ketta-tmp-", dir=out.parent))
        cleanup: list[Callable[[], None]] = []
        try:
            (tmp / ".ketta-pid").write_text(str(os.getpid()))
            tree = tmp / "tree"
            progress(f"unpacking {series.profile.release_name(release.version)}")
            populate_pristine(tree, release, source, cache)
            finder = PreimageFinder(series, dict(patches), base_source, cache)
            label = series.profile.release_name(release.version)
            stopped = False
            writer = CommitWriter(tree)
            guard = TreeGuard(tree)
            pending: dict[int, PatchResult] = {}  # mark -> the result whose commit it becomes
            cleanup.append(writer.kill)
            for entry in selected:
                if stopped:
                    report.not_attempted.append(entry.name)
                    continue
                patch = patches[entry.name]
                progress(f"applying {entry.name}")
                result = apply_patch(tree, patch, fuzz=options.fuzz, preimage=finder, upstream_label=label, guard=guard,
                                     favour_patch=options.assume_resolved)
                if result.outcome is Outcome.FAILED and options.assume_resolved:
                    pending[writer.commit(patch, [f.path for f in result.files])] = result
                    result.note = "judged as if its conflicts were resolved in the patch's favour, for the patches after it"
                elif result.outcome is Outcome.FAILED:
                    _resolve(writer.close(), pending)  # the branch and index now hold every patch before this one
                    if options.keep_going:
                        git(tree, "reset", "-q", "--hard", "HEAD")
                        git(tree, "clean", "-q", "-f", "-d", "-x")
                        result.note = "not applied; the tree was reset so later patches see a consistent tree"
                    else:
                        stopped = True
                        # `git commit` takes a prepared MERGE_MSG as its message: the resolution keeps the patch's
                        (tree / ".git" / "MERGE_MSG").write_text(stripspace(commit_message(patch.name, patch.header)))
                elif result.outcome is not Outcome.ALREADY_UPSTREAM:
                    pending[writer.commit(patch, [f.path for f in result.files])] = result
                report.results.append(result)
                if on_patch:
                    on_patch(result)
            _resolve(writer.close(), pending)
            report.head, report.tree_hash = git(tree, "rev-parse", "HEAD", "HEAD^{tree}").split("\n")
            report.out = out

            with uninterruptible():  # Ctrl-C from here on waits until the new tree is in place
                if (out / ".git").is_dir():  # --force: what is there and is not the tool's own stays
                    report.kept_ignored = ignored_entries(out)
                    problems = _carry_problems(out, tree, report.kept_ignored)
                    if problems:
                        raise BuildTreeError(
                            f"{options.out_flag} holds git-ignored files that cannot go into the new tree at the same "
                            f"place: {', '.join(problems)}; move them away and apply again (nothing was replaced)",
                            path=out)
                    # what was committed there and never exported, other branches, tags and stashes
                    report.backup_ref, report.backup_refs = carry_backups(out, tree, "apply")
                state = report_json(report)
                commits = {r.name: r.commit for r in report.results}
                state["synced"] = {name: synced_record(content, commits.get(name)) for name, content in raw.items()}
                (tree / ".git" / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
                _move_into_place(tree, out, report.kept_ignored)
        finally:
            for step in cleanup:
                step()
            shutil.rmtree(tmp, ignore_errors=True)
    return report

