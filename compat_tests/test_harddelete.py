"""hard-delete: deleting a provider removes it for real, frees its name, and respects organisations."""

from __future__ import annotations

import pytest

from . import api

pytestmark = pytest.mark.harddelete


def test_delete_removes_row_and_models(server, vendors):
    p = api.create_provider(server, api.unique("Doomed"), vendors["alpha"].base_url, "sk-d")
    assert server.sql("SELECT count(*) FROM provider_models WHERE provider_id = :p", p=p["id"])[0][0] > 0
    assert api.delete_provider(server, p["id"]).status in (200, 204)
    assert server.sql("SELECT count(*) FROM providers WHERE id = :p", p=p["id"]) == [[0]]
    assert server.sql("SELECT count(*) FROM provider_models WHERE provider_id = :p", p=p["id"]) == [[0]]
    assert server.get(f"/v1/providers/{p['id']}").status == 404
    assert not [h for h in api.handles(server) if h.startswith(p["name"] + "/")]


def test_name_is_reusable_at_once_with_a_new_id(server, vendors):
    name = api.unique("Reused")
    first = api.create_provider(server, name, vendors["alpha"].base_url, "sk-1")
    assert api.delete_provider(server, first["id"]).status in (200, 204)
    second = api.create_provider(server, name, vendors["beta"].base_url, "sk-2")
    assert second["id"] != first["id"]
    assert server.sql("SELECT id FROM providers WHERE name = :n", n=name) == [[second["id"]]]


def test_delete_provider_an_agent_has_used_keeps_history(server, vendors):
    p = api.create_provider(server, api.unique("Used"), vendors["alpha"].base_url, "sk-used")
    agent = api.create_agent_ok(server, f"{p['name']}/gpt-4o")
    api.ok(api.send_message(server, agent["id"], "hello"))
    steps_before = server.sql("SELECT id FROM steps WHERE agent_id = :a", a=agent["id"])
    assert steps_before, "the message left no step"
    # 0.16.x writes provider_id = NULL; rows from releases (and code paths) that record it reference
    # the provider with ON DELETE RESTRICT upstream. Make this agent's history such rows.
    server.sql("UPDATE steps SET provider_id = :p WHERE agent_id = :a", p=p["id"], a=agent["id"])
    server.sql("UPDATE step_metrics SET provider_id = :p WHERE id IN (SELECT id FROM steps WHERE agent_id = :a)", p=p["id"], a=agent["id"])
    resp = api.delete_provider(server, p["id"])
    assert resp.status in (200, 204), resp.text[:1000]
    assert server.sql("SELECT count(*) FROM providers WHERE id = :p", p=p["id"]) == [[0]]
    kept = server.sql("SELECT id, provider_id FROM steps WHERE id = ANY(:ids)", ids=[s for (s,) in steps_before])
    assert len(kept) == len(steps_before), "history rows were deleted with the provider"
    assert all(pid is None for _, pid in kept)


def test_other_organisations_cannot_see_use_or_delete(server, vendors):
    p = api.create_provider(server, api.unique("Private"), vendors["alpha"].base_url, "sk-private")
    _, stranger = api.create_org_user(server)
    assert p["id"] not in {x["id"] for x in api.list_providers(server, user_id=stranger)}
    assert not [h for h in api.handles(server, user_id=stranger) if h.startswith(p["name"] + "/")]
    assert server.get(f"/v1/providers/{p['id']}", user_id=stranger).status in (403, 404)
    resp = api.create_agent(server, f"{p['name']}/gpt-4o", user_id=stranger)
    assert resp.status >= 400, "another organisation created an agent on a provider it does not own"
    assert api.delete_provider(server, p["id"], user_id=stranger).status in (403, 404)
    assert server.sql("SELECT count(*) FROM providers WHERE id = :p", p=p["id"]) == [[1]]
