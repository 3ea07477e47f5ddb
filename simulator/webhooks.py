"""Signed webhook delivery, as Telnyx does it.

Signature: base64(Ed25519-sign(f"{timestamp}|{raw_body}")) in `telnyx-signature-ed25519`,
Unix seconds in `telnyx-timestamp`. Envelope: {"data": {...}, "meta": {"attempt", "delivered_to"}}.

Delivery runs on a few worker threads, never on the REST fake's request thread. Events of one
call go out in order (one at a time per call) unless a test asks for reordering; different
calls are delivered in parallel. An attempt that gets no 2xx within the timeout (2 s, like
Telnyx) is retried with meta.attempt incremented; other 4xx answers are not retried.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from nacl.signing import SigningKey

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


def iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class WebhookSigner:
    """Holds the simulator's own Ed25519 key; `public_key` is what TELNYX_PUBLIC_KEY expects."""

    def __init__(self, seed: bytes | None = None) -> None:
        self._key = SigningKey(seed) if seed is not None else SigningKey.generate()
        # Tests of stale-signature handling shift the advertised time.
        self.clock_skew_s = 0.0

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    @property
    def public_key(self) -> str:
        return base64.b64encode(bytes(self._key.verify_key)).decode()

    def headers(self, body: str, timestamp: int | None = None) -> dict[str, str]:
        ts = str(int(time.time() + self.clock_skew_s) if timestamp is None else timestamp)
        signature = self._key.sign(f"{ts}|{body}".encode()).signature
        return {"telnyx-signature-ed25519": base64.b64encode(signature).decode(), "telnyx-timestamp": ts,
                "content-type": "application/json"}


@dataclass
class WebhookEvent:
    """One event; `data` is the part that stays identical across retries and duplicates."""

    call_control_id: str
    event_type: str
    data: dict[str, Any]
    attempts: int = 0

    @property
    def id(self) -> str:
        return str(self.data["id"])


def make_event(call_control_id: str, event_type: str, payload: dict[str, Any]) -> WebhookEvent:
    data = {"record_type": "event", "event_type": event_type, "id": str(uuid.uuid4()),
            "occurred_at": iso_now(), "payload": payload}
    return WebhookEvent(call_control_id, event_type, data)


@dataclass(frozen=True)
class Delivery:
    """One HTTP attempt: what was sent and what came back (status None: timeout/connection error)."""

    event_type: str
    event_id: str
    call_control_id: str
    attempt: int
    url: str
    status: int | None
    error: str | None
    body: str
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


class WebhookSender:
    def __init__(self, signer: WebhookSigner, url_getter: Callable[[], str | None], *, workers: int = 4,
                 timeout_s: float = 2.0, max_attempts: int = 3, retry_delay_s: float = 0.25) -> None:
        self._signer = signer
        self._url = url_getter
        self._timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.retry_delay_s = retry_delay_s
        self._client = httpx.Client(timeout=timeout_s, trust_env=False,
                                    limits=httpx.Limits(max_connections=workers * 2))
        self._cond = threading.Condition()
        # Guarded by _cond: per-call FIFOs, calls with work and no worker, calls being worked on,
        # the held list (for reordering), the count of events not yet finished, and the stop flag.
        self._queues: dict[str, deque[WebhookEvent]] = {}
        self._ready: deque[str] = deque()
        self._busy: set[str] = set()
        self._held: list[WebhookEvent] | None = None
        self._pending = 0
        self._stopping = False
        self._deliveries: list[Delivery] = []  # append-only, read by copy
        self._listeners: list[Callable[[Delivery], None]] = []
        self._threads = [threading.Thread(target=self._work, name=f"sim-webhooks-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    @property
    def deliveries(self) -> list[Delivery]:
        return list(self._deliveries)

    def add_listener(self, fn: Callable[[Delivery], None]) -> None:
        self._listeners.append(fn)

    def send(self, event: WebhookEvent) -> None:
        with self._cond:
            if self._held is not None:
                self._held.append(event)
                self._pending += 1
                return
            self._enqueue(event)

    def _enqueue(self, event: WebhookEvent) -> None:
        # caller holds _cond
        key = event.call_control_id
        self._queues.setdefault(key, deque()).append(event)
        self._pending += 1
        if key not in self._busy and key not in self._ready:
            self._ready.append(key)
        self._cond.notify()

    def hold(self) -> None:
        """Collect events instead of sending them, until release()."""
        with self._cond:
            if self._held is None:
                self._held = []

    def release(self, order: Callable[[list[WebhookEvent]], list[WebhookEvent]] | None = None) -> list[WebhookEvent]:
        """Send the held events in `order(events)` (default: reversed), one after another."""
        with self._cond:
            held, self._held = self._held or [], None
            self._pending -= len(held)
            ordered = order(list(held)) if order else list(reversed(held))
            # One synthetic FIFO keeps the chosen order across calls.
            for ev in ordered:
                self._pending += 1
                self._queues.setdefault("__released__", deque()).append(ev)
            if ordered and "__released__" not in self._busy and "__released__" not in self._ready:
                self._ready.append("__released__")
            self._cond.notify_all()
            return ordered

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=self._timeout_s + 1)
        self._client.close()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._ready and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                key = self._ready.popleft()
                self._busy.add(key)
                event = self._queues[key].popleft()
            try:
                self._deliver(event)
            finally:
                with self._cond:
                    self._busy.discard(key)
                    if self._queues[key]:
                        self._ready.append(key)
                    else:
                        del self._queues[key]
                    self._pending -= 1
                    self._cond.notify_all()

    def _deliver(self, event: WebhookEvent) -> None:
        while not self._stopping:
            event.attempts += 1
            status = self.post(event, event.attempts)
            if status is not None and (200 <= status < 300 or status not in RETRY_STATUSES):
                return
            if event.attempts >= self.max_attempts:
                logger.warning("webhook %s for %s given up after %d attempts", event.event_type,
                               event.call_control_id, event.attempts)
                return
            with self._cond:
                self._cond.wait_for(lambda: self._stopping, timeout=self.retry_delay_s * event.attempts)

    def post(self, event: WebhookEvent, attempt: int) -> int | None:
        """One signed POST of `event` with meta.attempt = attempt; returns the HTTP status or None."""
        url = self._url()
        if url is None:
            logger.warning("no webhook URL set; %s for %s not delivered", event.event_type, event.call_control_id)
            return 0
        body = json.dumps({"data": event.data, "meta": {"attempt": attempt, "delivered_to": url}})
        headers = self._signer.headers(body)
        status: int | None = None
        error: str | None = None
        try:
            status = self._client.post(url, content=body.encode(), headers=headers).status_code
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        delivery = Delivery(event.event_type, event.id, event.call_control_id, attempt, url, status, error,
                            body, headers)
        self._deliveries.append(delivery)
        for fn in self._listeners:
            fn(delivery)
        return status
