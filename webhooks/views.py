"""POST /webhooks/voice: verify, parse, dedupe on data.id, then hand to the call flow.

All slow work (Telnyx commands) runs off the request thread, so Telnyx gets its 200 well
within its 2 s retry deadline.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from nacl.signing import VerifyKey

import apitoken
from cluster import views as cluster_views
from cluster.node import ENDED, ClusterNode
from errors import ApiError
from runtime import Runtime
from runtime import current as runtime
from webhooks import signature
from webhooks.events import parse_event
from webhooks.flow import CallFlow

logger = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)

DEDUPE_WINDOW_S = 3600
DEDUPE_MAX = 100_000


class Deduper:
    """Webhook ids seen in the last hour (Telnyx retries within minutes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _seen
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_time(self, event_id: str) -> bool:
        now = time.monotonic()
        with self._lock:
            while self._seen and (len(self._seen) > DEDUPE_MAX
                                  or next(iter(self._seen.values())) < now - DEDUPE_WINDOW_S):
                self._seen.popitem(last=False)
            if event_id in self._seen:
                return False
            self._seen[event_id] = now
            return True

    def forget(self, event_id: str) -> None:
        """Handling failed: Telnyx's retry of this event must be handled, not skipped."""
        with self._lock:
            self._seen.pop(event_id, None)


def init_app(app: Flask) -> None:
    app.extensions["webhook_dedupe"] = Deduper()
    app.register_blueprint(bp)


@bp.post("/webhooks/voice")
@apitoken.public
def voice_webhook() -> tuple[Response, int]:
    rt = runtime()
    body = request.get_data(cache=True)  # kept: a webhook of another node's call is relayed to it
    # Relayed by another node of the cluster, which verified and deduplicated it (cluster/).
    relayed_by = cluster_views.peer() if rt.cluster is not None else None
    if rt.config.WEBHOOK_VERIFY and relayed_by is None:
        key: VerifyKey | None = current_app.extensions.get("telnyx_public_key")
        try:
            if key is None:
                raise signature.SignatureError("TELNYX_PUBLIC_KEY is not configured")
            signature.verify(key, body, request.headers.get(signature.SIGNATURE_HEADER),
                             request.headers.get(signature.TIMESTAMP_HEADER),
                             tolerance_s=rt.config.WEBHOOK_TOLERANCE_S)
        except signature.SignatureError as exc:
            rt.metrics.inc("webhooks_total", outcome="bad_signature")
            rt.log.record("webhook.rejected", None, reason=str(exc), remote=request.remote_addr)
            logger.warning("webhook from %s rejected: %s", request.remote_addr, exc)
            raise ApiError(401, "invalid_signature", "The webhook signature is missing, stale "
                           "or does not match.") from None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        rt.metrics.inc("webhooks_total", outcome="invalid_json")
        rt.log.record("webhook.rejected", None, reason="invalid JSON")
        raise ApiError(400, "invalid_json", "The body is not valid JSON.") from None
    try:
        event = parse_event(document)
    except ValueError as exc:
        rt.metrics.inc("webhooks_total", outcome="invalid")
        rt.log.record("webhook.rejected", None, reason=str(exc))
        raise ApiError(422, "invalid_webhook", str(exc)) from None
    dedupe: Deduper | ClusterNode = rt.cluster or current_app.extensions["webhook_dedupe"]
    if relayed_by is None and not dedupe.first_time(event.id):
        rt.metrics.inc("webhooks_total", outcome="duplicate")
        rt.log.record("webhook.duplicate", event.call_control_id, event_type=event.event_type,
                      webhook_id=event.id, attempt=event.attempt)
        return jsonify({"status": "duplicate"}), 200
    try:
        if rt.cluster is not None and relayed_by is None and event.call_control_id:
            owner = rt.cluster.webhook_target(event.call_control_id)
            if owner == ENDED:
                rt.log.record("webhook.received", event.call_control_id, event_type=event.event_type,
                              webhook_id=event.id, attempt=event.attempt, ignored="call ended")
                rt.metrics.inc("webhooks_total", outcome="ignored")
                return jsonify({"status": "ignored"}), 200
            if owner is not None:  # the call lives on another node: it handles the event
                rt.log.record("webhook.relayed", event.call_control_id, event_type=event.event_type,
                              webhook_id=event.id, to=owner)
                answer = cluster_views.forward_here(rt.cluster, owner)
                if answer.status_code >= 500:
                    dedupe.forget(event.id)  # it failed there: Telnyx's retry must be handled
                return answer, answer.status_code
        rt.log.record("webhook.received", event.call_control_id, event_type=event.event_type,
                      webhook_id=event.id, attempt=event.attempt, occurred_at=event.occurred_at,
                      **({"relayed_by": relayed_by} if relayed_by else {}))
        handled = CallFlow(rt, stream_url(rt)).handle(event)
    except Exception:
        if relayed_by is None:
            dedupe.forget(event.id)  # answered 500/503: Telnyx retries, and the retry gets handled
        raise
    rt.metrics.inc("webhooks_total", outcome="handled" if handled else "ignored")
    return jsonify({"status": "ok" if handled else "ignored"}), 200


def stream_url(rt: Runtime) -> str:
    """STREAM_WEBSOCKET_URL, or this server's /stream as Telnyx reached it (behind a proxy too)."""
    if rt.config.STREAM_WEBSOCKET_URL:
        return rt.config.STREAM_WEBSOCKET_URL
    proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
    host = request.headers.get("X-Forwarded-Host", request.host).split(",")[0].strip()
    return f"{'wss' if proto == 'https' else 'ws'}://{host}/stream"
