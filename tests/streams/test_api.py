"""The REST views through Flask's test client: no sockets, no simulator, a real SQLite log."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app, shutdown
from runtime import Runtime
from streams.status import CallStatus


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app({"DATABASE_PATH": tmp_path / "db.sqlite3", "MEDIA_DIR": tmp_path, "API_TOKEN": ""})
    yield app
    shutdown(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def calls(app: Flask, *statuses: CallStatus) -> list[str]:
    """One call per status, opened and (unless live) ended; their ids in creation order."""
    rt: Runtime = app.extensions["mixer_runtime"]
    ids = []
    for n, status in enumerate(statuses):
        session, _ = rt.registry.open(f"v3:call-{n}")
        assert session is not None
        session.save()
        if status != CallStatus.ANSWERING:
            rt.registry.close(session, status, "test")
        ids.append(session.call_control_id)
    return ids


def error(response: Any, status: int, code: str, field: str | None = None) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()["error"]
    assert body["code"] == code and body.get("field") == field


def test_streams_lists_the_live_calls_by_default(app: Flask, client: FlaskClient) -> None:
    live, _ended = calls(app, CallStatus.ANSWERING, CallStatus.ENDED)
    body = client.get("/streams").get_json()
    assert [s["call_control_id"] for s in body["items"]] == [live] and body["next_cursor"] is None


def test_streams_history_pages_with_a_cursor_and_filters_by_status(app: Flask, client: FlaskClient) -> None:
    ids = calls(app, CallStatus.ENDED, CallStatus.ANSWERING, CallStatus.FAILED, CallStatus.ENDED, CallStatus.ENDED)
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        params = {"status": "all", "limit": "2", **({"cursor": cursor} if cursor else {})}
        body = client.get("/streams", query_string=params).get_json()
        seen += [s["call_control_id"] for s in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    ended = client.get("/streams", query_string={"status": "ended"}).get_json()["items"]
    assert [s["call_control_id"] for s in ended] == [ids[0], ids[3], ids[4]]
    live = client.get("/streams", query_string={"status": "all"}).get_json()["items"][1]
    assert live["status"] == "answering"  # the live view, not a stale row


@pytest.mark.parametrize(("query", "status", "code", "field"), [
    ({"limit": "2", "foo": "bar"}, 422, "unknown_field", "foo"),
    ({"status": "odd"}, 422, "invalid_field", "status"),
    ({"status": "all", "limit": "0"}, 422, "out_of_range", "limit"),
    ({"status": "all", "cursor": "x"}, 422, "invalid_field", "cursor"),
    ({"limit": "2"}, 422, "invalid_field", "limit"),  # the live list is not paged
])
def test_streams_query_validation(client: FlaskClient, query: dict[str, str], status: int, code: str,
                                  field: str) -> None:
    error(client.get("/streams", query_string=query), status, code, field)


def test_the_api_token_guards_every_route_but_the_public_ones(tmp_path: Path) -> None:
    app = create_app({"DATABASE_PATH": tmp_path / "db.sqlite3", "API_TOKEN": "s3cret", "WEBHOOK_VERIFY": True})
    try:
        client = app.test_client()
        for path in ("/streams", "/stream-log", "/metrics", "/no/such/route"):
            error(client.get(path), 401, "unauthorized")
        assert client.get("/streams", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/health").status_code == 200
        # Telnyx signs its webhooks instead: the signature check answers, not the token check.
        error(client.post("/webhooks/voice", data=b"{}"), 401, "invalid_signature")
    finally:
        shutdown(app)


def test_a_call_is_logged_as_opened_not_as_a_stream_before_telnyx_connects(app: Flask, client: FlaskClient) -> None:
    (ccid,) = calls(app, CallStatus.ANSWERING)
    rt: Runtime = app.extensions["mixer_runtime"]
    rt.log.flush()
    events = [e["event"] for e in client.get("/stream-log", query_string={"call_control_id": ccid}).get_json()["items"]]
    assert events[0] == "call.opened" and not any(e.startswith("stream.") for e in events)
