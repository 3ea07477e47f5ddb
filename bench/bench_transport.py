"""Per-message cost of the media websocket transport, printed as a plain-text table.

    .venv/bin/python bench/bench_transport.py [--calls 50,200] [--seconds 5]

The server runs in a subprocess (pinned to one core when there are two or more) in one of:
  frontdoor         FrontDoor; the handler replies from the loop thread
  frontdoor+pacer   FrontDoor; the loop stores each call's frame, one pacer thread
                    parses it and sends the reply (same JSON work, sent across threads)
  flask-sock        flask-sock / simple-websocket on werkzeug's threaded server, replying
                    from the socket's handler thread (a server thread + a reader thread each)
Every "call" is one loopback websocket from an asyncio client in this process that sends a
~300-byte Telnyx-like media JSON every 20 ms (calls staggered across the period) and reads the
~250-byte JSON the server sends back. The server reports its own CPU time (time.process_time,
all threads) over the measured window; cost is CPU per message, inbound and outbound counted
alike. The handler's own JSON work is measured separately and shown, so transport = total -
handler. Round trips are timed per message in echo modes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.serving import ServerProcess, answer_cpu_requests

FRAME_S = 0.020
WARMUP_S = 1.0
PAYLOAD = base64.b64encode(bytes(range(160))).decode()  # one 20 ms PCMU frame
MODES = ("frontdoor", "frontdoor+pacer", "flask-sock")


# -- the work every server does per message, whatever carries it -------------------------------


def reply_for(message: str | bytes) -> str:
    frame = json.loads(message)
    return json.dumps({"event": "media", "stream_id": frame["stream_id"], "seq": frame["sequence_number"],
                       "media": {"payload": frame["media"]["payload"]}}, separators=(",", ":"))


def inbound_frame(stream_id: str, seq: int) -> str:
    return json.dumps({"event": "media", "sequence_number": str(seq), "stream_id": stream_id,
                       "media": {"track": "inbound", "chunk": str(seq), "timestamp": str(seq * 20),
                                 "payload": PAYLOAD}}, separators=(",", ":"))


def handler_cost_us() -> float:
    """CPU of reply_for alone, per message (half a round trip's worth of JSON work)."""
    message = inbound_frame("0" * 36, 12345)
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(20000):
            reply_for(message)
        best = min(best, (time.process_time() - start) / 20000)
    return best * 1e6 / 2


# -- server side (subprocess) ------------------------------------------------------------------


def serve(mode: str) -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per websocket
    stop = threading.Event()
    stopper: Callable[[], None]
    if mode.startswith("frontdoor"):
        from frontdoor import Connection, FrontDoor

        pacer_mode = mode.endswith("+pacer")
        # Guards `conns` between the loop thread (accept/close) and the pacer thread.
        lock = threading.Lock()
        conns: dict[Connection, str] = {}

        class Echo:
            def on_message(self, conn: Connection, data: str | bytes) -> None:
                if pacer_mode:
                    with lock:
                        conns[conn] = data if isinstance(data, str) else data.decode()
                else:
                    conn.send_text(reply_for(data))

            def on_close(self, conn: Connection, code: int | None) -> None:
                with lock:
                    conns.pop(conn, None)

        door = FrontDoor("127.0.0.1", 0, ws_paths={"/stream"}, accept=lambda *_: Echo(), idle_timeout_s=30)
        door.start()
        port = door.port
        if pacer_mode:
            threading.Thread(target=pace, args=(lock, conns, stop), daemon=True).start()
        stopper = door.stop
    else:
        from flask import Flask
        from flask_sock import Sock
        from simple_websocket import ConnectionClosed
        from werkzeug.serving import make_server

        app = Flask(__name__)
        sock = Sock(app)

        @sock.route("/stream")
        def stream(ws: Any) -> None:
            try:
                while True:
                    ws.send(reply_for(ws.receive()))
            except (ConnectionClosed, OSError):  # the load client hung up at the end of a run
                pass

        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.port
        stopper = server.shutdown
    answer_cpu_requests(port)  # until the parent closes our stdin
    stop.set()
    stopper()


def pace(lock: threading.Lock, conns: dict[Any, str], stop: threading.Event) -> None:
    """One thread for every call: a reply to each call's latest inbound frame every 20 ms."""
    deadline = time.monotonic()
    while not stop.is_set():
        deadline += FRAME_S
        with lock:
            items = list(conns.items())
        for conn, last in items:
            conn.send_text(reply_for(last))
        delay = deadline - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        else:
            deadline = time.monotonic()


# -- load side (this process) -------------------------------------------------------------------


class Call(asyncio.Protocol):
    """A lean masked-frame websocket client: no library between the bench and the socket."""

    def __init__(self, index: int, ready: asyncio.Future[None], stats: Stats) -> None:
        self.stream_id = f"{index:036d}"
        self.ready = ready
        self.stats = stats
        self.mask = os.urandom(4)
        self.buf = b""
        self.upgraded = False
        self.sent_at: deque[float] = deque()
        self.seq = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        if not self.upgraded:
            head, sep, buf = buf.partition(b"\r\n\r\n")
            if not sep:
                self.buf = head
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self.ready.set_exception(RuntimeError(head.decode(errors="replace")))
                return
            self.upgraded = True
            self.ready.set_result(None)
        pos, n = 0, len(buf)
        stats = self.stats
        while n - pos >= 2:
            length = buf[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = struct.unpack_from("!H", buf, pos + 2)[0]
                start = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                start = pos + 10
            if start + length > n:
                break
            if buf[pos] & 0x0F == 0x1:
                now = time.perf_counter()
                stats.received += 1
                if self.sent_at and stats.echo:
                    stats.rtts.append(now - self.sent_at.popleft())
            pos = start + length
        self.buf = buf[pos:]

    def send_one(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        payload = inbound_frame(self.stream_id, self.seq).encode()
        self.seq += 1
        n = len(payload)
        masked = (int.from_bytes(payload, "little")
                  ^ int.from_bytes((self.mask * (n // 4 + 1))[:n], "little")).to_bytes(n, "little")
        head = bytes((0x81, 0x80 | n)) if n < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, n)
        self.sent_at.append(time.perf_counter())
        self.transport.write(head + self.mask + masked)
        self.stats.sent += 1


class Stats:
    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.sent = 0
        self.received = 0
        self.rtts: list[float] = []

    def reset(self) -> None:
        self.sent = self.received = 0
        self.rtts = []


async def drive(port: int, calls: int, seconds: float, echo: bool, server: ServerProcess) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    stats = Stats(echo)
    protocols: list[Call] = []
    for i in range(calls):
        ready: asyncio.Future[None] = loop.create_future()
        _, proto = await loop.create_connection(partial(Call, i, ready, stats), "127.0.0.1", port)
        await asyncio.wait_for(ready, 10)
        protocols.append(proto)

    stopping = False

    def tick(call: Call, when: float) -> None:
        if stopping:
            return
        call.send_one()
        loop.call_at(when + FRAME_S, tick, call, when + FRAME_S)

    t0 = loop.time() + 0.05
    for i, call in enumerate(protocols):  # calls are not in step with each other
        first = t0 + FRAME_S * i / calls
        loop.call_at(first, tick, call, first)
    await asyncio.sleep(WARMUP_S)
    stats.reset()
    cpu0, client0, wall0 = server.cpu(), time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu1, client1, wall1 = server.cpu(), time.process_time(), time.perf_counter()
    sent, received, rtts = stats.sent, stats.received, sorted(stats.rtts)
    stopping = True
    for call in protocols:
        assert call.transport is not None
        call.transport.close()
    await asyncio.sleep(0.2)
    messages = sent + received
    wall = wall1 - wall0
    cpu = (cpu1[0] - cpu0[0]) + (cpu1[1] - cpu0[1])
    return {
        "cpu_per_1000": cpu / messages * 1000 if messages else float("nan"),
        "sys_share": (cpu1[1] - cpu0[1]) / cpu if cpu else float("nan"),
        "server_util": cpu / wall,
        "client_util": (client1 - client0) / wall,
        "in_rate": sent / wall,
        "out_rate": received / wall,
        "p50": rtts[len(rtts) // 2] * 1000 if rtts else float("nan"),
        "p99": rtts[int(len(rtts) * 0.99)] * 1000 if rtts else float("nan"),
        "max": rtts[-1] * 1000 if rtts else float("nan"),
    }


def run(mode: str, calls: int, seconds: float) -> dict[str, float]:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = len(cpus) >= 2
    server = ServerProcess([__file__, "--serve", mode], cpus[-1] if pin else None)
    try:
        if pin:
            os.sched_setaffinity(0, set(cpus[:-1]))
        return asyncio.run(asyncio.wait_for(drive(server.port, calls, seconds, "pacer" not in mode, server),
                                            seconds + 30))
    finally:
        server.close()
        if pin:
            os.sched_setaffinity(0, set(cpus))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", default="50,200", help="comma-separated connection counts")
    parser.add_argument("--target", type=int, default=500,
                        help="extra front-door-only call count (flask-sock collapses well before it); 0 skips")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per run")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    handler_us = handler_cost_us()
    print(f"handler JSON work (parse + reply, per message): {handler_us:.1f} us CPU")
    print(f"{'calls':>5} {'server':<17} {'msg/s in':>9} {'out':>7} {'CPU s/1000':>10} {'us/msg':>7} "
          f"{'transport':>9} {'sys':>4} {'srv CPU':>7} {'cli CPU':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'max ms':>7} {'ratio':>6}")
    plan = [(int(c), args.modes.split(",")) for c in args.calls.split(",")]
    if args.target:
        plan.append((args.target, [m for m in args.modes.split(",") if m != "flask-sock"]))
    for calls, modes in plan:
        base: float | None = None
        results = []
        for mode in modes:
            r = run(mode, calls, args.seconds)
            results.append((mode, r))
            if mode == "flask-sock":
                base = r["cpu_per_1000"]
        for mode, r in results:
            ratio = f"{r['cpu_per_1000'] / base:.2f}" if base else "-"
            per_msg = r["cpu_per_1000"] * 1000
            print(f"{calls:>5} {mode:<17} {r['in_rate']:>9.0f} {r['out_rate']:>7.0f} {r['cpu_per_1000']:>10.4f} "
                  f"{per_msg:>7.1f} {per_msg - handler_us:>9.1f} "
                  f"{r['sys_share'] * 100:>3.0f}% {r['server_util'] * 100:>6.0f}% "
                  f"{r['client_util'] * 100:>6.0f}% {r['p50']:>7.2f} {r['p99']:>7.2f} {r['max']:>7.1f} {ratio:>6}")
    print("CPU s/1000 = server CPU seconds per 1000 messages (in + out); us/msg the same per message;")
    print("transport = us/msg minus the handler's JSON work; sys = kernel share of the server's CPU;")
    print("srv/cli CPU = share of one core used by the server / the load client;")
    print("ratio = CPU per message vs flask-sock at the same call count;")
    print("round trips only in echo modes (the pacer mode replies on its own clock).")


if __name__ == "__main__":
    main()
