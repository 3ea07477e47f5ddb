"""API_TOKEN: with it set, every route needs `Authorization: Bearer <token>` unless its view is
marked @public (/health for probes, /webhooks/voice which Telnyx signs instead). An unknown
route needs the token too, so the routes are not revealed to someone without it.

The console (console/) signs in once with the token and then holds a session cookie derived from
it (HttpOnly, SameSite=Strict): the token itself never stays in the browser's script-readable
storage. The cookie alone opens the console's own files (views marked @console_page); an API
request with it must also carry the CONSOLE_HEADER, which a page of another site cannot send
without a CORS preflight this server never grants, so a cookie cannot be ridden cross-site.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import TypeVar

from flask import Flask, current_app, g, request

from errors import ApiError

View = TypeVar("View", bound=Callable[..., object])

CONSOLE_COOKIE = "mixer_console"
CONSOLE_HEADER = "X-Mixer-Console"


def public(view: View) -> View:
    view.public = True  # type: ignore[attr-defined]
    return view


def console_page(view: View) -> View:
    """A file of the console: the session cookie is enough (a <script src> sends no header)."""
    view.console_page = True  # type: ignore[attr-defined]
    return view


def init_app(app: Flask, token: str) -> None:
    if token:
        app.before_request(lambda: _require(token))


def console_credential(token: str) -> str:
    """The console's session cookie value for `token`: changing the token signs every console out."""
    return hmac.new(token.encode(), b"mixer console session", hashlib.sha256).hexdigest()


def has_console_session(token: str) -> bool:
    value = request.cookies.get(CONSOLE_COOKIE, "")
    return bool(token) and hmac.compare_digest(value.encode(), console_credential(token).encode())


def _require(token: str) -> None:
    view = current_app.view_functions.get(request.endpoint or "")
    if getattr(view, "public", False):
        return
    if g.get("cluster_peer") is not None:
        return  # relayed by a node of the cluster (cluster.views), which checked the token itself
    from_console = getattr(view, "console_page", False) or request.headers.get(CONSOLE_HEADER) == "1"
    if from_console and has_console_session(token):
        return
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "Send the API token as 'Authorization: Bearer <token>'.")
