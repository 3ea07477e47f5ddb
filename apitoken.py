"""API_TOKEN: with it set, every route needs `Authorization: Bearer <token>` unless its view is
marked @public (/health for probes, /webhooks/voice which Telnyx signs instead). An unknown
route needs the token too, so the routes are not revealed to someone without it.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import TypeVar

from flask import Flask, current_app, g, request

from errors import ApiError

View = TypeVar("View", bound=Callable[..., object])


def public(view: View) -> View:
    view.public = True  # type: ignore[attr-defined]
    return view


def init_app(app: Flask, token: str) -> None:
    if token:
        app.before_request(lambda: _require(token))


def _require(token: str) -> None:
    view = current_app.view_functions.get(request.endpoint or "")
    if getattr(view, "public", False):
        return
    if g.get("cluster_peer") is not None:
        return  # relayed by a node of the cluster (cluster.views), which checked the token itself
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "Send the API token as 'Authorization: Bearer <token>'.")
