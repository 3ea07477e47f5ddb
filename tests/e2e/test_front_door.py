"""The front door on the public internet: `python app.py` against hostile and malformed clients.

Every test runs the real process (AppProcess) against the simulator and talks to it as an attacker
would: raw sockets for requests a client library would refuse to send, hand-made RFC 6455 frames
(masked, as a client's must be) for media sockets. What they check:

- media sockets are always authenticated: a per-call `stream_auth_token` in every streaming_start
  (or the static STREAM_AUTH_TOKEN), checked on the upgrade (401 missing, 403 wrong, JSON bodies,
  counted in /metrics), and a call's token opens that call only (1008 for another);
- one door for /stream: a request line that only looks like /stream gets an HTTP error, never a
  socket nor silence; a plain GET /stream gets 426;
- a /stream peer that never reads is dropped (WS_SEND_BUFFER_BYTES, WS_MAX_BUFFERED_BYTES) while
  a bystander call keeps its frames on time;
- slow heads and slow bodies do not keep /health and the webhooks waiting;
- RFC 9112 answers for malformed heads (400, 431) and a head deadline (HTTP_HEAD_TIMEOUT_S);
- afterwards the same server still plays a normal call.

Every socket has a timeout, every wait a bound; processes and sockets are closed in `finally`.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from wsframes import frame

from appprocess import AppProcess, healthy
from config import Config
from livecall import API_KEY, wait_until
from simulator import FakeTelnyx, SimCall
from simulator.webhooks import make_event

AUTH_HEADER = "x-telnyx-streaming-auth-token"
OP_TEXT, OP_CLOSE = 0x1, 0x8
ANSWER_S = 1.0  # "answered within a second"
FRAME_S = Config.OUTBOUND_CHUNK_MS / 1000
LEAD_S = Config.OUTBOUND_LEAD_MS / 1000
AUTH_REFUSED = "mixer_stream_auth_refused_total"


# -- the process ------------------------------------------------------------------------------------


def start_app(telnyx: FakeTelnyx, tmp_path: Path, **env: str) -> AppProcess:
    """`python app.py` with `env` on top of AppProcess's settings, once /health answers."""
    app = AppProcess(telnyx, tmp_path, env=env)
    try:
        wait_until(lambda: healthy(app.url) or app.proc.poll() is not None, timeout=30, what="server start")
        assert app.proc.poll() is None, app.log()
    except BaseException:
        app.close()
        raise
    return app


def assert_still_plays(app: AppProcess, telnyx: FakeTelnyx) -> None:
    """After the abuse, the same process still answers and plays a normal call."""
    assert app.proc.poll() is None, app.log()
    call, _ = app.playing_call(telnyx)
    assert call.streaming_status == "streaming"


def counter(url: str, name: str, **labels: str) -> float:
    """Sum of `name`'s samples in /metrics whose labels include `labels` (0 when absent)."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if match and match[1] == name and all(f'{k}="{v}"' in (match[2] or "") for k, v in labels.items()):
            total += float(match[3])
    return total


def log_events(url: str, call_control_id: str) -> list[str]:
    """The call's event names in GET /stream-log, oldest first."""
    response = httpx.get(f"{url}/stream-log", params={"call_control_id": call_control_id, "limit": "1000"},
                         timeout=5)
    response.raise_for_status()
    return [item["event"] for item in response.json()["items"]]


def stream_token(telnyx: FakeTelnyx, call: SimCall) -> str:
    """The stream_auth_token the server put in the call's last streaming_start."""
    commands = telnyx.commands_for("streaming_start", call)
    assert commands, "no streaming_start for the call"
    token = commands[-1].body.get("stream_auth_token")
    assert isinstance(token, str) and token, f"streaming_start carries no stream_auth_token: {commands[-1].body}"
    return token


# -- raw HTTP -----------------------------------------------------------------------------------------


@dataclass
class Answer:
    """What came back on a raw connection: a status line and head, or why there was none."""

    status: int | None
    headers: dict[str, str]  # lower-case names
    body: bytes
    rest: bytes  # after a 101's head: the first frames
    elapsed: float
    note: str = ""  # why status is None: silence, a close or a reset without an answer

    def describe(self) -> str:
        if self.status is None:
            return self.note
        return f"{self.status} after {self.elapsed:.2f} s, body {self.body[:200]!r}"


def read_answer(sock: socket.socket, timeout: float = ANSWER_S) -> Answer:
    """One HTTP response from `sock` within `timeout` (its head, then Content-Length bytes of body)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    buf = b""
    eof = False

    def more() -> bool:
        nonlocal buf, eof
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            data = b""
        if not data:
            eof = True
            return False
        buf += data
        return True

    while b"\r\n\r\n" not in buf and more():
        pass
    elapsed = time.monotonic() - t0
    if b"\r\n\r\n" not in buf:
        if eof:
            note = f"closed after {elapsed:.2f} s without an answer ({buf[:100]!r})"
        else:
            note = f"no answer within {timeout:g} s ({buf[:100]!r})"
        return Answer(None, {}, b"", b"", elapsed, note)
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    match = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    if match is None:
        return Answer(None, {}, b"", b"", elapsed, f"not an HTTP response: {head[:100]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(match[1])
    if status == 101:
        return Answer(status, headers, b"", rest, elapsed)
    length = int(headers.get("content-length", "0") or 0)
    buf = rest
    while len(buf) < length and more():
        pass
    return Answer(status, headers, buf[:length], b"", time.monotonic() - t0)


def ask(port: int, data: bytes, timeout: float = ANSWER_S) -> Answer:
    """Connect, send `data` at once, read the answer, close."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        return read_answer(sock, timeout)


def json_error_problem(answer: Answer) -> str | None:
    """Why the body is not the API's error body {"error": {"code", "message"}}; None when it is."""
    if not answer.headers.get("content-type", "").startswith("application/json"):
        return f"content-type {answer.headers.get('content-type')!r}, not application/json"
    try:
        document = json.loads(answer.body)
    except ValueError:
        return f"body is not JSON: {answer.body[:200]!r}"
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict) or not all(isinstance(error.get(k), str) and error[k] for k in ("code", "message")):
        return f"body is not {{'error': {{'code', 'message'}}}}: {document!r}"
    return None


def assert_json_error(answer: Answer, status: int) -> None:
    assert answer.status == status, answer.describe()
    problem = json_error_problem(answer)
    assert problem is None, problem


def upgrade_head(port: int, request_line: str = "GET /stream HTTP/1.1", *, token: str | None = None,
                 host: str | None = "", extra: Sequence[str] = ()) -> bytes:
    """A complete WebSocket upgrade head; host "" means 127.0.0.1:port, None leaves Host out."""
    lines = [request_line]
    if host is not None:
        lines.append(f"Host: {host or f'127.0.0.1:{port}'}")
    lines += ["Upgrade: websocket", "Connection: Upgrade",
              f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}", "Sec-WebSocket-Version: 13"]
    if token is not None:
        lines.append(f"{AUTH_HEADER}: {token}")
    lines += extra
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- raw WebSocket ------------------------------------------------------------------------------------


class RawSocket:
    """Telnyx's end of a /stream socket, by hand: masked text frames out, server frames in."""

    def __init__(self, sock: socket.socket, rest: bytes) -> None:
        self.sock = sock
        self.buf = rest

    def send_json(self, message: dict[str, Any]) -> None:
        self.sock.sendall(frame(OP_TEXT, json.dumps(message).encode(), mask=os.urandom(4)))

    def next_frame(self, deadline: float) -> tuple[int, bytes] | None:
        """The next server frame (opcode, payload); None once the connection ends. TimeoutError at
        `deadline`."""
        while True:
            parsed = _parse_server_frame(self.buf)
            if parsed is not None:
                opcode, payload, used = parsed
                self.buf = self.buf[used:]
                return opcode, payload
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no frame from the server in time")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self.buf += data

    def read_until_close(self, timeout: float) -> tuple[int | None, list[str]]:
        """(the server's close code, None if the connection just ended; the text messages before)."""
        deadline = time.monotonic() + timeout
        texts: list[str] = []
        while True:
            got = self.next_frame(deadline)
            if got is None:
                return None, texts
            opcode, payload = got
            if opcode == OP_CLOSE:
                return (struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005), texts
            if opcode == OP_TEXT:
                texts.append(payload.decode(errors="replace"))


def _parse_server_frame(buf: bytes) -> tuple[int, bytes, int] | None:
    if len(buf) < 2:
        return None
    opcode, length, start = buf[0] & 0x0F, buf[1] & 0x7F, 2
    if length == 126:
        if len(buf) < 4:
            return None
        length, start = struct.unpack("!H", buf[2:4])[0], 4
    elif length == 127:
        if len(buf) < 10:
            return None
        length, start = struct.unpack("!Q", buf[2:10])[0], 10
    if len(buf) < start + length:
        return None
    return opcode, buf[start:start + length], start + length


@contextlib.contextmanager
def open_stream(port: int, token: str | None, *, rcvbuf: int | None = None) -> Iterator[RawSocket]:
    """An upgraded /stream socket (asserts the 101); closed on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:  # before connect, so the window it advertises is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        sock.sendall(upgrade_head(port, token=token))
        answer = read_answer(sock, timeout=5)
        assert answer.status == 101, f"upgrade refused: {answer.describe()}"
        yield RawSocket(sock, answer.rest)
    finally:
        sock.close()


def connected_frame(token: str | None) -> dict[str, Any]:
    message: dict[str, Any] = {"event": "connected", "version": "1.0.0"}
    if token is not None:
        message[AUTH_HEADER] = token
    return message


def start_frame(call_control_id: str) -> dict[str, Any]:
    """A `start` as Telnyx sends it, naming `call_control_id`."""
    return {"event": "start", "sequence_number": "1", "stream_id": str(uuid.uuid4()),
            "start": {"user_id": str(uuid.uuid4()), "call_control_id": call_control_id,
                      "call_session_id": str(uuid.uuid4()), "from": "+15550100001", "to": "+15550100002",
                      "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}}


def media_messages(texts: list[str]) -> list[str]:
    return [t for t in texts if '"media"' in t]


def inject_tone(url: str, call: SimCall) -> dict[str, Any]:
    response = httpx.post(f"{url}/streams/{call.call_control_id}/inject",
                          json={"tone": {"frequency_hz": 300, "duration_ms": 500}, "loop": True}, timeout=5)
    response.raise_for_status()
    return response.json()


# -- 1. media sockets are always authenticated ------------------------------------------------------


def test_without_a_configured_token_each_call_gets_its_own_and_the_upgrade_checks_it(telnyx, tmp_path):
    app = start_app(telnyx, tmp_path, STREAM_AUTH_TOKEN="")
    try:
        call, _ = app.playing_call(telnyx)  # the simulator presents the call's token, as Telnyx does
        token = stream_token(telnyx, call)
        assert call.media.upgrade_headers.get(AUTH_HEADER) == token
        missing0 = counter(app.url, AUTH_REFUSED, reason="missing")
        invalid0 = counter(app.url, AUTH_REFUSED, reason="invalid")

        refused = ask(app.port, upgrade_head(app.port))
        assert_json_error(refused, 401)  # an HTTP answer: no 101, no frame
        wrong = ask(app.port, upgrade_head(app.port, token=base64.urlsafe_b64encode(os.urandom(32)).decode()))
        assert_json_error(wrong, 403)

        assert counter(app.url, AUTH_REFUSED, reason="missing") >= missing0 + 1
        assert counter(app.url, AUTH_REFUSED, reason="invalid") >= invalid0 + 1
        assert call.streaming_status == "streaming"
        assert_still_plays(app, telnyx)
    finally:
        app.close()


def test_a_calls_token_does_not_open_another_call(telnyx, tmp_path):
    app = start_app(telnyx, tmp_path, STREAM_AUTH_TOKEN="")
    try:
        call_a, _ = app.playing_call(telnyx)
        call_b, _ = app.playing_call(telnyx)  # B plays a tone: a socket bound to B would get its media
        token_a, token_b = stream_token(telnyx, call_a), stream_token(telnyx, call_b)
        assert token_a != token_b, "the stream auth token is not per call"

        with open_stream(app.port, token_a) as ws:
            ws.send_json(connected_frame(token_a))
            ws.send_json(start_frame(call_b.call_control_id))
            code, texts = ws.read_until_close(timeout=5)
        assert code == 1008, f"closed with {code}"
        assert media_messages(texts) == [], f"{len(media_messages(texts))} media frames of call B leaked"

        # B's own stream was not taken over, and still plays.
        assert call_b.streaming_status == "streaming" and call_b.close_code is None
        heard = len(call_b.heard_pcm())
        wait_until(lambda: len(call_b.heard_pcm()) >= heard + 4000, what="B's audio half a second on")
        assert_still_plays(app, telnyx)
    finally:
        app.close()


def test_a_static_stream_token_is_checked_on_the_upgrade(telnyx, tmp_path):
    app = start_app(telnyx, tmp_path, STREAM_AUTH_TOKEN="tok")
    try:
        missing0 = counter(app.url, AUTH_REFUSED, reason="missing")
        invalid0 = counter(app.url, AUTH_REFUSED, reason="invalid")
        assert_json_error(ask(app.port, upgrade_head(app.port)), 401)
        assert_json_error(ask(app.port, upgrade_head(app.port, token="tok-not")), 403)
        assert counter(app.url, AUTH_REFUSED, reason="missing") >= missing0 + 1
        assert counter(app.url, AUTH_REFUSED, reason="invalid") >= invalid0 + 1

        right = ask(app.port, upgrade_head(app.port, token="tok"))
        assert right.status == 101, right.describe()
        assert_still_plays(app, telnyx)
    finally:
        app.close()


# -- 2. one door for /stream ------------------------------------------------------------------------

LOOKALIKE_REQUEST_LINES = (
    "GET /%73tream HTTP/1.1",
    "GET http://h/stream HTTP/1.1",
    "GET //stream HTTP/1.1",
    "GET  /stream HTTP/1.1",
    "GET\t/stream HTTP/1.1",
    "get /stream HTTP/1.1",
    "GET /stream#x HTTP/1.1",
)


def test_request_lines_that_only_look_like_stream_get_an_http_error(telnyx, tmp_path):
    # Without a token: whichever handler such a line reaches, it must answer at once (401 from the
    # real /stream, 400 or 404 elsewhere), as JSON; never a socket, never silence.
    app = start_app(telnyx, tmp_path, STREAM_AUTH_TOKEN="")
    try:
        problems = []
        for line in LOOKALIKE_REQUEST_LINES:
            answer = ask(app.port, upgrade_head(app.port, line))
            if answer.status not in (400, 401, 404):
                problems.append(f"{line!r}: {answer.describe()}")
            elif (problem := json_error_problem(answer)) is not None:
                problems.append(f"{line!r}: {answer.status}, {problem}")
        assert problems == [], "\n".join(problems)
        assert_still_plays(app, telnyx)
    finally:
        app.close()


def test_plain_get_stream_is_426_and_an_encoded_path_with_a_token_never_hangs(telnyx, tmp_path):
    app = start_app(telnyx, tmp_path, STREAM_AUTH_TOKEN="tok")
    try:
        plain = ask(app.port, f"GET /stream HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\n\r\n".encode())
        assert_json_error(plain, 426)

        call, _ = app.playing_call(telnyx)
        sock = socket.create_connection(("127.0.0.1", app.port), timeout=5)
        try:
            sock.sendall(upgrade_head(app.port, "GET /%73tream HTTP/1.1", token="tok"))
            answer = read_answer(sock)
            assert answer.status is not None, f"GET /%73tream with the token: {answer.note}"
            if answer.status == 101:
                # Then it is the real /stream: a call's connected + start get its media.
                ws = RawSocket(sock, answer.rest)
                ws.send_json(connected_frame("tok"))
                ws.send_json(start_frame(call.call_control_id))
                deadline = time.monotonic() + 5
                media = 0
                while media == 0:
                    got = ws.next_frame(deadline)
                    assert got is not None and got[0] != OP_CLOSE, f"socket ended: {got}"
                    media += got[0] == OP_TEXT and b'"media"' in got[1]
            else:
                assert answer.status >= 400, answer.describe()
        finally:
            sock.close()
        assert_still_plays(app, telnyx)
    finally:
        app.close()


# -- 3. a /stream peer that never reads ---------------------------------------------------------------


def test_a_stream_peer_that_never_reads_is_dropped_and_a_bystander_keeps_its_pace(telnyx, tmp_path):
    # A long idle timeout: the socket must go for not reading, not for not sending (30 s by default).
    app = start_app(telnyx, tmp_path, STREAM_AUTH_TOKEN="tok", WS_SEND_BUFFER_BYTES="4096",
                    WS_MAX_BUFFERED_BYTES="65536", WS_IDLE_TIMEOUT_S="120")
    try:
        bystander, _ = app.playing_call(telnyx)
        victim = telnyx.place_call()
        victim.wait_streaming(timeout=10)
        ccid = victim.call_control_id
        with open_stream(app.port, "tok", rcvbuf=1024) as ws:
            # Our socket takes the call over, as Telnyx's reconnect would; from here on we never read.
            ws.send_json(connected_frame("tok"))
            ws.send_json(start_frame(ccid))
            wait_until(lambda: "stream.reconnected" in log_events(app.url, ccid), what="our socket bound to the call")
            ended = log_events(app.url, ccid).count("stream.disconnected")
            t0 = time.monotonic()
            inject_tone(app.url, victim)
            wait_until(lambda: log_events(app.url, ccid).count("stream.disconnected") > ended, timeout=20,
                       what="the server to drop the socket that never reads")
            t1 = time.monotonic()
            # It is gone on the wire too: what is left to read ends in a close, not more frames forever.
            assert_closed_within(ws.sock, 5)
        arrivals = [at for at, _ in bystander.received if t0 <= at <= t1]
        assert len(arrivals) >= (t1 - t0) / FRAME_S / 2, f"{len(arrivals)} bystander frames in {t1 - t0:.1f} s"
        worst = max(b - a for a, b in itertools.pairwise(arrivals))
        assert worst < LEAD_S + FRAME_S, f"the bystander waited {worst * 1000:.0f} ms for a frame"
        assert_still_plays(app, telnyx)
    finally:
        app.close()


def assert_closed_within(sock: socket.socket, timeout: float) -> None:
    """`sock` reaches its end (EOF or reset) within `timeout`, whatever it still had to read."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the server did not close the connection within {timeout:.1f} s"
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return
        except TimeoutError:
            continue
        except ConnectionResetError:
            return


# -- 4. slow heads, slow bodies ----------------------------------------------------------------------


class Slowloris:
    """`heads` connections sending a request head a byte a second, `bodies` sending a complete head
    with Content-Length: 100000 and then a body byte a second; all closed on exit."""

    def __init__(self, port: int, *, heads: int, bodies: int) -> None:
        host = f"127.0.0.1:{port}"
        self.head = f"GET /health HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {'s' * 64}\r\n\r\n".encode()
        body_head = (f"POST /webhooks/voice HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: 100000\r\n\r\n").encode()
        self.heads: list[socket.socket] = []
        self.bodies: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drip, name="slowloris", daemon=True)
        try:
            for _ in range(heads):
                self.heads.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            for _ in range(bodies):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                self.bodies.append(sock)
                sock.sendall(body_head)
            self._thread.start()
        except BaseException:
            self.close()
            raise

    def _drip(self) -> None:
        """One byte a second on every connection; ones the server closed are left alone."""
        dead: set[socket.socket] = set()
        for i in range(len(self.head)):  # the heads are never finished within the test
            sends = [(s, self.head[i:i + 1]) for s in self.heads] + [(s, b" ") for s in self.bodies]
            for sock, byte in sends:
                if sock not in dead:
                    try:
                        sock.send(byte)
                    except OSError:
                        dead.add(sock)
            if self._stop.wait(1.0):
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for sock in self.heads + self.bodies:
            sock.close()

    def __enter__(self) -> Slowloris:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def signed_webhook(telnyx: FakeTelnyx, url: str) -> tuple[bytes, dict[str, str]]:
    """A webhook as Telnyx signs it, for an event the server takes and ignores (a stranger's playback)."""
    ccid = "v3:probe-" + uuid.uuid4().hex
    event = make_event(ccid, "call.playback.started", {"call_control_id": ccid})
    body = json.dumps({"data": event.data, "meta": {"attempt": 1, "delivered_to": url}})
    timestamp = int(time.time())
    return body.encode(), {"telnyx-signature-ed25519": telnyx.sign(body, timestamp),
                           "telnyx-timestamp": str(timestamp), "content-type": "application/json"}


def test_slow_heads_and_slow_bodies_do_not_keep_health_or_webhooks_waiting(telnyx, tmp_path):
    app = start_app(telnyx, tmp_path, STREAM_AUTH_TOKEN="")
    try:
        problems = []
        with Slowloris(app.port, heads=64, bodies=64), httpx.Client(timeout=1) as client:
            time.sleep(1.5)  # every slow client is in and has sent something
            for _ in range(5):  # once a second for 5 s, while they drip on
                round_start = time.monotonic()
                body, headers = signed_webhook(telnyx, f"{app.url}/webhooks/voice")
                for what, send in (("GET /health", lambda: client.get(f"{app.url}/health")),
                                   ("webhook", lambda b=body, h=headers: client.post(
                                       f"{app.url}/webhooks/voice", content=b, headers=h))):
                    t = time.monotonic()
                    try:
                        status = send().status_code
                    except httpx.HTTPError as exc:
                        problems.append(f"{what}: {type(exc).__name__} after {time.monotonic() - t:.2f} s")
                        continue
                    took = time.monotonic() - t
                    if status != 200 or took > ANSWER_S:
                        problems.append(f"{what}: {status} after {took:.2f} s")
                time.sleep(max(0.0, round_start + 1.0 - time.monotonic()))
        assert problems == [], "\n".join(problems)
        assert_still_plays(app, telnyx)
    finally:
        app.close()


# -- 5. RFC answers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rfc_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppProcess, FakeTelnyx]]:
    """One server for the malformed-request checks: a static token (so auth is never the reason
    for an answer) and a 2 s head deadline."""
    with FakeTelnyx(api_key=API_KEY) as fake:
        app = start_app(fake, tmp_path_factory.mktemp("rfc"), STREAM_AUTH_TOKEN="tok", HTTP_HEAD_TIMEOUT_S="2")
        try:
            yield app, fake
        finally:
            app.close()


def _many_headers(count: int) -> list[str]:
    return [f"X-Filler-{i}: {i}" for i in range(count)]


def _health(port: int, extra: Sequence[str] = ()) -> bytes:
    return ("\r\n".join(["GET /health HTTP/1.1", f"Host: 127.0.0.1:{port}", *extra]) + "\r\n\r\n").encode()


LONG_LINE = "X-Long: " + "a" * 8200  # over 8 KiB on its own
RFC_CASES = {
    # name: (requests to send, each on its own connection, built from the port; the status each must get)
    "upgrade_without_host": (lambda port: [upgrade_head(port, token="tok", host=None)], 400),
    "upgrade_with_two_hosts": (lambda port: [upgrade_head(port, token="tok", extra=[f"Host: 127.0.0.1:{port}"])], 400),
    "upgrade_with_a_body": (lambda port: [upgrade_head(port, token="tok", extra=["Content-Length: 5"]) + b"hello"],
                            400),
    "two_content_lengths": (lambda port: [(
        f"POST /webhooks/voice HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello").encode()], 400),
    "empty_line_before_the_request_line": (lambda port: [b"\r\n" + _health(port)], 200),
    "over_100_headers": (lambda port: [upgrade_head(port, token="tok", extra=_many_headers(101)),
                                       _health(port, _many_headers(101))], 431),
    "header_line_over_8k": (lambda port: [upgrade_head(port, token="tok", extra=[LONG_LINE]),
                                          _health(port, [LONG_LINE])], 431),
}


@pytest.mark.parametrize("case", list(RFC_CASES))
def test_malformed_heads_get_their_rfc_answer(rfc_app, case):
    app, _ = rfc_app
    build, status = RFC_CASES[case]
    for request in build(app.port):
        answer = ask(app.port, request)
        assert answer.status == status, f"{request[:80]!r}...: {answer.describe()}"


def test_an_unfinished_head_is_closed_after_the_head_deadline(rfc_app):
    app, fake = rfc_app
    host = f"127.0.0.1:{app.port}"
    unfinished = (f"GET /health HTTP/1.1\r\nHost: {host}\r\n".encode(),
                  f"GET /stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n".encode())
    socks: list[socket.socket] = []
    try:
        for data in unfinished:
            sock = socket.create_connection(("127.0.0.1", app.port), timeout=5)
            socks.append(sock)
            sock.sendall(data)
        t0 = time.monotonic()
        for sock in socks:  # half the deadline: still open, nothing said
            sock.settimeout(max(0.01, t0 + 1.0 - time.monotonic()))
            with pytest.raises(TimeoutError):
                sock.recv(1)
        for sock in socks:
            assert_closed_within(sock, max(0.1, t0 + 5.0 - time.monotonic()))
    finally:
        for sock in socks:
            sock.close()
    assert_still_plays(app, fake)
