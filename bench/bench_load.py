"""Load benchmark: the real server (`python app.py`) against N simulated calls, swept over N.

    .venv/bin/python bench/bench_load.py                 # 25, 50, 100, ... 800 calls, 20 s windows
    .venv/bin/python bench/bench_load.py --quick         # 10 and 25 calls, 5 s windows (smoke check)
    .venv/bin/python bench/bench_load.py --counts 50,100,150 --seconds 60

Per N, with a fresh server process and a fresh simulator (so nothing leaks between steps):
N calls are set up through signed webhooks and the REST fake at a bounded rate; each call's
media socket carries caller audio with talk spurts every 20 ms; each call plays a looping,
ducked background of synthetic music; and every 100 ms a 100 ms tone, at a frequency the
music never reaches, is injected into a random call. Over the measured window it reports:

- underruns: frames that reach the caller after the audio queued before them has finished
  playing. The simulator plays a chunk as soon as it arrives and queues the next behind it, so
  a call's playout runs from the arrival of its first frame, 20 ms per frame, and a frame is an
  underrun when it arrives after its slot (its lead, OUTBOUND_LEAD_MS, is the margin it had).
  After a gap the simulator re-anchors the queue on the late frame; so does this count.
- inter-arrival gap of our frames per call (pooled): p50 / p99 / max; the lead burst at the
  start of each call is left out.
- inject-to-first-audio: from just before the tone's HTTP request is sent (by
  bench/tone_injector.py, a process of its own) to the arrival of the first frame in which the
  tone's Goertzel power clearly dominates (decoded offline afterwards).
- webhook answer time: duration of each signed webhook POST, p99 and max (Telnyx retries at 2 s).
- server CPU % (master + worker, on its pinned core) over the window, the kernel's part of it,
  and RSS per call: per idle call (all N connected, nothing playing) and per playing call, both
  above the RSS before any call.
- the load generator's own CPU %, its media loop thread's CPU %, and how late that loop wakes
  up. Arrival times are the kernel's receive stamps (simulator.stamped), not the loop's clock,
  so its lag does not enter them; only frames that waited to be read together all carry the
  newest one's stamp. An overloaded generator can thus only make a step look worse: one that
  still passes passes, one that breaks is marked as generator-bound.
- the server's own view from its /metrics: frames sent per call per second and media clock
  ticks late or skipped, which do not depend on the generator's timing.
- other%: CPU the rest of the machine used meanwhile (tests, other benchmarks), and of it the
  steal time (a VM's host running other guests instead). Before each step the benchmark waits
  (--wait-quiet, bounded) for the machine to go idle; it cannot wait out the host.

The server is pinned to CPU 0, this process and the tone injector to CPU 1. The sweep stops at
the first N that breaks (the rule is printed at start), and no step starts after --max-minutes.
Writes bench/out/load.json and bench/out/load.png.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import io
import json
import logging
import os
import platform
import random
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import psutil
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator import CallerAudio, FakeTelnyx, SimCall, g711  # noqa: E402
from simulator.cli import free_port  # noqa: E402

API_KEY = "KEY_BENCH"
RATE = 8000
FRAME_S = 0.020
FRAME_SAMPLES = 160
LEAD_MS = 60  # the server's OUTBOUND_LEAD_MS default; passed explicitly so the two agree
HTTP_THREADS = 32  # the server's HTTP pool (webhooks, REST); media sockets use none of it
LEAD_BURST = 1 + LEAD_MS // 20  # frames a call sends at once when it starts playing

TONE_HZ = 2700.0  # 54 whole cycles per 20 ms frame; the music stays below 2 kHz
TONE_MS = 100
TONE_LEVEL_DBFS = -10.0
TONE_INTERVAL_S = 0.100
TONE_MIN_FRACTION = 0.30  # share of a frame's energy in the tone bin for "the tone is there"
TONE_MIN_AMPLITUDE = 0.03  # about -30 dBFS: the tone bin must also be loud in absolute terms
TONE_SEARCH_S = 2.0
INJECTOR_START_S = 1.0  # the tone injector's process is started this long before the window opens

SERVER_COUNTERS = ("mixer_frames_sent_total", "mixer_frames_late_total", "mixer_frames_skipped_total")
SETUP_RATE = 50.0  # calls placed (and backgrounds injected) per second
SETUP_SETTLE_S = 2.0  # after all calls stream, before the idle RSS
WARMUP_S = 2.0  # after the last background starts, before the window
SERVER_START_TIMEOUT_S = 30.0
SERVER_STOP_TIMEOUT_S = 30.0

# The break rule (BREAK_RULE below says how they combine).
MAX_GAP_P99_MS = 25.0
MAX_LATENCY_P99_MS = 250.0
MAX_WEBHOOK_P99_MS = 2000.0
# The generator cannot keep time when its loop wakes this late (p99), misses this share of its
# 20 ms ticks by a whole frame, or its thread keeps its core this busy.
MAX_GEN_LAG_P99_MS = 10.0
MAX_GEN_LATE_TICKS = 0.005
MAX_GEN_LOOP_CPU = 90.0
# The server itself is behind real time when it sends fewer frames than this per call per second.
MIN_SERVER_FPS = 49.5
# Busy time of anything else on the machine above this (% of one core) is flagged as shared.
MAX_OTHER_CPU = 10.0

BREAK_RULE = (f"a step BREAKS if any call fails to set up or play, any underrun, gap p99 > {MAX_GAP_P99_MS:g} ms, "
              f"any tone not heard, inject-to-audio p99 > {MAX_LATENCY_P99_MS:g} ms, webhook answer p99 >= "
              f"{MAX_WEBHOOK_P99_MS:g} ms, or the server's own /metrics show it behind real time (clock ticks "
              f"skipped, or < {MIN_SERVER_FPS:g} frames/s per call). When the load generator is overloaded "
              f"(its loop lags p99 > {MAX_GEN_LAG_P99_MS:g} ms, misses > {MAX_GEN_LATE_TICKS:.1%} of its ticks, or "
              f"its thread uses > {MAX_GEN_LOOP_CPU:g}% of its core) its figures can only be too high: a step that "
              f"passes still passes, one that breaks is GEN-BOUND (the sweep stops too) unless the server's own "
              f"counters show it behind (BREAK+GEN)")

Float = npt.NDArray[np.float64]


# ---- audio ----------------------------------------------------------------------------------

def music_wav(seconds: float = 4.0) -> bytes:
    """A chord progression with a few harmonics, all below 2 kHz, peak -3 dBFS, 8 kHz WAV."""
    rng = np.random.default_rng(3)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    out = np.zeros(n)
    chords = [(220.0, 277.2, 329.6), (196.0, 246.9, 293.7), (174.6, 220.0, 261.6), (196.0, 246.9, 329.6)]
    note_n = n // 8
    for i in range(8):
        seg = slice(i * note_n, (i + 1) * note_n)
        tt = t[seg] - t[seg][0]
        env = np.minimum(1.0, tt / 0.02) * np.exp(-tt * 2.5)
        for f in chords[i % len(chords)]:
            for h in (1, 2, 3):
                if f * h < 1800:
                    out[seg] += env * np.sin(2 * np.pi * f * h * tt + rng.random() * 6.28) / h
        bass = chords[i % len(chords)][0] / 2
        out[seg] += 0.8 * env * np.sin(2 * np.pi * bass * tt)
    out *= 10 ** (-3 / 20) / np.max(np.abs(out))
    buf = io.BytesIO()
    sf.write(buf, np.rint(out * 32767).astype(np.int16), RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


ULAW = g711.decode(bytes(range(256)), "PCMU") / 32768.0  # every mu-law code, scaled to [-1, 1)
_T = np.arange(FRAME_SAMPLES) / RATE
TONE_COS = np.cos(2 * np.pi * TONE_HZ * _T)
TONE_SIN = np.sin(2 * np.pi * TONE_HZ * _T)


def tone_scores(payloads: list[bytes]) -> tuple[Float, Float]:
    """Per 160-byte mu-law frame: share of its energy in the tone bin, and the tone's amplitude."""
    if not payloads:
        return np.zeros(0), np.zeros(0)
    raw = np.frombuffer(b"".join(p[:FRAME_SAMPLES].ljust(FRAME_SAMPLES, b"\xff") for p in payloads),
                        dtype=np.uint8).reshape(-1, FRAME_SAMPLES)
    x = ULAW[raw]
    c, s = x @ TONE_COS, x @ TONE_SIN
    amplitude = 2.0 * np.sqrt(c * c + s * s) / FRAME_SAMPLES
    energy = np.einsum("ij,ij->i", x, x)
    fraction = (c * c + s * s) * 2.0 / FRAME_SAMPLES / np.maximum(energy, 1e-12)
    return fraction, amplitude


# ---- measurement helpers ----------------------------------------------------------------------

def pct(values: list[float] | Float, q: float) -> float | None:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else None


def cpu_seconds(procs: list[psutil.Process], *, kernel_only: bool = False) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.system if kernel_only else t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def children_cpu_seconds() -> float:
    """CPU seconds of this process's children that have exited (the tone injector)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def thread_cpu_seconds(native_id: int | None) -> float:
    if native_id is None:
        return 0.0
    for t in psutil.Process().threads():
        if t.id == native_id:
            return float(t.user_time + t.system_time)
    return 0.0


def steal_seconds() -> float:
    """CPU seconds the hypervisor gave other guests while this VM wanted to run (0 on bare metal)."""
    return float(getattr(psutil.cpu_times(), "steal", 0.0))


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy: what others ran shows up here too."""
    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
                 + getattr(t, "steal", 0.0))


def media_loop_native_id() -> int | None:
    for t in threading.enumerate():
        if t.name == "sim-media-loop":
            return t.native_id
    return None


class WebhookTimer:
    """Times every signed webhook POST the simulator makes.

    The simulator's Delivery records only when an attempt ended, not when it began, so the
    sender's public post() is wrapped on this one instance. The time includes this process's
    own share (signing, the client's GIL waits), so it is an upper bound on the server's.
    """

    def __init__(self, telnyx: FakeTelnyx) -> None:
        self.samples: list[tuple[str, float, int | None]] = []  # (event_type, seconds, status)
        sender = telnyx.sender
        assert sender is not None
        original = sender.post

        def timed(event: Any, attempt: int) -> int | None:
            t0 = time.monotonic()
            status = original(event, attempt)
            self.samples.append((event.event_type, time.monotonic() - t0, status))
            return status

        setattr(sender, "post", timed)  # noqa: B010 - an instance attribute shadows the method


class LoopLagProbe:
    """How late the simulator's media loop wakes from a 10 ms sleep: how far behind its caller
    frames and its reading run."""

    def __init__(self, telnyx: FakeTelnyx, seconds: float) -> None:
        self.lags: list[float] = []
        self._stop = False
        self._future = telnyx.engine.submit(self._run(seconds))

    async def _run(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stop and time.monotonic() < end:
            t0 = time.monotonic()
            await asyncio.sleep(0.010)
            self.lags.append(time.monotonic() - t0 - 0.010)

    def stop(self) -> list[float]:
        self._stop = True
        with contextlib.suppress(Exception):  # the loop is gone or stuck: keep what was measured
            self._future.result(timeout=2)
        return list(self.lags)


# ---- one step ---------------------------------------------------------------------------------

@dataclass
class StepResult:
    n: int
    calls_streaming: int = 0
    backgrounds_ok: int = 0
    underruns: int = 0
    underrun_ms: float = 0.0
    frames_in_window: int = 0
    gap_p50_ms: float | None = None
    gap_p99_ms: float | None = None
    gap_max_ms: float | None = None
    tones_sent: int = 0
    tones_failed: int = 0
    tones_heard: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None
    webhooks: int = 0
    webhook_failures: int = 0
    webhook_p99_ms: float | None = None
    webhook_max_ms: float | None = None
    server_cpu_pct: float | None = None
    server_sys_pct: float | None = None  # the kernel's part of server_cpu_pct
    server_threads: int | None = None
    rss_base_mb: float | None = None
    rss_idle_per_call_kb: float | None = None
    rss_playing_per_call_kb: float | None = None
    gen_cpu_pct: float | None = None
    gen_loop_cpu_pct: float | None = None
    gen_lag_p99_ms: float | None = None
    gen_lag_max_ms: float | None = None
    gen_late_ticks: int = 0
    server_late_ticks: int | None = None  # the server's own count: clock ticks over a quarter frame late
    server_skipped_ticks: int | None = None  # and ticks it gave up after a stall
    server_fps_per_call: float | None = None  # frames the server counted as sent, per call per second
    received_fps_per_call: float | None = None  # frames the simulator read off the sockets, same units
    other_cpu_pct: float | None = None  # busy time on the machine that was neither server nor generator
    steal_pct: float | None = None  # of it, time other guests of the host took from this VM
    window_s: float = 0.0
    step_s: float = 0.0
    verdict: str = "ok"
    reasons: list[str] = field(default_factory=list)
    error: str | None = None


class Server:
    """`python app.py` as a subprocess on a free port, pinned to one core."""

    def __init__(self, repo: Path, telnyx: FakeTelnyx, workdir: Path, cpu: int | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port),
               "DATABASE_PATH": str(workdir / "db.sqlite3"), "MEDIA_DIR": str(workdir),
               "TELNYX_API_KEY": API_KEY, "TELNYX_BASE_URL": telnyx.base_url,
               "TELNYX_PUBLIC_KEY": telnyx.public_key, "LOG_LEVEL": "WARNING",
               "SERVER_THREADS": str(HTTP_THREADS), "MAX_ACTIVE_INJECTIONS": "16",
               "OUTBOUND_LEAD_MS": str(LEAD_MS), "PYTHONUNBUFFERED": "1"}
        self.log_path = workdir / "server.log"
        self._log = self.log_path.open("w")

        def pin() -> None:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=repo, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, preexec_fn=pin)
        self.master = psutil.Process(self.proc.pid)

    def wait_healthy(self, http: httpx.Client) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if http.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not healthy within {SERVER_START_TIMEOUT_S:g} s:\n{self.log_tail()}")

    def procs(self) -> list[psutil.Process]:
        try:
            return [self.master, *self.master.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def worker(self) -> psutil.Process:
        children = self.master.children()
        return children[0] if children else self.master

    def rss(self) -> int:
        return int(self.worker().memory_info().rss)

    def active_sessions(self, http: httpx.Client) -> int:
        try:
            return int(http.get(f"{self.url}/health", timeout=5).json().get("active_sessions", -1))
        except (httpx.HTTPError, ValueError):
            return -1

    def counters(self, http: httpx.Client) -> dict[str, float]:
        """The server's own media clock counters from /metrics (names as streams/metrics.py has them)."""
        out: dict[str, float] = {}
        try:
            text = http.get(f"{self.url}/metrics", timeout=5).text
        except httpx.HTTPError:
            return out
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in SERVER_COUNTERS:
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def paced(count: int, rate: float, fn: Callable[[int], None], deadline: float) -> int:
    """fn(i) for i in range(count), at most `rate` per second, never past `deadline`; returns how many ran."""
    start = time.monotonic()
    for i in range(count):
        due = start + i / rate
        if max(due, time.monotonic()) > deadline:
            return i
        if due > time.monotonic():
            time.sleep(due - time.monotonic())
        fn(i)
    return count


@dataclass
class Window:
    """What the measured window leaves for the offline analysis."""

    playing: list[SimCall]
    received: dict[int, list[tuple[float, bytes]]]
    tones: list[tuple[SimCall, float]]
    w0: float
    w1: float


def run_step(n: int, seconds: float, repo: Path, pin: bool, seed: int) -> StepResult:
    res = StepResult(n=n)
    t_step = time.monotonic()
    # The recordings make millions of small tracked objects here; a full collection of them
    # stalls the simulator's loop for 100 ms and more, which would show up as the server's gaps.
    # The step is bounded, so collect between steps instead.
    gc.collect()
    gc.disable()
    try:
        return _run_step(res, n, seconds, repo, pin, seed, t_step)
    finally:
        gc.enable()
        gc.collect()


def _run_step(res: StepResult, n: int, seconds: float, repo: Path, pin: bool, seed: int, t_step: float) -> StepResult:
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp, \
            FakeTelnyx(api_key=API_KEY, max_calls=n + 16, webhook_workers=8) as telnyx, \
            httpx.Client(timeout=10, trust_env=False, limits=httpx.Limits(max_connections=8)) as http:
        timer = WebhookTimer(telnyx)
        server = Server(repo, telnyx, Path(tmp), 0 if pin else None)
        window: Window | None = None
        try:
            server.wait_healthy(http)
            telnyx.webhook_url = f"{server.url}/webhooks/voice"
            playing = set_up(res, n, telnyx, server, http)
            if playing is not None:
                window = measure(res, seconds, telnyx, server, http, playing, random.Random(seed + n))
            hooks = list(timer.samples)  # set-up and window only, not the teardown below
        finally:
            # The server goes first: it ends every call and closes its sockets, so the simulator
            # then has nothing left to close (its webhooks to the stopped server just fail).
            server.stop()
            telnyx.stop()
    if window is not None:
        analyse(res, window)
    res.webhooks = len(hooks)
    res.webhook_failures = sum(1 for _, _, status in hooks if status is None or not 200 <= status < 300)
    durations = [d for _, d, _ in hooks]
    res.webhook_p99_ms = _ms(pct(durations, 99))
    res.webhook_max_ms = _ms(max(durations) if durations else None)
    res.step_s = time.monotonic() - t_step
    judge(res)
    return res


def set_up(res: StepResult, n: int, telnyx: FakeTelnyx, server: Server, http: httpx.Client) -> list[SimCall] | None:
    """N calls streaming, then a looping ducked background on each; None (and res.error) if not all made it."""
    time.sleep(1.0)
    rss_base = server.rss()
    res.rss_base_mb = rss_base / 2**20
    t0 = time.monotonic()
    deadline = time.monotonic() + 30.0 + 3 * n / SETUP_RATE
    caller_audio = CallerAudio.speech_like(seed=5)
    calls: list[SimCall] = []
    paced(n, SETUP_RATE, lambda _i: calls.append(telnyx.place_call(caller_audio=caller_audio)), deadline)
    streaming: list[SimCall] = []
    for call in calls:
        try:
            call.wait_streaming(timeout=max(0.1, deadline - time.monotonic()))
            streaming.append(call)
        except (TimeoutError, RuntimeError):
            pass
    res.calls_streaming = len(streaming)
    if len(streaming) < n:
        res.error = f"only {len(streaming)} of {n} calls streaming within {time.monotonic() - t0:.0f} s"
        return None
    while server.active_sessions(http) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(SETUP_SETTLE_S)
    res.rss_idle_per_call_kb = (server.rss() - rss_base) / n / 1024

    playing: list[SimCall] = []
    background = {"audio_base64": base64.b64encode(music_wav()).decode(), "loop": True, "duck": True,
                  "gain_db": -10, "label": "bg"}

    def start_background(i: int) -> None:
        call = streaming[i]
        try:
            r = http.post(f"{server.url}/streams/{call.call_control_id}/inject", json=background)
            if r.status_code == 201:
                playing.append(call)
        except httpx.HTTPError:
            pass

    paced(n, SETUP_RATE, start_background, deadline)
    res.backgrounds_ok = len(playing)
    if len(playing) < n:
        res.error = f"only {len(playing)} of {n} backgrounds started"
        return None
    time.sleep(WARMUP_S)
    return playing


def start_injector(plan: dict[str, Any]) -> subprocess.Popen[str]:
    """bench/tone_injector.py with `plan`, on this process's core; it waits for go() to begin."""
    return subprocess.Popen([sys.executable, str(ROOT / "bench" / "tone_injector.py"), json.dumps(plan)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def counters_at(server: Server, http: httpx.Client) -> tuple[dict[str, float], float]:
    """The server's /metrics counters, and about when it read them: the middle of the request."""
    t0 = time.monotonic()
    counters = server.counters(http)
    return counters, (t0 + time.monotonic()) / 2


def go(injector: subprocess.Popen[str]) -> float:
    """Start the injector's schedule now; returns its start (time.monotonic())."""
    assert injector.stdin is not None
    start = time.monotonic()
    injector.stdin.write(f"{start!r}\n")
    injector.stdin.flush()
    return start


def injector_results(proc: subprocess.Popen[str], timeout_s: float) -> list[tuple[str, float, int | None]]:
    """The tones the injector sent, when, and their answers; it is killed if it overstays."""
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        sent = json.loads(out) if proc.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError) as exc:
        raise RuntimeError(f"tone injector failed: {exc}") from exc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sent is None:
        raise RuntimeError(f"tone injector exited with {proc.returncode}")
    return [(call_id, t_req, status) for call_id, t_req, status in sent]


def measure(res: StepResult, seconds: float, telnyx: FakeTelnyx, server: Server, http: httpx.Client,
            playing: list[SimCall], rng: random.Random) -> Window:
    """The measured window: a tone into a random call every 100 ms (from bench/tone_injector.py,
    on the generator's core); CPU, RSS and loop lag around it."""
    rss_base = int((res.rss_base_mb or 0) * 2**20)
    tones: list[tuple[SimCall, float]] = []
    # The injector starts up (a second of its core, at most) before the window, not in it.
    plan = {"url": server.url, "calls": [c.call_control_id for c in playing], "seconds": seconds,
            "interval_s": TONE_INTERVAL_S,
            # A call gets no second tone while its first may still be playing or on its way.
            "quiet_s": min(1.0, len(playing) * TONE_INTERVAL_S / 2), "seed": rng.randrange(1 << 30),
            "body": {"tone": {"frequency_hz": TONE_HZ, "duration_ms": TONE_MS, "level_dbfs": TONE_LEVEL_DBFS}}}
    injector = start_injector(plan)
    children0 = children_cpu_seconds()
    try:
        time.sleep(INJECTOR_START_S)
        probe = LoopLagProbe(telnyx, seconds + 5)
        loop_tid = media_loop_native_id()
        # /metrics can take a second at high N: read it before the CPU counters, which are
        # read last, right at the window's edge.
        counters0, counters0_at = counters_at(server, http)
        late0 = telnyx.engine.late_ticks
        me = psutil.Process()
        srv0, gen0, loop0 = cpu_seconds(server.procs()), cpu_seconds([me]), thread_cpu_seconds(loop_tid)
        sys0, busy0, steal0 = cpu_seconds(server.procs(), kernel_only=True), machine_busy_seconds(), steal_seconds()
        w0 = go(injector)
    except BaseException:  # no tones into a window that is not measured
        injector.kill()
        injector.wait()
        raise
    sent = injector_results(injector, INJECTOR_START_S + seconds + 60)
    by_id = {c.call_control_id: c for c in playing}
    for call_id, t_req, status in sent:
        res.tones_sent += 1
        if status == 201:
            tones.append((by_id[call_id], t_req))
        else:
            res.tones_failed += 1
    rest = w0 + seconds - time.monotonic()
    if rest > 0:
        time.sleep(rest)
    w1 = time.monotonic()
    res.window_s = w = w1 - w0
    srv1, gen1, loop1 = cpu_seconds(server.procs()), cpu_seconds([me]), thread_cpu_seconds(loop_tid)
    sys1, busy1, steal1 = cpu_seconds(server.procs(), kernel_only=True), machine_busy_seconds(), steal_seconds()
    # The injector has exited by now, so its CPU time is among this process's children's.
    gen1 += children_cpu_seconds() - children0
    res.gen_late_ticks = telnyx.engine.late_ticks - late0
    res.server_cpu_pct, res.gen_cpu_pct = 100 * (srv1 - srv0) / w, 100 * (gen1 - gen0) / w
    res.server_sys_pct = 100 * (sys1 - sys0) / w
    res.steal_pct = 100 * (steal1 - steal0) / w
    res.other_cpu_pct = max(0.0, 100 * (busy1 - busy0) / w - res.server_cpu_pct - res.gen_cpu_pct)
    res.gen_loop_cpu_pct = 100 * (loop1 - loop0) / w
    counters1, counters1_at = counters_at(server, http)
    delta = {name: value - counters0.get(name, 0) for name, value in counters1.items()}
    if "mixer_frames_sent_total" in delta:
        res.server_fps_per_call = delta["mixer_frames_sent_total"] / len(playing) / (counters1_at - counters0_at)
    if "mixer_frames_late_total" in delta:
        res.server_late_ticks = int(delta["mixer_frames_late_total"])
    if "mixer_frames_skipped_total" in delta:
        res.server_skipped_ticks = int(delta["mixer_frames_skipped_total"])
    lags = probe.stop()
    res.gen_lag_p99_ms = _ms(pct(lags, 99))
    res.gen_lag_max_ms = _ms(max(lags) if lags else None)
    res.rss_playing_per_call_kb = (server.rss() - rss_base) / len(playing) / 1024
    with contextlib.suppress(psutil.NoSuchProcess):
        res.server_threads = server.worker().num_threads()
    # Let the last tones arrive before the recordings are copied.
    if tones and tones[-1][1] > w1 - TONE_SEARCH_S:
        time.sleep(tones[-1][1] + TONE_SEARCH_S - w1)
    return Window(playing, {id(c): c.received for c in playing}, tones, w0, w1)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def analyse(res: StepResult, window: Window) -> None:
    playing, received, tones, w0, w1 = window.playing, window.received, window.tones, window.w0, window.w1
    gaps: list[Float] = []
    for call in playing:
        frames = received[id(call)]
        if not frames:
            continue
        arrivals = np.fromiter((a for a, _ in frames), dtype=np.float64, count=len(frames))
        # Playout as the simulator runs it: each frame plays when the previous one ends, or on
        # arrival if the queue has run dry (an underrun; the queue re-anchors there).
        play_end = arrivals[0]
        for a in arrivals:
            if a > play_end + 1e-4:
                if w0 <= a <= w1:
                    res.underruns += 1
                    res.underrun_ms += (a - play_end) * 1000
                play_end = a
            play_end += FRAME_S
        inside = (arrivals >= w0) & (arrivals <= w1)
        res.frames_in_window += int(inside.sum())
        diffs = np.diff(arrivals)
        pair_inside = inside[1:] & inside[:-1]
        pair_inside[: LEAD_BURST - 1] = False  # the lead burst at the start of the call
        gaps.append(diffs[pair_inside])
    res.received_fps_per_call = res.frames_in_window / max(1, len(playing)) / max(1e-9, w1 - w0)
    pooled = np.concatenate(gaps) if gaps else np.zeros(0)
    res.gap_p50_ms, res.gap_p99_ms = _ms(pct(pooled, 50)), _ms(pct(pooled, 99))
    res.gap_max_ms = _ms(float(pooled.max()) if pooled.size else None)

    # Tone detection: per call, only frames after the request and before the call's next tone.
    by_call: dict[int, list[float]] = {}
    for call, t_req in tones:
        by_call.setdefault(id(call), []).append(t_req)
    latencies: list[float] = []
    for call in playing:
        requests = sorted(by_call.get(id(call), []))
        if not requests:
            continue
        frames = received[id(call)]
        arrivals = np.fromiter((a for a, _ in frames), dtype=np.float64, count=len(frames))
        for i, t_req in enumerate(requests):
            stop = min(t_req + TONE_SEARCH_S, requests[i + 1] if i + 1 < len(requests) else np.inf)
            lo, hi = np.searchsorted(arrivals, t_req), np.searchsorted(arrivals, stop)
            fraction, amplitude = tone_scores([p for _, p in frames[lo:hi]])
            hits = np.flatnonzero((fraction >= TONE_MIN_FRACTION) & (amplitude >= TONE_MIN_AMPLITUDE))
            if hits.size:
                latencies.append(arrivals[lo + int(hits[0])] - t_req)
    res.tones_heard = len(latencies)
    res.latency_p50_ms, res.latency_p99_ms = _ms(pct(latencies, 50)), _ms(pct(latencies, 99))
    res.latency_max_ms = _ms(max(latencies) if latencies else None)


def judge(res: StepResult) -> None:
    r = res.reasons
    if res.error or res.window_s <= 0:
        r.append(res.error or "no measured window")
        res.verdict = "BREAK"
        return
    if res.underruns:
        r.append(f"{res.underruns} underruns")
    if res.gap_p99_ms is None or res.gap_p99_ms > MAX_GAP_P99_MS:
        r.append(f"gap p99 {_fmt(res.gap_p99_ms)} ms")
    if res.tones_heard < res.tones_sent:
        r.append(f"{res.tones_sent - res.tones_heard} of {res.tones_sent} tones not heard")
    if res.latency_p99_ms is not None and res.latency_p99_ms > MAX_LATENCY_P99_MS:
        r.append(f"inject-to-audio p99 {res.latency_p99_ms:.0f} ms")
    if res.webhook_p99_ms is not None and res.webhook_p99_ms >= MAX_WEBHOOK_P99_MS:
        r.append(f"webhook p99 {res.webhook_p99_ms:.0f} ms")
    gen = []
    if res.gen_lag_p99_ms is not None and res.gen_lag_p99_ms > MAX_GEN_LAG_P99_MS:
        gen.append(f"generator loop lag p99 {res.gen_lag_p99_ms:.0f} ms")
    if res.gen_late_ticks > MAX_GEN_LATE_TICKS * res.window_s / FRAME_S:
        gen.append(f"generator missed {res.gen_late_ticks} ticks")
    if res.gen_loop_cpu_pct is not None and res.gen_loop_cpu_pct > MAX_GEN_LOOP_CPU:
        gen.append(f"generator loop thread at {res.gen_loop_cpu_pct:.0f}% CPU")
    # The server's own counters do not depend on the generator's timing.
    server_behind = bool(res.server_skipped_ticks) or (
        res.server_fps_per_call is not None and res.server_fps_per_call < MIN_SERVER_FPS)
    if server_behind:
        r.append(f"the server's own clock fell behind ({_fmt(res.server_fps_per_call)} frames/s per call, "
                 f"{res.server_skipped_ticks} ticks skipped)")
    # An overloaded generator stamps nothing early (arrivals carry the kernel's receive time,
    # at worst that of a later frame read together), and it can only delay a tone after its
    # stamp (the injector shares its core, not its GIL): it can only make a step look worse.
    if r:
        res.verdict = "BREAK+GEN" if server_behind and gen else "GEN-BOUND" if gen else "BREAK"
    r.extend(gen)
    if res.other_cpu_pct is not None and res.other_cpu_pct > MAX_OTHER_CPU:
        r.append(f"shared machine: other processes used {res.other_cpu_pct:.0f}% of a core")


# ---- output -----------------------------------------------------------------------------------

def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


COLUMNS: list[tuple[str, Callable[[StepResult], str]]] = [
    ("N", lambda r: str(r.n)),
    ("up", lambda r: f"{r.backgrounds_ok}"),
    ("underruns", lambda r: str(r.underruns)),
    ("gap p50", lambda r: _fmt(r.gap_p50_ms)),
    ("gap p99", lambda r: _fmt(r.gap_p99_ms)),
    ("gap max", lambda r: _fmt(r.gap_max_ms)),
    ("inj p50", lambda r: _fmt(r.latency_p50_ms, 0)),
    ("inj p99", lambda r: _fmt(r.latency_p99_ms, 0)),
    ("tones", lambda r: f"{r.tones_heard}/{r.tones_sent}"),
    ("hook p99", lambda r: _fmt(r.webhook_p99_ms, 0)),
    ("srv CPU%", lambda r: _fmt(r.server_cpu_pct, 0)),
    ("sys%", lambda r: _fmt(r.server_sys_pct, 0)),
    ("srv late", lambda r: "-" if r.server_late_ticks is None else f"{r.server_late_ticks}/{r.server_skipped_ticks}"),
    ("fps srv/rx", lambda r: f"{_fmt(r.server_fps_per_call)}/{_fmt(r.received_fps_per_call)}"),
    ("KB/idle", lambda r: _fmt(r.rss_idle_per_call_kb, 0)),
    ("KB/play", lambda r: _fmt(r.rss_playing_per_call_kb, 0)),
    ("gen CPU%", lambda r: _fmt(r.gen_cpu_pct, 0)),
    ("loop%", lambda r: _fmt(r.gen_loop_cpu_pct, 0)),
    ("lag p99", lambda r: _fmt(r.gen_lag_p99_ms)),
    ("other%", lambda r: _fmt(r.other_cpu_pct, 0)),
    ("steal%", lambda r: _fmt(r.steal_pct, 0)),
    ("verdict", lambda r: r.verdict),
]


def print_table(results: list[StepResult]) -> None:
    header = [c[0] for c in COLUMNS]
    rows = [[fn(r) for _, fn in COLUMNS] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    print()
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    print("\n(times in ms; up = calls playing; inj = inject-to-first-audio; hook = webhook answer; "
          "KB/idle, KB/play = server RSS per call;\n sys% = the kernel's part of srv CPU%; srv late = the server's own "
          "media clock ticks late/skipped in the window (its /metrics);\n"
          " fps srv/rx = frames per call per second the server sent (its /metrics) / the simulator read;\n"
          " gen = this load generator (and its tone injector), loop% = its media loop thread, "
          "lag = how late that loop wakes,\n other% = CPU used on the machine by anything else: "
          "above a few % the step shared its cores;\n steal% = of it, time other guests of the host "
          "took from this VM)")
    for r in results:
        if r.reasons:
            print(f"  N={r.n}: {r.verdict}: {'; '.join(r.reasons)}")


def plot(results: list[StepResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r.n for r in results]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    series = [("gap p99", [r.gap_p99_ms for r in results], "o-"),
              ("gap max", [r.gap_max_ms for r in results], "s--"),
              ("inject-to-audio p99", [r.latency_p99_ms for r in results], "^-")]
    for label, values, style in series:
        ax.plot(ns, [np.nan if v is None else v for v in values], style, label=label)
    ax.axhline(MAX_GAP_P99_MS, color="grey", linestyle=":", linewidth=1, label=f"gap p99 limit {MAX_GAP_P99_MS:g} ms")
    for r in results:
        if r.verdict != "ok":
            ax.axvline(r.n, color="red", alpha=0.3, linewidth=6)
    ax.set_xlabel("concurrent calls (N)")
    ax.set_ylabel("ms")
    shown = [v for _, vs, _ in series for v in vs if v is not None]
    if shown and max(shown) > 20 * max(1.0, min(shown)):
        ax.set_yscale("log")  # a broken step can be a hundred times the healthy ones
    else:
        ax.set_ylim(bottom=0)
    ax.set_title("Server under load: frame gaps and inject-to-audio latency (red: step broke)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def estimate_s(counts: list[int], seconds: float) -> float:
    per_step = [8 + 2 * n / SETUP_RATE + SETUP_SETTLE_S + WARMUP_S + seconds + TONE_SEARCH_S + n / 100 + 5
                for n in counts]
    return float(sum(per_step))


def wait_quiet(limit_s: float) -> float:
    """Wait (at most limit_s) until the rest of the machine has been idle for 2 s; returns its last busy %.

    Other work on these two cores (tests, other benchmarks) shows up as frame jitter that would be
    blamed on the server.
    """
    deadline = time.monotonic() + limit_s
    me = psutil.Process()
    quiet_for = 0.0
    while True:
        busy0, mine0 = machine_busy_seconds(), cpu_seconds([me])
        time.sleep(0.5)
        other = 100 * ((machine_busy_seconds() - busy0) - (cpu_seconds([me]) - mine0)) / 0.5
        quiet_for = quiet_for + 0.5 if other < MAX_OTHER_CPU else 0.0
        if quiet_for >= 2.0 or time.monotonic() > deadline:
            return other


def revision(repo: Path) -> str:
    """The server's commit, and whether its files differ from it (others may be editing)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{head or 'unknown'}{' + uncommitted changes' if dirty else ''}"


def machine() -> dict[str, Any]:
    return {"nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)), "python": sys.version.split()[0],
            "platform": platform.platform(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--counts", default="25,50,100,200,400,600,800", help="comma-separated call counts")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per N")
    parser.add_argument("--quick", action="store_true", help="N = 10, 25 with 5 s windows (smoke check)")
    parser.add_argument("--max-minutes", type=float, default=15.0, help="no new step starts after this")
    parser.add_argument("--repo", type=Path, default=ROOT, help="directory holding the app.py to run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--wait-quiet", type=float, default=60.0,
                        help="before each step, wait up to this many seconds for other processes to go idle")
    parser.add_argument("--no-stop", action="store_true", help="keep sweeping after a step breaks")
    args = parser.parse_args()
    counts = [10, 25] if args.quick else sorted({int(c) for c in args.counts.split(",") if c.strip()})
    seconds = 5.0 if args.quick else args.seconds
    if not counts or min(counts) < 1 or seconds < 1:
        parser.error("need positive counts and --seconds >= 1")

    # Sockets: two per call on each side, plus the REST fake's and the webhooks'.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 8 * max(counts) + 1024))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    info = machine()
    pin = len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, {1})
    # The simulator warns per call about webhooks it could not deliver at teardown; not news here.
    logging.basicConfig(level=logging.ERROR)
    print(f"machine: nproc={info['nproc']} usable={info['usable_cpus']} python {info['python']} "
          f"{info['platform']} {info['memory_gb']} GB")
    print("pinning: server -> CPU 0, load generator -> CPU 1" if pin else
          "pinning: off (fewer than 2 usable CPUs; server and generator share)")
    rev = revision(args.repo)
    print(f"server: {args.repo / 'app.py'} at {rev}  OUTBOUND_LEAD_MS={LEAD_MS}  SERVER_THREADS={HTTP_THREADS}")
    print(f"sweep: N = {', '.join(map(str, counts))}; window {seconds:g} s; set-up {SETUP_RATE:g} calls/s; "
          f"tone {TONE_HZ:g} Hz x {TONE_MS} ms every {TONE_INTERVAL_S * 1000:.0f} ms")
    print(f"rule: {BREAK_RULE}")
    print(f"estimate: at most {estimate_s(counts, seconds) / 60:.1f} min (less if a step breaks); "
          f"hard stop for new steps after {args.max_minutes:g} min")

    args.out.mkdir(parents=True, exist_ok=True)
    results: list[StepResult] = []
    t_run = time.monotonic()
    for n in counts:
        if time.monotonic() - t_run > args.max_minutes * 60:
            print(f"time budget spent; not running N={n}")
            break
        if args.wait_quiet > 0:
            other = wait_quiet(args.wait_quiet)
            if other >= MAX_OTHER_CPU:
                print(f"\nthe machine is busy with other work ({other:.0f}% of a core); measuring anyway")
        print(f"\nN={n}: setting up ...", flush=True)
        try:
            res = run_step(n, seconds, args.repo.resolve(), pin, args.seed)
        except (RuntimeError, TimeoutError, OSError, httpx.HTTPError) as exc:
            res = StepResult(n=n, error=f"{type(exc).__name__}: {exc}")
            judge(res)
        results.append(res)
        print(f"N={n}: {res.verdict} in {res.step_s:.0f} s: underruns {res.underruns}, gap p99 "
              f"{_fmt(res.gap_p99_ms)} ms, inject p99 {_fmt(res.latency_p99_ms, 0)} ms, server CPU "
              f"{_fmt(res.server_cpu_pct, 0)}%, generator loop {_fmt(res.gen_loop_cpu_pct, 0)}%", flush=True)
        if res.verdict != "ok" and not args.no_stop:
            break

    print_table(results)
    print(f"\ntotal {time.monotonic() - t_run:.0f} s")
    document = {"machine": info, "revision": rev, "pinned": pin, "window_s": seconds, "counts": counts,
                "lead_ms": LEAD_MS,
                "rule": BREAK_RULE, "tone_hz": TONE_HZ, "results": [asdict(r) for r in results]}
    (args.out / "load.json").write_text(json.dumps(document, indent=2) + "\n")
    plot(results, args.out / "load.png")
    print(f"wrote {args.out / 'load.json'} and {args.out / 'load.png'}")
    broke = [r for r in results if r.verdict != "ok"]
    if broke:
        print(f"first breaking N: {broke[0].n} ({broke[0].verdict})")
    else:
        print("no step broke")
    return 0


if __name__ == "__main__":
    sys.exit(main())
