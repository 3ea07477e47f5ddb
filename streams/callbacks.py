"""Callbacks: a signed JSON POST when an injection ends (finished, stopped, failed) and when a call
ends, to CALLBACK_URL and to an injection's own `callback_url`, so that a user can sequence work
("transfer after the announcement") without polling.

Signed as Telnyx signs its webhooks, with our own Ed25519 key: `mixer-signature-ed25519` is the
base64 signature of f"{mixer-timestamp}|{raw body}". Delivered by one thread (`callbacks`) from a
bounded queue, so the media clock and the request threads only enqueue; a POST that fails (no
connection, a timeout, an answer other than 2xx) is tried again after each delay of BACKOFF_S,
then logged as callback.failed. A `callback_url` given in a request is held to the rule of
`audio_url`: every address it resolves to must be public (unless CALLBACK_ALLOW_PRIVATE), and the
connection goes to the address checked.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from nacl.signing import SigningKey

from eventlog import EventLog, utc_now
from streams.fetch import non_public, parse_http_url, pinned, resolve

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "mixer-signature-ed25519"
TIMESTAMP_HEADER = "mixer-timestamp"
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0)  # the waits before each retry: 6 tries over about 31 s
TIMEOUT_S = 5.0
MAX_PENDING = 10_000  # deliveries waiting; past it the oldest is dropped (and logged)


class CallbackUrlError(ValueError):
    """A callback_url that may not be called; the message says why."""


def signing_key(seed_b64: str, cluster_secret: str = "") -> tuple[SigningKey, bool]:
    """The key callbacks are signed with, and whether it is one a restart keeps.

    CALLBACK_SIGNING_KEY (a base64 32-byte seed) if set; in scaled mode one derived from
    CLUSTER_SECRET, the same on every node; else a new one for this process.
    """
    if seed_b64:
        seed = base64.b64decode(seed_b64.strip(), validate=True)
        if len(seed) != 32:
            raise ValueError(f"CALLBACK_SIGNING_KEY must decode to 32 bytes (got {len(seed)})")
        return SigningKey(seed), True
    if cluster_secret:
        return SigningKey(hashlib.sha256(f"callbacks:{cluster_secret}".encode()).digest()), True
    return SigningKey.generate(), False


def sign(key: SigningKey, body: bytes, timestamp: int) -> dict[str, str]:
    """The headers that prove `body` is ours (see the module docstring)."""
    signature = key.sign(f"{timestamp}|".encode() + body).signature
    return {SIGNATURE_HEADER: base64.b64encode(signature).decode(), TIMESTAMP_HEADER: str(timestamp)}


def check_url(url: str, *, allow_private: bool) -> None:
    """Raise CallbackUrlError for a callback_url that is not http(s) or reaches a private address."""
    target = parse_http_url(url)
    if target is None:
        raise CallbackUrlError("callback_url must be an http or https URL.")
    if not allow_private:
        try:
            addresses = resolve(target)
        except OSError as exc:
            raise CallbackUrlError(f"callback_url host {target.host!r} does not resolve: {exc}.") from None
        bad = non_public(addresses)
        if bad is not None:
            raise CallbackUrlError(f"callback_url points at a non-public address ({bad}); set "
                                   "CALLBACK_ALLOW_PRIVATE=true to allow it.")


def shown(url: str) -> str:
    """`url` for the log: scheme, host and path; a query may carry a secret."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


@dataclass(order=True)
class _Delivery:
    due: float
    seq: int
    url: str = field(compare=False)
    body: bytes = field(compare=False)
    event: str = field(compare=False)
    call_control_id: str | None = field(compare=False)
    trusted: bool = field(compare=False)  # CALLBACK_URL, the operator's: no address check
    attempt: int = field(default=0, compare=False)


class Callbacks:
    def __init__(self, *, url: str, key: SigningKey, log: EventLog, allow_private: bool,
                 backoff_s: tuple[float, ...] = BACKOFF_S, timeout_s: float = TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.key = key
        self._log = log
        self._allow_private = allow_private
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._seq = itertools.count()
        # Guards _pending (a heap by due time) and _stopping; the condition wakes the thread.
        self._lock = threading.Condition()
        self._pending: list[_Delivery] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.dropped = 0

    @property
    def public_key(self) -> str:
        return base64.b64encode(bytes(self.key.verify_key)).decode()

    # -- what happened (any thread; never blocks) --------------------------------------------------

    def injection_ended(self, injection: dict[str, Any], callback_url: str | None) -> None:
        event = f"injection.{injection['status']}"
        body = {"event": event, "at": utc_now(), "call_control_id": injection["call_control_id"],
                "injection": injection}
        if self.url:
            self._queue(self.url, event, body, trusted=True)
        if callback_url:
            self._queue(callback_url, event, body, trusted=False)

    def call_ended(self, call: dict[str, Any]) -> None:
        if self.url:
            self._queue(self.url, "call.ended", {"event": "call.ended", "at": utc_now(),
                                                 "call_control_id": call["call_control_id"], "call": call},
                        trusted=True)

    def _queue(self, url: str, event: str, body: dict[str, Any], *, trusted: bool) -> None:
        data = json.dumps(body, separators=(",", ":"), default=str).encode()
        delivery = _Delivery(self._clock(), next(self._seq), url, data, event, body["call_control_id"], trusted)
        with self._lock:
            if self._stopping:
                return
            if len(self._pending) >= MAX_PENDING:
                oldest = min(self._pending, key=lambda d: d.seq)
                self._pending.remove(oldest)
                heapq.heapify(self._pending)
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    logger.error("callbacks: more than %d waiting; dropped the oldest (%d so far)",
                                 MAX_PENDING, self.dropped)
            heapq.heappush(self._pending, delivery)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="callbacks", daemon=True)
                self._thread.start()
            self._lock.notify()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop; what has not been delivered is dropped (logged)."""
        with self._lock:
            self._stopping = True
            left = len(self._pending)
            self._pending.clear()
            thread = self._thread
            self._lock.notify()
        if left:
            logger.warning("callbacks: %d not delivered at shutdown", left)
        if thread is not None:
            thread.join(timeout_s)

    # -- the callbacks thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and (not self._pending or self._pending[0].due > self._clock()):
                    wait = self._pending[0].due - self._clock() if self._pending else None
                    self._lock.wait(wait)
                if self._stopping:
                    return
                delivery = heapq.heappop(self._pending)
            self._deliver(delivery)

    def _deliver(self, delivery: _Delivery) -> None:
        delivery.attempt += 1
        try:
            error = self._post(delivery)
        except Exception as exc:  # a bug here must not end the thread and every later callback
            logger.exception("callback to %s failed unexpectedly", shown(delivery.url))
            error = f"internal error: {exc}"
        if error is None:
            self._log.record("callback.sent", delivery.call_control_id, url=shown(delivery.url),
                             callback_event=delivery.event, attempts=delivery.attempt)
            return
        if delivery.attempt <= len(self._backoff_s) and error != "forbidden":
            delivery.due = self._clock() + self._backoff_s[delivery.attempt - 1]
            with self._lock:
                if not self._stopping:
                    heapq.heappush(self._pending, delivery)
            return
        logger.warning("callback %s to %s failed after %d tries: %s", delivery.event, shown(delivery.url),
                       delivery.attempt, error)
        self._log.record("callback.failed", delivery.call_control_id, url=shown(delivery.url),
                         callback_event=delivery.event, attempts=delivery.attempt, error=error)

    def _post(self, delivery: _Delivery) -> str | None:
        """None once delivered, else why not."""
        target = parse_http_url(delivery.url)
        if target is None:
            return "forbidden"
        try:
            addresses = resolve(target)
        except OSError as exc:
            return f"{target.host} does not resolve: {exc}"
        if not delivery.trusted and not self._allow_private and non_public(addresses) is not None:
            return "forbidden"  # it resolved elsewhere since the request: never retried
        headers = {"Content-Type": "application/json", "User-Agent": "media-stream-mixer",
                   **sign(self.key, delivery.body, int(time.time()))}
        try:
            with httpx.Client(follow_redirects=False, timeout=self._timeout_s) as client:
                answer = client.send(pinned(client, "POST", target, addresses[0], headers=headers,
                                            content=delivery.body))
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if not 200 <= answer.status_code < 300:
            return f"answered HTTP {answer.status_code}"
        return None
