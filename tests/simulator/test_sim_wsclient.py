"""The simulator's WebSocket client on the wire: a hand-driven TCP peer plays the app's server.

Each test writes the exact bytes a server could send (good, fragmented, hostile) and reads back
what the client put on the wire, unmasking it the way a server must.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import pytest
import telnyx

from simulator import FakeTelnyx
from simulator.engine import MediaEngine
from simulator.wsclient import ConnectionClosed, HandshakeError, InvalidStatus, WebSocketClient, open_socket
from tests.simulator.conftest import WAIT, WebhookReceiver, rtp_params, wait_until
from tests.wsframes import frame

T = TypeVar("T")
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Peer:
    """The server end of one accepted connection, driven byte by byte from the test thread."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(WAIT)
        self.buf = b""
        self.request_head = ""

    def read_request(self) -> dict[str, str]:
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.request_head = head.decode()
        lines = self.request_head.split("\r\n")
        return {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}

    def handshake(self, *, status: str = "101 Switching Protocols", accept: str | None = None,
                  extra: str = "") -> dict[str, str]:
        headers = self.read_request()
        key = headers["sec-websocket-key"].encode()
        good = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        self.sock.sendall((f"HTTP/1.1 {status}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Accept: {accept or good}\r\n{extra}\r\n").encode())
        return headers

    def send_frame(self, opcode: int, payload: bytes = b"", **kw: Any) -> None:
        self.sock.sendall(frame(opcode, payload, **kw))

    def recv_frame(self) -> tuple[bool, int, bytes, bytes | None]:
        """(fin, opcode, unmasked payload, masking key or None)."""
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        n, pos = b1 & 0x7F, 2
        if n == 126:
            self._need(4)
            n, pos = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, pos = struct.unpack("!Q", self.buf[2:10])[0], 10
        key = None
        if b1 & 0x80:
            self._need(pos + 4)
            key, pos = self.buf[pos:pos + 4], pos + 4
        self._need(pos + n)
        payload, self.buf = self.buf[pos:pos + n], self.buf[pos + n:]
        if key is not None:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        return bool(b0 & 0x80), b0 & 0x0F, payload, key

    def recv_until(self, opcode: int) -> bytes:
        while True:
            _, op, payload, _ = self.recv_frame()
            if op == opcode:
                return payload

    def eof(self) -> bool:
        """True once the client has closed its end (reads nothing more)."""
        try:
            return self.sock.recv(65536) == b""
        except (ConnectionResetError, TimeoutError):
            return False

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            self._more()

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("client closed the connection")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


class RawServer:
    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(WAIT)
        self.peers: list[Peer] = []

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.listener.getsockname()[1]}/stream?call=abc"

    def accept(self) -> Peer:
        peer = Peer(self.listener.accept()[0])
        self.peers.append(peer)
        return peer

    def close(self) -> None:
        for peer in self.peers:
            peer.close()
        self.listener.close()


class Loop:
    """A MediaEngine's loop for the tests: opens sockets there and aborts them all at the end."""

    def __init__(self) -> None:
        self.engine = MediaEngine()
        self.engine.start()
        self.sockets: list[WebSocketClient] = []

    def open(self, url: str, *, max_size: int = 1 << 20, open_timeout: float = WAIT,
             close_timeout: float = 2.0, headers: dict[str, str] | None = None) -> Future[WebSocketClient]:
        async def opened() -> WebSocketClient:
            ws = await open_socket(url, headers or {}, max_size=max_size, open_timeout=open_timeout,
                                   close_timeout=close_timeout)
            self.sockets.append(ws)
            return ws
        return self.engine.submit(opened())

    def run(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()
        return self.engine.submit(call()).result(WAIT)

    def close(self) -> None:
        self.run(lambda: [ws.abort() for ws in self.sockets])
        self.engine.stop()


class Client:
    """An upgraded WebSocketClient on the loop, its server-side peer, and what it delivered."""

    def __init__(self, loop: Loop, server: RawServer, *, max_size: int = 1 << 20,
                 close_timeout: float = 2.0) -> None:
        self.loop = loop
        self.messages: list[str | bytes] = []
        self.closed = threading.Event()
        future = loop.open(server.url, max_size=max_size, close_timeout=close_timeout,
                           headers={"x-telnyx-streaming-auth-token": "tok"})
        self.peer = server.accept()
        self.headers = self.peer.handshake()
        self.ws: WebSocketClient = future.result(WAIT)
        self.on_loop(lambda: self.ws.attach(self.messages.append, self.closed.set))

    def on_loop(self, fn: Callable[[], T]) -> T:
        return self.loop.run(fn)

    def wait_closed(self) -> None:
        assert self.closed.wait(WAIT), "the client did not see the connection end"


@pytest.fixture
def engine() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


@pytest.fixture
def server() -> Iterator[RawServer]:
    s = RawServer()
    yield s
    s.close()


def test_upgrade_request_is_a_plain_websocket_get_with_the_token(engine, server):
    client = Client(engine, server)
    assert client.peer.request_head.split("\r\n")[0] == "GET /stream?call=abc HTTP/1.1"
    h = client.headers
    assert h["host"] == server.url.split("/")[2]
    assert (h["upgrade"], h["connection"], h["sec-websocket-version"]) == ("websocket", "Upgrade", "13")
    assert len(base64.b64decode(h["sec-websocket-key"])) == 16
    assert h["x-telnyx-streaming-auth-token"] == "tok"
    assert "sec-websocket-extensions" not in h and "user-agent" not in h


def test_every_frame_is_masked_with_a_fresh_key(engine, server):
    client = Client(engine, server)
    texts = ["x" * n for n in (0, 1, 125, 126, 300, 65535, 65536)]
    for text in texts:
        client.on_loop(lambda text=text: client.ws.send_text(text))
    client.on_loop(lambda: client.ws.send(b"\x00\x01binary"))
    frames = [client.peer.recv_frame() for _ in range(len(texts) + 1)]
    assert [(fin, op) for fin, op, _, _ in frames] == [(True, 1)] * len(texts) + [(True, 2)]
    assert [p for _, _, p, _ in frames] == [t.encode() for t in texts] + [b"\x00\x01binary"]
    keys = [key for _, _, _, key in frames]
    assert all(key is not None for key in keys)
    assert len(set(keys)) == len(keys)


def test_fragments_and_interleaved_control_frames_are_reassembled(engine, server):
    client = Client(engine, server)
    peer = client.peer
    message = json.dumps({"event": "mark", "mark": {"name": "é-fragmented"}}).encode()
    peer.send_frame(1, message[:5], fin=False)
    peer.send_frame(9, b"ping-1")
    peer.send_frame(0, message[5:9], fin=False)
    peer.send_frame(10, b"unsolicited pong")
    peer.send_frame(0, message[9:])
    peer.send_frame(2, b"\x01\x02", fin=False)
    peer.send_frame(0, b"\x03")
    assert peer.recv_until(10) == b"ping-1"
    wait_until(lambda: len(client.messages) == 2, what="two messages")
    assert client.messages == [message.decode(), b"\x01\x02\x03"]


def test_frames_split_anywhere_arrive_whole(engine, server):
    client = Client(engine, server)
    client.peer.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wire = b"".join(frame(1, text.encode()) for text in ("a" * 10, "b" * 200, "c" * 70000))
    for i in range(230):  # the first two frames a byte at a time, headers included
        client.peer.sock.sendall(wire[i:i + 1])
    for i in range(230, len(wire), 997):
        client.peer.sock.sendall(wire[i:i + 997])
    wait_until(lambda: len(client.messages) == 3, what="three messages")
    assert client.messages == ["a" * 10, "b" * 200, "c" * 70000]


def test_messages_before_attach_are_kept_in_order(engine, server):
    future = engine.open(server.url)
    peer = server.accept()
    peer.handshake()
    peer.send_frame(1, b"first")
    peer.send_frame(1, b"second")
    ws = future.result(WAIT)
    got: list[str | bytes] = []
    wait_until(lambda: len(ws._early) == 2, what="early messages")
    engine.run(lambda: ws.attach(got.append, lambda: None))
    peer.send_frame(1, b"third")
    wait_until(lambda: len(got) == 3, what="three messages")
    assert got == ["first", "second", "third"]


def test_server_close_is_echoed_and_its_code_and_reason_kept(engine, server):
    client = Client(engine, server)
    payload = struct.pack("!H", 4001) + "bye — now".encode()
    client.peer.send_frame(8, payload)
    fin, op, echoed, key = client.peer.recv_frame()
    assert (fin, op, echoed) == (True, 8, payload) and key is not None
    assert client.on_loop(lambda: client.ws.close_rcvd) == (4001, "bye — now")
    with pytest.raises(ConnectionClosed):
        client.on_loop(lambda: client.ws.send_text("too late"))
    client.peer.close()
    client.wait_closed()
    assert client.on_loop(lambda: (client.ws.close_code, client.ws.close_reason)) == (4001, "bye — now")


def test_empty_close_frame_means_1005(engine, server):
    client = Client(engine, server)
    client.peer.send_frame(8)
    assert client.peer.recv_until(8) == b""
    client.peer.close()
    client.wait_closed()
    assert client.on_loop(lambda: client.ws.close_code) == 1005


def test_our_close_waits_for_the_server_then_gives_up_after_close_timeout(engine, server):
    client = Client(engine, server, close_timeout=0.2)
    closing = engine.engine.submit(client.ws.close(1000))
    assert client.peer.recv_until(8) == struct.pack("!H", 1000)
    assert not closing.done()
    closing.result(WAIT)  # the server never answered: the client aborts after close_timeout
    assert client.closed.is_set()
    assert client.on_loop(lambda: client.ws.close_code) == 1006


def test_lost_connection_without_close_frame_is_1006(engine, server):
    client = Client(engine, server)
    client.peer.close()
    client.wait_closed()
    assert client.on_loop(lambda: (client.ws.close_code, client.ws.close_reason)) == (1006, "")


@pytest.mark.parametrize(("frame", "code", "reason"), [
    (dict(opcode=1, payload=b"x" * 101), 1009, "frame with 101 bytes exceeds limit of 100 bytes"),
    (dict(opcode=1, payload=b"hello", mask=b"abcd"), 1002, "incorrect masking"),
    (dict(opcode=1, payload=b"hello", rsv=0x40), 1002, "reserved bits must be 0"),
    (dict(opcode=3, payload=b"hello"), 1002, "invalid opcode"),
    (dict(opcode=0, payload=b"hello"), 1002, "unexpected continuation frame"),
    (dict(opcode=9, payload=b"p", fin=False), 1002, "fragmented control frame"),
    (dict(opcode=9, payload=b"p" * 126), 1002, "control frame too long"),
    (dict(opcode=1, payload=b"\xff\xfe"), 1007, "invalid start byte at position 0"),
    (dict(opcode=8, payload=struct.pack("!H", 1006)), 1002, "invalid status code"),
    (dict(opcode=8, payload=b"\x03"), 1002, "close frame too short"),
])
def test_protocol_violations_fail_the_connection(engine, server, frame, code, reason):
    client = Client(engine, server, max_size=100)
    client.peer.send_frame(**frame)
    client.peer.send_frame(1, b"ignored after the failure")
    assert client.peer.recv_until(8) == struct.pack("!H", code) + reason.encode()
    client.peer.close()
    client.wait_closed()
    assert client.messages == []
    assert client.on_loop(lambda: client.ws.close_code) == 1006  # we sent the close; none came back


def test_oversized_fragmented_message_fails_with_1009(engine, server):
    client = Client(engine, server, max_size=100)
    client.peer.send_frame(1, b"a" * 60, fin=False)
    client.peer.send_frame(0, b"b" * 60)
    assert client.peer.recv_until(8) == (struct.pack("!H", 1009) +
                                         b"frame with 60 bytes after reading 60 bytes exceeds limit of 100 bytes")


@pytest.mark.parametrize(("status", "accept", "extra", "error"), [
    ("403 Forbidden", None, "", InvalidStatus),
    ("101 Switching Protocols", "d3Jvbmc=", "", HandshakeError),
    ("101 Switching Protocols", None, "Sec-WebSocket-Extensions: permessage-deflate\r\n", HandshakeError),
])
def test_bad_upgrade_responses_are_refused(engine, server, status, accept, extra, error):
    future = engine.open(server.url)
    peer = server.accept()
    peer.handshake(status=status, accept=accept, extra=extra)
    with pytest.raises(error) as raised:
        future.result(WAIT)
    if error is InvalidStatus:
        assert raised.value.status == 403  # type: ignore[attr-defined]
    assert peer.eof()


def test_silent_server_times_out_the_upgrade(engine, server):
    future = engine.open(server.url, open_timeout=0.2)
    peer = server.accept()
    peer.read_request()
    with pytest.raises(TimeoutError):
        future.result(WAIT)
    assert peer.eof()


# ---- through the fake: what a test of the app sees ------------------------------------------


@contextlib.contextmanager
def streaming_to(receiver: WebhookReceiver, server: Any) -> Iterator[tuple[FakeTelnyx, Any, Any, Any]]:
    """A call answered and told to stream to `server`, whose side of the socket is accepted but
    not yet upgraded: (fake, SDK client, call, peer)."""
    with FakeTelnyx("K", webhook_url=receiver.url) as fake:
        client = telnyx.Telnyx(api_key="K", base_url=fake.base_url, max_retries=0)
        call = fake.place_call()
        client.calls.actions.answer(call.call_control_id)
        client.calls.actions.start_streaming(call.call_control_id, **rtp_params(server.url))
        try:
            yield fake, client, call, server.accept()
        finally:
            client.close()


@pytest.mark.parametrize("accept", [None, "d3Jvbmc="])
def test_refused_upgrade_fails_the_stream_as_connection_failed(receiver: WebhookReceiver, server, accept):
    with streaming_to(receiver, server) as (_fake, _client, call, peer):
        peer.handshake(status="101 Switching Protocols" if accept else "500 Internal Server Error", accept=accept)
        failed = receiver.wait_for("streaming.failed")[0]["data"]["payload"]
        assert failed["failure_reason"] == "connection_failed"
        assert call.streaming_status == "failed"


def test_app_close_code_and_reason_reach_the_call(receiver: WebhookReceiver, server):
    with streaming_to(receiver, server) as (_fake, _client, call, peer):
        peer.handshake()
        assert json.loads(peer.recv_frame()[2])["event"] == "connected"
        assert json.loads(peer.recv_frame()[2])["event"] == "start"
        peer.send_frame(9, b"are you there")
        assert peer.recv_until(10) == b"are you there"
        peer.send_frame(8, struct.pack("!H", 1011) + b"handler crashed")
        assert peer.recv_until(8) == struct.pack("!H", 1011) + b"handler crashed"
        peer.close()
        call.wait_status("closed_by_app")
        assert (call.close_code, call.media.close_reason) == (1011, "handler crashed")
        receiver.wait_for("streaming.stopped")


def test_hangup_sends_stop_then_a_1000_close_and_waits_for_the_echo(receiver: WebhookReceiver, server):
    with streaming_to(receiver, server) as (_fake, client, call, peer):
        peer.handshake()
        call.wait_streaming()
        hangup = threading.Thread(target=client.calls.actions.hangup, args=(call.call_control_id,))
        hangup.start()
        events = []
        while True:
            _, op, payload, key = peer.recv_frame()
            assert key is not None
            if op == 8:
                break
            events.append(json.loads(payload)["event"])
        assert payload == struct.pack("!H", 1000)
        assert events[:2] == ["connected", "start"] and events[-1] == "stop"
        assert set(events[2:-1]) <= {"media"}
        peer.send_frame(8, payload)
        peer.close()
        hangup.join(WAIT)
        call.wait_status("stopped")
        assert call.close_code is None  # we ended it: nothing is recorded as the app's doing


def test_app_that_stops_reading_loses_caller_frames_not_the_tick(receiver: WebhookReceiver, server):
    with streaming_to(receiver, server) as (fake, _client, call, peer):
        peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.handshake()
        call.wait_streaming()
        # Never read again: the kernel buffers fill, then the client's own buffer passes the limit.
        big = "x" * 1_000_000
        for _ in range(64):
            call.send_raw(big)  # never blocks, however full the buffers are
            if call.media.stats.frames_skipped:
                break
        wait_until(lambda: call.media.stats.frames_skipped > 0, what="skipped frames")
        skipped, ticks = call.media.stats.frames_skipped, fake.engine.ticks
        wait_until(lambda: fake.engine.ticks > ticks + 10, what="the ticker going on")
        assert call.media.stats.frames_skipped >= skipped + 10

