"""``ketta-build status``: per patch, its owner, upstream status, age, size, review date and outcome per release."""

from __future__ import annotations

import sys

from ..errors import EXIT_SOURCE
from ..tables import print_table
from ..tables import result as printing_result
from .common import Context, Result, cache_flag, escape, index_flag, json_flag, patches_flag, verb_parser

NAME = "status"
HELP = "per patch: owner, upstream status, age, size, review date and how it applies on every release"
EXAMPLES = (("ketta-build status", "one row per patch file"),
            ("ketta-build status --json status.json", "every field, and the outcome per release"))


def register(sub) -> None:
    p = verb_parser(sub, NAME, help=HELP, examples=EXAMPLES)
    patches_flag(p)
    index_flag(p)
    cache_flag(p)
    json_flag(p)


def run(ctx: Context, args) -> Result:
    from ..profile import load_profile
    from ..status import runs_text, series_status

    with ctx.status("applying the series in memory to every release") as progress:
        status = series_status(ctx.patches, cache=ctx.cache, index_url=ctx.index_url, progress=progress.update)
    rows = []
    for p in status.patches:
        upstream = f"{p.upstream_status.split()[0]}, {p.forwarded.split()[0] if p.forwarded else '[red]not forwarded?[/]'}"
        if p.applied_upstream:
            upstream += f", upstream in {p.applied_upstream.split()[0]}"
        age = p.age_days(status.on)
        review = p.review_by or "-"
        owner = p.owner.split("<")[0].strip() if p.owner else "[red]none[/]"
        rows.append((escape(p.name), owner if not p.owner else escape(owner), upstream,
                     f"{age} d" if age is not None else "uncommitted",
                     f"{p.hunks} {'hunk' if p.hunks == 1 else 'hunks'} +{p.added} -{p.removed}",
                     f"[red]{escape(review)} passed[/]" if p.review_passed else escape(review),
                     escape(runs_text(p.outcomes))))

    def show(console) -> None:
        with printing_result(console):
            print_table(console, escape(f"{ctx.patches}: {len(status.patches)} patch files on {len(status.versions)} "
                                        f"releases, {status.on}"),
                        ("patch", "owner", "upstream", "age", "size", "review by", "releases"), rows)
        profile = load_profile(ctx.patches)
        for version, why in status.unavailable.items():
            print(f"ketta-build: status: {profile.release_name(version)} not checked: {why}", file=sys.stderr)

    return Result(EXIT_SOURCE if status.unavailable else 0, status.as_json(), show)
