"""bench_load's tone injections, sent from a process of their own.

    python bench/tone_injector.py PLAN_JSON > sent.json   # then the start time on stdin

In the load generator's process, the thread sending the tones shares one GIL with the
simulator's media loop, which at hundreds of calls keeps it almost all the time: the request
would wait there for milliseconds to tens of milliseconds before it even left, and the
inject-to-first-audio latency measured from "just before the request" would be mostly that
wait. Here no other thread holds a GIL it needs. It still shares a core with the generator, so
it may be preempted between its stamp and the write, which can only make a latency longer.

The plan (JSON, the one argument): {"url", "calls": [call_control_id, ...], "seconds",
"interval_s", "quiet_s", "seed", "body"}. Once started up, the injector reads its start time
(time.monotonic()) as a line on stdin; from then on, every interval one call is picked at
random among those that got no tone in the last quiet_s, and `body` is POSTed to its
/streams/<id>/inject. Printed (JSON on stdout): [[call_control_id, time.monotonic() before the
request, HTTP status or null], ...]. CLOCK_MONOTONIC is the machine's, so the stamps compare
with the simulator's.
"""

from __future__ import annotations

import http.client
import json
import random
import sys
import time
from typing import Any
from urllib.parse import urlsplit


def run(plan: dict[str, Any]) -> list[tuple[str, float, int | None]]:
    url = urlsplit(plan["url"])
    calls: list[str] = plan["calls"]
    interval, quiet, seconds = plan["interval_s"], plan["quiet_s"], plan["seconds"]
    rng = random.Random(plan["seed"])
    body = json.dumps(plan["body"]).encode()
    headers = {"Content-Type": "application/json"}
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    last = dict.fromkeys(calls, -1e9)
    sent: list[tuple[str, float, int | None]] = []
    conn.connect()
    start = float(sys.stdin.readline())
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
        t_req = time.monotonic()
        try:
            conn.request("POST", f"/streams/{call}/inject", body, headers)
            response = conn.getresponse()
            response.read()
            status: int | None = response.status
        except (OSError, http.client.HTTPException):
            conn.close()  # reconnects on the next request
            status = None
        sent.append((call, t_req, status))
    conn.close()
    return sent


def main() -> None:
    json.dump(run(json.loads(sys.argv[1])), sys.stdout)


if __name__ == "__main__":
    main()
