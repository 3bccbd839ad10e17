"""unified-provider: two organisations, one provider name, two vendors (issue #28).

Provider names are unique per organisation, so organisation A and organisation B may each store a
provider called ``Shared…`` with a key of their own at a vendor of their own. Every route a
provider's key travels on (model listing, agent create and message, embeddings, the provider checks,
refresh) must resolve, route and authenticate a request of organisation X with X's provider only:
each vendor here records every request and must see its own organisation's key and nothing else.
On 0.14.0-0.16.1 before build 15, B's messages went to A's base URL carrying B's key (patch 0013).
The same routes are then taken while the vendors fail (gone, 401, 500, too slow): no key may reach
the server's log or a response (before build 15, 0.14.0-0.15.1 logged every provider's key on each
model listing whose vendor was gone; patch 0014). compat_tests/keyguard.py searches every test's
responses and logs as well; the error-path test asserts it explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from . import api
from .conftest import InOrganisation
from .keyguard import GUARD
from .vendor import FakeVendor

pytestmark = pytest.mark.unified

MODEL = "gpt-4o"
EMBEDDING = "text-embedding-3-small"


@dataclass
class Tenant:
    label: str
    org: InOrganisation
    vendor: FakeVendor
    key: str
    provider: dict
    url: str  # the vendor's base URL (also while it is stopped)

    @property
    def handle(self) -> str:
        return f"{self.provider['name']}/{MODEL}"


@pytest.fixture(scope="module")
def tenants(server):
    """Organisations A and B on the shared server, each with a provider of the same name at a vendor
    of its own and a key of its own. Both vendors are this module's alone."""
    name = api.unique("Shared")
    made = []
    for label in ("A", "B"):
        vendor = FakeVendor(f"tenant-{label.lower()}").start()
        _, user = api.create_org_user(server.server)
        org = InOrganisation(server.server, user)
        key = f"sk-tenant-{label.lower()}-{api.unique('')}"
        made.append(Tenant(label, org, vendor, key, api.create_provider(org, name, vendor.base_url, key), vendor.base_url))
    yield made
    for tenant in made:
        tenant.vendor.stop()


def only_own_keys(tenants: list[Tenant]) -> list[str]:
    """Every request each vendor ever received carried its own organisation's key (or none)."""
    problems = []
    for t in tenants:
        foreign = {r.bearer for r in t.vendor.requests} - {t.key, None}
        if foreign:
            owners = sorted(o.label for o in tenants if o.key in foreign) or ["no organisation"]
            problems.append(f"organisation {t.label}'s vendor received the key of {', '.join(owners)} "
                            f"({len(foreign)} key(s) not its own)")
    return problems


def test_each_organisation_lists_its_own_provider(tenants):
    for t in tenants:
        t.vendor.clear()
    for t in tenants:
        listed = {m["handle"]: m for m in api.list_models(t.org)}
        assert t.handle in listed, f"organisation {t.label} does not list {t.handle}: {sorted(listed)}"
        assert listed[t.handle]["model_endpoint"] == t.vendor.base_url, (
            f"organisation {t.label}'s {t.handle} points at {listed[t.handle]['model_endpoint']}, "
            f"not its own vendor {t.vendor.base_url}")
        embeddings = {m["handle"]: m for m in api.ok(t.org.get("/v1/models/embedding"))}
        handle = f"{t.provider['name']}/{EMBEDDING}"
        assert handle in embeddings, f"organisation {t.label} does not list {handle}"
        assert embeddings[handle]["embedding_endpoint"] == t.vendor.base_url
    assert not only_own_keys(tenants)


@pytest.fixture(scope="module")
def agents(tenants) -> dict[str, dict]:
    """An agent per organisation on ``<name>/gpt-4o``, made while the vendors answer."""
    return {t.label: api.create_agent_ok(t.org, t.handle) for t in tenants}


def test_each_organisations_agent_talks_to_its_own_vendor(tenants, agents):
    for t in tenants:
        agent = agents[t.label]
        assert agent["llm_config"]["model_endpoint"] == t.vendor.base_url, (
            f"organisation {t.label}'s agent on {t.handle} was bound to {agent['llm_config']['model_endpoint']}, "
            f"not its own vendor {t.vendor.base_url}")
    for t in tenants:  # B after A, then A again: neither may be routed by the other's provider
        for other in tenants:
            other.vendor.clear()
        chats = api.talk(t.org, agents[t.label]["id"], t.vendor, f"hello from {t.label}")
        assert {r.bearer for r in chats} == {t.key}, f"organisation {t.label}'s message did not carry its own key"
        assert not [o for o in tenants if o is not t and o.vendor.requests], (
            f"organisation {t.label}'s message reached another organisation's vendor")
    assert not only_own_keys(tenants)


def test_each_organisations_embeddings_use_its_own_provider(tenants):
    for t in tenants:
        body = {"name": api.unique("agent-"), "model": t.handle, "embedding": f"{t.provider['name']}/{EMBEDDING}",
                "agent_type": "letta_v1_agent", "include_base_tools": False, "memory_blocks": []}
        agent = api.ok(t.org.post("/v1/agents/", body), 200, 201)
        config = agent["embedding_config"]
        assert config["embedding_endpoint"] == t.vendor.base_url, (
            f"organisation {t.label}'s embedding handle resolved to {config['embedding_endpoint']}")
        # The archive takes the configuration the handle resolved to: what the server then embeds with
        # (0.14's archive route cannot take a handle; see test_unified_keys).
        archive = api.ok(t.org.post("/v1/archives/", {"name": api.unique("archive-"), "embedding_config": config}))
        for other in tenants:
            other.vendor.clear()
        inserted = t.org.post(f"/v1/archives/{archive['id']}/passages", {"text": f"{t.label} knows", "metadata": {}, "tags": []})
        sent = [r for r in t.vendor.requests if r.path.rstrip("/").endswith("/embeddings")]
        assert sent, f"organisation {t.label}'s passage reached no embedding endpoint of its own (HTTP {inserted.status})"
        assert {r.bearer for r in sent} == {t.key}, f"organisation {t.label}'s embeddings did not carry its own key"
        assert not [o for o in tenants if o is not t and o.vendor.requests]
        assert inserted.status == 200, f"passage: HTTP {inserted.status}: {inserted.text[:300]}"
    assert not only_own_keys(tenants)


def test_each_organisations_checks_and_refresh_use_its_own_provider(tenants):
    refresh = "/v1/providers/{provider_id}/refresh" in (tenants[0].org.get("/openapi.json").body or {}).get("paths", {})
    for t in tenants:
        for other in tenants:
            other.vendor.clear()
        stored = t.org.post(f"/v1/providers/{t.provider['id']}/check", {})
        assert stored.status == 200, f"organisation {t.label}'s stored provider check: HTTP {stored.status}: {stored.text[:300]}"
        given = t.org.post("/v1/providers/check", {"provider_type": "openai", "api_key": t.key, "base_url": t.vendor.base_url})
        assert given.status == 200, f"organisation {t.label}'s provider check: HTTP {given.status}: {given.text[:300]}"
        if refresh:  # 0.16.4 on
            refreshed = t.org.patch(f"/v1/providers/{t.provider['id']}/refresh", {})
            assert refreshed.status == 200, f"refresh: HTTP {refreshed.status}: {refreshed.text[:300]}"
        assert t.vendor.requests, f"organisation {t.label}'s checks reached no vendor of its own"
        assert {r.bearer for r in t.vendor.requests} == {t.key}
        assert not [o for o in tenants if o is not t and o.vendor.requests], (
            f"organisation {t.label}'s checks reached another organisation's vendor")
    assert not only_own_keys(tenants)


def routes_of(t: Tenant, agent: dict, message: bool = True) -> dict[str, int]:
    """Every route a provider's key travels on, as organisation ``t``: route -> HTTP status."""
    statuses = {
        "GET /v1/models/": t.org.get("/v1/models/").status,
        "GET /v1/models/embedding": t.org.get("/v1/models/embedding").status,
        "POST /v1/providers/{id}/check": t.org.post(f"/v1/providers/{t.provider['id']}/check", {}).status,
        "POST /v1/providers/check": t.org.post("/v1/providers/check", {"provider_type": "openai", "api_key": t.key,
                                                                       "base_url": t.url}).status,
        "POST /v1/agents/": api.create_agent(t.org, t.handle).status,
    }
    if message:
        statuses["POST /v1/agents/{id}/messages"] = api.send_message(t.org, agent["id"], f"{t.label} again").status
    return statuses


@pytest.mark.parametrize("failure", ["gone", "401", "500", "slow"])
def test_failing_vendors_leak_no_key(tenants, agents, failure):
    ports = {}
    for t in tenants:
        if failure == "gone":
            ports[t.label] = int(t.url.rsplit(":", 1)[1].split("/")[0])
            t.vendor.stop()
        else:
            t.vendor.failure = failure
    try:
        statuses = {t.label: routes_of(t, agents[t.label], message=failure != "slow") for t in tenants}
    finally:
        for t in tenants:
            if failure == "gone":
                t.vendor.start(ports[t.label])
            t.vendor.failure = None
    for t in tenants:  # a vendor's failure is its provider's alone: the organisation's listings answer
        listings = {r: statuses[t.label][r] for r in ("GET /v1/models/", "GET /v1/models/embedding")}
        assert set(listings.values()) == {200}, f"with the vendors {failure}, organisation {t.label}: {statuses[t.label]}"
    GUARD.scan()
    leaks = GUARD.take()
    assert not leaks, f"with the vendors {failure}, {len(leaks)} key(s) leaked:\n" + "\n".join(leaks[:20])
    assert not only_own_keys(tenants)
