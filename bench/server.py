"""Benchmark: the patched server against the unpatched one of the same release, side by side.

Usage: python bench/server.py [--letta 0.16.8] [--providers 50] [--models 10] [--agents 20] [--rounds 30]

Both servers run at once on one embedded PostgreSQL (a database each), with the same data: N
OpenAI-compatible providers of the default organisation, each listing M models of its own from
one local fake vendor (so both servers store and list N x M models), and A agents. Requests
alternate between the two servers so both see the same machine load. Printed per operation: p50
and p95 in ms for each server and the patched/unpatched ratio of the p50 (target: at most 1.05x
on each).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from compat_tests import api  # noqa: E402
from compat_tests.letta_server import LettaServer  # noqa: E402
from compat_tests.pgcluster import EmbeddedCluster  # noqa: E402
from compat_tests.vendor import FakeVendor  # noqa: E402
from ketta_build.letta.serverenv import prepare_server  # noqa: E402

TARGET = 1.05
NO_ENV_KEYS = {"OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": "", "GROQ_API_KEY": ""}  # no vendor from the environment
# Both servers encrypt provider keys with the same key (a Ketta server always encrypts; stock Letta
# does when LETTA_ENCRYPTION_KEY is set, as any multi-process deployment must).
ENCRYPTION_KEY = "bench-encryption-key-0123456789abcdef"


def profile(server: LettaServer, seconds: float, out: Path) -> str:
    """py-spy samples of ``server`` while it lists models; the heaviest frames (inclusive)."""
    import shutil
    import subprocess
    import threading

    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        return "py-spy is not installed (pip install py-spy): no profile"
    rec = subprocess.Popen([spy, "record", "--pid", str(server.process.pid), "--duration", str(int(seconds)), "--format", "raw",
                            "--rate", "200", "--nonblocking", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            api.list_models(server)

    worker = threading.Thread(target=load)
    worker.start()
    rec.wait()
    stop.set()
    worker.join()
    totals: dict[str, int] = {}
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples += int(count)
        for frame in set(stack.split(";")):
            if "letta" in frame or "sqlalchemy" in frame or "pydantic" in frame:
                totals[frame] = totals.get(frame, 0) + int(count)
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:25]
    return "\n".join(f"{100 * n / max(samples, 1):5.1f}%  {frame}" for frame, n in top)


def populate(server: LettaServer, vendor: FakeVendor, providers: int, agents: int, patched: bool) -> list[str]:
    """``providers`` providers on ``vendor`` (which names each one's models after its key, so both
    servers store and list every model) and ``agents`` agents spread over them."""
    keys = []
    for i in range(providers):
        key = f"sk-bench-{i}"
        p = api.create_provider(server, f"Bench{i:03d}", vendor.base_url, key)
        keys.append((p["name"], key))
    ids = []
    for i in range(agents):
        provider, key = keys[i % len(keys)]
        model = f"{vendor.models[0]}-{key}"
        if patched:
            agent = api.create_agent_ok(server, f"{provider}/{model}")
        else:
            agent = api.create_agent_on_provider(server, provider, vendor.base_url, model)
        ids.append(agent["id"])
    return ids


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--letta", default="0.16.8")
    parser.add_argument("--providers", type=int, default=50)
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--profile", type=float, metavar="SECONDS", help="then profile GET /v1/models/ on the patched server (py-spy)")
    args = parser.parse_args()

    builds = {flavour: prepare_server(args.letta, patched=flavour == "patched", series_dir=ROOT / "patches",
                                      build_root=ROOT / "build") for flavour in ("patched", "unpatched")}
    # The vendor names each provider's models after its key. Stock Letta names every model of an
    # OpenAI-compatible provider openai-proxy/<model> and keeps only the first of each name, so with
    # shared names it would store and list 10 models where Ketta has 500; with names of their own
    # both servers store and list the same rows, and the comparison is of the same work.
    vendor = FakeVendor("bench", models=tuple(f"bench-model-{i}" for i in range(args.models)), key_in_model_names=True).start()
    cluster = EmbeddedCluster()
    servers: dict[str, LettaServer] = {}
    try:
        pg = cluster.start()
        for flavour, build in builds.items():
            servers[flavour] = LettaServer(letta=build.letta, python=build.python, tree=build.tree, pg=pg,
                                           database=f"bench_{flavour}_{uuid.uuid4().hex[:6]}",
                                           extra_env={**NO_ENV_KEYS, "LETTA_ENCRYPTION_KEY": ENCRYPTION_KEY}).start()
        agents = {f: populate(s, vendor, args.providers, args.agents, f == "patched") for f, s in servers.items()}
        counts = {f: (len(api.list_providers(s)), len(api.list_models(s))) for f, s in servers.items()}
        print(f"letta {args.letta}: providers/models listed: " + ", ".join(f"{f} {p}/{m}" for f, (p, m) in counts.items()))

        samples: dict[str, dict[str, list[float]]] = {}

        def record(op: str, flavour: str, ms: float) -> None:
            samples.setdefault(op, {}).setdefault(flavour, []).append(ms)

        for r in range(args.rounds):
            # Alternate, so both see the same load, and swap who goes first each round (the
            # first of a round follows the other's message, the second its own list calls).
            for flavour, server in (list(servers.items()) if r % 2 else list(servers.items())[::-1]):
                record("GET /v1/providers/", flavour, timed(lambda: api.list_providers(server)))
                record("GET /v1/models/", flavour, timed(lambda: api.list_models(server)))
                if r % 2 == 0:
                    tag = uuid.uuid4().hex[:6]
                    made: list[dict] = []
                    create = timed(lambda: made.append(api.create_provider(server, f"Tmp{tag}", vendor.base_url, f"sk-tmp-{tag}")))
                    stored = server.sql("SELECT count(*) FROM provider_models WHERE provider_id = :p AND model_type = 'llm'",
                                        p=made[0]["id"])[0][0]
                    assert stored == args.models, f"{flavour}: {stored} models stored for a new provider, not {args.models}"
                    delete = timed(lambda: api.ok(api.delete_provider(server, made[0]["id"]), 200, 204))
                    record("provider create", flavour, create)
                    record("provider delete", flavour, delete)
                    record("provider create+delete", flavour, create + delete)
                if r % 3 == 0:
                    agent = agents[flavour][r % len(agents[flavour])]
                    record("agent message", flavour, timed(lambda: api.ok(api.send_message(server, agent, "hi"))))
        print(f"{'operation':26} {'patched p50':>12} {'p95':>8} {'unpatched p50':>14} {'p95':>8} {'ratio':>7}")
        for op, by in samples.items():
            def q(values: list[float]) -> tuple[float, float]:
                return statistics.median(values), statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]
            (p50, p95), (u50, u95) = q(by["patched"]), q(by["unpatched"])
            ratio = p50 / u50
            print(f"{op:26} {p50:12.1f} {p95:8.1f} {u50:14.1f} {u95:8.1f} {ratio:6.2f}x {'' if ratio <= TARGET else '(over target)'}")
        print(f"target: patched <= {TARGET:.2f}x unpatched (p50) on each operation")
        if args.profile:
            for flavour in ("patched", "unpatched"):
                print(f"profile of GET /v1/models/ on the {flavour} server ({args.profile:.0f} s, inclusive):")
                print(profile(servers[flavour], args.profile, Path(f"/tmp/ketta-bench-{flavour}.pyspy")))
    finally:
        for server in servers.values():
            server.stop()
        vendor.stop()
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
