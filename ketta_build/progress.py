"""How the human output shows long work: a changing status line (rich) on a terminal, or under
``-v`` each step on a line of its own on stderr, so stdout holds only results and a CI log keeps
every step. ``-q`` silences the steps."""

from __future__ import annotations

from rich.markup import escape


class PrintedStatus:
    """What ``console.status`` gives under -v: each step printed on a line of its own, on stderr
    (``steps``), so stdout holds only the results; ``-q`` (the verb's console) silences them."""

    def __init__(self, console, text: str, steps=None) -> None:
        self.console = console
        self.steps = steps or console
        self.update(text)

    def update(self, status=None, **_: object) -> None:
        if status is not None and not self.console.quiet:
            self.steps.print(f"[dim]{escape(str(status))}[/]")

    def __enter__(self) -> PrintedStatus:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def make_console(stderr: bool, verbose: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    # Without a terminal (a CI log, a pipe) no line is broken: a log keeps each message, path and command whole.
    console.soft_wrap = not console.is_terminal
    if verbose:
        steps = console if stderr else Console(stderr=True, highlight=False)
        steps.soft_wrap = not steps.is_terminal
        console.status = lambda status, **_: PrintedStatus(console, str(status), steps)  # type: ignore[method-assign]
    return console
