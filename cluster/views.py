"""Scaled mode's part of every request: check a node's signature, or send the request to the node
that owns its call; and the one route nodes alone use, /cluster/calls/<id>/handoff."""

from __future__ import annotations

import urllib.parse

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

import apitoken
from cluster.node import ClusterNode, ClusterUnavailable
from cluster.signing import HEADER, ClusterSignatureError
from errors import ApiError

bp = Blueprint("cluster", __name__)

# The routes about one call (`<key>`): served by the node that owns it.
CALL_ROUTES = frozenset({"streams.get_stream", "streams.patch_stream", "streams.get_recording", "streams.inject",
                         "streams.get_injection", "streams.patch_injection", "streams.delete_injection",
                         "streams.clear"})


def init_app(app: Flask, node: ClusterNode) -> None:
    """Call before apitoken.init_app: a node's signed request is checked first, and needs no token
    (the node that relayed it checked the client's)."""
    app.extensions["cluster_node"] = node
    app.before_request(lambda: _check_peer(node))
    app.register_blueprint(bp)

    @app.errorhandler(ClusterUnavailable)
    def _unavailable(exc: ClusterUnavailable) -> tuple[Response, int]:
        return jsonify(unavailable(exc).body()), 503


def init_relay(app: Flask, node: ClusterNode) -> None:
    """Call after apitoken.init_app: only a request that passed the token check is relayed."""
    app.before_request(lambda: _relay(node))


def unavailable(exc: ClusterUnavailable) -> ApiError:
    return ApiError(503, "cluster_unavailable", str(exc))


def peer() -> str | None:
    """The node that sent this request (signed), or None for everyone else."""
    return g.get("cluster_peer")


def forward_here(node: ClusterNode, base_url: str) -> Response:
    """This request, answered by the node at `base_url`."""
    answer = node.forward(base_url, request.method, request.path, request.query_string.decode("latin-1"),
                          request.headers.items(), request.get_data(cache=True))
    g.relayed = True  # the node that answered logged what it did (an injection.rejected, say)
    response = Response(answer.body, status=answer.status, content_type=answer.content_type)
    if answer.disposition is not None:
        response.headers["Content-Disposition"] = answer.disposition
    return response


def _check_peer(node: ClusterNode) -> None:
    header = request.headers.get(HEADER)
    if header is None:
        return
    try:
        g.cluster_peer = node.signer.verify(header, request.method, _signed_target(), request.get_data(cache=True))
    except ClusterSignatureError as exc:
        raise ApiError(403, "invalid_cluster_signature", f"Refused: {exc}.") from None


def _relay(node: ClusterNode) -> Response | None:
    """A request about another node's call goes to that node (a relayed one is served here)."""
    if peer() is None and request.endpoint in CALL_ROUTES and request.view_args:
        url = node.owner_url(str(request.view_args["key"]))
        if url is not None:
            return forward_here(node, url)
    return None


def _signed_target() -> str:
    """The target as the sender signed it: its path quoted the way the forwarder quotes it."""
    query = request.query_string.decode("latin-1")
    return urllib.parse.quote(request.path) + (f"?{query}" if query else "")


@bp.post("/cluster/calls/<call_control_id>/handoff")
@apitoken.public  # nodes sign instead (checked in _route); nobody else may call it
def handoff(call_control_id: str) -> Response:
    sender = peer()
    if sender is None:
        raise ApiError(403, "invalid_cluster_signature", "Only a node of this cluster may ask for a call.")
    node: ClusterNode = current_app.extensions["cluster_node"]
    return jsonify(node.release(call_control_id, to=sender))
