"""Non-blocking send and recv that keep the GIL, for the loop's hundreds of each per media tick.

`socket.send` releases the GIL around the system call, as every socket method does. When any
other thread is runnable (the WSGI pool running a burst of injections), the loop then waits up
to a switch interval to get the GIL back after each send: with 500 calls, a tick's 500 sends
can take hundreds of milliseconds and every call's frames arrive late. A send on a
non-blocking socket never waits, so holding the GIL across it costs nothing; libc's send()
called through ctypes.PyDLL does exactly that.

Measured (500 sends of 300 bytes to socketpairs, worst of 20 ticks, with CPU-bound threads
beside the sender): socket.send 18 ms with 1 other thread, 34–534 ms with 4–16; this send
1–4 ms in each case, and about 1 us more per send when nothing else runs (2.2 against 1.1 us).
Reads are the same: a tick is followed by hundreds of caller frames to read. Elsewhere than
Linux, or without libc, both fall back to the socket methods.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import sys
from typing import Any

_FLAGS = getattr(socket, "MSG_DONTWAIT", 0) | getattr(socket, "MSG_NOSIGNAL", 0)
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


def _load() -> tuple[Any, Any] | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.PyDLL(name, use_errno=True)  # PyDLL: the GIL is held during each call
        send, recv = libc.send, libc.recv
    except (OSError, AttributeError):
        return None
    send.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
    recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    send.restype = recv.restype = ctypes.c_ssize_t
    return send, recv


_libc = _load()
_libc_send, _libc_recv = _libc if _libc is not None else (None, None)


def send_nowait(sock: socket.socket, data: bytes) -> int:
    """Send what the kernel takes now, without blocking: bytes sent (0 when its buffer is full).
    Raises OSError when the connection is broken."""
    if _libc_send is None:
        try:
            return sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
    sent = _libc_send(sock.fileno(), data, len(data), _FLAGS)
    if sent >= 0:
        return sent
    code = ctypes.get_errno()
    if code in _AGAIN:
        return 0
    raise OSError(code, os.strerror(code))


class Reader:
    """recv for one thread (the loop): reads into a buffer of its own, returns a copy."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._buf = ctypes.create_string_buffer(size)

    def recv(self, sock: socket.socket) -> bytes | None:
        """Up to `size` bytes; b"" at the end of the stream, None when nothing is there now.
        Raises OSError when the connection is broken."""
        if _libc_recv is None:
            try:
                return sock.recv(self.size)
            except (BlockingIOError, InterruptedError):
                return None
        got = _libc_recv(sock.fileno(), self._buf, self.size, _FLAGS)
        if got >= 0:
            return ctypes.string_at(self._buf, got)
        code = ctypes.get_errno()
        if code in _AGAIN:
            return None
        raise OSError(code, os.strerror(code))
