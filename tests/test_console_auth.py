"""The console's sign-in and session cookie (console/, apitoken.py) without a browser: what is
served to whom, the cookie's flags, and that the cookie alone cannot drive the API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app, shutdown


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[callable]:
    apps: list[Flask] = []

    def make(token: str) -> FlaskClient:
        app = create_app({"DATABASE_PATH": tmp_path / f"db-{len(apps)}.sqlite3", "MEDIA_DIR": tmp_path,
                          "API_TOKEN": token, "TELNYX_API_KEY": ""})
        apps.append(app)
        return app.test_client()

    yield make
    for app in apps:
        shutdown(app)


def test_without_a_session_only_the_sign_in_page_is_served(make_app) -> None:
    client = make_app("tok-123")
    page = client.get("/console")
    assert page.status_code == 200 and b'data-test="login-form"' in page.data
    assert b"call-list" not in page.data
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/console/console.js").status_code == 401
    assert client.get("/console/login.js").status_code == 200
    assert client.get("/console/console.css").status_code == 200


def test_signing_in_gives_a_session_cookie_that_only_the_console_can_use(make_app) -> None:
    client = make_app("tok-123")
    wrong = client.post("/console/login", json={"token": "tok-124"})
    assert wrong.status_code == 401 and wrong.get_json()["error"]["field"] == "token"
    assert "Set-Cookie" not in wrong.headers
    assert client.post("/console/login", data="{", content_type="application/json").status_code == 400
    assert client.post("/console/login", json={"token": "x", "more": 1}).get_json()["error"]["code"] == "unknown_field"
    assert client.post("/console/login", json=["tok-123"]).status_code == 422
    right = client.post("/console/login", json={"token": "tok-123"})
    assert right.status_code == 200
    cookie = right.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "tok-123" not in cookie
    assert b'data-test="call-list"' in client.get("/console").data
    assert client.get("/console/console.js").status_code == 200
    assert client.get("/streams").status_code == 401  # the cookie without the console's header
    assert client.get("/streams", headers={"X-Mixer-Console": "1"}).status_code == 200
    assert client.get("/streams", headers={"X-Mixer-Console": "1", "Authorization": "Bearer nope"}).status_code == 200
    client.post("/console/logout")
    assert client.get("/streams", headers={"X-Mixer-Console": "1"}).status_code == 401
    assert b"login-form" in client.get("/console").data


def test_a_new_token_signs_every_console_out(make_app) -> None:
    old = make_app("old-token")
    old.post("/console/login", json={"token": "old-token"})
    value = old.get_cookie("mixer_console").value
    new = make_app("new-token")
    new.set_cookie("mixer_console", value)
    assert new.get("/streams", headers={"X-Mixer-Console": "1"}).status_code == 401
    assert b"login-form" in new.get("/console").data


def test_without_a_token_the_console_needs_no_sign_in(make_app) -> None:
    client = make_app("")
    assert b'data-test="call-list"' in client.get("/console").data
    assert client.get("/console/console.js").status_code == 200
    answer = client.post("/console/login", json={"token": "anything"})
    assert answer.status_code == 200 and "Set-Cookie" not in answer.headers


def test_guessing_the_token_is_slowed_to_ten_tries_a_minute_per_address(make_app) -> None:
    client = make_app("tok-123")
    for i in range(10):
        assert client.post("/console/login", json={"token": f"guess-{i}"}).status_code == 401
    refused = client.post("/console/login", json={"token": "tok-123"})  # even the right one, for now
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "too_many_requests"
    other = client.post("/console/login", json={"token": "tok-123"}, environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other.status_code == 200  # another address is not held up


def test_the_throttle_forgets_old_failures() -> None:
    from console import LoginThrottle

    throttle = LoginThrottle(limit=2, window_s=60)
    throttle.failed("a", 0.0)
    throttle.failed("a", 1.0)
    assert throttle.wait_s("a", 2.0) == 58.0
    assert throttle.wait_s("a", 60.5) == 0.0  # the first has left the window
    assert throttle.wait_s("b", 2.0) == 0.0
