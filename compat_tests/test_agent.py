"""agent integration: provider → agent → message, checked at the vendor's end of the wire."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from . import api
from .letta_server import SERVER_ENV_KEYS

pytestmark = pytest.mark.agent

GC_STRESS = Path(__file__).resolve().parent / "gc_stress"  # a sitecustomize that lowers gc's threshold


def test_message_reaches_the_provider_with_its_key_and_model(server, vendors):
    vendor = vendors["alpha"]
    key = "sk-" + api.unique("agent-")
    p = api.create_provider(server, api.unique("CustomOpenAI"), vendor.base_url, key)
    agent = api.create_agent_ok(server, f"{p['name']}/gpt-4o-mini")
    chats = api.talk(server, agent["id"], vendor, "Say hello")
    assert {r.bearer for r in chats} == {key}
    assert {r.model for r in chats} == {"gpt-4o-mini"}


def test_recreated_provider_key_is_used_by_existing_agent(server, vendors):
    vendor = vendors["beta"]
    name = api.unique("Rotating")
    old = api.create_provider(server, name, vendor.base_url, "sk-old-key")
    agent = api.create_agent_ok(server, f"{name}/gpt-4o")
    api.ok(api.send_message(server, agent["id"], "first"))
    assert api.delete_provider(server, old["id"]).status in (200, 204)
    new = api.create_provider(server, name, vendor.base_url, "sk-new-key")
    assert new["id"] != old["id"]
    assert {r.bearer for r in api.talk(server, agent["id"], vendor, "second")} == {"sk-new-key"}


def test_server_env_key_never_sent_to_a_custom_url(servers, vendors):
    # Even with the opt-in environment fallback on, a user-supplied URL never gets the server's key.
    fallback = servers.get(KETTA_ENV_KEY_FALLBACK="1")
    vendor = vendors["alpha"]
    p = api.create_provider(fallback, api.unique("NoKey"), vendor.base_url, "")
    vendor.clear()
    # (Before 0.16 upstream cannot use an OpenAI provider without a key at all; patch 0007 lets it.)
    agent = api.create_agent_ok(fallback, f"{p['name']}/gpt-4o")
    api.send_message(fallback, agent["id"], "hello")
    sent = {r.bearer for r in vendor.requests}
    assert not sent & set(SERVER_ENV_KEYS.values()), f"server env key sent to {vendor.base_url}: {sent}"
    assert vendor.requests, "the vendor was never asked: the test would prove nothing"


def test_messages_survive_a_collection_in_every_request(servers, vendors):
    # Upstream leaves each request's LLM client to the garbage collector; its late close took the
    # file descriptor a database connect had just been given out of the selector, and the message
    # failed after 60 s (patch 0008). A collection in every request makes that a near certainty:
    # stock 0.15.1 failed 7 of 30 messages like this, stock 0.16.8 4 of 30.
    stressed = servers.get(PYTHONPATH=str(GC_STRESS))
    assert "ketta-test: gc threshold 100" in stressed.log_text(), "the gc stress was not loaded"
    vendor = vendors["alpha"]
    p = api.create_provider(stressed, api.unique("Collected"), vendor.base_url, "sk-gc")
    agent = api.create_agent_ok(stressed, f"{p['name']}/gpt-4o-mini")
    for number in range(30):
        resp = api.send_message(stressed, agent["id"], f"message {number}")
        assert resp.status == 200, f"message {number} of 30: HTTP {resp.status}: {resp.text[:300]}"


def test_database_connects_survive_provider_checks(servers, vendors):
    # The same upstream bug in the key check (0.16.2 on: OpenAIProvider.check_api_key makes an
    # AsyncOpenAI client and never closes it; patch 0012). Found by the parity suite on 0.16.5: after
    # the checks of its script the next database connect waited 60 s, then 500. Here checks run
    # beside listings (each a database connect), under a collection in every request.
    stressed = servers.get(PYTHONPATH=str(GC_STRESS))
    assert "ketta-test: gc threshold 100" in stressed.log_text(), "the gc stress was not loaded"
    vendor = vendors["beta"]
    # OpenRouter's check is a copy of OpenAI's (0.16.4 on; older releases refuse the type with a 422).
    kinds = ("openai", "openrouter")

    def checks() -> list[tuple[str, int]]:
        return [(kind, stressed.post("/v1/providers/check", {"provider_type": kind, "api_key": "sk-check",
                                                              "base_url": vendor.base_url}).status)
                for _ in range(20) for kind in kinds]

    def listings() -> list[str]:
        failed = []
        for number in range(40):
            resp = stressed.get("/v1/providers/")
            if resp.status != 200:
                failed.append(f"listing {number}: HTTP {resp.status}: {resp.text[:200]}")
        return failed

    with ThreadPoolExecutor(max_workers=3) as pool:
        checked = pool.submit(checks)
        listed = [pool.submit(listings) for _ in range(2)]
        statuses, failures = checked.result(), [f for job in listed for f in job.result()]
    assert {status for kind, status in statuses if kind == "openai"} == {200}, f"the checks themselves: {statuses}"
    assert {status for kind, status in statuses if kind == "openrouter"} in ({200}, {422}), f"openrouter's checks: {statuses}"
    assert not failures, f"{len(failures)} of 80 listings failed beside the checks:\n" + "\n".join(failures)


@pytest.mark.parametrize("name", ["Research / Notes", "a:b", 'say "hi"'])
def test_an_agent_name_the_validator_refuses_is_a_4xx_not_a_500(server, vendors, name):
    p = api.create_provider(server, api.unique("Names"), vendors["alpha"].base_url, "sk-names")
    body = {"name": name, "model": f"{p['name']}/gpt-4o-mini", "embedding_config": api.EMBEDDING_CONFIG,
            "agent_type": "letta_v1_agent", "include_base_tools": False, "memory_blocks": []}
    resp = server.post("/v1/agents/", body)
    assert 400 <= resp.status < 500 and "invalid characters" in resp.text, f"HTTP {resp.status}: {resp.text[:300]}"
