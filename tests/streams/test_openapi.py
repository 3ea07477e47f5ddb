"""GET /openapi.json: the document covers every route the app serves, and the app keeps to it.

The fuzz test drives the real app through its WSGI interface with schemathesis: requests
generated from the document (valid ones and broken ones), with a real SQLite log, one live call
and one ended call whose ids are used some of the time; every answer must be a documented status
with a body matching its schema, and never a 5xx. Derandomized: CI sees the same examples.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
import soundfile as sf
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import streams.callbacks
import streams.injections
from app import create_app, shutdown
from runtime import Runtime
from streams.schemas import OPERATIONS
from streams.status import CallStatus

# Routes of app.url_map the document leaves out, and why.
NOT_DOCUMENTED: set[tuple[str, str]] = set()  # every route is documented
EXAMPLES_PER_ROUTE = 60
# The route with the most to get wrong; and the feed, whose answers each last a poll of the log.
EXAMPLES = {("/streams/<key>/inject", "POST"): 200, ("/events", "GET"): 25}


def make_app(tmp_path: Path, **overrides: Any) -> Flask:
    return create_app({"DATABASE_PATH": tmp_path / "db.sqlite3", "MEDIA_DIR": tmp_path, "API_TOKEN": "",
                       "TELNYX_API_KEY": "", **overrides})


def served_routes(app: Flask) -> set[tuple[str, str]]:
    return {(rule.rule, method) for rule in app.url_map.iter_rules()
            for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}}


def test_the_document_lists_every_route_the_app_serves(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    try:
        document = app.test_client().get("/openapi.json").get_json()
        documented = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
        flask_style = served_routes(app) - NOT_DOCUMENTED
        as_openapi = {(rule.replace("<", "{").replace(">", "}"), method) for rule, method in flask_style}
        assert documented == as_openapi
        assert set(OPERATIONS) == flask_style  # and nothing documented that is not served
        assert document["openapi"] == "3.1.0"
        for path, item in document["paths"].items():
            for method, operation in item.items():
                public = operation.get("security") == []
                # The webhooks answer 401 for a bad signature, the console's sign-in for a wrong token.
                assert ("401" in operation["responses"]) != public or path in ("/webhooks/voice", "/console/login"), \
                    (path, method)
    finally:
        shutdown(app)


def test_the_document_needs_the_api_token(tmp_path: Path) -> None:
    app = make_app(tmp_path, API_TOKEN="s3cret")
    try:
        client = app.test_client()
        answer = client.get("/openapi.json")
        assert answer.status_code == 401 and answer.get_json()["error"]["code"] == "unauthorized"
        assert client.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    finally:
        shutdown(app)


def test_errors_name_nested_fields_dotted(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    try:
        rt: Runtime = app.extensions["mixer_runtime"]
        session, _ = rt.registry.open("v3:dotted")
        assert session is not None
        answer = app.test_client().post("/streams/v3:dotted/inject", json={"tone": {"frequency_hz": "high"}})
        assert answer.status_code == 422
        assert answer.get_json() == {"error": {"code": "invalid_field", "field": "tone.frequency_hz",
                                               "message": "tone.frequency_hz must be a number."}}
    finally:
        shutdown(app)


# -- fuzzing -------------------------------------------------------------------------------------


class Fixture:
    def __init__(self, app: Flask, schema: Any, keys: list[str], injection_ids: list[str]) -> None:
        self.app, self.schema, self.keys, self.injection_ids = app, schema, keys, injection_ids


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    # A feed's answer ends after EVENT_FEED_MAX_S (behind the test client it holds its thread).
    app = make_app(tmp_path_factory.mktemp("fuzz"), MAX_ACTIVE_INJECTIONS=4, EVENT_FEED_MAX_S=0.01)
    rt: Runtime = app.extensions["mixer_runtime"]
    live, _ = rt.registry.open("v3:fuzz-live")
    ended, _ = rt.registry.open("v3:fuzz-ended")
    assert live is not None and ended is not None
    live.save()
    rt.registry.close(ended, CallStatus.ENDED, "test")
    client = app.test_client()
    injection = client.post("/streams/v3:fuzz-live/inject",
                            json={"tone": {"frequency_hz": 300, "duration_ms": 200}, "loop": True})
    assert injection.status_code == 201, injection.get_data(as_text=True)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    yield Fixture(app, schema, ["v3:fuzz-live", "v3:fuzz-ended"], [injection.get_json()["id"], "inj_nope"])
    shutdown(app)


def _no_network(url: str, **_: Any) -> bytes:
    """audio_url: the fuzzer's URLs must not reach the internet. Every one serves a short tone
    (tests/e2e/test_bad_input.py checks the 502s of unreachable ones)."""
    buffer = io.BytesIO()
    sf.write(buffer, 0.25 * np.sin(2 * np.pi * 440 * np.arange(800) / 8000), 8000, format="WAV")
    return buffer.getvalue()


def _no_dns(url: Any) -> list[str]:
    """callback_url: the fuzzer's hosts are not looked up (a 422 here; tests/e2e/test_callbacks.py
    checks real ones), so nothing is ever delivered to them either."""
    raise OSError("no DNS in the fuzz test")


@pytest.mark.parametrize(("rule", "method"), sorted(OPERATIONS))
def test_fuzz_the_app_against_its_document(fuzzed: Fixture, monkeypatch: pytest.MonkeyPatch, rule: str,
                                           method: str) -> None:
    monkeypatch.setattr(streams.injections, "fetch_audio", _no_network)
    monkeypatch.setattr(streams.callbacks, "resolve", _no_dns)
    path = rule.replace("<", "{").replace(">", "}")
    operation = fuzzed.schema[path][method]
    names = [part[1:-1] for part in rule.split("/") if part.startswith("<")]
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    strategies = [operation.as_strategy(mode) for mode in modes]
    if names:  # mostly the real ids: else nearly every call is a 404
        client = fuzzed.app.test_client()
        client.post(f"/streams/{fuzzed.keys[0]}/clear")
        fresh = client.post(f"/streams/{fuzzed.keys[0]}/inject", json={"dtmf": "123", "loop": True}).get_json()
        live, ended = fuzzed.keys
        real = st.fixed_dictionaries({"key": st.sampled_from([live, live, live, ended]),
                                      "inj_id": st.sampled_from([fresh["id"], *fuzzed.injection_ids])})
        strategies += [real.flatmap(lambda ids, mode=mode: operation.as_strategy(
            mode, path_parameters={n: ids[n] for n in names})) for mode in (*modes, *modes)]

    @given(case=st.one_of(strategies))
    @settings(max_examples=EXAMPLES.get((rule, method), EXAMPLES_PER_ROUTE), deadline=None, derandomize=True,
              database=None, suppress_health_check=list(HealthCheck))
    def run(case: schemathesis.Case) -> None:
        if rule == "/streams/<key>/inject":  # room for one more: else all but the first few are 429s
            fuzzed.app.test_client().post(f"/streams/{fuzzed.keys[0]}/clear")
        case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                       response_schema_conformance])

    run()
