"""``ketta-build upstream check``: new releases upstream, classified, with a dry-run port and a review list."""

from __future__ import annotations

from pathlib import Path

from ..tables import print_result
from .common import (Context, Result, cache_flag, escape, hunk_counts_text, index_flag, json_flag, patches_flag,
                     upstream_git_flag, verb_parser)

NAME = "upstream"
HELP = "look at upstream: new releases and what porting to them takes"
EXAMPLES = (("ketta-build upstream check", "new releases upstream, and what porting takes"),)
CHECK_EXAMPLES = (("ketta-build upstream check", "exit 0 nothing new, 10 carries over, 11 needs porting"),
                  ("ketta-build upstream check --issue-dir issues --json check.json", "the tracking issues' bodies"))


def register(sub) -> None:
    up = verb_parser(sub, NAME, help=HELP, examples=EXAMPLES, leaf=False)
    upsub = up.add_subparsers(dest="upstream_command", required=True)
    p = verb_parser(upsub, "check", examples=CHECK_EXAMPLES,
                    help="releases newer than the newest supported one, classified, with a dry-run port and the review "
                         "list (exit 0 nothing new, 10 carries over, 11 needs porting, 2 usage, 3 upstream source)")
    index_flag(p)
    upstream_git_flag(p, help="look at the tags of the upstream's git repository instead")
    patches_flag(p)
    cache_flag(p)
    p.add_argument("--issue-dir", metavar="DIR", type=Path,
                   help="write DIR/<version>.md per new release: the tracking issue's body")
    json_flag(p)


def run(ctx: Context, args) -> Result:
    from ..releases import load_releases
    from ..upstream_check import RELEASE, check_upstream, write_issue_bodies

    with ctx.status("asking upstream") as status:
        report = check_upstream(ctx.patches, cache=ctx.cache, index_url=ctx.index_url, upstream_git=args.upstream_git,
                                progress=status.update)
    profile = load_releases(ctx.patches).profile
    bodies = write_issue_bodies(report, args.issue_dir, profile) if args.issue_dir else []
    other = profile.other_product.name if profile.other_product else "another product"

    def show(console) -> None:
        if not report.releases:
            print_result(console, f"nothing newer than {report.newest_supported} on {escape(report.source)}")
        code = [r for r in report.releases if r.kind != RELEASE]
        if code:
            console.print(f"{len(code)} {other} release(s) ({code[0].version} … {code[-1].version}): not "
                          f"{profile.what}; noted, nothing to port")
        for r in report.releases:
            if r.kind != RELEASE:
                continue
            flags = [f for f, on in (("pre-release", r.prerelease), (f"yanked: {r.yanked or 'no reason'}",
                                                                     r.yanked is not None)) if on]
            kind = " " + profile.release_word.removesuffix("release").strip() if profile.release_word != "release" else ""
            print_result(console, f"[bold]{escape(profile.name)} {r.version}[/]{kind}" + (f" ({', '.join(flags)})" if flags else ""))
            print_result(console, f"  dry-run port: {r.status}")
            for p in r.patches:
                console.print(f"    {p.outcome:16} {escape(p.name)}  ({hunk_counts_text(p.hunks)})")
                if p.landing_text():
                    console.print(f"      {p.landing_text()}", markup=False, soft_wrap=True)
            console.print("  review list (upstream changes since the newest supported release):")
            for f in r.review:
                console.print(f"    {escape(f.path)}: {escape(f.facts())}")
                for fn in f.functions:
                    state = "[red]changed upstream[/]" if fn.changed_upstream else "unchanged"
                    console.print(f"      {escape(fn.name)}: {state}{escape(fn.who())}")
        for path in bodies:
            print_result(console, f"issue body: {path}")
        news = [r.version for r in report.releases if r.kind == RELEASE]
        if news:  # the exit code, said: a scheduled job's log then reads on its own
            needing = [r.version for r in report.releases if r.kind == RELEASE and r.status == "needs-porting"]
            print_result(console, f"exit {report.exit_code}: " + (
                f"{', '.join(needing)} need{'s' if len(needing) == 1 else ''} porting: ketta-build port --release {needing[-1]}"
                if needing else
                f"the series carries over to {', '.join(news)} exactly: ketta-build port --release {news[-1]} adds it"))

    return Result(report.exit_code, report.as_json(), show)
