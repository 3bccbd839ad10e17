"""unified-provider: a provider's key, or its absence, concerns that provider alone (issue #18).

An OpenAI-compatible provider on a custom base URL may have no key (a local vLLM, a gateway that
authenticates otherwise): stored with an empty key it lists its models and serves agents, and
nothing of the organisation's other providers changes. The official endpoint still needs a key.
Custom OpenAI-compatible providers offer the same embedding handles on every release as on 0.16.8.
"""

from __future__ import annotations

import pytest

from . import api
from .conftest import InOrganisation
from .letta_server import SERVER_ENV_KEYS
from .vendor import FakeVendor

pytestmark = pytest.mark.unified

# What a request to a provider without a key carries: no Authorization header when the server lists
# the provider's models, upstream's own placeholder when an agent talks to it (upstream's LLM client
# sends "DUMMY_API_KEY" whenever it has no key). Never a key from the server's environment.
NO_KEY_PLACEHOLDER = "DUMMY_API_KEY"
ENV_KEYS = set(SERVER_ENV_KEYS.values())
# What 0.16.8 offers for every OpenAI-type provider, whatever its base URL: model → dimension.
EMBEDDINGS = {"text-embedding-ada-002": 1536, "text-embedding-3-small": 1536, "text-embedding-3-large": 3072}


@pytest.fixture(scope="module")
def own_vendor():
    """A vendor of this module's own, so its record holds only this module's requests."""
    vendor = FakeVendor("keyless").start()
    yield vendor
    vendor.stop()


@pytest.fixture
def org(server) -> InOrganisation:
    """The shared server as the user of an organisation of this test's own: a provider that breaks
    its organisation's listings (the bug of issue #18) cannot fail the next test."""
    _, user = api.create_org_user(server.server)
    return InOrganisation(server.server, user)


def create_keyless(server, base_url: str | None, api_key: str = "", name: str | None = None):
    body = {"name": name or api.unique("Keyless"), "provider_type": "openai", "api_key": api_key}
    if base_url is not None:
        body["base_url"] = base_url
    return server.post("/v1/providers/", body)


def test_empty_key_on_a_custom_url_lists_models_and_breaks_nothing(org, vendors, own_vendor):
    keyed = api.create_provider(org, api.unique("Keyed"), vendors["alpha"].base_url, "sk-keyed")
    own_vendor.clear()
    keyless = api.ok(create_keyless(org, own_vendor.base_url))

    resp = org.get("/v1/models/")
    assert resp.status == 200, f"GET /v1/models/ with a keyless provider: HTTP {resp.status}: {resp.text[:500]}"
    handles = {m["handle"] for m in resp.body}
    for model in own_vendor.models:
        assert f"{keyless['name']}/{model}" in handles, f"{keyless['name']}/{model} not listed: {sorted(handles)}"
        assert f"{keyed['name']}/{model}" in handles, f"the keyed provider lost {model}: {sorted(handles)}"
    for path in ("/v1/providers/", "/v1/models/embedding"):
        other = org.get(path)
        assert other.status == 200, f"GET {path} with a keyless provider: HTTP {other.status}: {other.text[:500]}"

    listing = [r for r in own_vendor.requests if r.path.rstrip("/").endswith("/models")]
    assert listing, "the keyless provider's models were never asked for"
    assert {r.authorization for r in listing} == {None}, f"a keyless listing sent {[r.authorization for r in listing]}"


def test_agent_on_a_keyless_provider_talks_without_a_key(org, own_vendor):
    keyless = api.ok(create_keyless(org, own_vendor.base_url))
    agent = api.create_agent_ok(org, f"{keyless['name']}/gpt-4o-mini")
    chats = api.talk(org, agent["id"], own_vendor, "hello without a key")
    assert {r.bearer for r in chats} == {NO_KEY_PLACEHOLDER}, f"a keyless chat sent {[r.authorization for r in chats]}"
    assert not {r.bearer for r in own_vendor.requests} & ENV_KEYS


def test_a_stored_provider_without_any_key_lists_its_models(org, own_vendor):
    # "Missing" rather than empty: the row has no key at all (a provider stored before Ketta
    # encrypted keys, or edited by hand). The API's create always takes a key field.
    keyless = api.ok(create_keyless(org, own_vendor.base_url))
    org.sql("UPDATE providers SET api_key_enc = NULL, api_key = NULL WHERE id = :p", p=keyless["id"])
    resp = org.get("/v1/models/")
    assert resp.status == 200, f"GET /v1/models/ with a provider without a key: HTTP {resp.status}: {resp.text[:500]}"
    assert f"{keyless['name']}/gpt-4o" in {m["handle"] for m in resp.body}


@pytest.mark.parametrize("base_url", ["https://api.openai.com/v1", "https://api.openai.com/v1/", None],
                         ids=["official", "official-slash", "default"])
@pytest.mark.parametrize("api_key", ["", "   "], ids=["empty", "blank"])
def test_the_official_url_still_needs_a_key(org, base_url, api_key):
    name = api.unique("Official")
    resp = create_keyless(org, base_url, api_key=api_key, name=name)
    assert 400 <= resp.status < 500, f"an OpenAI provider at the official URL without a key: HTTP {resp.status}: {resp.text[:500]}"
    assert "key" in resp.text.lower(), f"the refusal does not say a key is missing: {resp.text[:500]}"
    assert org.sql("SELECT id FROM providers WHERE name = :n", n=name) == []


def agent_with_custom_embedding(org, vendor, key: str):
    p = api.create_provider(org, api.unique("Embeds"), vendor.base_url, key)
    body = {
        "name": api.unique("agent-"), "model": f"{p['name']}/gpt-4o", "embedding": f"{p['name']}/text-embedding-3-small",
        "agent_type": "letta_v1_agent", "include_base_tools": False, "memory_blocks": [],
    }
    return p, body, org.post("/v1/agents/", body)


def test_custom_provider_embedding_handles_work_as_on_0_16_8(org, own_vendor):
    vendor = own_vendor
    p, body, created = agent_with_custom_embedding(org, vendor, "sk-embeds")
    problems = []
    if created.status not in (200, 201):
        problems.append(f"agent with embedding {body['embedding']}: HTTP {created.status}: {created.text[:300]}")
    else:
        embedding = created.body["embedding_config"]
        expected = {"embedding_model": "text-embedding-3-small", "embedding_endpoint": vendor.base_url,
                    "embedding_dim": EMBEDDINGS["text-embedding-3-small"], "handle": body["embedding"]}
        got = {k: embedding.get(k) for k in expected}
        if got != expected:
            problems.append(f"the agent's embedding_config is {got}, expected {expected}")
    listed = {m["handle"]: m for m in api.ok(org.get("/v1/models/embedding"))}
    for model, dim in EMBEDDINGS.items():
        handle = f"{p['name']}/{model}"
        if handle not in listed:
            problems.append(f"{handle} not in GET /v1/models/embedding ({sorted(listed)})")
        elif (listed[handle]["embedding_endpoint"], listed[handle]["embedding_dim"]) != (vendor.base_url, dim):
            problems.append(f"{handle} listed as {listed[handle]}")
    assert not problems, "\n".join(problems)


def test_embeddings_go_to_the_provider_with_its_key(org, own_vendor):
    # An archive on a custom provider's embedding handle embeds each passage at that provider.
    # (Agents embed the same way; inserting into an agent's archival memory would do, but 0.14-0.15
    # count its tokens with tiktoken first, which downloads its encoding: no network here.)
    key = "sk-embeds-" + api.unique("")
    p = api.create_provider(org, api.unique("Embeds"), own_vendor.base_url, key)
    # The configuration an agent created with that handle gets (0.14's archive route cannot take a
    # handle: it reads archive.embedding.provider off a string and answers 500).
    config = {
        "embedding_endpoint_type": "openai", "embedding_endpoint": own_vendor.base_url, "embedding_model": "text-embedding-3-small",
        "embedding_dim": 1536, "embedding_chunk_size": 300, "handle": f"{p['name']}/text-embedding-3-small",
    }
    archive = api.ok(org.post("/v1/archives/", {"name": api.unique("archive-"), "embedding_config": config}))
    own_vendor.clear()
    inserted = org.post(f"/v1/archives/{archive['id']}/passages", {"text": "the sky is green", "metadata": {}, "tags": []})
    sent = [r for r in own_vendor.requests if r.path.rstrip("/").endswith("/embeddings")]
    assert sent, f"no embedding request reached the provider (HTTP {inserted.status}: {inserted.text[:300]})"
    assert {r.model for r in sent} == {"text-embedding-3-small"}
    carried = {r.bearer for r in sent}
    assert not carried & ENV_KEYS, f"the server's own OPENAI_API_KEY went to {own_vendor.base_url}: {carried}"
    assert carried == {key}, f"the embedding requests carried {carried}, not the provider's key"
    assert inserted.status == 200, f"passage: HTTP {inserted.status}: {inserted.text[:300]}"


@pytest.mark.parametrize("change", ["clear-the-key", "move-to-the-official-url"])
def test_an_update_cannot_leave_a_provider_at_the_official_url_without_a_key(org, own_vendor, change):
    if change == "clear-the-key":  # a provider at the official URL (with a key) loses its key
        name = api.unique("Official")
        created = org.post("/v1/providers/", {"name": name, "provider_type": "openai", "api_key": "sk-official",
                                              "base_url": "https://api.openai.com/v1"})
        update = {"api_key": ""}
    else:  # a keyless provider on a custom URL is moved to the official one
        created = create_keyless(org, own_vendor.base_url)
        update = {"api_key": "", "base_url": "https://api.openai.com/v1"}
    provider = created.body if created.status == 200 else None
    assert provider is not None, f"HTTP {created.status}: {created.text[:300]}"
    resp = org.patch(f"/v1/providers/{provider['id']}", update)
    assert 400 <= resp.status < 500 and "key" in resp.text.lower(), f"HTTP {resp.status}: {resp.text[:300]}"
    [(base_url,)] = org.sql("SELECT base_url FROM providers WHERE id = :p", p=provider["id"])
    assert base_url == provider.get("base_url"), "the refused update changed the provider"


@pytest.mark.parametrize("provider_type", ["ollama", "vllm", "lmstudio_openai"])
def test_a_provider_its_type_cannot_load_is_refused_and_listing_survives(org, own_vendor, provider_type):
    # These types have no default endpoint: stored without base_url, upstream fails every model
    # listing of the organisation while loading the provider (found by the fuzz suite on 0.14.0).
    name = api.unique("NoUrl")
    resp = org.post("/v1/providers/", {"name": name, "provider_type": provider_type, "api_key": ""})
    assert 400 <= resp.status < 500, f"a {provider_type} provider without base_url: HTTP {resp.status}: {resp.text[:500]}"
    assert "base_url" in resp.text, f"the refusal does not name base_url: {resp.text[:500]}"
    assert org.sql("SELECT id FROM providers WHERE name = :n", n=name) == []
    for path in ("/v1/models/", "/v1/providers/"):
        listing = org.get(path)
        assert listing.status == 200, f"GET {path} after the refusal: HTTP {listing.status}: {listing.text[:500]}"

    # With a base_url the same type is accepted, and listing still answers.
    accepted = org.post("/v1/providers/", {"name": name, "provider_type": provider_type, "api_key": "",
                                           "base_url": own_vendor.base_url})
    assert accepted.status == 200, f"a {provider_type} provider with base_url: HTTP {accepted.status}: {accepted.text[:500]}"
    listing = org.get("/v1/models/")
    assert listing.status == 200, f"GET /v1/models/ with a {provider_type} provider: HTTP {listing.status}: {listing.text[:500]}"
