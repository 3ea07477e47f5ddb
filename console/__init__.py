"""/console: the operator console, plain HTML, CSS and JavaScript served by the app (no build step).

The page is the API's client and nothing more: every figure it shows comes from the routes in
docs/api.md (the live calls and the call's log from /events, /streams and /stream-log). With
API_TOKEN set, /console answers the sign-in page until the browser holds the console session
cookie (apitoken.py), which POST /console/login gives for the token; the console's script needs
the cookie too, only its style sheet and the sign-in script are public.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import OrderedDict
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, jsonify, request

import apitoken
from errors import ApiError
from runtime import current as runtime
from streams import schemas

STATIC = Path(__file__).resolve().parent / "static"
# The page loads nothing from elsewhere and runs no inline script; nobody may frame it.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

# Sign-in guesses: an address with this many wrong tokens within the window waits out the window.
MAX_FAILED_LOGINS = 10
LOGIN_WINDOW_S = 60.0
MAX_TRACKED_ADDRESSES = 10_000

bp = Blueprint("console", __name__)


class LoginThrottle:
    """Wrong tokens per remote address, over a sliding window; bounded in memory."""

    def __init__(self, limit: int = MAX_FAILED_LOGINS, window_s: float = LOGIN_WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        # Guards _failures (request threads): address -> monotonic times of its recent wrong tokens.
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    def wait_s(self, address: str, now: float) -> float:
        """0 if `address` may try now, else how long until it may."""
        with self._lock:
            recent = [t for t in self._failures.get(address, []) if now - t < self.window_s]
            return self.window_s - (now - recent[0]) if len(recent) >= self.limit else 0.0

    def failed(self, address: str, now: float) -> None:
        with self._lock:
            recent = [t for t in self._failures.pop(address, []) if now - t < self.window_s]
            self._failures[address] = [*recent, now][-self.limit:]
            while len(self._failures) > MAX_TRACKED_ADDRESSES:
                self._failures.popitem(last=False)  # the least recently failing address


def init_app(app: Flask) -> None:
    app.extensions["console_logins"] = LoginThrottle()
    app.register_blueprint(bp)


def _file(name: str, mimetype: str) -> Response:
    return Response((STATIC / name).read_bytes(), mimetype=mimetype, headers=SECURITY_HEADERS)


@bp.get("/console")
@apitoken.public
def page() -> Response:
    """The console, or the sign-in page while the browser has no session (with API_TOKEN)."""
    token = runtime().config.API_TOKEN
    signed_in = not token or apitoken.has_console_session(token)
    return _file("console.html" if signed_in else "login.html", "text/html")


@bp.get("/console/console.js")
@apitoken.console_page
def script() -> Response:
    return _file("console.js", "text/javascript")


@bp.get("/console/console.css")
@apitoken.public
def style() -> Response:
    return _file("console.css", "text/css")


@bp.get("/console/login.js")
@apitoken.public
def login_script() -> Response:
    return _file("login.js", "text/javascript")


@bp.post("/console/login")
@apitoken.public
def login() -> Response:
    """{"token": API_TOKEN} -> the console session cookie; a wrong token is a 401."""
    body = request.get_json(silent=True, force=True)
    if body is None:
        raise ApiError(400, "invalid_json", "The body is not valid JSON.")
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_field", "The body must be a JSON object.")
    form = schemas.parse(schemas.ConsoleLogin, body)
    token = runtime().config.API_TOKEN
    throttle: LoginThrottle = current_app.extensions["console_logins"]
    address, now = request.remote_addr or "", time.monotonic()
    wait = throttle.wait_s(address, now)
    if token and wait:
        raise ApiError(429, "too_many_requests", f"Too many wrong tokens; try again in {wait:.0f} s.")
    if token and not hmac.compare_digest(form.token.encode(), token.encode()):
        throttle.failed(address, now)
        raise ApiError(401, "unauthorized", "That is not the API token.", "token")
    response = jsonify({"status": "ok"})
    if token:
        response.set_cookie(apitoken.CONSOLE_COOKIE, apitoken.console_credential(token), httponly=True,
                            samesite="Strict", secure=_https(), path="/")
    return response


@bp.post("/console/logout")
@apitoken.public
def logout() -> Response:
    response = jsonify({"status": "ok"})
    response.delete_cookie(apitoken.CONSOLE_COOKIE, path="/", httponly=True, samesite="Strict", secure=_https())
    return response


def _https() -> bool:
    return request.is_secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
