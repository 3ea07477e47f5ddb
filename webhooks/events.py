"""Call Control webhook envelopes: {"data": {event_type, id, occurred_at, payload}, "meta": {...}}."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WebhookEvent:
    id: str
    event_type: str
    occurred_at: str | None
    call_control_id: str
    payload: dict[str, Any]
    attempt: int | None


def parse_event(document: Any) -> WebhookEvent:
    """Raise ValueError naming what is missing. Unknown fields are ignored, as Telnyx adds them."""
    if not isinstance(document, dict):
        raise ValueError("webhook body must be a JSON object")
    # Some documented examples (streaming.failed) show the inner object without the envelope.
    data = document.get("data", document if "event_type" in document else None)
    if not isinstance(data, dict):
        raise ValueError("webhook has no 'data' object")
    event_type, event_id = data.get("event_type"), data.get("id")
    if not isinstance(event_type, str) or not event_type:
        raise ValueError("webhook has no data.event_type")
    if not isinstance(event_id, str) or not event_id:
        raise ValueError("webhook has no data.id")
    payload = data.get("payload")
    if payload is None:
        payload = {}
    if not isinstance(payload, dict):
        raise ValueError("webhook data.payload must be an object")
    ccid = payload.get("call_control_id")
    meta = document.get("meta")
    attempt = meta.get("attempt") if isinstance(meta, dict) else None
    occurred = data.get("occurred_at")
    return WebhookEvent(
        id=event_id,
        event_type=event_type,
        occurred_at=occurred if isinstance(occurred, str) else None,
        call_control_id=ccid if isinstance(ccid, str) else "",
        payload=payload,
        attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None,
    )
