"""The handful of Letta REST calls the suites make, with assertions that say what went wrong."""

from __future__ import annotations

import uuid

from .letta_server import LettaServer


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def ok(resp, *statuses: int):
    expected = statuses or (200,)
    assert resp.status in expected, f"HTTP {resp.status} (expected {expected}): {resp.text[:2000]}"
    return resp.body


def create_provider(server: LettaServer, name: str, base_url: str | None, api_key: str = "",
                    provider_type: str = "openai", user_id: str | None = None) -> dict:
    body = {"name": name, "provider_type": provider_type, "api_key": api_key}
    if base_url is not None:
        body["base_url"] = base_url
    return ok(server.post("/v1/providers/", body, user_id=user_id))


def list_providers(server: LettaServer, user_id: str | None = None) -> list[dict]:
    return ok(server.get("/v1/providers/", user_id=user_id))


def list_models(server: LettaServer, user_id: str | None = None) -> list[dict]:
    return ok(server.get("/v1/models/", user_id=user_id))


def handles(server: LettaServer, user_id: str | None = None) -> list[str]:
    return [m["handle"] for m in list_models(server, user_id=user_id)]


def delete_provider(server: LettaServer, provider_id: str, user_id: str | None = None):
    return server.delete(f"/v1/providers/{provider_id}", user_id=user_id)


def create_org_user(server: LettaServer) -> tuple[str, str]:
    org = ok(server.post("/v1/admin/orgs/", {"name": unique("org-")}))
    user = ok(server.post("/v1/admin/users/", {"name": unique("user-"), "organization_id": org["id"]}))
    return org["id"], user["id"]


# Releases before 0.16 refuse an agent without an embedding; nothing in the suites embeds, so the
# endpoint is a closed port: a request there would fail loudly rather than reach a real vendor.
EMBEDDING_CONFIG = {
    "embedding_endpoint_type": "openai",
    "embedding_endpoint": "http://127.0.0.1:9/v1",
    "embedding_model": "text-embedding-3-small",
    "embedding_dim": 1536,
    "embedding_chunk_size": 300,
}


def create_agent(server: LettaServer, handle: str, user_id: str | None = None):
    body = {
        # letta_v1_agent (the default from 0.16 on) completes a turn with a plain reply; older
        # releases default to memgpt_v2_agent, which insists on a tool call.
        "name": unique("agent-"), "model": handle, "embedding_config": EMBEDDING_CONFIG, "agent_type": "letta_v1_agent",
        "include_base_tools": False, "memory_blocks": [],
    }
    return server.post("/v1/agents/", body, user_id=user_id)


def create_agent_on_provider(server: LettaServer, provider: str, base_url: str, model: str, user_id: str | None = None):
    """An agent bound to one OpenAI-compatible provider by an explicit model configuration.

    Stock Letta names every such provider's models ``openai-proxy/<model>``, so a handle cannot
    pick one of two; the configuration names the provider, as a stock deployment's agents do.
    """
    config = {
        "model": model, "model_endpoint_type": "openai", "model_endpoint": base_url, "provider_name": provider,
        "provider_category": "byok", "context_window": 32000, "handle": f"openai-proxy/{model}",
    }
    body = {
        "name": unique("agent-"), "llm_config": config, "embedding_config": EMBEDDING_CONFIG,
        "agent_type": "letta_v1_agent", "include_base_tools": False, "memory_blocks": [],
    }
    return ok(server.post("/v1/agents/", body, user_id=user_id), 200, 201)


def create_agent_ok(server: LettaServer, handle: str, user_id: str | None = None) -> dict:
    return ok(create_agent(server, handle, user_id=user_id), 200, 201)


def send_message(server: LettaServer, agent_id: str, text: str, user_id: str | None = None):
    body = {"messages": [{"role": "user", "content": text}]}
    return server.post(f"/v1/agents/{agent_id}/messages", body, user_id=user_id, timeout=180)


def assistant_text(response_body: dict) -> str:
    parts = []
    for message in response_body.get("messages", []):
        if message.get("message_type") == "assistant_message":
            content = message.get("content")
            parts.append(content if isinstance(content, str) else "".join(c.get("text", "") for c in content or []))
    return "".join(parts)


def talk(server: LettaServer, agent_id: str, vendor, text: str) -> list:
    """Send ``text`` to the agent and return the chat completions ``vendor`` received for it,
    after checking the agent answered with the vendor's reply (so the conversation went there)."""
    vendor.clear()
    body = ok(send_message(server, agent_id, text))
    assert assistant_text(body) == vendor.reply
    chats = vendor.chat_requests()
    assert chats, "the vendor received no chat completion"
    return chats
