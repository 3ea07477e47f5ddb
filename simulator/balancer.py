"""A load balancer in front of several server nodes, as a user would put one in front of a cluster.

It balances connections (TCP, like nginx's or HAProxy's stream mode): each connection to its port
goes to the next backend in turn, or to the one `choose` picks, and bytes are piped both ways
untouched, so webhooks, REST requests and media WebSockets all pass. The server closes every HTTP
connection after one response, so each request is balanced on its own.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

Backend = tuple[str, int]


class Balancer:
    def __init__(self, backends: list[Backend] | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 choose: Callable[[int], int] | None = None) -> None:
        """`choose(n)`: the index of the backend for the n-th connection (default: round-robin)."""
        self.backends: list[Backend] = list(backends or [])
        self.choose = choose
        self.connections: list[int] = []  # per backend index, how many it was given
        self._listener = socket.create_server((host, port))
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._count = 0
        self._lock = threading.Lock()
        self._closed = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Balancer:
        threading.Thread(target=self._accept_loop, name=f"balancer-{self.port}", daemon=True).start()
        return self

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def __enter__(self) -> Balancer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pick(self) -> int:
        with self._lock:
            n = self._count
            self._count += 1
            index = self.choose(n) if self.choose is not None else n % len(self.backends)
            while len(self.connections) < len(self.backends):
                self.connections.append(0)
            self.connections[index] += 1
            return index

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        first = self._pick()
        upstream: socket.socket | None = None
        # A backend that refuses (a dead node) is passed over for the next, as nginx's
        # proxy_next_upstream does: the client only fails when every backend refuses.
        for k in range(len(self.backends)):
            backend = self.backends[(first + k) % len(self.backends)]
            try:
                upstream = socket.create_connection(backend, timeout=5)
                break
            except OSError as exc:
                logger.warning("balancer: backend %s:%d refused: %s", *backend, exc)
        if upstream is None:
            client.close()
            return
        upstream.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(client, upstream)
        threading.Thread(target=link.pipe, args=(upstream, client), daemon=True).start()
        link.pipe(client, upstream)


class _Link:
    """One balanced connection: two pipes; the second to finish closes both sockets."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self._sockets = (client, upstream)
        self._open = 2
        self._lock = threading.Lock()

    def pipe(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy until `src` ends, then end `dst`'s writing side."""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        with self._lock:
            self._open -= 1
            last = self._open == 0
        if last:
            for sock in self._sockets:
                sock.close()
