"""One scripted sequence of what a front end sends, and its results made comparable across releases.

:func:`run_script` creates OpenAI-compatible providers with and without a key (and the ones every
release must refuse), lists providers, models and embedding models, checks providers, creates agents
and talks to them through fake vendors, deletes a provider and takes its name again, changes a key,
and deletes everything. Each step records what a user would see, normalised so that two releases
can be compared: status codes, handles with the run's provider names replaced by their roles,
which vendor got which key (by role: the provider's key, the placeholder, none, the server's own)
and which model.

:func:`compare` holds one release's steps against the reference (0.16.8's, recorded in
``compat_tests/parity/0.16.8.json``); a difference fails unless ``parity-allowed.toml`` lists it for
that release with its reason, and a listed difference that no longer happens fails too (the list
stays true).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from . import api
from .letta_server import SERVER_ENV_KEYS

UNREACHABLE = "http://127.0.0.1:9/v1"


@dataclass
class Script:
    """The run's names and keys, and what it saw."""

    server: object  # InOrganisation
    keyed_vendor: object
    keyless_vendor: object
    steps: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.names = {"keyed": f"ParityKeyed{tag}", "keyless": f"ParityKeyless{tag}"}
        self.keys = {"keyed": f"sk-parity-{tag}", "keyed-changed": f"sk-parity-changed-{tag}"}

    # ------------------------------------------------------------------ normalising

    def role(self, name: str) -> str:
        return next((r for r, n in self.names.items() if n == name), "other")

    def handle(self, handle: str) -> str:
        provider, _, model = handle.partition("/")
        return f"<{self.role(provider)}>/{model}"

    def bearer(self, value: str | None) -> str:
        if value is None:
            return "none"
        if value == "DUMMY_API_KEY":
            return "placeholder"
        if value in SERVER_ENV_KEYS.values():
            return "server's own key"
        return next((f"{r} key" for r, k in self.keys.items() if k == value), "another key")

    def record(self, step: str, resp, **facts) -> dict:
        entry = {"step": step, "status": resp.status, **facts}
        self.steps.append(entry)
        return entry

    def vendor_saw(self, vendor, since: int) -> list[str]:
        return sorted({f"{r.path.rstrip('/').rsplit('/', 1)[-1]} {self.bearer(r.bearer)} {r.model}"
                       for r in vendor.requests[since:] if r.path.endswith(("/chat/completions", "/embeddings"))})

    # ------------------------------------------------------------------ the script

    def create(self, role: str, key: str, base_url: str | None):
        body = {"name": self.names.get(role, f"{role}-{uuid.uuid4().hex[:6]}"), "provider_type": "openai", "api_key": key}
        if base_url is not None:
            body["base_url"] = base_url
        return self.server.post("/v1/providers/", body)

    def run(self) -> list[dict]:
        s = self.server
        keyed_url, keyless_url = self.keyed_vendor.base_url, self.keyless_vendor.base_url
        r = self.create("keyed", self.keys["keyed"], keyed_url)
        keyed = r.body if r.status == 200 else {}
        self.record("create a provider with a key", r, key_echoed=self.keys["keyed"] in r.text,
                    fields=sorted(keyed) if keyed else None)
        r = self.create("keyless", "", keyless_url)
        keyless = r.body if r.status == 200 else {}
        self.record("create a provider without a key on a custom URL", r)
        self.record("create one at the official URL without a key", self.create("official", "", "https://api.openai.com/v1"))
        self.record("create one without a base URL or a key", self.create("default", "", None))
        r = s.post("/v1/providers/", {"name": f"nokey-{uuid.uuid4().hex[:6]}", "provider_type": "openai",
                                      "base_url": keyless_url})
        self.record("create one with no api_key field", r)
        self.record("create one with a key no header can carry", self.create("badkey", "sk-\u00e9t\u00e9", keyless_url))

        r = s.get("/v1/providers/")
        self.record("list providers", r, names=sorted(self.role(p["name"]) for p in r.body) if r.status == 200 else None)
        r = s.get("/v1/models/")
        self.record("list models", r, handles=sorted(self.handle(m["handle"]) for m in r.body) if r.status == 200 else None)
        r = s.get("/v1/models/embedding")
        self.record("list embedding models", r,
                    handles=sorted(self.handle(m["handle"]) for m in r.body if m["handle"].partition("/")[0] in
                                   self.names.values()) if r.status == 200 else None)

        self.record("check a provider's key", s.post("/v1/providers/check", {
            "provider_type": "openai", "api_key": self.keys["keyed"], "base_url": keyed_url}))
        if keyed:
            self.record("check a stored provider", s.post(f"/v1/providers/{keyed['id']}/check", {}))
        self.record("check a provider that cannot be reached", s.post("/v1/providers/check", {
            "provider_type": "openai", "api_key": self.keys["keyed"], "base_url": UNREACHABLE}))

        r = s.post("/v1/agents/", {"name": "Research / Notes", "model": f"{self.names['keyed']}/gpt-4o",
                                   "embedding_config": api.EMBEDDING_CONFIG, "agent_type": "letta_v1_agent",
                                   "include_base_tools": False, "memory_blocks": []})
        self.record("create an agent whose name holds a slash", r)
        agent = self.agent_talks("keyed", "gpt-4o", embedding="text-embedding-3-small")
        keyless_agent = self.agent_talks("keyless", "gpt-4o-mini")

        if keyless:
            self.record("delete the keyless provider", s.delete(f"/v1/providers/{keyless['id']}"))
            r = s.get("/v1/providers/")
            self.record("list providers after the delete", r,
                        names=sorted(self.role(p["name"]) for p in r.body) if r.status == 200 else None)
            r = self.create("keyless", "", keyless_url)
            self.record("create a provider with the deleted one's name", r,
                        same_id=(r.body.get("id") == keyless["id"]) if r.status == 200 else None)
        if keyed:
            self.record("change a provider's key", s.patch(f"/v1/providers/{keyed['id']}",
                                                           {"api_key": self.keys["keyed-changed"]}))
            if agent:
                since = len(self.keyed_vendor.requests)
                r = api.send_message(s, agent["id"], "and now?")
                self.record("the agent talks with the changed key", r, vendor_saw=self.vendor_saw(self.keyed_vendor, since))
            self.record("clear the key of a provider at a custom URL", s.patch(f"/v1/providers/{keyed['id']}", {"api_key": ""}))
        for role, a in (("keyed", agent), ("keyless", keyless_agent)):
            if a:
                self.record(f"delete the agent on the {role} provider", s.delete(f"/v1/agents/{a['id']}"))
        if keyed:
            self.record("delete the keyed provider", s.delete(f"/v1/providers/{keyed['id']}"))
        r = s.get("/v1/models/")
        self.record("list models at the end", r,
                    handles=sorted(self.handle(m["handle"]) for m in r.body) if r.status == 200 else None)
        return self.steps

    def agent_talks(self, role: str, model: str, embedding: str | None = None) -> dict | None:
        vendor = self.keyed_vendor if role == "keyed" else self.keyless_vendor
        body = {"name": api.unique("parity-"), "model": f"{self.names[role]}/{model}", "agent_type": "letta_v1_agent",
                "include_base_tools": False, "memory_blocks": []}
        if embedding:
            body["embedding"] = f"{self.names[role]}/{embedding}"
        else:
            body["embedding_config"] = api.EMBEDDING_CONFIG
        r = self.server.post("/v1/agents/", body)
        agent = r.body if r.status in (200, 201) else None
        self.record(f"create an agent on the {role} provider" + (" with its embedding" if embedding else ""), r,
                    model=(agent or {}).get("llm_config", {}).get("handle") and self.handle(agent["llm_config"]["handle"]),
                    embedding=(agent or {}).get("embedding_config", {}).get("handle") and
                    self.handle(agent["embedding_config"]["handle"]) if embedding else None)
        if agent:
            since = len(vendor.requests)
            r = api.send_message(self.server, agent["id"], "hello")
            self.record(f"the agent on the {role} provider talks", r,
                        replied=api.assistant_text(r.body) == vendor.reply if r.status == 200 else None,
                        vendor_saw=self.vendor_saw(vendor, since))
        return agent


# ---------------------------------------------------------------------- comparing


def differences(steps: list[dict], reference: list[dict]) -> list[dict]:
    """(step, field, got, expected) wherever this run's steps differ from the reference's."""
    ref = {s["step"]: s for s in reference}
    got = {s["step"]: s for s in steps}
    out = []
    for name in list(ref) + [n for n in got if n not in ref]:
        a, b = got.get(name), ref.get(name)
        if a is None or b is None:
            out.append({"step": name, "field": "step", "got": a is not None, "expected": b is not None})
            continue
        for key in sorted(set(a) | set(b)):
            if key != "step" and a.get(key) != b.get(key):
                out.append({"step": name, "field": key, "got": a.get(key), "expected": b.get(key)})
    return out


def allowed_for(entries: list[dict], version: str) -> list[dict]:
    """The allow-list entries that concern release ``version`` (``releases`` is a PEP 440 specifier)."""
    return [e for e in entries if SpecifierSet(e["releases"]).contains(Version(version), prereleases=True)]


def judge(found: list[dict], entries: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(differences not allowed, differences allowed with their reason, allowed entries that did not happen)."""
    unexplained, explained, used = [], [], set()
    for diff in found:
        entry = next((i for i, e in enumerate(entries) if e["step"] == diff["step"] and e["field"] == diff["field"]
                      and ("got" not in e or e["got"] == diff["got"])), None)
        if entry is None:
            unexplained.append(diff)
        else:
            used.add(entry)
            explained.append({**diff, "reason": entries[entry]["reason"]})
    stale = [e for i, e in enumerate(entries) if i not in used]
    return unexplained, explained, stale
