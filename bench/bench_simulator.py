"""CPU cost of the simulator's media loop per message, printed as a plain-text table.

    .venv/bin/python bench/bench_simulator.py [--streams 100,400] [--seconds 4] [--baseline REV]

A FrontDoor in a subprocess plays the app: it answers every inbound `media` frame with one
Telnyx-shaped outbound `media` frame (20 ms of PCMU). This process runs the simulator's real
MediaEngine with N MediaStreams (rtp mode, PCMU, a speech-like caller) connected to it, so the
loop thread sends N caller frames and receives N app frames every 20 ms. Measured over the
window, on the loop thread itself (time.thread_time: user + system):
  us/msg     loop CPU per message, caller frames sent and app frames received counted alike
  loop CPU   share of one core the loop thread used; sys: the part spent in the kernel
  late       MediaEngine.late_ticks: ticks that fired more than one frame late
  p50/p99    how late a probe on the same loop, sleeping to absolute 20 ms deadlines like the
             ticker, woke up (ms)
  server     share of one core the app subprocess used (it must not be the bottleneck)
With two or more cores the server is pinned to the first and this process to the second.

--baseline REV runs the same streams first through the simulator package as it was at git
revision REV (extracted to a temporary folder and run by a child process of this script, so no
module of today's simulator mixes in); `ratio` is new / baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serving import ServerProcess, answer_cpu_requests  # noqa: E402

FRAME_S = 0.020
WARMUP_S = 1.0
CONNECT_TIMEOUT_S = 30.0
REPLY_AUDIO = bytes(range(0x60, 0x60 + 160))  # 20 ms of PCMU


# -- the app (subprocess) --------------------------------------------------------------------


def serve() -> None:
    from frontdoor import Connection, FrontDoor
    from streams.protocol import media_frame

    class Answer:
        """Replies to each caller frame with one app frame, once the stream has started."""

        def __init__(self) -> None:
            self.reply = ""

        def on_message(self, conn: Connection, data: str | bytes) -> None:
            if not isinstance(data, str):
                return
            if data.startswith('{"event":"media"'):
                if self.reply:
                    conn.send_text(self.reply)
                return
            frame = json.loads(data)
            if frame.get("event") == "start":
                self.reply = media_frame(REPLY_AUDIO)  # what the app sends, byte for byte

        def on_close(self, conn: Connection, code: int | None) -> None:
            pass

    door = FrontDoor("127.0.0.1", 0, ws_paths={"/stream"}, accept=lambda *_: Answer(), idle_timeout_s=60)
    door.start()
    answer_cpu_requests(door.port)  # until the parent closes our stdin
    door.stop()


# -- the simulator (this process) ------------------------------------------------------------


def media_module() -> ModuleType:
    """simulator.media of the simulator package on the path (today's, or --simulator-from's)."""
    import simulator.media

    return simulator.media


def baseline_results(rev: str, streams: list[int], seconds: float) -> list[dict[str, Any]]:
    """Each stream count run by a child of this script through the simulator as it was at `rev`."""
    with tempfile.TemporaryDirectory() as folder:
        archive = subprocess.run(["git", "archive", rev, "simulator"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        results = []
        for n in streams:
            out = subprocess.run([sys.executable, __file__, "--streams", str(n), "--seconds", str(seconds),
                                  "--simulator-from", folder, "--json"], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results


def kernel_seconds() -> float:
    """System CPU time of the calling thread (Linux: /proc/thread-self/stat, field 15)."""
    try:
        with open("/proc/thread-self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


class LatenessProbe:
    """Sleeps to absolute 20 ms deadlines on the media loop, as the ticker does; records lateness."""

    def __init__(self) -> None:
        self.lateness: list[float] = []
        self.running = True

    async def run(self) -> None:
        deadline = time.monotonic()
        while self.running:
            deadline += FRAME_S
            delay = deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.lateness.append(time.monotonic() - deadline)
            if time.monotonic() - deadline > 5 * FRAME_S:
                deadline = time.monotonic()


def measure(media: ModuleType, port: int, streams: int, seconds: float, server: ServerProcess) -> dict[str, float]:
    from simulator.audio import CallerAudio

    engine = media.MediaEngine(connect_timeout_s=CONNECT_TIMEOUT_S)
    engine.start()
    caller = CallerAudio.speech_like(seed=7)
    params = media.StreamParams(url=f"ws://127.0.0.1:{port}/stream", mode="rtp", bidirectional_codec="PCMU",
                                target_legs="self")
    failures: list[str] = []
    made = []
    try:
        for i in range(streams):
            call = media.CallIdentity(user_id="u", call_control_id=f"v3:bench-{i}", call_session_id=f"s{i}",
                                      from_="+15550000001", to="+15550000002")
            stream = media.MediaStream(engine, call, params, f"stream-{i:05d}", caller, media.StreamState(),
                                       on_started=lambda s: None,
                                       on_failed=lambda s, reason: failures.append(reason),
                                       on_peer_closed=lambda s: failures.append("closed_by_app"))
            made.append(stream)
            engine.spawn(stream.run())
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while not all(s.started.is_set() for s in made):
            if failures or time.monotonic() > deadline:
                raise RuntimeError(f"streams did not start: {failures[:3]}")
            time.sleep(0.05)

        async def snapshot() -> tuple[float, float, int, int]:
            sent = sum(s.state.stats.frames_sent for s in made)
            received = sum(s.state.stats.media_received for s in made)
            return time.thread_time(), kernel_seconds(), sent + received, engine.late_ticks

        time.sleep(WARMUP_S)
        probe = LatenessProbe()
        engine.spawn(probe.run())
        cpu0, sys0, msgs0, late0 = engine.submit(snapshot()).result(10)
        srv0, wall0 = sum(server.cpu()), time.monotonic()
        time.sleep(seconds)
        cpu1, sys1, msgs1, late1 = engine.submit(snapshot()).result(10)
        srv1, wall1 = sum(server.cpu()), time.monotonic()
        probe.running = False
        if failures:
            raise RuntimeError(f"streams failed during the run: {failures[:3]}")
        lateness = sorted(probe.lateness)
        messages = msgs1 - msgs0
        wall = wall1 - wall0
        return {
            "msg_rate": messages / wall,
            "us_per_msg": (cpu1 - cpu0) / messages * 1e6 if messages else float("nan"),
            "loop_cpu": (cpu1 - cpu0) / wall,
            "sys_share": (sys1 - sys0) / (cpu1 - cpu0) if cpu1 > cpu0 else float("nan"),
            "late": late1 - late0,
            "p50": lateness[len(lateness) // 2] * 1000 if lateness else float("nan"),
            "p99": lateness[int(len(lateness) * 0.99)] * 1000 if lateness else float("nan"),
            "server_cpu": (srv1 - srv0) / wall,
        }
    finally:
        engine.stop()


def run(media: ModuleType, streams: int, seconds: float) -> dict[str, float]:
    cpus = sorted(os.sched_getaffinity(0))
    pin = len(cpus) >= 2
    server = ServerProcess([__file__, "--serve"], cpus[0] if pin else None, cwd=ROOT)
    try:
        if pin:
            os.sched_setaffinity(0, {cpus[1]})
        return measure(media, server.port, streams, seconds, server)
    finally:
        server.close()
        if pin:
            os.sched_setaffinity(0, set(cpus))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--streams", default="100,400", help="comma-separated stream counts")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured window per run")
    parser.add_argument("--baseline", metavar="REV", help="also run the simulator as of this git revision")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--simulator-from", metavar="DIR", help=argparse.SUPPRESS)  # a --baseline child
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    counts = [int(n) for n in args.streams.split(",")]
    if args.simulator_from:
        sys.path.insert(0, args.simulator_from)  # before anything imports the simulator
    if args.json:
        print(json.dumps(run(media_module(), counts[0], args.seconds)))
        return
    baseline = baseline_results(args.baseline, counts, args.seconds) if args.baseline else None
    print(f"{'streams':>7} {'simulator':<10} {'msg/s':>7} {'us/msg':>7} {'loop CPU':>8} {'sys':>4} {'late':>5} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'server':>7} {'ratio':>6}")
    for i, streams in enumerate(counts):
        base: float | None = None
        rows: list[tuple[str, dict[str, Any]]] = []
        if baseline is not None:
            rows.append((args.baseline[:10], baseline[i]))
        rows.append(("current", run(media_module(), streams, args.seconds)))
        for name, r in rows:
            ratio = f"{r['us_per_msg'] / base:.2f}" if base is not None and name == "current" else "-"
            if base is None:
                base = r["us_per_msg"]
            print(f"{streams:>7} {name:<10} {r['msg_rate']:>7.0f} {r['us_per_msg']:>7.1f} "
                  f"{r['loop_cpu'] * 100:>7.0f}% {r['sys_share'] * 100:>3.0f}% {r['late']:>5d} "
                  f"{r['p50']:>7.2f} {r['p99']:>7.2f} {r['server_cpu'] * 100:>6.0f}% {ratio:>6}", flush=True)
    print("us/msg = media loop thread CPU per message (caller frames sent + app frames received);")
    print("loop CPU = share of one core used by that thread, sys = the kernel's part of it;")
    print("late = ticks that fired over one frame late;")
    print("p50/p99 = lateness of a 20 ms deadline probe on the same loop; server = the app's share of a core.")


if __name__ == "__main__":
    main()
