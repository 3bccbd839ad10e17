"""The parts of the fuzz and parity suites that need no server: comparing, allowing, reporting."""

from __future__ import annotations

import json

from compat_tests.fuzz import FuzzRun, selected
from compat_tests.parity import allowed_for, differences, judge

from ketta_build.matrix import Cell
from ketta_build.matrixreport import report_html, report_markdown, user_input_records

REFERENCE = [{"step": "list models", "status": 200, "handles": ["<keyed>/gpt-4o"]},
             {"step": "create one with no api_key field", "status": 422}]


def test_parity_names_each_difference_and_the_allow_list_explains_only_what_it_lists():
    steps = [{"step": "list models", "status": 200, "handles": ["<keyed>/gpt-4o", "<keyed>/text-embedding"]},
             {"step": "create one with no api_key field", "status": 400}]
    found = differences(steps, REFERENCE)
    assert [(d["step"], d["field"]) for d in found] == [("list models", "handles"), ("create one with no api_key field", "status")]
    entries = [{"releases": "<0.16", "step": "list models", "field": "handles", "reason": "older list"},
               {"releases": ">=0.14", "step": "gone", "field": "status", "reason": "no longer"}]
    unexplained, explained, stale = judge(found, allowed_for(entries, "0.15.1"))
    assert [d["step"] for d in unexplained] == ["create one with no api_key field"]
    assert explained[0]["reason"] == "older list" and [e["step"] for e in stale] == ["gone"]
    unexplained, explained, _ = judge(found, allowed_for(entries, "0.16.8"))  # not for this release
    assert len(unexplained) == 2 and not explained


def test_a_missing_or_extra_step_is_a_difference():
    found = differences([REFERENCE[0]], REFERENCE)
    assert found == [{"step": "create one with no api_key field", "field": "step", "got": False, "expected": True}]


def test_the_fuzz_suite_covers_providers_models_and_agent_creation_only():
    assert selected("/v1/providers/{provider_id}", "DELETE") and selected("/v1/models/embedding", "GET")
    assert selected("/v1/agents/", "POST") and not selected("/v1/agents/", "GET")
    assert not selected("/v1/tools/", "POST")


class _Case:
    method, formatted_path, body, headers, query, path_parameters = "GET", "/v1/providers/", None, {}, {"limit": -5}, {}

    class operation:  # noqa: N801
        path = "/v1/providers/"


class _Response:
    def __init__(self, status: int, text: str) -> None:
        self.status_code, self.text = status, text


def test_an_allowed_5xx_is_counted_and_any_other_fails(monkeypatch):
    run = FuzzRun("http://127.0.0.1:9", "user-1", 7, 1, "http://127.0.0.1:9/v1",
                  allowed=[{"route": "GET /v1/providers/", "status": 500, "text": "database", "reason": "negative limit"}])
    run.after_call(_Case(), _Response(500, '{"detail":"A database error occurred."}'))
    run.after_call(_Case(), _Response(502, "bad gateway"))
    assert run.allowed_hits == {"negative limit": 1}
    assert len(run.failures) == 1 and "HTTP 502" in run.failures[0] and "curl -X GET" in run.failures[0]
    assert "limit=-5" in run.failures[0], "the repeat command carries the query as sent"


def test_a_key_sent_also_as_an_id_is_no_leak_when_the_id_shows_up():
    run = FuzzRun("http://127.0.0.1:9", "user-1", 7, 1, "http://127.0.0.1:9/v1")

    class Create(_Case):
        method, formatted_path, query = "POST", "/v1/providers/", {}
        body = {"name": "x", "api_key": "sk-a-real-looking-key", "provider_type": "openai"}

    class Lookup(_Case):
        formatted_path, query, body = "/v1/providers/same-string-twice", {}, None
        path_parameters = {"provider_id": "same-string-twice"}

    run.before_call(Create())
    run.before_call(Lookup())
    run.keys_sent.add("same-string-twice")
    run.check_log("No Provider found with id same-string-twice\n")
    assert run.failures == []
    run.check_log("request body: sk-a-real-looking-key")
    assert len(run.failures) == 1 and "server log holds 1 API key" in run.failures[0]


def test_a_key_that_is_the_tail_of_an_id_is_no_leak_but_the_key_alone_is():
    """Found by the 0.16.8 cell at 40 examples: hypothesis made a key the tail of a provider id the run
    also sent, and the log line about that id matched the key."""
    run = FuzzRun("http://127.0.0.1:9", "user-1", 7, 1, "http://127.0.0.1:9/v1")

    class Create(_Case):
        method, formatted_path, query = "POST", "/v1/providers/", {}
        body = {"name": "x", "api_key": "Oa\u00fe(\u0097-tail-of-it", "provider_type": "openai"}

    class Lookup(_Case):
        formatted_path, query, body = "/v1/providers/x", {}, None
        path_parameters = {"provider_id": "\u00ac\u00a8Oa\u00fe(\u0097-tail-of-it"}

    run.before_call(Create())
    run.before_call(Lookup())
    run.check_log("letta.orm.errors.NoResultFound: No Provider found with id \u00ac\u00a8Oa\u00fe(\u0097-tail-of-it\n")
    assert run.failures == []
    run.check_log("No Provider found with id \u00ac\u00a8Oa\u00fe(\u0097-tail-of-it; key Oa\u00fe(\u0097-tail-of-it\n")
    assert len(run.failures) == 1 and "server log holds 1 API key" in run.failures[0]


def test_a_key_inside_a_path_the_server_logs_on_its_own_is_no_leak():
    """Found by the 0.14.0 cell at 40 examples: hypothesis drew a key from a constant of the test code
    (the server home's prefix), and the server's own tracebacks name files under that home."""
    run = FuzzRun("http://127.0.0.1:9", "user-1", 7, 1, "http://127.0.0.1:9/v1")

    class Create(_Case):
        method, formatted_path, query = "POST", "/v1/providers/", {}
        body = {"name": "x", "api_key": "ketta-letta-home-", "provider_type": "openai"}

    run.before_call(Create())
    home = "/tmp/ketta-letta-home-hwrppm4r"
    log = f'  File "{home}/.letta/x.py", line 1, in <module>\n'
    run.check_log(log, own=(home,))
    assert run.failures == []
    run.check_log(log + "provider create: api_key=ketta-letta-home-\n", own=(home,))
    assert len(run.failures) == 1 and "server log holds 1 API key" in run.failures[0]
    run.check_log(log)  # without knowing the server's own paths, the path looks like a leak
    assert len(run.failures) == 2


def test_a_key_the_server_logged_before_the_run_sent_it_is_its_own_text():
    """Found by the 0.15.x cells: hypothesis drew "GROQ_API_KEY" (a constant of the test code) as a key,
    and the server names that setting in its log on its own."""
    log = ["start-up: GROQ_API_KEY is not set\n"]
    run = FuzzRun("http://127.0.0.1:9", "user-1", 7, 1, "http://127.0.0.1:9/v1", log_size=lambda: len(log[0]))

    class Create(_Case):
        method, formatted_path, query = "POST", "/v1/providers/", {}
        body = {"name": "x", "api_key": "GROQ_API_KEY", "provider_type": "openai"}

    class Leaky(_Case):
        method, formatted_path, query = "POST", "/v1/providers/", {}
        body = {"name": "y", "api_key": "sk-only-the-run-knows", "provider_type": "openai"}

    run.before_call(Create())
    run.before_call(Leaky())
    log[0] += "later: GROQ_API_KEY is not set\n"
    run.check_log(log[0])
    assert run.failures == []
    run.check_log(log[0] + "body: sk-only-the-run-knows\n")
    assert len(run.failures) == 1 and "server log holds 1 API key" in run.failures[0]


def test_the_matrix_report_shows_fuzz_and_parity_per_release(tmp_path):
    (tmp_path / "fuzz").mkdir()
    (tmp_path / "parity").mkdir()
    (tmp_path / "fuzz" / "0.14.0.json").write_text(json.dumps({
        "seed": 5, "examples_per_route": 10, "calls": 123, "routes": {"a": {}, "b": {}}, "allowed": {"neg": 2},
        "failures": [], "notes": []}))
    (tmp_path / "parity" / "0.14.0.json").write_text(json.dumps({
        "steps": [{}] * 26, "differences": [], "stale_allowances": [],
        "allowed": [{"step": "create a provider with a key", "field": "fields", "reason": "no last_synced before 0.16"}]}))
    context = user_input_records(tmp_path)
    cells = [Cell("0.14.0", "fuzz", "letta0140-fuzz", status="pass"), Cell("0.14.0", "parity", "letta0140-parity", status="pass")]
    md = report_markdown(cells, False, context)
    assert "| 0.14.0 | 123 (2, 10, 5) | 2 | 0 | 26 | create a provider with a key / fields: no last_synced before 0.16 | 0 |" in md
    page = report_html(cells, False, context)
    assert "What users send" in page and "no last_synced before 0.16" in page
