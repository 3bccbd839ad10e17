"""ketta-build: apply the Ketta patch series to pinned Letta server releases and report every hunk."""

__version__ = "0.1.0"
