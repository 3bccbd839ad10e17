"""Runs ``ketta-build ARGS`` in a process of its own, with one function of the package replaced by
one that sends this process a signal before doing its work: a Ctrl-C or SIGTERM at a point a test
chooses. ``python signal_driver.py MODULE:ATTR SIGNAL ARGS...`` (ATTR may be ``Class.method``)."""

from __future__ import annotations

import importlib
import os
import signal
import sys

# As a terminal would have them, whatever the test runner inherited (a job started with & ignores SIGINT).
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)

target, signame, *argv = sys.argv[1:]
module_name, _, attr = target.partition(":")
owner = importlib.import_module(module_name)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
real = getattr(owner, name)


def signalled(*args, **kwargs):
    os.kill(os.getpid(), getattr(signal, signame))
    return real(*args, **kwargs)


setattr(owner, name, signalled)

from ketta_build.cli import main  # noqa: E402

sys.exit(main(argv))
