"""Loaded by a test server through PYTHONPATH: a garbage collection in every request.

With gc's threshold at 100 allocations a collection lands between any two awaits of a request,
which is when upstream's abandoned LLM clients were finalised (patch 0008). The line printed
here lets the test check that the stress was really on.
"""

import gc
import sys

gc.set_threshold(100)
print("ketta-test: gc threshold 100", file=sys.stderr, flush=True)
