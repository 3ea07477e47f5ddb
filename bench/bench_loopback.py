"""The kernel's price of one small message over loopback TCP, with no Python framework in the way.

    .venv/bin/python bench/bench_loopback.py [--sockets 100,400] [--seconds 5]

Every media frame the server sends is one `send` on its own TCP connection; this measures what
that costs on this machine, the floor under bench_load. A receiver in a subprocess (pinned to
the first core) reads N sockets with one epoll loop and throws the bytes away; this process
(pinned to the second) writes one 280-byte message, the size of a media frame, on each socket
every 20 ms, as the media clock does. Printed per message:
  send user / send sys   this process's CPU, split into Python and kernel time
  recv                   the receiver's CPU (epoll, recv and its loop)
On loopback the sender's `send` also runs the receiver's side of TCP, so `send sys` is most of
what a message costs the machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import select
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.serving import ServerProcess, answer_cpu_requests

MESSAGE = b"x" * 280
FRAME_S = 0.020


def serve() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    poller = select.epoll()
    conns: dict[int, socket.socket] = {}

    def drain() -> None:
        poller.register(listener.fileno(), select.EPOLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == listener.fileno():
                    conn, _ = listener.accept()
                    conn.setblocking(False)
                    conns[conn.fileno()] = conn
                    poller.register(conn.fileno(), select.EPOLLIN)
                elif not conns[fd].recv(65536):
                    poller.unregister(fd)
                    conns.pop(fd).close()

    threading.Thread(target=drain, daemon=True).start()
    answer_cpu_requests(listener.getsockname()[1])


def run(count: int, seconds: float, pin: bool) -> tuple[float, float, float]:
    """(send user, send sys, recv) microseconds of CPU per message."""
    receiver = ServerProcess([__file__, "--serve"], 0 if pin else None)
    try:
        socks = []
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", receiver.port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(s)
        time.sleep(0.5)
        before, recv_before = resource.getrusage(resource.RUSAGE_SELF), receiver.cpu()
        start = time.monotonic()
        ticks = int(seconds / FRAME_S)
        for k in range(ticks):
            delay = start + k * FRAME_S - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for s in socks:
                s.send(MESSAGE)
        time.sleep(0.2)  # let the receiver read the last tick
        after, recv_after = resource.getrusage(resource.RUSAGE_SELF), receiver.cpu()
        for s in socks:
            s.close()
    finally:
        receiver.close()
    n = ticks * count / 1e6
    return ((after.ru_utime - before.ru_utime) / n, (after.ru_stime - before.ru_stime) / n,
            (sum(recv_after) - sum(recv_before)) / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", default="100,400", help="comma-separated socket counts")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    pin = len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, {1})
    print(f"loopback TCP, {len(MESSAGE)}-byte messages, one per socket every 20 ms; CPU microseconds per message")
    print(f"{'sockets':>7}  {'msg/s':>7}  {'send user':>9}  {'send sys':>8}  {'recv':>6}")
    for count in (int(c) for c in args.sockets.split(",")):
        user, system, recv = run(count, args.seconds, pin)
        print(f"{count:7d}  {count / FRAME_S:7.0f}  {user:9.1f}  {system:8.1f}  {recv:6.1f}")


if __name__ == "__main__":
    main()
