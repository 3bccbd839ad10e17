"""ketta-build: keep a patch series per upstream release of a Python project; apply, port, test and ship it."""

__version__ = "0.1.0"
