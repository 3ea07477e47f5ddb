"""Load benchmark: the real server (`python app.py`) against N simulated calls, swept over N.

    .venv/bin/python bench/bench_load.py                 # 25, 50, 100, ... 800 calls, 20 s windows
    .venv/bin/python bench/bench_load.py --quick         # 10 and 25 calls, 5 s windows (smoke check)
    .venv/bin/python bench/bench_load.py --counts 50,100,150 --seconds 60

Two revisions side by side: check the baseline out in a worktree of its own (it runs on this
tree's .venv and simulator), then give it as --baseline-repo:

    git -C /work/main worktree add /tmp/bench-old f8ace5b
    .venv/bin/python bench/bench_load.py --counts 300,400,500 --seconds 20 --baseline-repo /tmp/bench-old

Each N then runs twice, first against the baseline's app.py, then against --repo's (this tree
unless given), each with a fresh server and a fresh simulator and the same seed, so the same
calls, background and injection schedule. It prints each revision's full table and then one
comparison table: per N, old, new and new/old for underruns, gap p99, inject-to-first-audio
p99 of each pattern, and server CPU per call. The sweep then stops only at an N where both
revisions broke.

Per N, with a fresh server process and a fresh simulator (so nothing leaks between steps):
N calls are set up through signed webhooks and the REST fake at a bounded rate; each call's
media socket carries caller audio with talk spurts every 20 ms; each call plays a looping,
ducked background of synthetic music. Two injection patterns follow, one after the other:

- every 100 ms: over the measured window, every 100 ms a 100 ms tone at 2700 Hz, a frequency
  the music never reaches, is injected into a random call.
- burst: after the window (and after its last tone could still arrive), one 100 ms tone at
  3100 Hz, also out of the music's reach and apart from the first pattern's, is injected into
  every call at once, from 16 concurrent HTTP clients (an operator starting hold music on every
  call at once). Its target is p99 <= 100 ms at 500 calls; missing it is noted, not a break.

Over the measured window it reports:

- underruns: frames that reach the caller after the audio queued before them has finished
  playing, in a jitter-buffer playout model anchored on each call's first frame. The rule:
  frame k's slot starts at anchor + (k - k_a) * 20 ms, with (anchor, k_a) = (arrival of the
  call's first frame, 0); frame k is late (an underrun) when it arrives strictly after its slot
  started, which is when frame k-1 finished playing; a late frame plays on arrival and becomes
  the new anchor (anchor, k_a) = (its arrival, k). Early frames wait for their slot. Frames
  before the window advance the model; only late frames that arrive in the window are counted
  (and those in the burst phase, separately). There is no tolerance: a frame 1 us late counts.
  (Earlier versions of this benchmark forgave 0.1 ms, so their counts can be lower by frames
  late by less than that; the simulator's own recorder rounds play positions down to whole
  samples, so it would forgive up to 125 us. The server sends 20 ms frames of 160 bytes only
  while a call plays, its lead at once when it starts; a payload of any other size is
  reported, as the model would not match it.)
- inter-arrival gap of our frames per call (pooled): p50 / p99 / max; the lead burst at the
  start of each call is left out.
- inject-to-first-audio, per pattern: from just before the tone's HTTP request is sent (by
  bench/tone_injector.py, a process of its own) to the arrival of the first frame in which the
  tone's Goertzel power clearly dominates (decoded offline afterwards): p50 / p99 / max. In the
  burst each request is timed from just before it is sent, not from the start of the burst
  (a client sends its next request when its last is answered); how long the whole burst took
  to send is reported too (bst span).
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
the first N that breaks (the rule is printed at start; with --baseline-repo, the first N at
which both revisions break), and no step starts after --max-minutes. Writes bench/out/load.json
(with --baseline-repo, the baseline's results under "baseline") and bench/out/load.png.
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
BURST_TONE_HZ = 3100.0  # 62 whole cycles per frame: orthogonal to TONE_HZ over a frame, above the music too
BURST_CLIENTS = 16  # concurrent HTTP clients sending the burst
BURST_TARGET_P99_MS = 100.0  # at 500 calls; missing it is noted, not a break
INJECTOR_START_S = 1.0  # the tone injector's process is started this long before the window opens

# The server's media clock counters, each under every name a revision of the server exported (one run
# reads an old revision and the current one): since the metrics were declared once (metrics.py) the
# late and skipped counters are named for what they count, media clock ticks.
SERVER_COUNTERS = {
    "frames_sent": ("mixer_frames_sent_total",),
    "ticks_late": ("mixer_clock_ticks_late_total", "mixer_frames_late_total"),
    "ticks_skipped": ("mixer_clock_ticks_skipped_total", "mixer_frames_skipped_total"),
}
_COUNTER_KEY = {name: key for key, names in SERVER_COUNTERS.items() for name in names}

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
              f"any tone (of either pattern) not heard, inject-to-audio p99 (every {TONE_INTERVAL_S * 1000:.0f} ms) > "
              f"{MAX_LATENCY_P99_MS:g} ms, webhook answer p99 >= "
              f"{MAX_WEBHOOK_P99_MS:g} ms, or the server's own /metrics show it behind real time (clock ticks "
              f"skipped, or < {MIN_SERVER_FPS:g} frames/s per call). When the load generator is overloaded "
              f"(its loop lags p99 > {MAX_GEN_LAG_P99_MS:g} ms, misses > {MAX_GEN_LATE_TICKS:.1%} of its ticks, or "
              f"its thread uses > {MAX_GEN_LOOP_CPU:g}% of its core) its figures can only be too high: a step that "
              f"passes still passes, one that breaks is GEN-BOUND (the sweep stops too) unless the server's own "
              f"counters show it behind (BREAK+GEN). A burst p99 over its {BURST_TARGET_P99_MS:g} ms target is "
              f"noted, not a break")

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


def tone_scores(payloads: list[bytes], hz: float) -> tuple[Float, Float]:
    """Per 160-byte mu-law frame: share of its energy in the bin of `hz`, and that tone's amplitude."""
    if not payloads:
        return np.zeros(0), np.zeros(0)
    raw = np.frombuffer(b"".join(p[:FRAME_SAMPLES].ljust(FRAME_SAMPLES, b"\xff") for p in payloads),
                        dtype=np.uint8).reshape(-1, FRAME_SAMPLES)
    x = ULAW[raw]
    c, s = x @ np.cos(2 * np.pi * hz * _T), x @ np.sin(2 * np.pi * hz * _T)
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
    label: str = ""  # which revision ran: "old" (the baseline) or "new"; "" without a baseline
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
    burst_sent: int = 0  # the burst pattern: one tone per call, all at once
    burst_failed: int = 0
    burst_heard: int = 0
    burst_p50_ms: float | None = None
    burst_p99_ms: float | None = None
    burst_max_ms: float | None = None
    burst_span_ms: float | None = None  # from the first request to the last one sent
    burst_answer_p99_ms: float | None = None  # HTTP answer time of the burst's requests (sent to answer read)
    burst_underruns: int = 0  # late frames from the burst's first request until its tones could have arrived
    odd_frames: int = 0  # payloads that are not one 20 ms frame (160 bytes), which the playout model assumes
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


def server_counters(text: str) -> dict[str, float]:
    """The media clock counters in a /metrics text, by SERVER_COUNTERS key, whichever revision's
    names and number format it has ("12" from the old hand-written exporter, "12.0" from prometheus-client)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        key = _COUNTER_KEY.get(name)
        if key is not None and value:
            with contextlib.suppress(ValueError):
                out[key] = float(value.split()[0])
    return out


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
        """The server's own media clock counters from /metrics (see server_counters)."""
        try:
            return server_counters(http.get(f"{self.url}/metrics", timeout=5).text)
        except httpx.HTTPError:
            return {}

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


Tones = list[tuple[SimCall, float]]  # (call, time.monotonic() just before the inject request)


@dataclass
class Window:
    """What the measured window and the burst after it leave for the offline analysis."""

    playing: list[SimCall]
    tones: Tones  # every 100 ms, into a random call, in [w0, w1]
    w0: float
    w1: float
    burst: Tones = field(default_factory=list)  # one per call, all at once, from b0 on
    b0: float = 0.0
    b1: float = 0.0  # when the last burst tone has had TONE_SEARCH_S to arrive
    received: dict[int, list[tuple[float, bytes]]] = field(default_factory=dict)  # by id(call)


def run_step(n: int, seconds: float, repo: Path, pin: bool, seed: int, label: str = "") -> StepResult:
    res = StepResult(n=n, label=label)
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
                rng = random.Random(seed + n)
                window = measure(res, seconds, telnyx, server, http, playing, rng)
                burst(res, server, window, rng)
                window.received = {id(c): c.received for c in playing}
            hooks = list(timer.samples)  # set-up, window and burst, not the teardown below
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


def tone_body(hz: float) -> dict[str, Any]:
    return {"tone": {"frequency_hz": hz, "duration_ms": TONE_MS, "level_dbfs": TONE_LEVEL_DBFS}}


def go(injector: subprocess.Popen[str]) -> float:
    """Start the injector's schedule now; returns its start (time.monotonic())."""
    assert injector.stdin is not None
    start = time.monotonic()
    injector.stdin.write(f"{start!r}\n")
    injector.stdin.flush()
    return start


def injector_results(proc: subprocess.Popen[str], timeout_s: float) -> list[tuple[str, float, int | None, float]]:
    """The tones the injector sent: (call_control_id, just before the request, the answer's status
    or None, when the answer was read); the injector is killed if it overstays."""
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
    return [(call_id, t_req, status, t_done) for call_id, t_req, status, t_done in sent]


def measure(res: StepResult, seconds: float, telnyx: FakeTelnyx, server: Server, http: httpx.Client,
            playing: list[SimCall], rng: random.Random) -> Window:
    """The measured window: a tone into a random call every 100 ms (from bench/tone_injector.py,
    on the generator's core); CPU, RSS and loop lag around it. The recordings are left to the caller."""
    rss_base = int((res.rss_base_mb or 0) * 2**20)
    tones: list[tuple[SimCall, float]] = []
    # The injector starts up (a second of its core, at most) before the window, not in it.
    plan = {"mode": "every", "url": server.url, "calls": [c.call_control_id for c in playing], "seconds": seconds,
            "interval_s": TONE_INTERVAL_S,
            # A call gets no second tone while its first may still be playing or on its way.
            "quiet_s": min(1.0, len(playing) * TONE_INTERVAL_S / 2), "seed": rng.randrange(1 << 30),
            "body": tone_body(TONE_HZ)}
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
    for call_id, t_req, status, _ in sent:
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
    if "frames_sent" in delta:
        res.server_fps_per_call = delta["frames_sent"] / len(playing) / (counters1_at - counters0_at)
    if "ticks_late" in delta:
        res.server_late_ticks = int(delta["ticks_late"])
    if "ticks_skipped" in delta:
        res.server_skipped_ticks = int(delta["ticks_skipped"])
    lags = probe.stop()
    res.gen_lag_p99_ms = _ms(pct(lags, 99))
    res.gen_lag_max_ms = _ms(max(lags) if lags else None)
    res.rss_playing_per_call_kb = (server.rss() - rss_base) / len(playing) / 1024
    with contextlib.suppress(psutil.NoSuchProcess):
        res.server_threads = server.worker().num_threads()
    # Let the last tones arrive before the burst or the copying of the recordings.
    if tones and tones[-1][1] > w1 - TONE_SEARCH_S:
        time.sleep(tones[-1][1] + TONE_SEARCH_S - w1)
    return Window(playing, tones, w0, w1)


def burst(res: StepResult, server: Server, window: Window, rng: random.Random) -> None:
    """One tone into every playing call at once, from BURST_CLIENTS concurrent clients (in
    bench/tone_injector.py, as the every-100-ms tones); then wait until the last can have arrived."""
    plan = {"mode": "burst", "url": server.url, "calls": [c.call_control_id for c in window.playing],
            "clients": BURST_CLIENTS, "seed": rng.randrange(1 << 30), "body": tone_body(BURST_TONE_HZ)}
    injector = start_injector(plan)
    try:
        time.sleep(INJECTOR_START_S)
        window.b0 = go(injector)
    except BaseException:
        injector.kill()
        injector.wait()
        raise
    # A client's requests follow each other; even at a second each the burst ends within this.
    sent = injector_results(injector, 60 + len(window.playing) / BURST_CLIENTS)
    by_id = {c.call_control_id: c for c in window.playing}
    for call_id, t_req, status, _ in sent:
        res.burst_sent += 1
        if status == 201:
            window.burst.append((by_id[call_id], t_req))
        else:
            res.burst_failed += 1
    if sent:
        res.burst_span_ms = (sent[-1][1] - sent[0][1]) * 1000
        res.burst_answer_p99_ms = _ms(pct([t_done - t_req for _, t_req, _, t_done in sent], 99))
    window.b1 = (sent[-1][1] if sent else window.b0) + TONE_SEARCH_S
    rest = window.b1 - time.monotonic()
    if rest > 0:
        time.sleep(rest)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def late_frames(arrivals: Float) -> Float:
    """The playout model of the module docstring over one call's frames: how late each frame
    arrived after its slot started, in seconds (> 0: an underrun; 0: on time or early).

    Frame k's slot starts at anchor + (k - k_a) * FRAME_S. In terms of the slack
    s_k = arrival_k - k * FRAME_S that is s_{k_a} + k * FRAME_S, so frame k is late when
    s_k > s_{k_a}, and then becomes the anchor itself: the anchor's slack only ever rises to a
    new, higher slack, so before frame k it is max(s_0 .. s_{k-1}), and frame k is late exactly
    when its slack beats all earlier ones. (The first frame is the first anchor, never late.)
    """
    slack = arrivals - np.arange(arrivals.size) * FRAME_S
    late = np.zeros(arrivals.size)
    if arrivals.size > 1:
        late[1:] = np.maximum(slack[1:] - np.maximum.accumulate(slack)[:-1], 0.0)
    return late


def tone_latencies(window: Window, tones: Tones, hz: float) -> list[float]:
    """Per tone, seconds from its request to the first frame of its call in which `hz` dominates,
    searched up to TONE_SEARCH_S on and before the call's next tone in `tones`; a tone not heard
    is left out."""
    by_call: dict[int, list[float]] = {}
    for call, t_req in tones:
        by_call.setdefault(id(call), []).append(t_req)
    latencies: list[float] = []
    for call in window.playing:
        requests = sorted(by_call.get(id(call), []))
        if not requests:
            continue
        frames = window.received[id(call)]
        arrivals = np.fromiter((a for a, _ in frames), dtype=np.float64, count=len(frames))
        for i, t_req in enumerate(requests):
            stop = min(t_req + TONE_SEARCH_S, requests[i + 1] if i + 1 < len(requests) else np.inf)
            lo, hi = np.searchsorted(arrivals, t_req), np.searchsorted(arrivals, stop)
            fraction, amplitude = tone_scores([p for _, p in frames[lo:hi]], hz)
            hits = np.flatnonzero((fraction >= TONE_MIN_FRACTION) & (amplitude >= TONE_MIN_AMPLITUDE))
            if hits.size:
                latencies.append(arrivals[lo + int(hits[0])] - t_req)
    return latencies


def analyse(res: StepResult, window: Window) -> None:
    w0, w1, b0, b1 = window.w0, window.w1, window.b0, window.b1
    gaps: list[Float] = []
    for call in window.playing:
        frames = window.received[id(call)]
        if not frames:
            continue
        res.odd_frames += sum(1 for _, p in frames if len(p) != FRAME_SAMPLES)
        arrivals = np.fromiter((a for a, _ in frames), dtype=np.float64, count=len(frames))
        late = late_frames(arrivals)
        in_window = (arrivals >= w0) & (arrivals <= w1)
        res.underruns += int(np.count_nonzero(late[in_window]))
        res.underrun_ms += float(late[in_window].sum()) * 1000
        res.burst_underruns += int(np.count_nonzero(late[(arrivals >= b0) & (arrivals <= b1)]))
        res.frames_in_window += int(in_window.sum())
        diffs = np.diff(arrivals)
        pair_inside = in_window[1:] & in_window[:-1]
        pair_inside[: LEAD_BURST - 1] = False  # the lead burst at the start of the call
        gaps.append(diffs[pair_inside])
    res.received_fps_per_call = res.frames_in_window / max(1, len(window.playing)) / max(1e-9, w1 - w0)
    pooled = np.concatenate(gaps) if gaps else np.zeros(0)
    res.gap_p50_ms, res.gap_p99_ms = _ms(pct(pooled, 50)), _ms(pct(pooled, 99))
    res.gap_max_ms = _ms(float(pooled.max()) if pooled.size else None)

    latencies = tone_latencies(window, window.tones, TONE_HZ)
    res.tones_heard = len(latencies)
    res.latency_p50_ms, res.latency_p99_ms = _ms(pct(latencies, 50)), _ms(pct(latencies, 99))
    res.latency_max_ms = _ms(max(latencies) if latencies else None)
    latencies = tone_latencies(window, window.burst, BURST_TONE_HZ)
    res.burst_heard = len(latencies)
    res.burst_p50_ms, res.burst_p99_ms = _ms(pct(latencies, 50)), _ms(pct(latencies, 99))
    res.burst_max_ms = _ms(max(latencies) if latencies else None)


def judge(res: StepResult) -> None:
    r = res.reasons
    if res.error or res.window_s <= 0:
        r.append(res.error or "no measured window")
        res.verdict = "BREAK"
        return
    if res.underruns:
        r.append(f"{res.underruns} underruns")
    if res.burst_underruns:
        r.append(f"{res.burst_underruns} underruns during the burst")
    if res.gap_p99_ms is None or res.gap_p99_ms > MAX_GAP_P99_MS:
        r.append(f"gap p99 {_fmt(res.gap_p99_ms)} ms")
    if res.tones_heard < res.tones_sent:
        r.append(f"{res.tones_sent - res.tones_heard} of {res.tones_sent} tones not heard")
    if res.burst_heard < res.burst_sent or res.burst_sent < res.backgrounds_ok:
        r.append(f"{res.burst_sent - res.burst_heard} of {res.burst_sent} burst tones not heard"
                 + (f", {res.backgrounds_ok - res.burst_sent} not sent" if res.burst_sent < res.backgrounds_ok else ""))
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
    # Notes, which do not change the verdict.
    if res.burst_p99_ms is not None and res.burst_p99_ms > BURST_TARGET_P99_MS:
        r.append(f"burst inject-to-audio p99 {res.burst_p99_ms:.0f} ms, over its {BURST_TARGET_P99_MS:g} ms target")
    if res.odd_frames:
        r.append(f"{res.odd_frames} payloads not of {FRAME_SAMPLES} bytes: the playout model assumes 20 ms frames")
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
    ("bst p50", lambda r: _fmt(r.burst_p50_ms, 0)),
    ("bst p99", lambda r: _fmt(r.burst_p99_ms, 0)),
    ("bst max", lambda r: _fmt(r.burst_max_ms, 0)),
    ("burst", lambda r: f"{r.burst_heard}/{r.burst_sent}"),
    ("bst span", lambda r: _fmt(r.burst_span_ms, 0)),
    ("bst ans99", lambda r: _fmt(r.burst_answer_p99_ms, 0)),
    ("bst und", lambda r: str(r.burst_underruns)),
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


def print_rows(header: list[str], rows: list[list[str]], left: int = 0) -> None:
    """A right-aligned table; its first `left` columns are aligned left."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    print(line(header))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))


def print_table(results: list[StepResult], title: str | None = None) -> None:
    print()
    if title:
        print(title)
    print_rows([c[0] for c in COLUMNS], [[fn(r) for _, fn in COLUMNS] for r in results])
    print(f"\n(times in ms; up = calls playing; inj = inject-to-first-audio, a tone every "
          f"{TONE_INTERVAL_S * 1000:.0f} ms; bst = the same for the burst,\n one tone per call from "
          f"{BURST_CLIENTS} clients at once, span = first to last request sent, ans99 = p99 of the HTTP "
          "answer time,\n und = underruns from the burst's start until its tones could have arrived;\n"
          " hook = webhook answer; KB/idle, KB/play = server RSS per call;\n"
          " sys% = the kernel's part of srv CPU%; srv late = the server's own media clock ticks late/skipped "
          "in the window (its /metrics);\n"
          " fps srv/rx = frames per call per second the server sent (its /metrics) / the simulator read;\n"
          " gen = this load generator (and its tone injector), loop% = its media loop thread, "
          "lag = how late that loop wakes,\n other% = CPU used on the machine by anything else: "
          "above a few % the step shared its cores;\n steal% = of it, time other guests of the host "
          "took from this VM)")
    for r in results:
        if r.reasons:
            print(f"  N={r.n}: {r.verdict}: {'; '.join(r.reasons)}")


def ratio(old: float | None, new: float | None) -> str:
    """new/old, for figures where lower is better: '-' if either is missing or both are 0."""
    if old is None or new is None or (old == 0 and new == 0):
        return "-"
    return "inf" if old == 0 else f"{new / old:.2f}"


def cpu_per_call(r: StepResult) -> float | None:
    """Server CPU over the window, % of one core per playing call."""
    return None if r.server_cpu_pct is None or not r.backgrounds_ok else r.server_cpu_pct / r.backgrounds_ok


# What the comparison shows: (name, figure, decimals).
COMPARED: list[tuple[str, Callable[[StepResult], float | None], int]] = [
    ("underruns", lambda r: float(r.underruns), 0),
    ("gap p99 (ms)", lambda r: r.gap_p99_ms, 1),
    (f"inject p99, every {TONE_INTERVAL_S * 1000:.0f} ms (ms)", lambda r: r.latency_p99_ms, 0),
    ("inject p99, burst (ms)", lambda r: r.burst_p99_ms, 0),
    ("server CPU per call (% core)", cpu_per_call, 3),
]


def print_comparison(old: list[StepResult], new: list[StepResult], old_rev: str, new_rev: str) -> None:
    """One table: per N, old, new and new/old of the figures in COMPARED, and both verdicts."""
    print(f"\nold = {old_rev}\nnew = {new_rev}")
    rows: list[list[str]] = []
    for o, n in zip(old, new, strict=True):
        for i, (name, figure, digits) in enumerate(COMPARED):
            a, b = figure(o), figure(n)
            rows.append([str(n.n) if i == 0 else "", name, _fmt(a, digits), _fmt(b, digits), ratio(a, b)])
        rows.append(["", "verdict", o.verdict, n.verdict, ""])
    print_rows(["N", "figure", "old", "new", "new/old"], rows, left=2)
    print("(new/old below 1 is better for every figure; '-' where either is missing or both are 0; a figure of a "
          "step that broke\n for another reason, or that was GEN-BOUND, compares little: see each table's notes above)")


def plot(results: list[StepResult], path: Path, baseline: list[StepResult] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    # (label, steps, figures, style, colour): the baseline's in its revision's colour, dotted.
    series = [("gap p99", results, [r.gap_p99_ms for r in results], "o-", "C0"),
              ("gap max", results, [r.gap_max_ms for r in results], "s--", "C1"),
              ("inject-to-audio p99", results, [r.latency_p99_ms for r in results], "^-", "C2"),
              ("burst inject-to-audio p99", results, [r.burst_p99_ms for r in results], "v-", "C3")]
    if baseline:
        series += [("baseline gap p99", baseline, [r.gap_p99_ms for r in baseline], "o:", "C0"),
                   ("baseline inject-to-audio p99", baseline, [r.latency_p99_ms for r in baseline], "^:", "C2"),
                   ("baseline burst p99", baseline, [r.burst_p99_ms for r in baseline], "v:", "C3")]
    for label, steps, values, style, colour in series:
        ax.plot([r.n for r in steps], [np.nan if v is None else v for v in values], style, color=colour,
                label=label, alpha=0.6 if label.startswith("baseline") else 1.0)
    ax.axhline(MAX_GAP_P99_MS, color="grey", linestyle=":", linewidth=1, label=f"gap p99 limit {MAX_GAP_P99_MS:g} ms")
    for r in results:
        if r.verdict != "ok":
            ax.axvline(r.n, color="red", alpha=0.3, linewidth=6)
    ax.set_xlabel("concurrent calls (N)")
    ax.set_ylabel("ms")
    shown = [v for _, _, vs, _, _ in series for v in vs if v is not None]
    if shown and max(shown) > 20 * max(1.0, min(shown)):
        ax.set_yscale("log")  # a broken step can be a hundred times the healthy ones
    else:
        ax.set_ylim(bottom=0)
    ax.set_title("Server under load: frame gaps and inject-to-audio latency (red: step broke)"
                 + ("\n(dotted: the baseline revision)" if baseline else ""))
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def estimate_s(counts: list[int], seconds: float, revisions: int = 1) -> float:
    burst_s = INJECTOR_START_S + TONE_SEARCH_S + 1
    per_step = [8 + 2 * n / SETUP_RATE + SETUP_SETTLE_S + WARMUP_S + seconds + TONE_SEARCH_S + burst_s + n / 100 + 5
                for n in counts]
    return float(sum(per_step)) * revisions


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
    parser.add_argument("--baseline-repo", type=Path, default=None,
                        help="also run every N against the app.py in this directory (e.g. a git worktree of an older "
                             "revision), before --repo's, and print the two side by side")
    args = parser.parse_args()
    counts = [10, 25] if args.quick else sorted({int(c) for c in args.counts.split(",") if c.strip()})
    seconds = 5.0 if args.quick else args.seconds
    if not counts or min(counts) < 1 or seconds < 1:
        parser.error("need positive counts and --seconds >= 1")
    # (label, directory holding the app.py to run); the baseline runs first at every N.
    revisions: list[tuple[str, Path]] = [("new" if args.baseline_repo else "", args.repo.resolve())]
    if args.baseline_repo is not None:
        revisions.insert(0, ("old", args.baseline_repo.resolve()))
    for _, repo in revisions:
        if not (repo / "app.py").is_file():
            parser.error(f"no app.py in {repo}")

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
    revs = {label: revision(repo) for label, repo in revisions}
    for label, repo in revisions:
        print(f"server{f' ({label})' if label else ''}: {repo / 'app.py'} at {revs[label]}  "
              f"OUTBOUND_LEAD_MS={LEAD_MS}  SERVER_THREADS={HTTP_THREADS}")
    print(f"sweep: N = {', '.join(map(str, counts))}; window {seconds:g} s; set-up {SETUP_RATE:g} calls/s; "
          f"tone {TONE_HZ:g} Hz x {TONE_MS} ms every {TONE_INTERVAL_S * 1000:.0f} ms; then a burst of one "
          f"{BURST_TONE_HZ:g} Hz tone per call from {BURST_CLIENTS} clients")
    print(f"rule: {BREAK_RULE}")
    if len(revisions) > 1:
        print("each N runs against old, then new (same seed); the sweep stops at an N where both break")
    print(f"estimate: at most {estimate_s(counts, seconds, len(revisions)) / 60:.1f} min (less if a step breaks); "
          f"hard stop for new steps after {args.max_minutes:g} min")

    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[StepResult]] = {label: [] for label, _ in revisions}
    t_run = time.monotonic()
    for n in counts:
        if time.monotonic() - t_run > args.max_minutes * 60:
            print(f"time budget spent; not running N={n}")
            break
        verdicts: list[str] = []
        for label, repo in revisions:
            name = f"N={n}{f' {label}' if label else ''}"
            if args.wait_quiet > 0:
                other = wait_quiet(args.wait_quiet)
                if other >= MAX_OTHER_CPU:
                    print(f"\nthe machine is busy with other work ({other:.0f}% of a core); measuring anyway")
            print(f"\n{name}: setting up ...", flush=True)
            try:
                res = run_step(n, seconds, repo, pin, args.seed, label)
            except (RuntimeError, TimeoutError, OSError, httpx.HTTPError) as exc:
                res = StepResult(n=n, label=label, error=f"{type(exc).__name__}: {exc}")
                judge(res)
            results[label].append(res)
            verdicts.append(res.verdict)
            print(f"{name}: {res.verdict} in {res.step_s:.0f} s: underruns {res.underruns}, gap p99 "
                  f"{_fmt(res.gap_p99_ms)} ms, inject p99 {_fmt(res.latency_p99_ms, 0)} ms, burst p99 "
                  f"{_fmt(res.burst_p99_ms, 0)} ms, server CPU {_fmt(res.server_cpu_pct, 0)}%, generator loop "
                  f"{_fmt(res.gen_loop_cpu_pct, 0)}%", flush=True)
        if all(v != "ok" for v in verdicts) and not args.no_stop:
            break

    for label, _ in revisions:
        print_table(results[label], f"{label}: {revs[label]}" if label else None)
    if args.baseline_repo is not None:
        print_comparison(results["old"], results["new"], revs["old"], revs["new"])
    print(f"\ntotal {time.monotonic() - t_run:.0f} s")
    current = results[revisions[-1][0]]
    document: dict[str, Any] = {
        "machine": info, "revision": revs[revisions[-1][0]], "pinned": pin, "window_s": seconds, "counts": counts,
        "lead_ms": LEAD_MS, "rule": BREAK_RULE, "tone_hz": TONE_HZ, "burst_tone_hz": BURST_TONE_HZ,
        "burst_clients": BURST_CLIENTS, "results": [asdict(r) for r in current]}
    if args.baseline_repo is not None:
        document["baseline"] = {"repo": str(revisions[0][1]), "revision": revs["old"],
                                "results": [asdict(r) for r in results["old"]]}
    (args.out / "load.json").write_text(json.dumps(document, indent=2) + "\n")
    plot(current, args.out / "load.png", results.get("old"))
    print(f"wrote {args.out / 'load.json'} and {args.out / 'load.png'}")
    for label, _ in revisions:
        broke = [r for r in results[label] if r.verdict != "ok"]
        name = f"{label}: " if label else ""
        print(f"{name}first breaking N: {broke[0].n} ({broke[0].verdict})" if broke else f"{name}no step broke")
    return 0


if __name__ == "__main__":
    sys.exit(main())
