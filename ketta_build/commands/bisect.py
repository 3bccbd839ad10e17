"""``ketta-build bisect``: the first upstream commit where a patch stops applying (or starts to)."""

from __future__ import annotations

from .common import (
    Context,
    Result,
    json_flag,
    patches_flag,
    say,
    upstream_git_flag,
    verb_parser,
)

NAME = "bisect"
HELP = ("the first upstream commit (first-parent path GOOD..BAD) where a patch stops applying exactly or is already "
        "upstream, and the hunk it broke")
EXAMPLES = (("ketta-build bisect 0004-no-base-providers-0.16.2.diff --upstream-git ../upstream --bad 0.16.7",
             "where the variant stopped applying"),
            ("ketta-build bisect 0003-keys-from-database.diff --upstream-git ../upstream --good 0.16.2 --bad 0.16.4 "
             "--until-applies", "where the newer variant became necessary"))


def register(sub) -> None:
    p = verb_parser(sub, NAME, help=HELP, examples=EXAMPLES)
    p.add_argument("patch", metavar="PATCH", help="a patch of the series (its file name)")
    upstream_git_flag(p, required=True)
    p.add_argument("--good", metavar="REF", help="where the patch applies exactly (default: its Base-Release tag, X or vX)")
    p.add_argument("--bad", metavar="REF", help="where to stop (default: the newest release tag of the repository)")
    p.add_argument("--until-applies", action="store_true",
                   help="the other way round: the first commit where a patch that does not apply exactly at GOOD "
                        "does (a newer variant: the commit that made it necessary; --bad defaults to its Base-Release)")
    patches_flag(p)
    json_flag(p)


def _commit(c) -> str:
    release = f", release {c.version}" if c.version else ""
    return f"{c.short} {c.subject} ({c.date}{release})"


def run(ctx: Context, args) -> Result:
    from ..bisect import bisect

    with ctx.status("bisecting") as status:
        result = bisect(args.patch, args.upstream_git, series_dir=ctx.patches, good=args.good, bad=args.bad,
                        until_applies=args.until_applies, progress=status.update)
    applies = result.mode == "applies"

    def show_search(console, r, indent: str) -> None:
        if r.found is None:
            say(console, f"{indent}does not apply exactly at {r.bad} either: no commit to find" if applies else
                f"{indent}applies exactly at {r.bad}: no break to find")
        else:
            say(console, f"{indent}first commit where it {'applies exactly' if applies else 'stops applying exactly'}: "
                         f"{_commit(r.found)}")
            if applies and r.breaks:
                say(console, f"{indent}  the hunks that did not apply exactly at the commit before it:")
            for b in r.breaks:
                what = f"hunk #{b.hunk} of {b.path}" if b.hunk is not None else b.path
                say(console, f"{indent}  {b.outcome}: {ctx.patches / r.patch}:{b.patch_line}: {what}: {b.reason}")
            for b in r.earlier:
                what = f"hunk #{b.hunk} of {b.path}" if b.hunk is not None else b.path
                say(console, f"{indent}  (there, earlier patch {b.patch} did not apply exactly either: {what}: {b.reason})")
        if r.monotone:
            state = ("it never applied" if applies else "it never broke") if r.found is None else \
                f"once {'applying' if applies else 'broken'}, it stays so"
            say(console, f"{indent}monotone: the {r.checked} commit(s) on the path that change its files (or "
                         f"pyproject.toml) were all probed; {state}")
        else:
            first = r.first_break or r.found
            again = ", ".join(_commit(c) for c in r.applies_again) or "nowhere"
            say(console, f"{indent}not monotone: the first {'commit where it applies' if applies else 'break'} on the "
                         f"path is {_commit(first) if first else '-'}; it changed back at {again}"
                + (" (the binary search, as git bisect, found the commit above)" if r.found else ""))
        if r.inside is not None:
            say(console, f"{indent}{r.found.short} is a merge: inside it, on the first-parent path "
                         f"{r.inside.good}..{r.inside.bad} ({r.inside.path_commits} commit(s), "
                         f"{len(r.inside.steps)} probe(s)):")
            show_search(console, r.inside, indent + "  ")

    def show(console) -> None:
        say(console, f"{result.patch}: {result.good}..{result.bad} of {result.repo}, {result.path_commits} commit(s) "
                     f"on the first-parent path, {len(result.steps)} probe(s) by binary search")
        show_search(console, result, "")

    return Result(result.exit_code, result.as_json(), show)
