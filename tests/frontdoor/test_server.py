"""The front door on loopback: real sockets, a real websocket client, hostile bytes."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from flask import Flask, request
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from frontdoor import Connection, FrontDoor, HttpError, Limits, Request, wire
from tests.wsframes import frame

WAIT_S = 5.0


class Recorder:
    """A Handler that records everything and, by default, echoes text back."""

    def __init__(self, echo: bool = True, delay_s: float = 0.0) -> None:
        self.echo = echo
        self.delay_s = delay_s  # how long each message takes to handle
        self.messages: list[str | bytes] = []
        self.closes: list[int | None] = []
        self.closed = threading.Event()
        self.got_message = threading.Event()
        self.conn: Connection | None = None

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        self.conn = conn
        if self.delay_s:
            time.sleep(self.delay_s)
        self.messages.append(data)
        self.got_message.set()
        if data == "explode":
            raise RuntimeError("handler bug")
        if self.echo:
            conn.send_text(data if isinstance(data, str) else f"bytes:{data.hex()}")

    def on_close(self, conn: Connection, code: int | None) -> None:
        self.closes.append(code)
        self.closed.set()

    def wait_conn(self) -> Connection:
        assert self.got_message.wait(WAIT_S)
        assert self.conn is not None
        return self.conn


class Harness:
    def __init__(self, door: FrontDoor) -> None:
        self.door = door
        self.port = door.port
        self.accepted: list[tuple[str, str, Request, str]] = []
        self.handlers: list[Recorder] = []
        self.refuse = False
        self.echo = True
        self.delay_s = 0.0

    def accept(self, request: Request, remote: str) -> Recorder:
        self.accepted.append((request.path, request.query, request, remote))
        if self.refuse:
            raise HttpError(403, "forbidden", "Not this socket.")
        handler = Recorder(echo=self.echo, delay_s=self.delay_s)
        self.handlers.append(handler)
        return handler

    def ws(self, path: str = "/stream", **kwargs: Any) -> ClientConnection:
        kwargs.setdefault("open_timeout", WAIT_S)
        kwargs.setdefault("close_timeout", WAIT_S)
        return connect(f"ws://127.0.0.1:{self.port}{path}", proxy=None, ping_interval=None, **kwargs)


def make_app() -> Flask:
    app = Flask("frontdoor_test")

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    @app.get("/stream-info")
    def stream_info() -> str:
        return "not a websocket"

    @app.post("/upload")
    def upload() -> dict[str, int]:
        return {"size": len(request.get_data())}

    return app


@pytest.fixture
def make_door() -> Iterator[Callable[..., Harness]]:
    doors: list[FrontDoor] = []

    def make(**options: Any) -> Harness:
        holder: list[Harness] = []
        limits = {k: options.pop(k) for k in ("max_message_size", "max_backlog", "max_fragments") if k in options}
        door = FrontDoor("127.0.0.1", 0, ws_paths={"/stream"}, wsgi_app=make_app(), http_workers=2,
                         accept=lambda *args: holder[0].accept(*args), limits=Limits(**limits), **options)
        harness = Harness(door)
        holder.append(harness)
        doors.append(door.start())
        return harness

    yield make
    for door in doors:
        door.stop()


@pytest.fixture
def plane(make_door: Callable[..., Harness]) -> Harness:
    return make_door()


# -- a raw client, for what a well-behaved library refuses to send ------------------------------


def masked(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes = b"\x11\x22\x33\x44") -> bytes:
    return frame(opcode, payload, fin=fin, mask=mask)


def handshake(key: str | None = None, version: str = "13", path: str = "/stream", upgrade: bool = True) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: localhost", "Connection: Upgrade"]
    if upgrade:
        lines.append("Upgrade: websocket")
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    lines.append(f"Sec-WebSocket-Version: {version}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
        self.buf = b""

    def recv_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        head, _, self.buf = self.buf.partition(marker)
        return head

    def http(self, head: bytes) -> str:
        self.sock.sendall(head)
        return self.recv_until(b"\r\n\r\n").decode()

    def upgrade(self) -> RawClient:
        status = self.http(handshake(base64.b64encode(os.urandom(16)).decode()))
        assert status.startswith("HTTP/1.1 101 ")
        return self

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self) -> tuple[int, bytes]:
        b0, b1 = self.read_exact(2)
        assert not b1 & 0x80, "server frames are never masked"
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.read_exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.read_exact(8))[0]
        return b0 & 0x0F, self.read_exact(n)

    def read_close(self) -> int:
        opcode, payload = self.read_frame()
        assert opcode == wire.OP_CLOSE
        return int(struct.unpack("!H", payload[:2])[0])

    def at_eof(self) -> bool:
        while True:
            data = self.sock.recv(65536)
            if not data:
                return True
            self.buf += data

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(plane: Harness) -> Iterator[Callable[[], RawClient]]:
    clients: list[RawClient] = []

    def make() -> RawClient:
        client = RawClient(plane.port)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


# -- wire helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize("c_xor", [True, False], ids=["websockets-C", "pure-python"])
@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 126, 300, 2047, 2048, 5001, 70000])
def test_unmask_matches_the_definition(size: int, c_xor: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not c_xor:  # the fallbacks (big-int and numpy XOR) when websockets' C code is missing
        monkeypatch.setattr(wire, "_apply_mask", None)
    payload = os.urandom(size)
    mask = b"\xa1\x02\xff\x7e"
    assert wire.unmask(payload, mask) == bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize(("size", "head"), [(125, b"\x81\x7d"), (126, b"\x81\x7e\x00\x7e"),
                                            (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00")])
def test_text_frame_length_encodings(size: int, head: bytes) -> None:
    frame = wire.frame_text("a" * size)
    assert frame[:len(head)] == head
    assert len(frame) == len(head) + size


def test_close_payload_rules() -> None:
    assert wire.parse_close(b"") == (1005, "")
    assert wire.parse_close(b"\x03\xe8bye") == (1000, "bye")
    for bad, code in ((b"\x03", 1002), (b"\x03\xed", 1002), (b"\x03\xe8\xff", 1007)):
        with pytest.raises(wire.CloseFrameError) as err:
            wire.parse_close(bad)
        assert err.value.code == code


# -- websocket behaviour -----------------------------------------------------------------------


def test_handshake_and_echo(plane: Harness) -> None:
    with plane.ws("/stream?call=abc", additional_headers={"X-Token": "t0k"}) as ws:
        ws.send('{"event":"connected"}')
        assert ws.recv(timeout=WAIT_S) == '{"event":"connected"}'
        big = "é" * 40000  # multi-byte UTF-8, 64-bit length field
        ws.send(big)
        assert ws.recv(timeout=WAIT_S) == big
    path, query, request, remote = plane.accepted[0]
    assert (path, query, remote) == ("/stream", "call=abc", "127.0.0.1")
    assert request.header("x-token") == "t0k"
    conn = plane.handlers[0].wait_conn()
    assert (conn.path, conn.query, conn.remote_addr, conn.headers["x-token"]) == ("/stream", "call=abc",
                                                                                   "127.0.0.1", "t0k")
    assert plane.handlers[0].closed.wait(WAIT_S)
    assert plane.handlers[0].closes == [1000]
    assert not conn.open and conn.send_text("late") is False


def test_fragmented_message_with_a_ping_in_between(plane: Harness, raw: Callable[[], RawClient]) -> None:
    client = raw().upgrade()
    client.sock.sendall(masked(wire.OP_TEXT, b"frag", fin=False) + masked(wire.OP_PING, b"p1"))
    assert client.read_frame() == (wire.OP_PONG, b"p1")
    client.sock.sendall(masked(wire.OP_CONT, b"men", fin=False) + masked(wire.OP_CONT, b"ted"))
    assert client.read_frame() == (wire.OP_TEXT, b"fragmented")
    with plane.ws() as ws:
        ws.send(["one ", "two ", "three"])
        assert ws.recv(timeout=WAIT_S) == "one two three"
    assert plane.handlers[0].messages == ["fragmented"]


def test_frames_split_across_reads_and_batched_in_one(plane: Harness, raw: Callable[[], RawClient]) -> None:
    client = raw().upgrade()
    data = masked(wire.OP_TEXT, b"x" * 300)
    for i in range(0, len(data), 7):  # separate writes; TCP_NODELAY makes most arrive apart
        client.sock.sendall(data[i:i + 7])
    assert client.read_frame() == (wire.OP_TEXT, b"x" * 300)
    client.sock.sendall(b"".join(masked(wire.OP_TEXT, f"m{i}".encode()) for i in range(50)))
    assert [client.read_frame()[1] for _ in range(50)] == [f"m{i}".encode() for i in range(50)]


def test_ping_gets_a_pong_and_pongs_are_ignored(plane: Harness) -> None:
    with plane.ws() as ws:
        assert ws.ping(b"are you there").wait(WAIT_S)
        ws.pong(b"unsolicited")
        ws.send("after")
        assert ws.recv(timeout=WAIT_S) == "after"
    assert plane.handlers[0].messages == ["after"]


def test_binary_message_reaches_the_handler_as_bytes(plane: Harness) -> None:
    with plane.ws() as ws:
        ws.send(b"\x00\xffpcm")
        assert ws.recv(timeout=WAIT_S) == "bytes:00ff70636d"
        plane.handlers[0].wait_conn().send_binary(b"\x01\x02")
        assert ws.recv(timeout=WAIT_S) == b"\x01\x02"
    assert plane.handlers[0].messages == [b"\x00\xffpcm"]


def test_unmasked_client_frame_is_closed_with_1002(plane: Harness, raw: Callable[[], RawClient]) -> None:
    client = raw().upgrade()
    client.sock.sendall(b"\x81\x02hi")
    assert client.read_close() == 1002
    assert client.at_eof()
    handler = plane.handlers[0]
    client.close()
    assert handler.closed.wait(WAIT_S)
    assert handler.closes == [1002] and handler.messages == []
    assert plane.door.stats()["protocol_errors"] == 1


@pytest.mark.parametrize(("frames", "code"), [
    ([masked(wire.OP_TEXT, b"\xff\xfe")], 1007),
    ([masked(wire.OP_CONT, b"orphan")], 1002),
    ([masked(0x3, b"reserved opcode")], 1002),
    ([bytes((0xC1,)) + masked(wire.OP_TEXT, b"rsv1")[1:]], 1002),
    ([masked(wire.OP_PING, b"p" * 126)], 1002),
])
def test_protocol_violations_close_with_their_code(plane: Harness, raw: Callable[[], RawClient],
                                                   frames: list[bytes], code: int) -> None:
    client = raw().upgrade()
    client.sock.sendall(b"".join(frames))
    assert client.read_close() == code
    client.close()
    assert plane.handlers[0].closed.wait(WAIT_S)
    assert plane.handlers[0].closes == [code]


@pytest.mark.parametrize(("first_byte", "code"), [
    (0xC1, 1002),  # RSV1 on a text frame
    (0x83, 1002),  # reserved data opcode
    (0x8B, 1002),  # reserved control opcode
])
def test_a_bad_frame_header_is_refused_before_its_payload(plane: Harness, raw: Callable[[], RawClient],
                                                          first_byte: int, code: int) -> None:
    client = raw().upgrade()
    # The header announces 1 MiB that never comes: the answer cannot wait for it.
    client.sock.sendall(bytes((first_byte, 0x80 | 127)) + (1 << 20).to_bytes(8, "big") + b"mask" + b"x" * 100)
    assert client.read_close() == code
    assert plane.handlers[0].closed.wait(WAIT_S)


def test_invalid_utf8_is_refused_at_its_fragment(plane: Harness, raw: Callable[[], RawClient]) -> None:
    client = raw().upgrade()
    client.sock.sendall(masked(wire.OP_TEXT, "é".encode(), fin=False) + masked(wire.OP_CONT, b"\xff", fin=False))
    assert client.read_close() == 1007  # before any final fragment
    # A character split across fragments is fine.
    client = raw().upgrade()
    encoded = "é".encode()
    client.sock.sendall(masked(wire.OP_TEXT, encoded[:1], fin=False) + masked(wire.OP_CONT, encoded[1:]))
    assert client.read_frame() == (wire.OP_TEXT, encoded)


def test_invalid_utf8_is_refused_before_its_frame_is_whole(plane: Harness, raw: Callable[[], RawClient]) -> None:
    client = raw().upgrade()
    frame_bytes = masked(wire.OP_TEXT, "κόσμε".encode() + b"\xff" + b"x" * 1000)
    client.sock.sendall(frame_bytes[:20])  # the bad byte is in; most of the payload is not
    assert client.read_close() == 1007


def test_a_message_may_have_only_so_many_fragments(make_door: Callable[..., Harness]) -> None:
    plane = make_door(max_fragments=4)
    client = RawClient(plane.port).upgrade()
    try:
        client.sock.sendall(masked(wire.OP_TEXT, b"a", fin=False) + masked(wire.OP_CONT, b"b", fin=False)
                            + masked(wire.OP_CONT, b"c", fin=False) + masked(wire.OP_CONT, b"d"))
        assert client.read_frame() == (wire.OP_TEXT, b"abcd")
        client.sock.sendall(b"".join(masked(wire.OP_CONT if i else wire.OP_TEXT, b"x", fin=False) for i in range(5)))
        assert client.read_close() == 1008
    finally:
        client.close()


def test_oversize_message_is_closed_with_1009(make_door: Callable[..., Harness]) -> None:
    plane = make_door(max_message_size=1024)
    with plane.ws() as ws:
        ws.send("a" * 1024)
        assert ws.recv(timeout=WAIT_S) == "a" * 1024
        with pytest.raises(ConnectionClosed) as closed:
            # Too big only once reassembled. The close may come before the client has sent its
            # final (empty) fragment, so it may surface in send as well as in recv.
            ws.send(["b" * 600, "b" * 600])
            ws.recv(timeout=WAIT_S)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert plane.handlers[0].closed.wait(WAIT_S)
    with plane.ws() as ws:
        ws.send("c" * 200_000)  # refused from its header, while the payload is still arriving
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=WAIT_S)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert plane.handlers[1].closed.wait(WAIT_S)
    assert [h.closes for h in plane.handlers] == [[1009], [1009]]


KEY = base64.b64encode(b"0123456789abcdef").decode()


@pytest.mark.parametrize(("head", "status", "header"), [
    (handshake(None), "400", ""),
    (handshake(base64.b64encode(b"short").decode()), "400", ""),
    (handshake(KEY, version="8"), "400", ""),
    (handshake(KEY, upgrade=False), "426", "Upgrade: websocket"),
    (b"GET /stream HTTP/1.0\r\n\r\n", "400", ""),
])
def test_bad_upgrade_is_refused_with_a_json_error(plane: Harness, raw: Callable[[], RawClient],
                                                  head: bytes, status: str, header: str) -> None:
    client = raw()
    response = client.http(head)
    assert response.split(" ")[1] == status
    assert header in response
    assert "Content-Type: application/json" in response
    assert client.at_eof()
    assert plane.accepted == []


def test_accept_raising_http_error_is_its_answer(plane: Harness) -> None:
    plane.refuse = True
    with pytest.raises(InvalidStatus) as refused:
        plane.ws()
    assert refused.value.response.status_code == 403
    assert len(plane.accepted) == 1


def test_handler_exception_closes_with_1011(plane: Harness) -> None:
    with plane.ws() as ws:
        ws.send("explode")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=WAIT_S)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert plane.handlers[0].closed.wait(WAIT_S)
    assert plane.handlers[0].closes == [1011]


def test_close_started_by_the_peer_is_echoed(plane: Harness, raw: Callable[[], RawClient]) -> None:
    client = raw().upgrade()
    client.sock.sendall(masked(wire.OP_CLOSE, struct.pack("!H", 4000) + b"done"))
    assert client.read_close() == 4000
    assert client.at_eof()
    assert plane.handlers[0].closed.wait(WAIT_S)
    assert plane.handlers[0].closes == [4000]


def test_close_started_by_the_server(plane: Harness) -> None:
    with plane.ws() as ws:
        ws.send("hi")
        conn = plane.handlers[0].wait_conn()
        conn.close(4100, "call over")
        assert conn.send_text("too late") is False
        assert ws.recv(timeout=WAIT_S) == "hi"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=WAIT_S)
    assert closed.value.rcvd is not None and (closed.value.rcvd.code, closed.value.rcvd.reason) == (4100, "call over")
    assert plane.handlers[0].closed.wait(WAIT_S)
    assert plane.handlers[0].closes == [4100]


def test_idle_peer_is_closed_with_1001_and_on_close_runs_once(make_door: Callable[..., Harness]) -> None:
    plane = make_door(idle_timeout_s=0.2)
    with plane.ws() as ws:
        ws.send("only frame")
        assert ws.recv(timeout=WAIT_S) == "only frame"
        handler = plane.handlers[0]
        assert handler.closed.wait(WAIT_S)  # the sweep runs once a second
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=WAIT_S)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    plane.door.stop()
    assert handler.closes == [1001]


def test_vanished_peer_gets_on_close_once(plane: Harness, raw: Callable[[], RawClient]) -> None:
    client = raw().upgrade()
    client.sock.sendall(masked(wire.OP_TEXT, b"hello"))
    handler = plane.handlers[0]
    handler.wait_conn()
    client.sock.shutdown(socket.SHUT_RDWR)
    client.close()
    assert handler.closed.wait(WAIT_S)
    plane.door.stop()
    assert handler.closes == [None]


def test_send_text_from_eight_threads_keeps_each_threads_order(make_door: Callable[..., Harness]) -> None:
    plane = make_door(max_backlog=64 << 20)
    plane.echo = False
    threads, per_thread = 8, 400
    pad = "x" * 250
    with plane.ws(max_queue=None) as ws:
        ws.send("start")
        conn = plane.handlers[0].wait_conn()
        go = threading.Barrier(threads)

        def sender(t: int) -> None:
            go.wait(WAIT_S)
            for k in range(per_thread):
                assert conn.send_text(f"{t}:{k}:{pad}")

        workers = [threading.Thread(target=sender, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        received = [ws.recv(timeout=WAIT_S) for _ in range(threads * per_thread)]
        for w in workers:
            w.join(WAIT_S)
    seen: dict[str, list[int]] = {str(t): [] for t in range(threads)}
    for message in received:
        assert isinstance(message, str)
        t, k, rest = message.split(":")
        assert rest == pad
        seen[t].append(int(k))
    assert all(ks == list(range(per_thread)) for ks in seen.values())
    assert plane.door.stats()["messages_out"] == threads * per_thread


def test_slow_reader_is_buffered_without_blocking_the_sender(make_door: Callable[..., Harness]) -> None:
    plane = make_door(max_backlog=2 << 20, send_buffer_bytes=16384)
    plane.echo = False
    client = RawClient(plane.port)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    try:
        client.upgrade()
        client.sock.sendall(masked(wire.OP_TEXT, b"go"))
        conn = plane.handlers[0].wait_conn()
        message = "m" * 300
        # ~0.9 MB: far more than both kernel buffers, under the backlog cap; nobody reads yet.
        sent = threading.Thread(target=lambda: [conn.send_text(message) for _ in range(3000)])
        sent.start()
        sent.join(WAIT_S)
        assert not sent.is_alive(), "send_text blocked on a peer that does not read"
        assert conn.buffered_bytes > 0
        frames = [client.read_frame() for _ in range(3000)]
        assert frames == [(wire.OP_TEXT, message.encode())] * 3000
        # A peer that never reads is dropped once the backlog passes the cap.
        for _ in range(100_000):
            if not conn.send_text(message):
                break
        assert plane.handlers[0].closed.wait(WAIT_S)
        assert plane.handlers[0].closes == [1008]
    finally:
        client.close()


def test_http_shares_the_port_with_open_websockets(plane: Harness) -> None:
    base = f"http://127.0.0.1:{plane.port}"
    with plane.ws() as ws, httpx.Client(base_url=base, trust_env=False, timeout=WAIT_S) as http:
        ws.send("before")
        assert ws.recv(timeout=WAIT_S) == "before"
        assert http.get("/hello").text == "hello"
        assert http.get("/stream-info").text == "not a websocket"
        assert http.post("/upload", content=os.urandom(1 << 20)).json() == {"size": 1 << 20}
        assert http.get("/missing").status_code == 404
        assert http.get("/stream").status_code == 426  # the websocket path, without an upgrade
        # Werkzeug closes after every response; the client reconnects transparently.
        second = http.get("/hello")
        assert second.text == "hello" and second.headers["connection"] == "close"
        ws.send("after")
        assert ws.recv(timeout=WAIT_S) == "after"


def test_request_lines_split_across_packets_are_routed(plane: Harness, raw: Callable[[], RawClient]) -> None:
    http = raw()
    http.sock.sendall(b"GET /hel")
    http.sock.sendall(b"lo HTTP/1.1\r\nHost: x\r\n\r\n")
    assert http.recv_until(b"\r\n\r\n").startswith(b"HTTP/1.1 200 ")
    ws = raw()
    head = handshake(base64.b64encode(os.urandom(16)).decode())
    ws.sock.sendall(head[:8])  # "GET /str": could still be either, so the door waits for more
    time.sleep(0.05)
    ws.sock.sendall(head[8:])
    assert ws.recv_until(b"\r\n\r\n").startswith(b"HTTP/1.1 101 ")


class SaturatedClock:
    """A Timer due again after every socket event, as the media clock is at full load."""

    def __init__(self) -> None:
        self.running = False

    def next_deadline(self, now: float) -> float | None:
        return now if self.running else None

    def run_due(self, now: float) -> bool:
        return self.running


def test_a_request_is_served_between_ticks_not_behind_every_ready_socket(
        make_door: Callable[..., Harness]) -> None:
    clock = SaturatedClock()
    plane = make_door(timer=clock)
    plane.echo, plane.delay_s = False, 0.002
    clients = [RawClient(plane.port).upgrade() for _ in range(20)]
    try:
        def handled() -> int:
            return sum(len(h.messages) for h in plane.handlers)

        clock.running = True
        for client in clients:  # a backlog of 500 messages, a second of the loop's time
            client.sock.sendall(b"".join(masked(wire.OP_TEXT, b"%d" % i) for i in range(25)))
        deadline = time.monotonic() + WAIT_S
        while handled() == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        before = handled()
        http = RawClient(plane.port)
        clients.append(http)
        assert http.http(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").startswith("HTTP/1.1 200 ")
        # Accepted and routed after the tick that follows the event in progress (25 messages
        # per socket), not after every socket that was readable before it.
        assert handled() - before < 100
        deadline = time.monotonic() + WAIT_S
        while handled() < 500 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handled() == 500
    finally:
        clock.running = False
        for client in clients:
            client.close()


def test_stop_closes_websockets_with_1001(plane: Harness) -> None:
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(plane.ws()) for _ in range(3)]
        for i, ws in enumerate(clients):
            ws.send(f"c{i}")
            assert ws.recv(timeout=WAIT_S) == f"c{i}"
        plane.door.stop()
        for ws in clients:
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=WAIT_S)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    assert [h.closes for h in plane.handlers] == [[1001]] * 3
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", plane.port), timeout=WAIT_S).close()
