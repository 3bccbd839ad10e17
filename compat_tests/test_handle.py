"""handle: model handles use the provider's own name, whatever its base URL."""

from __future__ import annotations

import pytest

from . import api

pytestmark = pytest.mark.handle


@pytest.fixture(scope="module")
def two_providers(server, vendors):
    a = api.create_provider(server, api.unique("MyCustomProvider"), vendors["alpha"].base_url, "sk-alpha")
    b = api.create_provider(server, api.unique("OtherAggregator"), vendors["beta"].base_url, "sk-beta")
    return a, b


def test_handles_are_provider_name_slash_model(server, vendors, two_providers):
    all_handles = api.handles(server)
    for provider, vendor in zip(two_providers, (vendors["alpha"], vendors["beta"])):
        for model in vendor.models:
            assert f"{provider['name']}/{model}" in all_handles, f"{provider['name']}/{model} not in {all_handles}"
    assert not [h for h in all_handles if h.startswith("openai-proxy/")], "openai-proxy handles are still produced"


def test_identical_model_lists_give_distinct_handles(server, two_providers):
    names = {p["name"] for p in two_providers}
    mine = [h for h in api.handles(server) if h.split("/", 1)[0] in names]
    assert len(mine) == len(set(mine)) == 4, mine
    stored = server.sql(
        "SELECT handle FROM provider_models WHERE provider_id = ANY(:ids) AND model_type = 'llm'",
        ids=[p["id"] for p in two_providers],
    )
    assert sorted(h for (h,) in stored) == sorted(mine)


def test_listed_handles_are_accepted_verbatim_by_agent_creation(server, two_providers):
    names = {p["name"] for p in two_providers}
    mine = [m for m in api.list_models(server) if m["handle"].split("/", 1)[0] in names]
    assert len(mine) == 4, f"expected 4 handles named after the providers, /v1/models/ has {[m['handle'] for m in mine]}"
    for model in mine:
        agent = api.create_agent_ok(server, model["handle"])
        assert agent["llm_config"]["handle"] == model["handle"]
        assert agent["llm_config"]["provider_name"] == model["handle"].split("/", 1)[0]
