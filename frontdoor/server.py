"""The front door: one event-loop thread owns the port, every connection on it, and the media clock.

Every connection starts as HTTP. Its bytes are read by the loop, without blocking, into one
parser (frontdoor.http); nothing else looks at them. Once the request is complete:
- a request for a WebSocket path is checked (RFC 6455 handshake, then the application's
  `accept`, which may refuse it with any status) and becomes a websocket Connection on the same
  loop: the media sockets;
- every other request goes, complete, to a bounded pool that runs the WSGI app
  (frontdoor.wsgi), and the loop writes the response back and closes; or, when the app opened a
  ResponseStream (frontdoor.stream, for Server-Sent Events), keeps writing what the app writes
  to it, from any thread, until either side ends it. A stream costs a descriptor and a bounded
  buffer, never a thread: a client that lets `stream_max_buffered` bytes pile up, or leaves
  bytes unread for `stream_stall_s`, is dropped.
So a slow or stalled client costs a buffer and a descriptor, never a thread, and every phase has
a deadline: the head, the body (by its size and a minimum rate), the response write, the
closing linger, the websocket close handshake, an idle websocket. Deadlines are checked by a
sweep once a second, not by polling each connection.

Threads:
- the loop thread reads, parses and dispatches, calls Handler methods (which must return
  quickly), and between socket events runs the Timer (the media clock) when due. The listener,
  the HTTP connections and the wake-up socket sit on a selector of their own, polled again
  after every tick of the timer: when the clock's ticks take most of the loop's time, a request
  or a handshake is served after the next tick, not behind every media socket that is readable.
- any thread may call Connection.send_text/close (see frontdoor.websocket).
- the WSGI pool's threads run the app; a response comes back to the loop through the inbox.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from frontdoor import wire
from frontdoor.http import CONTINUE, HttpError, Request, RequestReader, error_response
from frontdoor.nowait import Reader
from frontdoor.stream import ResponseStream
from frontdoor.websocket import READ, WRITE, Connection, Handler, Limits
from frontdoor.wsgi import WsgiPool, access_logger, printable_path

logger = logging.getLogger(__name__)

__all__ = ["AcceptFn", "FrontDoor", "Timer"]

_RECV_SIZE = 65536
_SWEEP_S = 1.0
_ACCEPT_RETRY_S = 0.1  # out of descriptors: how soon to try accepting again
_LINGER_S = 2.0  # after a response: how long unread input is drained before the socket closes

# The application's side of a websocket upgrade: return the connection's Handler for a request
# to a websocket path (and the peer's address), or raise HttpError to refuse it with that answer.
AcceptFn = Callable[[Request, str], Handler]


class Timer(Protocol):
    """Work the loop runs on a schedule between socket events (the media clock)."""

    def next_deadline(self, now: float) -> float | None:
        """Monotonic time of the next run (maybe past), or None for nothing scheduled."""

    def run_due(self, now: float) -> bool:
        """Run what is due at `now`; False when nothing was."""


# What an HTTP connection is doing.
_READING = 0  # the request is coming in
_RUNNING = 1  # the app has it, on the pool
_WRITING = 2  # the response is going out
_LINGERING = 3  # answered; our side is shut, input is drained until the peer closes
_STREAMING = 4  # a ResponseStream's body is going out, for as long as the app writes it


class _HttpConn:
    __slots__ = ("addr", "buffered", "continued", "deadline", "events", "reader", "response", "sock", "state",
                 "stream")

    def __init__(self, sock: socket.socket, addr: Any, reader: RequestReader, deadline: float) -> None:
        self.sock = sock
        self.addr = addr
        self.reader = reader
        self.deadline = deadline
        self.state = _READING
        self.response = bytearray()
        self.continued = False  # 100 Continue sent
        self.buffered = 0  # body bytes this connection holds, counted in the door's budget
        self.events = 0  # what the control selector watches for
        self.stream: ResponseStream | None = None  # set by the pool thread before the response is queued


def _dispatch(key: selectors.SelectorKey, mask: int) -> None:
    """Run a ready selector key's callback; a bug on one socket must not take every call down
    with the loop."""
    try:
        key.data(mask)
    except Exception:
        logger.exception("front door: event handling failed for %r", key.fileobj)


def _remote(addr: Any) -> tuple[str, int]:
    return (str(addr[0]), int(addr[1])) if isinstance(addr, tuple) else (str(addr), 0)


class FrontDoor:
    """Owns the port: websockets on `ws_paths` in the loop thread, all else to `wsgi_app`."""

    def __init__(self, host: str, port: int, *, ws_paths: Iterable[str], accept: AcceptFn,
                 wsgi_app: Any = None, http_workers: int = 8, head_timeout_s: float = 10.0,
                 body_min_rate: int = 64 * 1024, max_body_bytes: int = 20 << 20,
                 max_buffered_bodies: int = 256 << 20, idle_timeout_s: float = 10.0,
                 limits: Limits | None = None, send_buffer_bytes: int | None = None,
                 backlog: int = 1024, timer: Timer | None = None, reuse_port: bool = False,
                 stream_max_buffered: int = 1 << 20, stream_stall_s: float = 30.0) -> None:
        self.ws_paths = frozenset(ws_paths)
        # Run on the loop thread; wake() makes the loop ask it again for its next deadline.
        self._timer = timer
        self._accept_fn = accept
        self.idle_timeout_s = idle_timeout_s
        self.head_timeout_s = head_timeout_s
        self.body_min_rate = body_min_rate
        self.max_body_bytes = max_body_bytes
        # All bodies being read or served at once: past this, a request is answered 503, so
        # many slow uploads cannot exhaust memory.
        self.max_buffered_bodies = max_buffered_bodies
        self._buffered_bodies = 0
        self.limits = limits or Limits()
        # A streamed response's client must take its bytes: at most this many wait, for at most this long.
        self.stream_max_buffered = stream_max_buffered
        self.stream_stall_s = stream_stall_s
        self.reader = Reader(_RECV_SIZE)  # websocket reads, on the loop thread
        # SO_SNDBUF for accepted sockets. Linux grows it to megabytes by default; a small one
        # keeps a stalled peer's backlog visible to us (buffered_bytes, max_backlog) instead
        # of hidden in the kernel.
        self.send_buffer_bytes = send_buffer_bytes
        self._listener = socket.create_server((host, port), backlog=backlog, reuse_port=reuse_port)
        self._listener.setblocking(False)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._pool = (WsgiPool(wsgi_app, (host, self.port), workers=http_workers, stream_limit=stream_max_buffered)
                      if wsgi_app is not None else None)
        self._selector = selectors.DefaultSelector()
        # The listener, HTTP connections and the wake-up socket (see the module docstring).
        self._control = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # Connections that need the loop (write watch, teardown), and HTTP connections whose
        # response is ready. deque.append/popleft are atomic, and _wake_sent keeps it to one
        # wake-up byte per loop iteration (see attention).
        self._inbox: deque[Connection] = deque()
        self._responses: deque[_HttpConn] = deque()
        self._streams_ready: deque[_HttpConn] = deque()  # a stream was written to, or ended
        self._wake_sent = False
        self._conns: dict[int, Connection] = {}
        # Guards removals from _conns together with the _closed_* totals, so stats() taken on
        # another thread never sees a connection counted twice or not at all. Not per message.
        self._stats_lock = threading.Lock()
        self._http: dict[int, _HttpConn] = {}
        self._stopping = threading.Event()
        self._refusing = False  # stop_accepting() was called: the listener is closed, connections stay
        # Out of descriptors: the listener is off the selector until then.
        self._accept_resume_at: float | None = None
        self._accept_failed_at = -1  # accept_failures when the current episode began; -1: none
        self._thread: threading.Thread | None = None
        self.now = time.monotonic()
        # Counters, written by the loop thread only (per-connection ones live on each Connection;
        # bytes are wire bytes, frame headers included).
        self.connections_accepted = 0
        self.accept_failures = 0  # accepts refused for want of descriptors or memory
        self.http_requests = 0  # complete requests handed to the app
        self.http_refused = 0  # requests answered by the door itself with an error
        self.http_timeouts = 0  # connections closed at a deadline before their request was in
        self.protocol_errors = 0
        self.upgrades_refused = 0
        self.streams_dropped = 0  # streamed responses closed because the client did not read
        self._closed_messages_in = 0
        self._closed_bytes_in = 0
        self._closed_messages_out = 0
        self._closed_bytes_out = 0

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FrontDoor:
        self._thread = threading.Thread(target=self._run, name=f"frontdoor-{self.port}", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> FrontDoor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, close every websocket with 1001, stop the HTTP pool, join."""
        self._stopping.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.error("front door loop did not stop within %.1f s", timeout_s)
        else:
            self._close_resources()
        if self._pool is not None:
            self._pool.stop()

    @property
    def connections(self) -> list[Connection]:
        return list(self._conns.values())

    def stats(self) -> dict[str, int]:
        with self._stats_lock:
            conns = list(self._conns.values())
            closed = (self._closed_messages_in, self._closed_bytes_in,
                      self._closed_messages_out, self._closed_bytes_out)
        return {
            "websockets": len(conns),
            "http_connections": len(self._http),
            "connections_accepted": self.connections_accepted,
            "accept_failures": self.accept_failures,
            "http_requests": self.http_requests,
            "http_refused": self.http_refused,
            "http_timeouts": self.http_timeouts,
            "http_streams": sum(1 for hc in list(self._http.values()) if hc.state == _STREAMING),
            "streams_dropped": self.streams_dropped,
            "upgrades_refused": self.upgrades_refused,
            "protocol_errors": self.protocol_errors,
            "messages_in": closed[0] + sum(c.messages_in for c in conns),
            "bytes_in": closed[1] + sum(c.bytes_in for c in conns),
            "messages_out": closed[2] + sum(c.messages_out for c in conns),
            "bytes_out": closed[3] + sum(c.bytes_out for c in conns),
        }

    # -- cross-thread signalling ---------------------------------------------------------------

    def stop_accepting(self) -> None:
        """Close the listener (any thread), keeping every open connection: new connections are
        refused, or with SO_REUSEPORT go to the other processes on the port. A node draining
        for a deploy stops taking new calls this way while its calls move away."""
        self._refusing = True
        self.wake()

    def wake(self) -> None:
        """Make the loop look at its inbox and its timer again soon (any thread)."""
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    def attention(self, conn: Connection) -> None:
        """Ask the loop to look at `conn` (write watch or teardown). Callable from any thread."""
        self._inbox.append(conn)
        # The loop clears _wake_sent after draining the wake socket and before emptying the
        # inbox, so an append it may miss is always followed by a fresh wake-up byte.
        if not self._wake_sent:
            self._wake_sent = True
            self.wake()

    def _drain_inbox(self, _events: int = 0) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass
        self._wake_sent = False
        if self._refusing and self._listener.fileno() >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._control.unregister(self._listener)
            self._accept_resume_at = None
            self._listener.close()
        inbox = self._inbox
        while inbox:
            conn = inbox.popleft()
            if conn.closed:
                self.teardown(conn)
            elif conn.wants_write:
                self.watch_write(conn)
        responses = self._responses
        while responses:
            self._start_response(responses.popleft())
        ready = self._streams_ready
        while ready:
            self._pump_stream(ready.popleft())

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        sel = self._selector
        self._control.register(self._listener, READ, self._on_acceptable)
        self._control.register(self._wake_r, READ, self._drain_inbox)
        sel.register(self._control, READ, self._poll_control)
        next_sweep = time.monotonic() + _SWEEP_S
        timer = self._timer
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                timeout = max(0.0, next_sweep - now)
                if self._accept_resume_at is not None:
                    timeout = min(timeout, max(0.0, self._accept_resume_at - now))
                if timer is not None:
                    due = timer.next_deadline(now)
                    if due is not None:
                        timeout = min(timeout, max(0.0, due - now))
                events = sel.select(timeout)
                self.now = now = time.monotonic()
                # Before the events, and between them once due: our frames have a deadline,
                # inbound ones can wait a moment (hundreds may be ready at once).
                due = self._run_timer(now)
                for key, mask in events:
                    _dispatch(key, mask)
                    if due is not None:
                        t = time.monotonic()
                        if t >= due:
                            self.now = now = t
                            due = self._run_timer(now)
                if now >= next_sweep:
                    next_sweep = now + _SWEEP_S
                    self._sweep(now)
                if self._accept_resume_at is not None and now >= self._accept_resume_at:
                    self._accept_resume_at = None
                    self._control.register(self._listener, READ, self._on_acceptable)
            self._shutdown()
        except Exception:
            logger.exception("front door loop crashed")
            raise
        finally:
            self._close_resources()

    def _run_timer(self, now: float) -> float | None:
        """Run what the timer has due and, if it ran, what arrived on the control selector
        meanwhile; return when the timer is due next."""
        timer = self._timer
        if timer is None:
            return None
        try:
            if timer.run_due(now):
                self._poll_control()  # first: a call it starts may wake an idle clock
            return timer.next_deadline(now)
        except Exception:
            logger.exception("front door: timer failed")
            return None

    def _poll_control(self, _events: int = 0) -> None:
        """Accept, read, route and answer whatever HTTP is ready now, and empty the inbox."""
        for key, mask in self._control.select(0):
            _dispatch(key, mask)

    def _close_resources(self) -> None:
        for hc in list(self._http.values()):
            self._close_http(hc)
        self._selector.close()
        self._control.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _sweep(self, now: float) -> None:
        """Once a second: every deadline (see the module docstring)."""
        idle_before = now - self.idle_timeout_s
        for conn in list(self._conns.values()):
            code = conn.expired(now, idle_before)
            if code is not None:
                if code:
                    logger.info("websocket %s %s: no frame for %.0f s, closing",
                                conn.remote_addr, conn.path, self.idle_timeout_s)
                conn.abort(code)
                self.teardown(conn)
        for hc in list(self._http.values()):
            if hc.deadline < now:
                self._expire_http(hc)

    # -- websockets: the Loop protocol of frontdoor.websocket -----------------------------------

    def watch_write(self, conn: Connection) -> None:
        if conn.needs_close_deadline():
            conn.close_deadline = self.now + self.limits.close_timeout_s
        if not conn.watching and self._conns.get(conn.fd) is conn:
            conn.watching = True
            self._selector.modify(conn.sock, READ | WRITE, conn.on_event)

    def unwatch_write(self, conn: Connection) -> None:
        conn.watching = False
        self._selector.modify(conn.sock, READ, conn.on_event)

    def protocol_error(self) -> None:
        self.protocol_errors += 1

    def teardown(self, conn: Connection) -> None:
        registered = self._conns.get(conn.fd) is conn
        if registered:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
        handler = conn.release()
        if handler is None:
            return
        with self._stats_lock:
            if registered:
                del self._conns[conn.fd]
            self._closed_messages_in += conn.messages_in
            self._closed_bytes_in += conn.bytes_in
            self._closed_messages_out += conn.messages_out
            self._closed_bytes_out += conn.bytes_out
        try:
            handler.on_close(conn, conn.close_code)
        except Exception:
            logger.exception("websocket %s %s: close handler failed", conn.remote_addr, conn.path)

    def _shutdown(self) -> None:
        """Runs in the loop thread on stop: 1001 to everyone, a bounded wait for the echoes."""
        with contextlib.suppress(KeyError, ValueError):  # KeyError: accepting was paused
            self._control.unregister(self._listener)
        self._listener.close()
        for conn in list(self._conns.values()):
            conn.close(wire.CloseCode.GOING_AWAY, "server shutting down")
        deadline = time.monotonic() + self.limits.close_timeout_s
        while self._conns:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, mask in self._selector.select(min(remaining, 0.1)):
                key.data(mask)  # the connections, and _poll_control: only the inbox is left on it
            self.now = time.monotonic()
        for conn in list(self._conns.values()):
            self.teardown(conn)

    # -- accepting -----------------------------------------------------------------------------

    def _on_acceptable(self, _events: int) -> None:
        # Accept a batch per wake-up: connection storms arrive together.
        for _ in range(64):
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                if self._accept_failed_at >= 0:  # the backlog is drained: the episode is over
                    logger.warning("accepting connections again, after %d failed tries",
                                   self.accept_failures - self._accept_failed_at)
                    self._accept_failed_at = -1
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # The listener stays readable, so keep it off the selector for a moment
                    # instead of spinning on it; the connections waiting meanwhile stay in the
                    # kernel's backlog. Logged once per episode, not once per try.
                    if self._accept_failed_at < 0:
                        self._accept_failed_at = self.accept_failures
                        logger.error("accept failed, trying again every %.1f s until it works: %s",
                                     _ACCEPT_RETRY_S, exc)
                    self.accept_failures += 1
                    self._control.unregister(self._listener)
                    self._accept_resume_at = self.now + _ACCEPT_RETRY_S
                    return
                logger.debug("accept failed: %s", exc)  # e.g. a client reset before we got to it
                continue
            self.connections_accepted += 1
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.send_buffer_bytes:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer_bytes)
            hc = _HttpConn(sock, addr, RequestReader(max_body_bytes=self.max_body_bytes),
                           self.now + self.head_timeout_s)
            self._http[sock.fileno()] = hc
            self._watch_http(hc, READ)
            # A busy loop accepts late, and the request is usually in by then: read it now.
            try:
                self._on_http(hc, READ)
            except Exception:  # this connection only; the rest of the batch is still accepted
                logger.exception("front door: reading a new connection from %s failed", addr)
                self._close_http(hc)

    # -- HTTP connections ----------------------------------------------------------------------

    def _watch_http(self, hc: _HttpConn, events: int) -> None:
        if events == hc.events:
            return
        if not hc.events:
            self._control.register(hc.sock, events, lambda ev, h=hc: self._on_http(h, ev))
        elif not events:
            self._control.unregister(hc.sock)
        else:
            self._control.modify(hc.sock, events, lambda ev, h=hc: self._on_http(h, ev))
        hc.events = events

    def _on_http(self, hc: _HttpConn, events: int) -> None:
        if hc.state in (_WRITING, _STREAMING) and events & WRITE:
            self._write_response(hc)
        if events & READ and self._http.get(hc.sock.fileno()) is hc:
            if hc.state == _READING:
                self._read_request(hc)
            elif hc.state == _LINGERING:
                self._drain_linger(hc)
            elif hc.state == _STREAMING:
                self._read_streaming(hc)

    def _read_request(self, hc: _HttpConn) -> None:
        try:
            data = hc.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # gone before its request was in: nobody to answer
            self._close_http(hc)
            return
        reader = hc.reader
        had_head = reader.head is not None
        try:
            request = reader.feed(data)
            self._count_body(hc, reader.body_bytes if request is None else len(request.body))
        except HttpError as exc:
            self._refuse(hc, exc)
            return
        if not had_head and reader.head is not None:
            head = reader.head
            # The body gets its own deadline: a grace period plus its size at a minimum rate.
            expected = int(head.header("content-length") or 0) if request is None else 0
            if head.header("transfer-encoding") is not None and request is None:
                expected = self.max_body_bytes
            hc.deadline = self.now + self.head_timeout_s + expected / self.body_min_rate
            if head.expect_continue and request is None and not hc.continued:
                hc.continued = True
                with contextlib.suppress(OSError):
                    hc.sock.send(CONTINUE)  # a few bytes to a fresh socket: the kernel takes them
        if request is not None:
            self._route(hc, request)

    def _count_body(self, hc: _HttpConn, size: int) -> None:
        self._buffered_bodies += size - hc.buffered
        hc.buffered = size
        if self._buffered_bodies > self.max_buffered_bodies:
            raise HttpError(503, "server_busy", "Too many request bodies are in flight; try again shortly.")

    def _route(self, hc: _HttpConn, request: Request) -> None:
        if request.path in self.ws_paths:
            self._upgrade(hc, request)
            return
        if self._pool is None:
            self._refuse(hc, HttpError(404, "not_found", "No such route."))
            return
        self.http_requests += 1
        hc.state = _RUNNING
        hc.deadline = float("inf")  # the app's own time is bounded by the app
        self._watch_http(hc, 0)

        def done(response: bytes, stream: ResponseStream | None, hc: _HttpConn = hc) -> None:  # on a pool thread
            hc.response += response
            hc.stream = stream
            self._responses.append(hc)
            self.wake()

        self._pool.submit(request, _remote(hc.addr), done)

    def _upgrade(self, hc: _HttpConn, request: Request) -> None:
        remote = _remote(hc.addr)[0]
        try:
            key = wire.handshake_key(request)
            handler = self._accept_fn(request, remote)
        except HttpError as exc:
            self.upgrades_refused += 1
            logger.info("websocket upgrade from %s refused (%d): %s", remote, exc.status, exc.message)
            self._refuse(hc, exc)
            return
        except Exception:
            logger.exception("websocket accept for %s %s failed", remote, request.path)
            self._refuse(hc, HttpError(500, "internal_error", "The server hit an unexpected error; it is logged."))
            return
        self._watch_http(hc, 0)
        self._forget_http(hc)
        headers = {name: request.header(name) or "" for name, _ in request.headers}
        conn = Connection(self, hc.sock, path=request.path, query=request.query, headers=headers,
                          remote_addr=remote, handler=handler)
        conn.last_rx = self.now
        with self._stats_lock:
            self._conns[conn.fd] = conn
        self._selector.register(conn.sock, READ, conn.on_event)
        conn.start(wire.switching_protocols(key), hc.reader.upgrade_rest)

    def _refuse(self, hc: _HttpConn, exc: HttpError) -> None:
        """Answer with the error and close; the door's own answer, the app never sees it."""
        self.http_refused += 1
        method, path = hc.reader.line or ("-", "-")  # refused before its request line was read: "-"
        access_logger.info("%s %s %d refused by the front door", method, printable_path(path), exc.status)
        extra = wire.UPGRADE_REQUIRED if exc.status == 426 else ()
        hc.response += exc.response(extra)
        self._start_response(hc)

    def _start_response(self, hc: _HttpConn) -> None:
        if self._http.get(hc.sock.fileno()) is not hc:
            return  # closed meanwhile (stop)
        if hc.stream is not None:
            hc.state = _STREAMING
            hc.deadline = float("inf")
            hc.stream.attach(lambda: self._stream_written(hc))
            self._pump_stream(hc)  # what the app wrote before the head went out
            return
        hc.state = _WRITING
        # The response's own deadline: the same grace and minimum rate as a body.
        hc.deadline = self.now + self.head_timeout_s + len(hc.response) / self.body_min_rate
        self._write_response(hc)

    # -- streamed responses ----------------------------------------------------------------------

    def _stream_written(self, hc: _HttpConn) -> None:
        """The app wrote to (or ended) hc's stream; any thread."""
        self._streams_ready.append(hc)
        self.wake()

    def _pump_stream(self, hc: _HttpConn) -> None:
        stream = hc.stream
        if stream is None or self._http.get(hc.sock.fileno()) is not hc or hc.state != _STREAMING:
            return
        data, ended = stream.take()
        hc.response += data
        if stream.closed or len(hc.response) > self.stream_max_buffered:
            self._drop_stream(hc, f"more than {self.stream_max_buffered} bytes unread")
            return
        if ended and not hc.response:
            hc.state = _WRITING  # nothing left: shut and linger as any response
        self._write_response(hc)

    def _read_streaming(self, hc: _HttpConn) -> None:
        """A streaming client sends nothing more: reading tells us when it has gone."""
        try:
            while hc.sock.recv(_RECV_SIZE):
                pass  # a client has nothing to say on a stream; ignored
            self._close_http(hc)  # EOF: gone
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_http(hc)

    def _drop_stream(self, hc: _HttpConn, why: str) -> None:
        self.streams_dropped += 1
        logger.info("streamed response to %s dropped: %s", _remote(hc.addr)[0], why)
        self._close_http(hc)

    def _write_response(self, hc: _HttpConn) -> None:
        try:
            sent = hc.sock.send(hc.response)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close_http(hc)
            return
        del hc.response[:sent]
        if hc.state == _STREAMING:
            if hc.response:  # the client is behind: it has stream_stall_s to take some of it
                if sent or hc.deadline == float("inf"):
                    hc.deadline = self.now + self.stream_stall_s
                self._watch_http(hc, READ | WRITE)
                return
            hc.deadline = float("inf")
            assert hc.stream is not None
            data, ended = hc.stream.take()
            if data:  # written since the last pump
                hc.response += data
                self._write_response(hc)
                return
            if not ended:
                self._watch_http(hc, READ)
                return
        elif hc.response:
            self._watch_http(hc, WRITE)
            return
        # All out: shut our side, then drain what the client still sends until it closes, so
        # unread input does not turn our close into a reset that destroys the response.
        with contextlib.suppress(OSError):
            hc.sock.shutdown(socket.SHUT_WR)
        hc.state = _LINGERING
        hc.deadline = self.now + _LINGER_S
        self._watch_http(hc, READ)
        self._drain_linger(hc)

    def _drain_linger(self, hc: _HttpConn) -> None:
        try:
            while hc.sock.recv(_RECV_SIZE):
                pass
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self._close_http(hc)

    def _expire_http(self, hc: _HttpConn) -> None:
        if hc.state == _STREAMING:
            self._drop_stream(hc, f"bytes left unread for {self.stream_stall_s:g} s")
            return
        if hc.state == _READING:
            self.http_timeouts += 1
            logger.info("http connection from %s: request not in within its deadline, closing",
                        _remote(hc.addr)[0])
            # Best effort: a client that is still reading learns why.
            with contextlib.suppress(OSError):
                hc.sock.send(error_response(408, "request_timeout", "The request took too long to arrive."))
        self._close_http(hc)

    def _forget_http(self, hc: _HttpConn) -> None:
        self._http.pop(hc.sock.fileno(), None)
        self._buffered_bodies -= hc.buffered
        hc.buffered = 0

    def _close_http(self, hc: _HttpConn) -> None:
        if self._http.get(hc.sock.fileno()) is not hc:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._watch_http(hc, 0)
        self._forget_http(hc)
        if hc.stream is not None:
            hc.stream.detach()
        hc.sock.close()
