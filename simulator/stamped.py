"""A plain TCP connection as an asyncio transport whose reads carry the kernel's receive time.

When a frame reached the simulator is the measure of the app's timing (inter-arrival gaps,
underruns, inject-to-audio). Stamped on the event loop when it gets round to reading, it would
include the loop's own lag: with hundreds of calls on one loop, up to tens of milliseconds.
So the socket asks the kernel to stamp each packet as it arrives (SO_TIMESTAMPNS; on loopback
that is the moment the app's `send` ran), and every read hands the stamp of its newest packet
to the protocol along with the bytes. Bytes that came in several packets but are read at once
all get the newest stamp: later than the truth, never earlier.

Where the kernel cannot stamp (not Linux), reads are stamped with time.monotonic() on arrival
in the loop, as any transport would. TLS connections use the loop's own transport (stamped the
same way), since their records cannot be matched to packets.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

logger = logging.getLogger(__name__)

__all__ = ["StampedProtocol", "StampedTransport", "connect"]

# Linux's SO_TIMESTAMPNS (also the control message's type), which Python's socket module does
# not name; 35 on x86, ARM and most other architectures.
_SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux
_ANCILLARY_SIZE = socket.CMSG_SPACE(_TIMESPEC.size)
_RECV_SIZE = 65536


class StampedProtocol(Protocol):
    """What a StampedTransport drives: asyncio.Protocol's methods, data with its arrival time."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    def data_received_at(self, data: bytes, received_at: float) -> None:
        """`data` arrived at `received_at` (time.monotonic() clock; see the module docstring)."""

    def eof_received(self) -> bool | None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...


def _enable_stamps(sock: socket.socket) -> bool:
    if sys.platform != "linux" or struct.calcsize("P") != 8:  # _TIMESPEC is 64-bit Linux's
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


P = TypeVar("P", bound=StampedProtocol)


class StampedTransport(asyncio.Transport):
    """The transport of one connected, non-blocking TCP socket. Loop thread only.

    Writes go straight to the socket; what the kernel does not take is buffered and flushed
    when the socket is writable again. close() flushes first, abort() does not; either way
    connection_lost follows once, from the loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: StampedProtocol) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._wbuf = bytearray()
        self._closing = False  # close() or abort() was called, or the connection failed
        self._lost = False  # connection_lost is scheduled
        self._reading = True
        sock.setblocking(False)
        self.stamped = _enable_stamps(sock)
        protocol.connection_made(self)
        if self._reading:  # connection_made may have closed it already
            loop.add_reader(self._fd, self._on_readable)

    # ---- asyncio.Transport -----------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return  # like asyncio's transports: writes after close() go nowhere
        if self._wbuf:
            self._wbuf += data
            return
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._fatal(exc)
            return
        if sent < len(data):
            self._wbuf += memoryview(data)[sent:]
            self._loop.add_writer(self._fd, self._on_writable)

    def get_write_buffer_size(self) -> int:
        return len(self._wbuf)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self._wbuf:
            self._finish(None)

    def abort(self) -> None:
        self._closing = True
        self._finish(None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sock
        try:
            if name == "peername":
                return self._sock.getpeername()
            if name == "sockname":
                return self._sock.getsockname()
        except OSError:
            return default
        return default

    # ---- the loop's callbacks --------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            if self.stamped:
                data, ancillary, _flags, _addr = self._sock.recvmsg(_RECV_SIZE, _ANCILLARY_SIZE)
            else:
                data, ancillary = self._sock.recv(_RECV_SIZE), []
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        if data:
            if ancillary:  # the one control message asked for: the newest packet's wall-clock stamp
                sec, nsec = _TIMESPEC.unpack_from(ancillary[0][2])
                # Its age on the wall clock, taken from now on the monotonic one. The wall clock
                # is read first: a pause between the two reads makes the result later, not earlier.
                received_at = sec + nsec * 1e-9 - time.time() + time.monotonic()
            else:
                received_at = time.monotonic()
            try:
                self._protocol.data_received_at(data, received_at)
            except Exception as exc:
                self._protocol_failed(exc)
            return
        self._stop_reading()
        try:
            keep_open = self._protocol.eof_received()
        except Exception as exc:
            self._protocol_failed(exc)
            return
        if not keep_open:
            self.close()

    def _on_writable(self) -> None:
        try:
            sent = self._sock.send(self._wbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        del self._wbuf[:sent]
        if self._wbuf:
            return
        self._loop.remove_writer(self._fd)
        if self._closing:
            self._finish(None)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _fatal(self, exc: Exception) -> None:
        logger.debug("connection %d failed: %s", self._fd, exc)
        self._closing = True
        self._finish(exc)

    def _protocol_failed(self, exc: Exception) -> None:
        # As asyncio's transports do: a protocol that cannot take its input ends the connection.
        logger.exception("connection %d: the protocol failed on its input", self._fd)
        self._fatal(exc)

    def _finish(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._stop_reading()
        if self._wbuf:
            self._wbuf.clear()
            self._loop.remove_writer(self._fd)
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._sock.close()


async def connect(host: str, port: int, protocol_factory: Callable[[], P]) -> P:
    """Connect to host:port (each resolved address in turn) and run the protocol on it."""
    loop = asyncio.get_running_loop()
    error: OSError | None = None
    for family, kind, proto, _name, address in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        except BaseException:  # cancelled or timed out: no half-open socket stays behind
            sock.close()
            raise
        try:
            protocol = protocol_factory()
            StampedTransport(loop, sock, protocol)
        except BaseException:
            sock.close()
            raise
        return protocol
    assert error is not None  # getaddrinfo raises rather than return nothing
    raise error
