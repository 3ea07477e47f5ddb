"""Streamed responses (frontdoor.stream) on loopback: written from any thread, never holding a pool
thread, and a client that does not read is dropped instead of stalling anyone; the access log."""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from flask import Flask, Response, request

from frontdoor import FrontDoor, HttpError
from frontdoor.stream import OPEN_STREAM, ResponseStream
from livecall import wait_until

WAIT_S = 5.0


def make_app(opened: queue.Queue[ResponseStream]) -> Flask:
    app = Flask("stream_test")

    @app.get("/feed")
    def feed() -> Response:
        stream: ResponseStream = request.environ[OPEN_STREAM]()
        stream.write(b"early\n")  # before the head is out: must follow it
        opened.put(stream)
        return Response(b"first\n", mimetype="text/event-stream")

    @app.get("/feed-fails")
    def feed_fails() -> Response:
        opened.put(request.environ[OPEN_STREAM]())
        raise RuntimeError("after opening")

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    return app


def _no_websockets(*_: Any) -> Any:
    raise HttpError(404, "not_found", "none")


@pytest.fixture
def door_with() -> Iterator[Callable[..., tuple[FrontDoor, queue.Queue[ResponseStream]]]]:
    doors: list[FrontDoor] = []

    def make(**options: Any) -> tuple[FrontDoor, queue.Queue[ResponseStream]]:
        opened: queue.Queue[ResponseStream] = queue.Queue()
        door = FrontDoor("127.0.0.1", 0, ws_paths=(), accept=_no_websockets, wsgi_app=make_app(opened),
                         http_workers=2, **options)
        doors.append(door.start())
        return door, opened

    yield make
    for door in doors:
        door.stop()


def raw_get(port: int, path: str, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(WAIT_S)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return sock


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}: {data!r}"
        data += chunk
    return data


def test_a_stream_carries_what_the_app_writes_later_and_holds_no_thread(door_with: Any) -> None:
    door, opened = door_with()
    clients = [raw_get(door.port, "/feed") for _ in range(4)]  # twice the pool's two threads
    streams = [opened.get(timeout=WAIT_S) for _ in clients]
    assert httpx.get(f"http://127.0.0.1:{door.port}/hello", timeout=WAIT_S).text == "hello"
    for i, stream in enumerate(streams):
        threading.Thread(target=stream.write, args=(f"later {i}\n".encode(),)).start()
    for client in clients:
        data = read_until(client, b"later")
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"content-length" not in head.lower()
        assert body.startswith(b"first\nearly\nlater")
    assert door.stats()["http_streams"] == 4
    streams[0].end()
    data = b""
    while chunk := clients[0].recv(65536):  # ended: the connection closes after the bytes
        data += chunk
    assert data == b""
    wait_until(lambda: door.stats()["http_streams"] == 3, what="the ended stream to go")
    for client in clients:
        client.close()


def test_a_client_that_goes_away_closes_its_stream(door_with: Any) -> None:
    door, opened = door_with()
    client = raw_get(door.port, "/feed")
    stream = opened.get(timeout=WAIT_S)
    read_until(client, b"first")
    client.close()
    wait_until(lambda: stream.closed, what="the stream to notice")
    assert stream.write(b"anyone?") is False


def test_a_client_that_never_reads_is_dropped_without_stalling_others(door_with: Any) -> None:
    door, opened = door_with(send_buffer_bytes=4096, stream_max_buffered=64 * 1024)
    client = raw_get(door.port, "/feed", rcvbuf=4096)  # never read from
    stream = opened.get(timeout=WAIT_S)
    writes = 0
    while stream.write(b"x" * 8192):
        writes += 1
        assert writes < 10_000, "the stream was never dropped"
        if writes % 8 == 0:  # let the loop send what the kernel takes
            wait_until(lambda: door.stats()["http_streams"] in (0, 1), what="the loop")
    assert stream.closed
    wait_until(lambda: door.stats()["streams_dropped"] == 1, what="the drop")
    assert httpx.get(f"http://127.0.0.1:{door.port}/hello", timeout=WAIT_S).text == "hello"
    client.close()


def test_a_client_that_stops_reading_is_dropped_at_its_stall_deadline(door_with: Any) -> None:
    door, opened = door_with(send_buffer_bytes=4096, stream_max_buffered=1 << 20, stream_stall_s=0.3)
    client = raw_get(door.port, "/feed", rcvbuf=4096)
    stream = opened.get(timeout=WAIT_S)
    # Well under the buffer bound, but more than the kernel's buffers take: some waits unread.
    for _ in range(32):
        stream.write(b"y" * 8192)
    wait_until(lambda: stream.closed, what="the stall deadline")
    assert door.stats()["streams_dropped"] == 1
    client.close()


def test_a_stream_opened_by_a_failing_request_is_closed(door_with: Any) -> None:
    door, opened = door_with()
    answer = httpx.get(f"http://127.0.0.1:{door.port}/feed-fails", timeout=WAIT_S)
    assert answer.status_code == 500
    assert opened.get(timeout=WAIT_S).closed


def test_one_access_log_line_per_request_without_the_query(door_with: Any,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    door, _ = door_with()
    with caplog.at_level(logging.INFO, logger="frontdoor.access"):
        httpx.get(f"http://127.0.0.1:{door.port}/hello?token=s3cret", headers={"Authorization": "Bearer s3cret"},
                  timeout=WAIT_S)
        httpx.get(f"http://127.0.0.1:{door.port}/nowhere%0aFAKE", timeout=WAIT_S)
        wait_until(lambda: len([r for r in caplog.records if r.name == "frontdoor.access"]) == 2, what="logs")
    lines = [r.getMessage() for r in caplog.records if r.name == "frontdoor.access"]
    assert lines[0].startswith("GET /hello 200 ") and lines[0].endswith("ms")
    assert lines[1].startswith("GET /nowhere\\nFAKE 404 ")
    assert not any("s3cret" in r.getMessage() for r in caplog.records)


def test_a_request_the_door_refuses_is_logged_too(door_with: Any, caplog: pytest.LogCaptureFixture) -> None:
    door, _ = door_with(max_body_bytes=10)
    with caplog.at_level(logging.INFO, logger="frontdoor.access"):
        answer = httpx.post(f"http://127.0.0.1:{door.port}/hello?token=x", content=b"0123456789abc", timeout=WAIT_S)
        assert answer.status_code == 413
        wait_until(lambda: any(r.name == "frontdoor.access" for r in caplog.records), what="the log line")
    lines = [r.getMessage() for r in caplog.records if r.name == "frontdoor.access"]
    assert lines == ["POST /hello 413 refused by the front door"]
