"""The front door's request reader and WSGI hand-off, without sockets: bytes in, answers out."""

from __future__ import annotations

import json

import pytest
from flask import Flask, request

from frontdoor import wire
from frontdoor.http import HttpError, Request, RequestReader
from frontdoor.wsgi import environ, run_app

UPGRADE = ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n")


def read(data: bytes, *, max_body: int = 1 << 20, chunk: int = 0) -> RequestReader:
    reader = RequestReader(max_body_bytes=max_body)
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
    for piece in pieces:
        reader.feed(piece)
    return reader


def refused(data: bytes, **options: int) -> HttpError:
    with pytest.raises(HttpError) as err:
        read(data, **options)
    return err.value


@pytest.mark.parametrize("chunk", [0, 1, 7])
def test_a_request_split_anywhere_is_read_whole(chunk: int) -> None:
    reader = read(b"POST /streams/v3%3Aab/inject?x=1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 11\r\n\r\n{\"dtmf\":1}\n", chunk=chunk)
    req = reader.request
    assert req is not None
    assert (req.method, req.path, req.query, req.version) == ("POST", "/streams/v3:ab/inject", "x=1", "1.1")
    assert req.header("content-type") == "application/json" and req.body == b'{"dtmf":1}\n'


@pytest.mark.parametrize(("line", "path"), [
    (b"GET /%73tream HTTP/1.1", "/stream"),  # what the app would route is what the door routes
    (b"GET http://h/stream?a=b HTTP/1.1", "/stream"),  # absolute form
    (b"GET /stream#x HTTP/1.1", "/stream"),
    (b"GET //stream HTTP/1.1", "//stream"),
])
def test_the_path_routed_is_the_path_the_app_sees(line: bytes, path: str) -> None:
    req = read(line + b"\r\nHost: a\r\n\r\n").request
    assert req is not None and req.path == path
    env = environ(req, server=("127.0.0.1", 5000), remote=("127.0.0.1", 4000))
    assert env["PATH_INFO"] == path


@pytest.mark.parametrize("line", [b"GET\t/stream HTTP/1.1", b"get /stream HTTP/1.1", b"GET /a\x00 HTTP/1.1",
                                  b"GET /health", b"GET /a HTTP/2.0"])
def test_malformed_request_lines_are_400(line: bytes) -> None:
    assert refused(line + b"\r\nHost: a\r\n\r\n").status in (400, 505)


def test_leading_empty_lines_are_ignored() -> None:
    req = read(b"\r\n\r\nGET /health HTTP/1.1\r\nHost: a\r\n\r\n").request
    assert req is not None and req.path == "/health"


@pytest.mark.parametrize("head", [
    b"GET /health HTTP/1.1\r\n\r\n",  # no Host
    b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
    b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    ("GET /stream HTTP/1.1\r\nHost: a\r\n" + UPGRADE + "Content-Length: 5\r\n\r\nhello").encode(),
    b"GET /a HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",  # obsolete line folding
])
def test_ambiguous_requests_are_400(head: bytes) -> None:
    err = refused(head)
    assert (err.status, err.code) == (400, "bad_request")
    body = json.loads(err.response().split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "bad_request" and body["error"]["message"]


def test_head_limits_are_431() -> None:
    many = b"".join(b"X-%d: v\r\n" % i for i in range(101))
    assert refused(b"GET / HTTP/1.1\r\nHost: a\r\n" + many + b"\r\n").status == 431
    assert refused(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 9000 + b"\r\n\r\n", chunk=100).status == 431
    # A head that never ends is refused once it passes the cap, not buffered forever.
    assert refused(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 5000, chunk=512).status == 431
    hundred = b"".join(b"X-%d: v\r\n" % i for i in range(99))  # and Host
    assert read(b"GET / HTTP/1.1\r\nHost: a\r\n" + hundred + b"\r\n").request is not None


def test_bodies_over_the_limit_are_413_before_they_arrive() -> None:
    reader = RequestReader(max_body_bytes=100)
    with pytest.raises(HttpError) as err:
        reader.feed(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n\r\n")
    assert err.value.status == 413
    chunked = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + b"40\r\n" + b"x" * 64 + b"\r\n"
    assert refused(chunked * 1 + b"40\r\n" + b"x" * 64 + b"\r\n", max_body=100).status == 413


def test_a_chunked_body_is_read_whole() -> None:
    req = read(b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
               chunk=5).request
    assert req is not None and req.body == b"abcde"


def test_expect_continue_is_noted_and_other_expectations_are_417() -> None:
    reader = RequestReader(max_body_bytes=1000)
    assert reader.feed(b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n") is None
    assert reader.head is not None and reader.head.expect_continue
    assert refused(b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: magic\r\nContent-Length: 3\r\n\r\nabc").status == 417


def test_pipelined_bytes_are_noted_not_served() -> None:
    reader = read(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reader.request is not None and reader.request.path == "/a" and reader.pipelined


def test_an_upgrade_keeps_the_bytes_behind_its_head() -> None:
    reader = read(("GET /stream?x=1 HTTP/1.1\r\nHost: a\r\n" + UPGRADE + "\r\n").encode() + b"\x81\x80frame")
    req = reader.request
    assert req is not None and req.upgrade and reader.upgrade_rest == b"\x81\x80frame"
    assert wire.handshake_key(req) == "dGhlIHNhbXBsZSBub25jZQ=="


@pytest.mark.parametrize(("extra", "status"), [
    ("", 426),  # a plain GET of a websocket path
    ("Upgrade: websocket\r\nConnection: keep-alive\r\n", 400),
    ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n", 400),  # no key
])
def test_handshake_checks(extra: str, status: int) -> None:
    req = read(f"GET /stream HTTP/1.1\r\nHost: a\r\n{extra}\r\n".encode()).request
    assert req is not None
    with pytest.raises(HttpError) as err:
        wire.handshake_key(req)
    assert err.value.status == status


def test_the_wsgi_app_gets_the_request_and_its_response_closes() -> None:
    app = Flask("t")

    @app.post("/echo")
    def echo() -> dict[str, object]:
        return {"body": request.get_data(as_text=True), "agent": request.headers.get("User-Agent"),
                "spoof": request.headers.get("X-Forwarded-For")}

    req = Request(method="POST", target="/echo", path="/echo", query="", version="1.1",
                  headers=[("host", "a"), ("user-agent", "t/1"), ("x_forwarded_for", "1.2.3.4"),
                           ("transfer-encoding", "chunked")], body=b"hi")
    response = run_app(app, environ(req, server=("127.0.0.1", 1), remote=("127.0.0.1", 2)), head_only=False)
    head, body = response.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head
    # The header spelled with "_" is dropped: it could pose as one a proxy set.
    assert json.loads(body) == {"body": "hi", "agent": "t/1", "spoof": None}
    head_only = run_app(app, environ(req, server=("127.0.0.1", 1), remote=("127.0.0.1", 2)), head_only=True)
    assert head_only == head + b"\r\n\r\n"


def test_send_nowait_takes_what_the_kernel_takes_and_never_blocks() -> None:
    import socket

    from frontdoor.nowait import send_nowait

    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        assert send_nowait(a, b"hello") == 5 and b.recv(5) == b"hello"
        sent = [send_nowait(a, b"x" * 65536) for _ in range(64)]  # nobody reads: the buffer fills
        assert 0 < sum(sent) < 64 * 65536 and sent[-1] == 0
        b.close()
        with pytest.raises(OSError):
            for _ in range(3):  # the first send after the close may still be taken
                send_nowait(a, b"after the peer left")
    finally:
        a.close()


def test_the_loop_reader_tells_data_from_nothing_yet_from_the_end() -> None:
    import socket

    from frontdoor.nowait import Reader

    reader = Reader(8)
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        assert reader.recv(a) is None
        b.sendall(b"0123456789")
        assert reader.recv(a) == b"01234567" and reader.recv(a) == b"89"
        b.close()
        assert reader.recv(a) == b""
    finally:
        a.close()
