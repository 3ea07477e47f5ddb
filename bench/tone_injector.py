"""bench_load's tone injections, sent from a process of their own.

    python bench/tone_injector.py PLAN_JSON > sent.json   # then the start time on stdin

In the load generator's process, the thread sending the tones shares one GIL with the
simulator's media loop, which at hundreds of calls keeps it almost all the time: the request
would wait there for milliseconds to tens of milliseconds before it even left, and the
inject-to-first-audio latency measured from "just before the request" would be mostly that
wait. Here no other thread holds a GIL it needs (in a burst, only the other clients' threads,
which spend their time waiting on their sockets). It still shares a core with the generator,
so it may be preempted between its stamp and the write, which can only make a latency longer.

The plan (JSON, the one argument) has a "mode":

- "every" (the default): {"url", "calls": [call_control_id, ...], "seconds", "interval_s",
  "quiet_s", "seed", "body"}. From its start, every interval one call is picked at random
  among those that got no tone in the last quiet_s, and `body` is POSTed to its
  /streams/<id>/inject. With "urls" ([url, ...]) instead of "url", each request goes to one
  of them picked at random (several nodes of one server).
- "burst": {"url", "calls", "clients", "seed", "body"}. `clients` threads, each with an HTTP
  connection of its own (opened before the start), POST `body` once to every call, in an order
  shuffled by `seed`, all from the start on: each client takes the next call as soon as its
  previous request is answered.

Once started up, the injector reads its start time (time.monotonic()) as a line on stdin.
Printed (JSON on stdout): [[call_control_id, time.monotonic() just before the request, HTTP
status or null, time.monotonic() when the answer was read], ...], in the order sent.
CLOCK_MONOTONIC is the machine's, so the stamps compare with the simulator's.
"""

from __future__ import annotations

import http.client
import json
import random
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

HEADERS = {"Content-Type": "application/json"}
Sent = list[tuple[str, float, int | None, float]]


def connect(url: str) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    conn.connect()
    return conn


def post(conn: http.client.HTTPConnection, call: str, body: bytes) -> tuple[str, float, int | None, float]:
    """POST `body` to the call's inject endpoint; returns the call, the time just before sending,
    the status (None if the request failed) and the time the answer was read."""
    t_req = time.monotonic()
    status: int | None = None
    try:
        conn.request("POST", f"/streams/{call}/inject", body, HEADERS)
        response = conn.getresponse()
        response.read()
        status = response.status
    except (OSError, http.client.HTTPException):
        conn.close()  # reconnects on the next request
    return call, t_req, status, time.monotonic()


def wait_start() -> float:
    """Block until the start time arrives on stdin, then until that time; returns it."""
    start = float(sys.stdin.readline())
    delay = start - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    return start


def every(plan: dict[str, Any]) -> Sent:
    calls: list[str] = plan["calls"]
    interval, quiet, seconds = plan["interval_s"], plan["quiet_s"], plan["seconds"]
    rng = random.Random(plan["seed"])
    body = json.dumps(plan["body"]).encode()
    conns = [connect(url) for url in plan.get("urls") or [plan["url"]]]
    last = dict.fromkeys(calls, -1e9)
    sent: Sent = []
    start = wait_start()
    for k in range(int(seconds / interval)):
        due = start + k * interval
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        elif now - due > interval:
            continue  # behind schedule (slow answers): skip rather than burst
        now = time.monotonic()
        eligible = [c for c in calls if now - last[c] >= quiet]
        if not eligible:
            continue
        call = rng.choice(eligible)
        last[call] = now
        sent.append(post(rng.choice(conns) if len(conns) > 1 else conns[0], call, body))
    for conn in conns:
        conn.close()
    return sent


def burst(plan: dict[str, Any]) -> Sent:
    calls: list[str] = list(plan["calls"])
    random.Random(plan["seed"]).shuffle(calls)
    body = json.dumps(plan["body"]).encode()
    conns = [connect(plan["url"]) for _ in range(int(plan["clients"]))]
    queue = iter(calls)
    lock = threading.Lock()
    go = threading.Event()
    sent: Sent = []

    def client(conn: http.client.HTTPConnection) -> None:
        go.wait()
        while True:
            with lock:
                call = next(queue, None)
            if call is None:
                break
            result = post(conn, call, body)
            with lock:
                sent.append(result)
        conn.close()

    threads = [threading.Thread(target=client, args=(c,), name=f"burst-{i}") for i, c in enumerate(conns)]
    for t in threads:
        t.start()
    wait_start()
    go.set()
    for t in threads:
        t.join()
    sent.sort(key=lambda s: s[1])
    return sent


def main() -> None:
    plan = json.loads(sys.argv[1])
    mode = plan.get("mode", "every")
    if mode not in ("every", "burst"):
        raise SystemExit(f"unknown mode {mode!r}")
    json.dump(burst(plan) if mode == "burst" else every(plan), sys.stdout)


if __name__ == "__main__":
    main()
