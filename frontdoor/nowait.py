"""A non-blocking send that keeps the GIL, for the loop's hundreds of sends per media tick.

`socket.send` releases the GIL around the system call, as every socket method does. When any
other thread is runnable (the WSGI pool running a burst of injections), the loop then waits up
to a switch interval to get the GIL back after each send: with 500 calls, a tick's 500 sends
can take hundreds of milliseconds and every call's frames arrive late. A send on a
non-blocking socket never waits, so holding the GIL across it costs nothing; libc's send()
called through ctypes.PyDLL does exactly that.

Measured (500 sends of 300 bytes to socketpairs, worst of 20 ticks, with CPU-bound threads
beside the sender): socket.send 18 ms with 1 other thread, 34–534 ms with 4–16; this send
1–4 ms in each case, and about 1 us more per send when nothing else runs (2.2 against 1.1 us).
Elsewhere than Linux, or without libc, it falls back to socket.send.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import sys
from collections.abc import Callable

_FLAGS = getattr(socket, "MSG_DONTWAIT", 0) | getattr(socket, "MSG_NOSIGNAL", 0)
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


def _load() -> Callable[[int, bytes, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        send = ctypes.PyDLL(name, use_errno=True).send  # PyDLL: the GIL is held during the call
    except (OSError, AttributeError):
        return None
    send.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
    send.restype = ctypes.c_ssize_t
    return send


_libc_send = _load()


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
