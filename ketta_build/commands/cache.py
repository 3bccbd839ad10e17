"""``ketta-build cache``: what the cache holds per store, and pruning it by age or size."""

from __future__ import annotations

import sys

from ..errors import KettaError
from ..tables import print_result, print_table
from ..tables import result as printing_result
from .common import Context, Result, cache_flag, escape, json_flag, verb_parser

NAME = "cache"
HELP = "what the cache holds, per store (entries, size); prune it by age or size, least recently used first, never an entry in use"
EXAMPLES = (("ketta-build cache", "each store of the cache: entries and size"),
            ("ketta-build cache prune --older-than 30 --dry-run", "what a prune would remove, removing nothing"),
            ("ketta-build cache prune --max-size 5G", "the least recently used entries until 5 GiB are left"))


def register(sub) -> None:
    p = verb_parser(sub, NAME, help=HELP, examples=EXAMPLES)
    p.add_argument("action", nargs="?", choices=("info", "prune"), default="info",
                   help="info (the default): each store's entries and size; prune: remove entries")
    p.add_argument("--older-than", metavar="DAYS", type=float, help="prune: entries not used for DAYS days")
    p.add_argument("--max-size", metavar="SIZE", help="prune: the least recently used entries until the cache holds "
                                                    "at most SIZE (bytes, or e.g. 500M, 2G)")
    p.add_argument("--dry-run", action="store_true", help="prune: say what would be removed; remove nothing")
    cache_flag(p)
    json_flag(p)


def run(ctx: Context, args) -> Result:
    from ..cacheadmin import human, inspect, parse_size, prune, report_json

    cache = ctx.cache
    pruned = max_bytes = None
    if args.action == "info":
        given = [flag for flag, value in (("--older-than", args.older_than), ("--max-size", args.max_size),
                                          ("--dry-run", args.dry_run)) if value not in (None, False)]
        if given:
            raise KettaError(f"{', '.join(given)} only go with cache prune")
    else:
        max_bytes = parse_size(args.max_size) if args.max_size is not None else None
        with ctx.status("pruning the cache") as status:
            pruned = prune(cache, older_than_days=args.older_than, max_bytes=max_bytes, dry_run=args.dry_run,
                           progress=status.update)
    stores = inspect(cache)

    def show(console) -> None:
        if pruned is not None:
            verb = "would remove" if args.dry_run else "removed"
            for entry in pruned.removed:
                console.print(f"{verb} {escape(str(entry.path))} ({human(entry.bytes)})")
            for entry in pruned.in_use:
                print(f"ketta-build: cache prune: kept {entry.path}: in use", file=sys.stderr)
        with printing_result(console):
            print_table(console, escape(f"cache {cache.root}"), ("store", "entries", "size", "holds"),
                        [*((s.store.name, str(len(s.entries)), human(s.bytes), escape(s.store.what)) for s in stores),
                         ("total", str(sum(len(s.entries) for s in stores)), human(sum(s.bytes for s in stores)), "")])
        if pruned is not None:
            would = "would be " if args.dry_run else ""
            print_result(console, f"{len(pruned.removed)} entr{'y' if len(pruned.removed) == 1 else 'ies'} "
                                  f"{would}removed, {human(pruned.freed)} {would}freed"
                                  + (f"; {len(pruned.in_use)} in use, kept" if pruned.in_use else ""))

    return Result(0, report_json(cache, stores, pruned, args.older_than, max_bytes), show)
