"""Throwaway app-side fakes for the simulator's tests: a webhook receiver and a stream server.

They play the product's part on the wire only, so the simulator is tested without the server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import telnyx
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, ServerConnection, serve
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from simulator import FakeTelnyx

WAIT = 5.0


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class _Quiet(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class WebhookReceiver:
    """Records every webhook request (raw body text + headers); answers `status` after `delay_s`."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.status = 200
        self.delay_s = 0.0
        self.statuses: list[int] = []  # per request, consumed first; then `status`
        self._stop = threading.Event()
        self._server = make_server("127.0.0.1", 0, self._app, threaded=True, request_handler=_Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/webhooks/voice"

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        self.requests.append((request.get_data(as_text=True), dict(request.headers.items())))
        status = self.statuses.pop(0) if self.statuses else self.status
        self._stop.wait(self.delay_s)
        return Response("{}", status=status, content_type="application/json")(environ, start_response)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for body, _ in list(self.requests)]

    def event_types(self, call_control_id: str | None = None) -> list[str]:
        return [e["data"]["event_type"] for e in self.events()
                if call_control_id is None or e["data"]["payload"]["call_control_id"] == call_control_id]

    def wait_for(self, event_type: str, count: int = 1) -> list[dict[str, Any]]:
        wait_until(lambda: self.event_types().count(event_type) >= count, what=f"{count}x {event_type}")
        return [e for e in self.events() if e["data"]["event_type"] == event_type]

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(WAIT)


class StreamServer:
    """The app's /stream socket: records every message and upgrade header; tests send frames."""

    def __init__(self, *, reject_token: str | None = None) -> None:
        self.messages: list[str | bytes] = []
        self.headers: list[dict[str, str]] = []
        self.connections: list[ServerConnection] = []
        self.reject_token = reject_token
        self._server: Server = serve(self._handler, "127.0.0.1", 0, max_size=8 * 1024 * 1024, compression=None)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}/stream"

    def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.headers.append({k.lower(): v for k, v in ws.request.headers.raw_items()})
        self.connections.append(ws)
        try:
            for message in ws:
                self.messages.append(message)
                if self.reject_token is not None and '"connected"' in str(message):
                    frame = json.loads(message)
                    if frame.get("x-telnyx-streaming-auth-token") != self.reject_token:
                        ws.close(1008, "bad token")
                        return
        except ConnectionClosed:
            pass

    def frames(self, event: str | None = None) -> list[dict[str, Any]]:
        out = [json.loads(m) for m in list(self.messages) if isinstance(m, str)]
        return [f for f in out if event is None or f.get("event") == event]

    def raw(self, event: str) -> list[str]:
        return [m for m in list(self.messages) if isinstance(m, str) and json.loads(m).get("event") == event]

    def wait_frames(self, event: str, count: int = 1) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.frames(event)) >= count, what=f"{count} {event} frames")
        return self.frames(event)

    def send(self, frame: dict[str, Any] | str | bytes, index: int = -1) -> None:
        wait_until(lambda: len(self.connections) > 0, what="a connection")
        message = json.dumps(frame) if isinstance(frame, dict) else frame
        self.connections[index].send(message)

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(WAIT)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


@pytest.fixture
def stream_server() -> Iterator[StreamServer]:
    s = StreamServer()
    yield s
    s.close()


@pytest.fixture
def fake(receiver: WebhookReceiver) -> Iterator[FakeTelnyx]:
    with FakeTelnyx("KEY123", webhook_url=receiver.url, webhook_retry_delay_s=0.01) as f:
        yield f


@pytest.fixture
def client(fake: FakeTelnyx) -> Iterator[telnyx.Telnyx]:
    c = telnyx.Telnyx(api_key="KEY123", base_url=fake.base_url, max_retries=0, timeout=WAIT)
    yield c
    c.close()


def rtp_params(stream_url: str, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"stream_url": stream_url, "stream_bidirectional_mode": "rtp",
                              "stream_bidirectional_codec": "PCMU", "stream_bidirectional_target_legs": "self"}
    params.update(extra)
    return params
