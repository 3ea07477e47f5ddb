"""Complete requests run on a bounded thread pool under the WSGI app; responses come back as bytes.

The loop hands over a request only once its head and body are fully in, so a pool thread never
waits on a client: it runs the app and returns the whole response, which the loop writes without
blocking. Each connection carries one request (`Connection: close`), as werkzeug's server did.
An app may instead open a ResponseStream (frontdoor.stream) and write to it later: the pool
thread still returns at once, and the loop keeps the connection open for the stream.

Every request the app answers gets one access-log line (logger "frontdoor.access"): method, path,
status and the time to the response head; never the query string (it may carry secrets), the
headers or the body.
"""

from __future__ import annotations

import io
import logging
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from frontdoor.http import Request, error_response, response_head
from frontdoor.stream import OPEN_STREAM, ResponseStream

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("frontdoor.access")

# Hop-by-hop fields are the server's to set, never the app's (RFC 7230 6.1).
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer",
                         "proxy-connection"})

# Called on the pool thread with the response bytes and the stream the app opened, if any.
Done = Callable[[bytes, ResponseStream | None], None]


def environ(request: Request, *, server: tuple[str, int], remote: tuple[str, int]) -> dict[str, Any]:
    """The PEP 3333 environ of `request`, as werkzeug's own server builds it."""
    env: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": request.path,
        "QUERY_STRING": request.query,
        "RAW_URI": request.target,
        "REQUEST_URI": request.target,
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{request.version}",
        "REMOTE_ADDR": remote[0],
        "REMOTE_PORT": str(remote[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(request.body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request.headers:
        # A field with "_" would be indistinguishable from one with "-" here: drop it, as
        # werkzeug does, so a client cannot spoof a header a proxy set.
        if "_" in name:
            continue
        if name == "content-type":
            env["CONTENT_TYPE"] = value
            continue
        if name == "content-length":
            continue
        key = "HTTP_" + name.upper().replace("-", "_")
        env[key] = f"{env[key]}, {value}" if key in env else value
    # The body is in full: its true length, whatever the framing was (chunked included).
    env["CONTENT_LENGTH"] = str(len(request.body))
    return env


def run_app(app: Any, env: dict[str, Any], *, head_only: bool) -> bytes:
    """Call the WSGI app and return the complete HTTP/1.1 response, closing the connection."""
    return respond(app, env, head_only=head_only)[0]


def respond(app: Any, env: dict[str, Any], *, head_only: bool,
            stream_limit: int = 1 << 20) -> tuple[bytes, ResponseStream | None, int]:
    """Call the WSGI app: (the response bytes, the stream it opened or None, the status).

    With a stream (a 200 whose app called environ[OPEN_STREAM]) the bytes are the head and the
    first part of the body, without a Content-Length: the body ends when the connection closes.
    """
    opened: list[ResponseStream] = []

    def open_stream() -> ResponseStream:
        stream = ResponseStream(stream_limit)
        opened.append(stream)
        return stream

    env[OPEN_STREAM] = open_stream
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return chunks.append

    chunks: list[bytes] = []
    result: Iterable[bytes] = app(env, start_response)
    try:
        chunks.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status_text, app_headers = started
    status = int(status_text.split(" ", 1)[0])
    body = b"".join(chunks)
    stream = opened[-1] if opened and status == 200 and not head_only else None
    for unused in opened:
        if unused is not stream:  # the app failed after opening it, or it is a HEAD
            unused.detach()
    headers = [(n, v) for n, v in app_headers if n.lower() not in _HOP_BY_HOP and n.lower() != "content-length"]
    if status >= 200 and status not in (204, 304) and stream is None:
        headers.append(("Content-Length", str(len(body))))
    headers.append(("Connection", "close"))
    return response_head(status, headers) + (b"" if head_only else body), stream, status


def printable_path(path: str, limit: int = 200) -> str:
    """`path` for a log line: control characters escaped, so a client cannot forge lines."""
    shown = path if len(path) <= limit else path[:limit] + "..."
    return "".join(c if c.isprintable() and c != "\\" else ascii(c)[1:-1] for c in shown)


class WsgiPool:
    """Runs complete requests under `app` on at most `workers` threads."""

    def __init__(self, app: Any, server: tuple[str, int], *, workers: int, stream_limit: int = 1 << 20) -> None:
        self._app = app
        self._server = server
        self._stream_limit = stream_limit
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="frontdoor-http")

    def submit(self, request: Request, remote: tuple[str, int], done: Done) -> None:
        """Run `request`; `done(response)` is called on the pool thread with the response bytes."""
        self._executor.submit(self._serve, request, remote, done)

    def _serve(self, request: Request, remote: tuple[str, int], done: Done) -> None:
        began = time.monotonic()
        stream = None
        try:
            env = environ(request, server=self._server, remote=remote)
            response, stream, status = respond(self._app, env, head_only=request.method == "HEAD",
                                               stream_limit=self._stream_limit)
        except Exception:
            logger.exception("%s %s failed", request.method, printable_path(request.path))
            response = error_response(500, "internal_error", "The server hit an unexpected error; it is logged.")
            status = 500
        access_logger.info("%s %s %d %.1fms%s", request.method, printable_path(request.path), status,
                           (time.monotonic() - began) * 1000, " (stream)" if stream is not None else "")
        done(response, stream)

    def stop(self) -> None:
        """Finish the requests being served; drop those still queued."""
        self._executor.shutdown(wait=True, cancel_futures=True)
