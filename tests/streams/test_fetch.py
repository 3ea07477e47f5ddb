"""audio_url fetching connects to the very addresses it checked: a DNS answer that changes after
the check (DNS rebinding) cannot reach loopback, on the first hop or after a redirect, and TLS still
names and verifies the URL's host.

A resolver stub answers for made-up names from a script (one answer per lookup), and a connect stub
sends connections for a public-looking address to a loopback server that plays that public host;
the loopback server that a rebinding would reach records whether anything arrived.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from errors import ApiError
from streams.fetch import fetch_audio

PUBLIC = "93.184.216.34"  # public-looking: passes the check; the connect stub takes it to a loopback server
PUBLIC_DOWN = "93.184.216.35"  # public-looking, and nothing answers there
AUDIO = b"RIFF public audio"


class Recorder:
    """A loopback HTTP(S) server: answers from `routes`, records (path, Host) of each request and the
    TLS server name (SNI) of each handshake."""

    def __init__(self, routes: dict[str, tuple[int, dict[str, str], bytes]], tls: ssl.SSLContext | None = None):
        self.requests: list[tuple[str, str | None]] = []
        self.sni: list[str | None] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                recorder.requests.append((self.path, self.headers.get("Host")))
                status, headers, body = routes.get(self.path, (404, {}, b""))
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.sni.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, name="recorder", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeNet:
    """Scripted DNS for made-up names, and connections to public-looking addresses routed to loopback."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.answers: dict[str, list[list[str]]] = {}  # name -> the answer of each lookup; the last one repeats
        self.lookups: list[str] = []
        self.routes: dict[str, int] = {}  # address -> loopback port that plays it
        self.connects: list[tuple[str, int]] = []
        real_getaddrinfo, real_connect = socket.getaddrinfo, socket.create_connection

        def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
            if host not in self.answers:
                return real_getaddrinfo(host, port, *args, **kwargs)
            self.lookups.append(host)
            script = self.answers[host]
            answer = script.pop(0) if len(script) > 1 else script[0]
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (a, port)) for a in answer]

        def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
            host, port = address[:2]
            self.connects.append((host, port))
            if host in self.routes:
                address = ("127.0.0.1", self.routes[host])
            return real_connect(address, *args, **kwargs)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(socket, "create_connection", create_connection)


@pytest.fixture
def public() -> Iterator[Recorder]:
    server = Recorder({"/a.wav": (200, {"Content-Type": "audio/wav"}, AUDIO)})
    yield server
    server.close()


@pytest.fixture
def internal() -> Iterator[Recorder]:
    """What a rebinding would reach: a service on the server's own loopback."""
    server = Recorder({"/a.wav": (200, {}, b"internal secret"), "/hop": (200, {}, b"internal secret")})
    yield server
    server.close()


@pytest.fixture
def net(monkeypatch: pytest.MonkeyPatch, public: Recorder) -> FakeNet:
    fake = FakeNet(monkeypatch)
    fake.routes[PUBLIC] = public.port
    return fake


def fetch(url: str, *, allow_private: bool = False) -> bytes:
    return fetch_audio(url, timeout_s=2, max_bytes=100_000, allow_private=allow_private)


def test_a_name_rebound_to_loopback_after_the_check_does_not_reach_loopback(net, public, internal):
    net.answers["rebind.test"] = [[PUBLIC], ["127.0.0.1"]]
    assert fetch(f"http://rebind.test:{internal.port}/a.wav") == AUDIO
    assert internal.requests == []
    assert public.requests == [("/a.wav", f"rebind.test:{internal.port}")]
    assert net.lookups == ["rebind.test"]  # resolved once: nothing left for a second answer to change
    assert net.connects == [(PUBLIC, internal.port)]


def test_each_redirect_hop_is_resolved_once_checked_and_pinned(net, public, internal):
    public_routes = {"/hop": (302, {"Location": f"http://rebind2.test:{internal.port}/a.wav"}, b"")}
    hop = Recorder(public_routes)
    try:
        net.routes[PUBLIC_DOWN] = hop.port
        net.answers["first.test"] = [[PUBLIC_DOWN]]
        net.answers["rebind2.test"] = [[PUBLIC], ["127.0.0.1"]]
        assert fetch(f"http://first.test:{internal.port}/hop") == AUDIO
        assert hop.requests == [("/hop", f"first.test:{internal.port}")]
        assert public.requests == [("/a.wav", f"rebind2.test:{internal.port}")]
        assert internal.requests == []
        assert net.lookups == ["first.test", "rebind2.test"]
    finally:
        hop.close()


@pytest.mark.parametrize("location", ["http://loop.test:{port}/a.wav", "http://127.0.0.1:{port}/a.wav",
                                      "http://[::1]:{port}/a.wav"])
def test_a_redirect_onto_a_private_address_is_refused_before_connecting(net, public, internal, location):
    public_routes = {"/hop": (302, {"Location": location.format(port=internal.port)}, b"")}
    hop = Recorder(public_routes)
    try:
        net.routes[PUBLIC_DOWN] = hop.port
        net.answers["first.test"] = [[PUBLIC_DOWN]]
        net.answers["loop.test"] = [["127.0.0.1"]]
        with pytest.raises(ApiError) as info:
            fetch(f"http://first.test:{internal.port}/hop")
        assert (info.value.status, info.value.code, info.value.field) == (422, "audio_url_forbidden", "audio_url")
        assert internal.requests == []
        assert net.connects == [(PUBLIC_DOWN, internal.port)]
    finally:
        hop.close()


def test_every_address_of_an_answer_is_checked(net, internal):
    net.answers["mixed.test"] = [[PUBLIC, "10.1.2.3"]]
    with pytest.raises(ApiError) as info:
        fetch(f"http://mixed.test:{internal.port}/a.wav")
    assert (info.value.status, info.value.code) == (422, "audio_url_forbidden")
    assert "(10.1.2.3)" in info.value.message
    assert net.connects == []


def test_the_next_checked_address_is_tried_when_one_refuses(net, public, internal):
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        net.routes[PUBLIC_DOWN] = closed.getsockname()[1]
        net.answers["two.test"] = [[PUBLIC_DOWN, PUBLIC], ["127.0.0.1"]]
        assert fetch(f"http://two.test:{internal.port}/a.wav") == AUDIO
    assert net.connects == [(PUBLIC_DOWN, internal.port), (PUBLIC, internal.port)]
    assert internal.requests == [] and net.lookups == ["two.test"]


def test_allowed_private_addresses_are_pinned_too(net, internal):
    # AUDIO_URL_ALLOW_PRIVATE lets loopback through the check; the connection still goes where it looked.
    net.answers["dev.test"] = [["127.0.0.1"], ["10.9.9.9"]]
    assert fetch(f"http://dev.test:{internal.port}/a.wav", allow_private=True) == b"internal secret"
    assert net.connects == [("127.0.0.1", internal.port)]


def _certificate(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name}"], check=True, capture_output=True)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
@pytest.mark.parametrize(("certified", "ok"), [("rebind.test", True), ("other.test", False)])
def test_tls_names_and_verifies_the_urls_host_not_the_address(net, tmp_path, monkeypatch, certified, ok):
    cert, key = _certificate(tmp_path, certified)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # httpx trusts exactly this certificate
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    secure = Recorder({"/a.wav": (200, {}, AUDIO)}, tls=tls)
    try:
        net.routes[PUBLIC] = secure.port
        net.answers["rebind.test"] = [[PUBLIC], ["127.0.0.1"]]
        if ok:
            assert fetch("https://rebind.test:8443/a.wav") == AUDIO
            assert secure.requests == [("/a.wav", "rebind.test:8443")]
        else:
            with pytest.raises(ApiError) as info:
                fetch("https://rebind.test:8443/a.wav")
            assert (info.value.status, info.value.code) == (502, "audio_url_unreachable")
            assert "certificate" in info.value.message.lower()
            assert secure.requests == []
        assert secure.sni == ["rebind.test"]
        assert net.connects == [(PUBLIC, 8443)]
    finally:
        secure.close()
