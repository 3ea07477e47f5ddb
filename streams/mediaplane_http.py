"""Plain HTTP on the media plane's port: a bounded pool running werkzeug's request handler.

The front door only peeked at these connections, so werkzeug reads the request from the first
byte, exactly as if its own server had accepted the socket. Werkzeug 3 answers every request
with `Connection: close` (http.server cannot drain a body safely between requests), so each
connection carries one request and a pool thread is never parked on an idle keep-alive socket.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from werkzeug.serving import WSGIRequestHandler

logger = logging.getLogger(__name__)


class _ServerFacade:
    """The attributes WSGIRequestHandler reads from its server, without owning a socket."""

    multithread = True
    multiprocess = False
    ssl_context = None
    passthrough_errors = False

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.app = app
        self.server_address = (host, port)
        self._server_version = f"Werkzeug/{importlib.metadata.version('werkzeug')}"

    def log(self, type: str, message: str, *args: Any) -> None:
        getattr(logger, type if type in ("debug", "info", "warning", "error") else "info")(message, *args)


class _RequestHandler(WSGIRequestHandler):
    protocol_version = "HTTP/1.1"
    # Socket timeout for reading a request and writing its response; a stalled client frees
    # its pool thread after this long.
    timeout = 30.0

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug("%s %s %s", self.command, getattr(self, "path", "?"), code)


class HttpPool:
    """Serves handed-off HTTP connections on at most `workers` threads."""

    def __init__(self, app: Any, host: str, port: int, *, workers: int, timeout_s: float) -> None:
        self._server = _ServerFacade(app, host, port)
        self._handler = type("_BoundRequestHandler", (_RequestHandler,), {"timeout": timeout_s})
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mediaplane-http")
        # Guards _live: sockets queued or being served, so stop() can unblock their threads.
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._stopped = False

    def submit(self, sock: socket.socket, addr: Any) -> None:
        with self._lock:
            if self._stopped:
                sock.close()
                return
            self._live.add(sock)
        self._executor.submit(self._serve, sock, addr)

    def _serve(self, sock: socket.socket, addr: Any) -> None:
        try:
            sock.setblocking(True)
            self._handler(sock, addr, cast(Any, self._server))
        except OSError as exc:  # the client went away mid-request
            logger.debug("http connection from %s ended: %s", addr, exc)
        except Exception:
            logger.exception("http connection from %s failed", addr)
        finally:
            with self._lock:
                self._live.discard(sock)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            live = list(self._live)
        for sock in live:
            # Wakes a handler blocked in recv; its own finally closes the socket.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._executor.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            # Connections still queued when the pool stopped were never served.
            for sock in self._live:
                sock.close()
            self._live.clear()
