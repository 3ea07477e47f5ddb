"""Sans-I/O HTTP/1.1 request reading: bytes in, one complete Request (or an HttpError) out.

Every connection's bytes go through exactly one parser, llhttp (through httptools, as uvicorn
uses it), and what it parses is what is routed and served: there is no second reading of the
request line anywhere. The reader enforces the limits a careful server has (head size, header
count and line length, body size) and the RFC 7230 rules llhttp leaves to its caller (Host,
a body on an upgrade). It never touches a socket, so it is tested with plain bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import unquote_to_bytes

import httptools

MAX_HEAD_BYTES = 16384  # request line plus headers
MAX_HEADERS = 100
MAX_HEADER_LINE = 8192  # one header's name plus value


class HttpError(Exception):
    """A request we answer with an error status and close. `code` is the JSON body's code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
        return error_response(self.status, self.code, self.message, extra)


@dataclass
class Request:
    method: str
    target: str  # the request target as sent (origin or absolute form)
    path: str  # percent-decoded, as a WSGI app sees PATH_INFO (bytes as latin-1)
    query: str
    version: str  # "1.0" or "1.1"
    headers: list[tuple[str, str]]  # names lower-cased, in order, duplicates kept
    body: bytes = b""
    upgrade: bool = False  # llhttp saw Connection: upgrade with an Upgrade header
    expect_continue: bool = False

    def header(self, name: str) -> str | None:
        """The value of `name` (lower-case); several fields are joined with ", "."""
        values = [v for n, v in self.headers if n == name]
        return ", ".join(values) if values else None

    def count(self, name: str) -> int:
        return sum(1 for n, _ in self.headers if n == name)


@dataclass
class _Parsing:
    url: bytearray = field(default_factory=bytearray)
    headers: list[tuple[str, str]] = field(default_factory=list)
    name: bytearray = field(default_factory=bytearray)
    value: bytearray = field(default_factory=bytearray)
    body: bytearray = field(default_factory=bytearray)
    messages: int = 0


class RequestReader:
    """Feed a connection's bytes; `head` is set once the headers are in, `request` once complete.

    Only the first request on a connection is read (every response closes the connection):
    bytes after it are ignored, and `pipelined` says they were there.
    """

    def __init__(self, *, max_body_bytes: int, max_head_bytes: int = MAX_HEAD_BYTES,
                 max_headers: int = MAX_HEADERS, max_header_line: int = MAX_HEADER_LINE) -> None:
        self.max_body_bytes = max_body_bytes
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.max_header_line = max_header_line
        self._p = _Parsing()
        self._parser = httptools.HttpRequestParser(self)
        self._head_bytes = 0
        self.head: Request | None = None  # set when the headers are complete
        self.line: tuple[str, str] | None = None  # method and path, once parsed: the access log's, even if refused
        self.request: Request | None = None  # set when the whole message is in
        self.pipelined = False
        self.upgrade_rest = b""  # for an upgrade: the bytes after the head (the first frames)

    @property
    def body_bytes(self) -> int:
        return len(self._p.body)

    def feed(self, data: bytes) -> Request | None:
        """Parse `data`; the complete Request once it is in, else None. Raises HttpError."""
        if self.request is not None:
            self.pipelined = True
            return self.request
        if self.head is None:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            self.upgrade_rest = bytes(data[offset:])
            if self.head is None:  # unreachable with llhttp; never serve half a head
                raise HttpError(400, "bad_request", "Malformed request.") from None
            self.head.upgrade = True
            self.request = self.head
        except httptools.HttpParserCallbackError as exc:
            # llhttp wraps what a callback raised: the limits below raise HttpError.
            cause = exc.__context__
            if isinstance(cause, HttpError):
                raise cause from None
            raise
        except httptools.HttpParserError as exc:
            raise HttpError(400, "bad_request", f"Malformed request: {_reason(exc)}.") from None
        if self.head is None and self._head_bytes > self.max_head_bytes:
            raise HttpError(431, "request_header_fields_too_large",
                            f"The request head is larger than {self.max_head_bytes} bytes.")
        return self.request

    # -- llhttp callbacks (names fixed by httptools) -----------------------------------------

    def on_message_begin(self) -> None:
        self._p.messages += 1
        if self._p.messages > 1:
            self.pipelined = True

    def on_url(self, url: bytes) -> None:
        if self._p.messages > 1:
            return
        self._p.url += url
        if len(self._p.url) > self.max_head_bytes:
            raise HttpError(414, "uri_too_long", f"The request target is longer than {self.max_head_bytes} bytes.")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._p.messages > 1:
            return
        p = self._p
        if name and p.value:  # llhttp may split a field across reads: a new name ends the last one
            self._end_header()
        p.name += name
        p.value += value
        if len(p.name) + len(p.value) > self.max_header_line:
            raise HttpError(431, "request_header_fields_too_large",
                            f"A header field is longer than {self.max_header_line} bytes.")

    def _end_header(self) -> None:
        p = self._p
        if p.name:
            if len(p.headers) >= self.max_headers:
                raise HttpError(431, "request_header_fields_too_large",
                                f"The request has more than {self.max_headers} header fields.")
            p.headers.append((p.name.decode("latin-1").lower(), p.value.decode("latin-1").strip()))
        p.name = bytearray()
        p.value = bytearray()

    def on_headers_complete(self) -> None:
        if self._p.messages > 1:
            return
        self._end_header()
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.0", "1.1"):
            raise HttpError(505, "http_version_not_supported", "Only HTTP/1.0 and HTTP/1.1 are served.")
        method = parser.get_method().decode("ascii")
        if method == "CONNECT":
            raise HttpError(405, "method_not_allowed", "CONNECT is not served.")
        target = self._p.url.decode("latin-1")
        try:
            url = httptools.parse_url(bytes(self._p.url))
        except httptools.HttpParserInvalidURLError:
            raise HttpError(400, "bad_request", "Malformed request target.") from None
        raw_path = url.path or b"/"
        request = Request(
            method=method, target=target,
            path=unquote_to_bytes(raw_path).decode("latin-1"),
            query=(url.query or b"").decode("latin-1"),
            version=version, headers=self._p.headers)
        self.line = (method, request.path)
        hosts = request.count("host")
        # RFC 7230 5.4: an HTTP/1.1 request has exactly one Host; anything else is a 400.
        if hosts > 1 or (version == "1.1" and hosts == 0):
            raise HttpError(400, "bad_request", "An HTTP/1.1 request needs exactly one Host header.")
        length = request.header("content-length")
        chunked = request.header("transfer-encoding") is not None
        if length is not None and not length.isdigit():
            raise HttpError(400, "bad_request", "Malformed Content-Length.")
        if parser.should_upgrade() and (chunked or int(length or 0) > 0):
            raise HttpError(400, "bad_request", "An upgrade request carries no body.")
        if length is not None and int(length) > self.max_body_bytes:
            raise self._too_large()
        expect = request.header("expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise HttpError(417, "expectation_failed", "Only 'Expect: 100-continue' is understood.")
            request.expect_continue = version == "1.1" and (chunked or int(length or 0) > 0)
        self.head = request

    def _too_large(self) -> HttpError:
        return HttpError(413, "payload_too_large",
                         f"The request body is larger than the limit of {self.max_body_bytes} bytes.")

    def on_body(self, body: bytes) -> None:
        if self._p.messages > 1:
            return
        self._p.body += body
        if len(self._p.body) > self.max_body_bytes:
            raise self._too_large()

    def on_message_complete(self) -> None:
        if self._p.messages > 1 or self.head is None:
            return
        self.head.body = bytes(self._p.body)
        self._p.body = bytearray()
        self.request = self.head


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[0].lower() + text[1:] if text else text


# -- responses -------------------------------------------------------------------------------

def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason_phrase(status)}"] + [f"{n}: {v}" for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def error_response(status: int, code: str, message: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete, self-closing response with the API's JSON error body."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
               ("Connection", "close"), *extra]
    return response_head(status, headers) + body


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
