"""API fuzzing of a live Letta server with schemathesis, and the checks Ketta adds after every call.

The server's own OpenAPI document (``GET /openapi.json``) drives schemathesis: every provider and
model route, and agent creation, gets generated requests (each route on its own, then sequences
through the links schemathesis infers between the provider routes: create, then read, change,
check, refresh or delete what was created). Every request acts as the one user of an organisation
made for the run. After every call:

* no 5xx;
* after an accepted call (2xx): ``GET /v1/providers/`` and ``GET /v1/models/`` still answer 200 for
  that organisation (issue #18: one provider stored without a key made the listing answer 400);
* no API key the run sent appears in any response; at the end, none in the server's log;
* after a provider was deleted, a new one can take its name.

A failing call does not stop the run: every failure is kept (with a curl command that repeats the
request) and the test fails at the end listing them. Everything is seeded from one number
(``KETTA_FUZZ_SEED``), so a run is replayed exactly against the same release and series.
"""

from __future__ import annotations

import collections
import json
import re
import shlex
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field

import hypothesis.core
import hypothesis.errors
import requests
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis.stateful import run_state_machine_as_test

KEY_FIELDS = ("api_key", "access_key")
MAX_FAILURES = 25
_PROVIDER_ID = re.compile(r"^/v1/providers/([^/]+)$")


def selected(path: str, method: str) -> bool:
    """The routes the fuzz suite covers: providers, models, and creating an agent."""
    return path.startswith(("/v1/providers", "/v1/models")) or (path.rstrip("/") == "/v1/agents" and method == "POST")


@dataclass
class FuzzRun:
    base_url: str
    user_id: str
    seed: int
    examples: int  # generated requests per route
    vendor_url: str  # a working OpenAI-compatible vendor, for the providers the checks create
    allowed: list = field(default_factory=list)  # reviewed upstream 5xx: {route, status, text, query, reason}
    allowed_hits: collections.Counter = field(default_factory=collections.Counter)  # reason -> times met
    calls: collections.Counter = field(default_factory=collections.Counter)  # route -> calls
    statuses: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))  # route -> status -> n
    keys_sent: set = field(default_factory=set)
    not_keys: set = field(default_factory=set)  # strings the run also sent as something else
    failures: list = field(default_factory=list)
    reused_names: int = 0
    notes: list = field(default_factory=list)
    _deleting: dict = field(default_factory=dict)  # provider id -> its name, read before a DELETE
    # How long the server log was when each key was first sent (``log_size`` reads it): text the
    # server wrote before it ever saw a key is its own, not a leak of the key.
    log_size: object = None
    key_sent_at: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ plain HTTP for the checks

    def _http(self, method: str, path: str, body: object | None = None) -> tuple[int, str]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"user_id": self.user_id, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310 - 127.0.0.1
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def new_user(self) -> str:
        """A user of a new organisation (the admin routes need no user)."""
        _, org = self._http("POST", "/v1/admin/orgs/", {"name": f"fuzz-{uuid.uuid4().hex[:8]}"})
        _, user = self._http("POST", "/v1/admin/users/", {"name": f"fuzz-{uuid.uuid4().hex[:8]}",
                                                          "organization_id": json.loads(org)["id"]})
        return json.loads(user)["id"]

    def fail(self, what: str, case=None) -> None:
        if len(self.failures) < MAX_FAILURES:
            self.failures.append(f"{what} (repeat: {self.repeat(case)})" if case is not None else what)

    def repeat(self, case) -> str:
        """The request as a curl command, values as sent (schemathesis's own masks keys)."""
        headers = {**{k: str(v) for k, v in (case.headers or {}).items()}, "user_id": self.user_id}
        parts = ["curl", "-X", case.method.upper()]
        for name, value in headers.items():
            parts += ["-H", shlex.quote(f"{name}: {value}")]
        if case.body is not None and not isinstance(case.body, type(None)) and case.body.__class__.__name__ != "NotSet":
            parts += ["-H", "'Content-Type: application/json'", "-d", shlex.quote(json.dumps(case.body))]
        query = urllib.parse.urlencode(case.query or {}, doseq=True)
        parts.append(shlex.quote(self.base_url + case.formatted_path + (f"?{query}" if query else "")))
        return " ".join(parts)

    # ------------------------------------------------------------------ around every call

    def label(self, case) -> str:
        return f"{case.method.upper()} {case.operation.path}"

    def before_call(self, case) -> None:
        body = case.body if isinstance(case.body, dict) else {}
        for name in KEY_FIELDS:
            value = body.get(name)
            if isinstance(value, str) and len(value.strip()) >= 8:
                self.keys_sent.add(value)
                if self.log_size is not None and value not in self.key_sent_at:
                    self.key_sent_at[value] = self.log_size()
        # hypothesis reuses a generated string across fields: one sent as an id or a name too may show up
        # in an answer or a log line about that id or name, which is no leak of a key
        for value in [*(case.path_parameters or {}).values(), *(case.query or {}).values(),
                      *(v for k, v in body.items() if k not in KEY_FIELDS)]:
            if isinstance(value, str):
                self.not_keys.add(value)
        if case.method.upper() == "DELETE":
            match = _PROVIDER_ID.match(case.formatted_path)
            if match:
                status, text = self._http("GET", case.formatted_path)
                if status == 200:
                    self._deleting[match.group(1)] = json.loads(text).get("name")

    def after_call(self, case, response) -> None:
        label = self.label(case)
        self.calls[label] += 1
        self.statuses[label][response.status_code] += 1
        text = response.text or ""
        if response.status_code >= 500:
            query = urllib.parse.urlencode(case.query or {}, doseq=True)
            known = next((a for a in self.allowed if a["route"] == label and a["status"] == response.status_code
                          and a["text"] in text and re.search(a.get("query", ""), query)), None)
            if known is not None:
                self.allowed_hits[known["reason"]] += 1
            else:
                self.fail(f"{label}: HTTP {response.status_code}: {text[:300]}", case)
        leaked = self.keys_in(text)
        if leaked:
            self.fail(f"{label}: the response holds an API key the run sent ({leaked[0][:6]}…)", case)
        if not 200 <= response.status_code < 300:
            return
        for path in ("/v1/providers/", "/v1/models/"):
            status, body = self._http("GET", path)
            if status != 200:
                self.fail(f"after {label} ({response.status_code}): GET {path} answers {status}: {body[:300]}", case)
        match = _PROVIDER_ID.match(case.formatted_path)
        if case.method.upper() == "DELETE" and match and self._deleting.get(match.group(1)):
            self.reuse_name(self._deleting.pop(match.group(1)), case)

    def reuse_name(self, name: str, case) -> None:
        """A deleted provider's name is free: a new provider takes it (then goes again)."""
        status, text = self._http("POST", "/v1/providers/", {"name": name, "provider_type": "openai",
                                                             "api_key": "sk-reuse-" + uuid.uuid4().hex[:8],
                                                             "base_url": self.vendor_url})
        if status != 200:
            self.fail(f"after DELETE of provider {name!r}: creating one with its name answers {status}: {text[:300]}", case)
            return
        self.reused_names += 1
        self._http("DELETE", f"/v1/providers/{json.loads(text)['id']}")

    def keys_in(self, text: str) -> list[str]:
        """The keys the run sent that ``text`` holds, apart from inside a value the run sent as something
        else (hypothesis derives strings from one another: a key may be the tail of a provider id, and a
        log line about that id is no leak of the key)."""
        found = []
        for key in sorted(self.keys_sent - self.not_keys):
            if key not in text:
                continue
            rest = text
            for other in self.not_keys:
                if key in other:
                    rest = rest.replace(other, "")
            if key in rest:
                found.append(key)
        return found

    def check_log(self, log_text: str, own: tuple[str, ...] = ()) -> None:
        """No key the run sent in the server log. ``own`` are strings the server writes on its own (its
        home, environment and tree paths, in every traceback): hypothesis also draws strings from the
        constants of the code around it (``"ketta-letta-home-"``, say), and such a "key" found inside
        a path the server logs is no leak."""
        for text in sorted(own, key=len, reverse=True):
            log_text = log_text.replace(text, "")
        # hypothesis also draws the test code's own constants ("GROQ_API_KEY", say): one the server had
        # logged before the run sent it is the server's own text wherever it shows up later
        own_before = {key for key, at in self.key_sent_at.items() if key in log_text[:at]}
        leaked = [key for key in self.keys_in(log_text) if key not in own_before]
        if leaked:
            self.fail(f"the server log holds {len(leaked)} API key(s) the run sent (e.g. {leaked[0][:6]}…)")

    # ------------------------------------------------------------------ running

    def _settings(self, examples: int, **extra) -> settings:
        return settings(max_examples=examples, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                        suppress_health_check=list(HealthCheck), **extra)

    def headers(self, operation) -> dict[str, str]:
        """Fixed values for the route's header parameters: the run fuzzes bodies, queries and paths, and
        acts as its organisation's user (a header requests cannot send would stop nothing on the server)."""
        names = [p.name for p in operation.iter_parameters() if p.location.value == "header"]
        return {name: (self.user_id if name == "user_id" else "ketta-fuzz") for name in names} | {"user_id": self.user_id}

    def call(self, case):
        """Send ``case`` and check what comes back; a request that gets no answer is a failure too."""
        self.before_call(case)
        try:
            response = case.call(base_url=self.base_url, headers=self.headers(case.operation), timeout=120)
        except requests.RequestException as exc:
            self.fail(f"{self.label(case)}: no answer ({type(exc).__name__}: {str(exc)[:200]})", case)
            reject()
        self.after_call(case, response)
        return response

    def run_routes(self, schema, path_ids: dict[str, list[str]]) -> None:
        """Each selected route on its own: ``examples`` generated requests; a route with a
        ``{provider_id}`` is tried on each of ``path_ids["provider_id"]`` in turn."""
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation is None or not selected(operation.path, operation.method.upper()):
                continue
            params = [p.name for p in operation.iter_parameters() if p.location.value == "path"]
            choices = [{}]
            if params == ["provider_id"]:
                choices = [{"provider_id": pid} for pid in path_ids.get("provider_id", [])] or [{}]
            for number, path_parameters in enumerate(choices):
                strategy = operation.as_strategy(headers=self.headers(operation),
                                                 **({"path_parameters": path_parameters} if path_parameters else {}))
                share = max(1, self.examples // len(choices) + (number < self.examples % len(choices)))

                @self._settings(share)
                @given(case=strategy)
                def route(case) -> None:
                    self.call(case)

                route()

    def run_sequences(self, schema, steps: int) -> None:
        """Sequences through the links schemathesis infers between the provider routes."""
        run = self
        machine = schema.include(path_regex=r"^/v1/providers").as_state_machine()

        class Sequences(machine):  # type: ignore[misc, valid-type]
            def setup(self) -> None:  # each sequence in an organisation of its own: what it sees is its own doing
                run.user_id = run.new_user()

            def call(self, case, **kwargs):
                return run.call(case)

            def validate_response(self, response, case, additional_checks=None, **kwargs) -> None:
                pass  # the checks are ours (after_call), and a failure does not stop the sequence

        user = self.user_id
        try:
            run_state_machine_as_test(Sequences, settings=self._settings(self.examples, stateful_step_count=steps))
        except hypothesis.errors.FlakyStrategyDefinition:
            # the server's answers (ids, list lengths) steer which request comes next; a replay that
            # went another way ends the sequences early, and what they found stays found
            self.notes.append("sequences ended early: a replay drew another way than the first run")
        finally:
            self.user_id = user

    def run(self, schema, path_ids: dict[str, list[str]], steps: int) -> float:
        """Routes, then sequences, seeded from ``seed``; the seconds it took."""
        started = time.monotonic()
        previous, hypothesis.core.global_force_seed = hypothesis.core.global_force_seed, self.seed
        try:
            self.run_routes(schema, path_ids)
            self.run_sequences(schema, steps)
        finally:
            hypothesis.core.global_force_seed = previous
        return time.monotonic() - started

    def summary(self) -> dict:
        return {
            "seed": self.seed, "examples_per_route": self.examples, "calls": sum(self.calls.values()),
            "routes": {label: {"calls": n, "statuses": {str(k): v for k, v in sorted(self.statuses[label].items())}}
                       for label, n in sorted(self.calls.items())},
            "names_reused": self.reused_names, "keys_sent": len(self.keys_sent), "notes": list(self.notes),
            "allowed": dict(self.allowed_hits),
            "failures": list(self.failures),
        }
