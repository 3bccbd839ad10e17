"""The human output's shared pieces: tables that fit the width, and the result that ``-q`` keeps.

A table squeezed into 80 columns (a CI log, a narrow terminal) folds its cells, and a patch name
folded over three lines can be neither read, searched for nor copied. :func:`print_table` prints
the table only when every cell fits on one line at the console's width; otherwise it prints the
title and then one line per row, ``FIRST: column=value | column=value``, which the console never
wraps (a long line is the terminal's to wrap, and a log keeps it whole).

``-q`` quiets the console; what a verb prints through :func:`print_result` (or inside
:func:`result`) is its final result and is printed all the same. Errors go to stderr either way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

#: The natural width of a table is measured against this many columns (more than any line has).
_UNBOUNDED = 100_000


def print_table(console: Console, title: str | None, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """``rows`` (console markup, one string per column) as a table under ``title`` if it fits, else as records."""
    from rich.measure import Measurement
    from rich.table import Table

    if title:
        console.print(title, soft_wrap=True)
    table = Table(expand=False)
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    natural = Measurement.get(console, console.options.update_width(_UNBOUNDED), table).maximum
    if natural <= console.width:
        console.print(table)
        return
    for first, *rest in rows:
        fields = " | ".join(f"{column.replace(' ', '-')}={value}" for column, value in zip(columns[1:], rest) if value)
        console.print(f"{first}: {fields}" if fields else first, soft_wrap=True)


@contextmanager
def result(console: Console) -> Iterator[Console]:
    """What is printed inside is the verb's result: shown under ``-q`` too, which quiets the rest."""
    quiet, console.quiet = console.quiet, False
    try:
        yield console
    finally:
        console.quiet = quiet


def print_result(console: Console, *objects: object, **kwargs: object) -> None:
    """``console.print`` for a line of the verb's result (see :func:`result`)."""
    with result(console):
        console.print(*objects, **kwargs)  # type: ignore[arg-type]
