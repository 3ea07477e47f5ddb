"""Scale-out benchmark: one process against two nodes on one Redis and one PostgreSQL, side by side.

    .venv/bin/python bench/bench_cluster.py                 # 100 calls, 20 s windows
    .venv/bin/python bench/bench_cluster.py --quick         # 20 calls, 5 s windows (smoke check)
    .venv/bin/python bench/bench_cluster.py --calls 300 --seconds 20

Three configurations, one after the other, each with a fresh simulator and fresh servers:

- one process: `python app.py` with its defaults (SQLite event log), as bench_load runs it.
- two nodes, split: `python app.py` twice, with REDIS_URL, DATABASE_URL and CLUSTER_SECRET pointing
  at a real redis-server and a real PostgreSQL this script starts (simulator/servers.py) and
  NODE_ID a and b, in the split layout of tests/e2e/test_cluster.py: Telnyx's webhooks and every
  REST request go to node a, every media socket to node b (STREAM_WEBSOCKET_URL). So each call is
  claimed by a at its first webhook, taken over by b when its socket arrives, and each inject is
  relayed a -> b.
- two nodes, mixed: the same two nodes, each a front and a media node. Telnyx's webhook URL
  alternates between a and b call after call (a call's later webhooks go wherever it points
  then); each node asks Telnyx to stream to the other one (STREAM_WEBSOCKET_URL); backgrounds
  alternate and each tone goes to a or b at random. So about half of the requests reach the
  call's owner and half are relayed, in both directions.

In each: N calls are set up through signed webhooks at a bounded rate, each with talk-spurt caller
audio and a looping, ducked background (bench_load's music) injected through a front node. Then:

1. the measured window (--seconds): every 100 ms a 100 ms 2700 Hz tone into a random call, sent
   to a front node by bench/tone_injector.py from a process of its own. Over this window:
   - inject-to-first-audio p50/p99: from just before the tone's POST to the kernel's receive
     stamp of the first frame of that call in which the tone dominates (bench_load's rule);
   - underruns: bench_load's jitter-buffer playout model (a frame late by any amount counts);
     and the simpler rule "gaps > 40 ms": consecutive frames of one call more than two frame
     times apart, counted per call and summed; gap p99 pooled over calls;
   - CPU of the app processes, of Redis and PostgreSQL, of this generator, and of the rest;
   - the media nodes' own clock counters from /metrics (ticks late/skipped, summed).
   Webhook answer p50/p99 covers every webhook the simulator sent in set-up and window (timed
   around the simulator's post, bench_load's WebhookTimer).
2. the quiet window (--seconds again): no request at all, only the calls playing (and the
   caller audio on their sockets). Redis's INFO commandstats before and after it give Redis
   commands per second in total and per call per second (the second INFO's count of the first
   is taken out); `redis-cli monitor` meanwhile tells which of them were the nodes' heartbeat
   (SET mixer:node:<id>, SADD mixer:nodes) and which anything else: per call per second, the
   latter is the media path's cost, whose target is 0.

The server side (app processes, Redis, PostgreSQL) is pinned to CPU 0 and this generator (with
the tone injector) to CPU 1, as in bench_load: both configurations get the same one core, and
the generator's timing does not depend on them.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import logging
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_load import (  # noqa: E402
    API_KEY,
    FRAME_S,
    HTTP_THREADS,
    INJECTOR_START_S,
    LEAD_BURST,
    LEAD_MS,
    SETUP_RATE,
    SETUP_SETTLE_S,
    TONE_HZ,
    TONE_INTERVAL_S,
    TONE_SEARCH_S,
    WARMUP_S,
    Float,
    WebhookTimer,
    Window,
    _fmt,
    _ms,
    cpu_seconds,
    go,
    injector_results,
    late_frames,
    machine_busy_seconds,
    music_wav,
    paced,
    pct,
    print_rows,
    revision,
    server_counters,
    start_injector,
    tone_body,
    tone_latencies,
    wait_quiet,
)
from simulator import CallerAudio, FakeTelnyx, SimCall  # noqa: E402
from simulator.cli import free_port  # noqa: E402
from simulator.servers import PostgresServer, RedisServer, started  # noqa: E402

SECRET = "bench-cluster-secret-0123456789"
LONG_GAP_S = 2 * FRAME_S  # the simple late-frame rule: a gap over two frame times (40 ms)
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
SERVER_CPU = 0  # the app processes, Redis and PostgreSQL
GENERATOR_CPU = 1  # this process (the simulator) and the tone injector


class Node:
    """`python app.py` on a free port (or `port`) against the simulator, with `env` on top of the
    settings bench_load gives its server; pinned to `cpu`."""

    def __init__(self, name: str, telnyx: FakeTelnyx, workdir: Path, env: dict[str, str], cpu: int | None,
                 port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        environ = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port),
                   "DATABASE_PATH": str(workdir / "db.sqlite3"), "MEDIA_DIR": str(workdir),
                   "TELNYX_API_KEY": API_KEY, "TELNYX_BASE_URL": telnyx.base_url,
                   "TELNYX_PUBLIC_KEY": telnyx.public_key, "LOG_LEVEL": "WARNING",
                   "SERVER_THREADS": str(HTTP_THREADS), "MAX_ACTIVE_INJECTIONS": "16",
                   "OUTBOUND_LEAD_MS": str(LEAD_MS), "PYTHONUNBUFFERED": "1", **env}
        self.log_path = workdir / "server.log"
        self._log = self.log_path.open("w")

        def pin() -> None:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})

        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=environ, stdout=self._log,
                                     stderr=subprocess.STDOUT, preexec_fn=pin)
        self.master = psutil.Process(self.proc.pid)

    def health(self, http: httpx.Client) -> dict[str, Any] | None:
        try:
            r = http.get(f"{self.url}/health", timeout=2)
            return dict(r.json()) if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def wait_healthy(self, http: httpx.Client, nodes: int = 1) -> None:
        """Until /health answers 200 and (in a cluster) names `nodes` nodes alive."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            health = self.health(http)
            if health is not None and len(health.get("nodes", [self.name])) >= nodes:
                return
            time.sleep(0.1)
        raise RuntimeError(f"node {self.name} not healthy within {START_TIMEOUT_S:g} s:\n{self.log_tail()}")

    def procs(self) -> list[psutil.Process]:
        try:
            return [self.master, *self.master.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def counters(self, http: httpx.Client) -> dict[str, float]:
        """bench_load's media clock counters from /metrics; a node labels every sample with
        {node="..."}, which bench_load's parser does not expect, so the labels go first."""
        try:
            text = http.get(f"{self.url}/metrics", timeout=5).text
        except httpx.HTTPError:
            return {}
        return server_counters("\n".join(re.sub(r"^([^{ ]+)\{[^}]*\}", r"\1", line) for line in text.splitlines()))

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


@dataclass
class Result:
    config: str
    calls: int = 0
    playing: int = 0
    tones_sent: int = 0
    tones_failed: int = 0
    tones_heard: int = 0
    inject_p50_ms: float | None = None
    inject_p99_ms: float | None = None
    webhooks: int = 0
    webhook_failures: int = 0
    webhook_p50_ms: float | None = None
    webhook_p99_ms: float | None = None
    underruns: int = 0
    long_gaps: int = 0
    gap_p99_ms: float | None = None
    gap_max_ms: float | None = None
    ticks_late: int | None = None
    ticks_skipped: int | None = None
    app_cpu_pct: float | None = None
    services_cpu_pct: float | None = None  # Redis and PostgreSQL
    gen_cpu_pct: float | None = None
    other_cpu_pct: float | None = None
    quiet_s: float = 0.0
    redis_commands: dict[str, int] | None = None  # by command, over the quiet window
    monitor_heartbeat: int | None = None  # of the commands MONITOR saw then: on the heartbeat's keys
    monitor_other: int | None = None  # and on any other key (the calls)
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def redis_per_s(self) -> float | None:
        if self.redis_commands is None or self.quiet_s <= 0:
            return None
        return sum(self.redis_commands.values()) / self.quiet_s

    @property
    def redis_per_call_s(self) -> float | None:
        """Every command (INFO commandstats) over calls x seconds: the heartbeat spread over the calls included."""
        total = self.redis_per_s
        return None if total is None or not self.playing else total / self.playing

    @property
    def redis_calls_per_call_s(self) -> float | None:
        """Commands on keys other than the heartbeat's (MONITOR) over calls x seconds: the media path's share."""
        if self.monitor_other is None or self.quiet_s <= 0 or not self.playing:
            return None
        return self.monitor_other / self.playing / self.quiet_s


@dataclass
class Services:
    redis: Any  # simulator.servers.RedisServer
    postgres: Any  # simulator.servers.PostgresServer
    database_url: str


@contextlib.contextmanager
def pinned_to(cpu: int | None) -> Iterator[None]:
    """This process (and so whatever it starts meanwhile) on `cpu`; back to where it was after."""
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextlib.contextmanager
def cluster_services(cpu: int | None) -> Iterator[Services]:
    """A fresh redis-server and PostgreSQL (with a database of its own), on `cpu`."""
    with pinned_to(cpu):
        redis_server = started(RedisServer)
        try:
            postgres = started(PostgresServer)
        except BaseException:
            redis_server.close()
            raise
    try:
        yield Services(redis_server, postgres, postgres.create_database("bench"))
    finally:
        for server in (postgres, redis_server):
            with contextlib.suppress(Exception):  # the numbers are in; a slow shutdown changes nothing
                server.close()


def service_procs(services: Services | None) -> list[psutil.Process]:
    """Redis's and PostgreSQL's processes (PostgreSQL's backends are its children)."""
    if services is None:
        return []
    procs: list[psutil.Process] = []
    for server in (services.redis, services.postgres):
        proc = getattr(server, "_process", None)  # services.py keeps its Popen private
        if proc is None:
            continue
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(proc.pid)
            procs += [root, *root.children(recursive=True)]
    return procs


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command so far, from INFO commandstats."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


LAYOUTS = ("one process", "two nodes, split", "two nodes, mixed")


def run_config(config: str, n: int, seconds: float, pin: bool, seed: int) -> Result:
    res = Result(config=config, calls=n)
    gc.collect()
    gc.disable()  # as in bench_load: a full collection of the recordings stalls the simulator's loop
    try:
        if config == "one process":
            _run(res, n, seconds, pin, seed, None)
        else:
            with cluster_services(SERVER_CPU if pin else None) as services:
                _run(res, n, seconds, pin, seed, services, mixed=config.endswith("mixed"))
    except (RuntimeError, TimeoutError, OSError, httpx.HTTPError, redis.RedisError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        gc.enable()
        gc.collect()
    return res


def _run(res: Result, n: int, seconds: float, pin: bool, seed: int, services: Services | None,
         mixed: bool = False) -> None:
    cpu = SERVER_CPU if pin else None
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp, \
            FakeTelnyx(api_key=API_KEY, max_calls=n + 16, webhook_workers=8) as telnyx, \
            httpx.Client(timeout=10, trust_env=False, limits=httpx.Limits(max_connections=8)) as http:
        timer = WebhookTimer(telnyx)
        nodes: list[Node] = []
        window: Window | None = None
        try:
            if services is None:
                nodes.append(Node("a", telnyx, Path(tmp) / "a", {}, cpu))
            else:
                port_a, port_b = free_port(), free_port()
                shared = {"REDIS_URL": services.redis.url, "DATABASE_URL": services.database_url,
                          "CLUSTER_SECRET": SECRET}
                # Split: every socket on b. Mixed: each node sends Telnyx's sockets to the other.
                socket_of_a = f"ws://127.0.0.1:{port_b}/stream"
                socket_of_b = f"ws://127.0.0.1:{port_a if mixed else port_b}/stream"
                nodes.append(Node("a", telnyx, Path(tmp) / "a",
                                  {**shared, "NODE_ID": "a", "STREAM_WEBSOCKET_URL": socket_of_a}, cpu, port=port_a))
                nodes.append(Node("b", telnyx, Path(tmp) / "b",
                                  {**shared, "NODE_ID": "b", "STREAM_WEBSOCKET_URL": socket_of_b}, cpu, port=port_b))
            for node in nodes:
                node.wait_healthy(http, nodes=len(nodes))
            # Split (or one process): webhooks and REST to a, the sockets on b (or a alone).
            # Mixed: webhooks and REST to both, the sockets on both.
            fronts = nodes if mixed else nodes[:1]
            media = nodes if mixed else nodes[-1:]
            telnyx.webhook_url = f"{fronts[0].url}/webhooks/voice"
            playing = set_up(res, n, telnyx, fronts, media, http)
            rng = random.Random(seed)
            window = measure(res, seconds, fronts, media, nodes, services, http, playing, rng)
            window.received = {id(c): c.received for c in playing}
            hooks = list(timer.samples)  # set-up and window
            if services is not None:
                quiet(res, seconds, services)
        finally:
            for node in reversed(nodes):
                node.stop()
            telnyx.stop()
    analyse(res, window)
    res.webhooks = len(hooks)
    res.webhook_failures = sum(1 for _, _, status in hooks if status is None or not 200 <= status < 300)
    durations = [d for _, d, _ in hooks]
    res.webhook_p50_ms, res.webhook_p99_ms = _ms(pct(durations, 50)), _ms(pct(durations, 99))


def set_up(res: Result, n: int, telnyx: FakeTelnyx, fronts: list[Node], media: list[Node],
           http: httpx.Client) -> list[SimCall]:
    """N calls streaming (their sockets on the `media` nodes), their webhooks to the `fronts` in
    turn, then a looping ducked background on each through the `fronts` in turn."""
    deadline = time.monotonic() + 30.0 + 3 * n / SETUP_RATE
    caller_audio = CallerAudio.speech_like(seed=5)
    calls: list[SimCall] = []

    def place(i: int) -> None:
        telnyx.webhook_url = f"{fronts[i % len(fronts)].url}/webhooks/voice"
        calls.append(telnyx.place_call(caller_audio=caller_audio))

    paced(n, SETUP_RATE, place, deadline)
    streaming: list[SimCall] = []
    for call in calls:
        with contextlib.suppress(TimeoutError, RuntimeError):
            call.wait_streaming(timeout=max(0.1, deadline - time.monotonic()))
            streaming.append(call)
    if len(streaming) < n:
        raise RuntimeError(f"only {len(streaming)} of {n} calls streaming")
    def sessions() -> dict[str, int]:
        return {node.name: (node.health(http) or {}).get("active_sessions", -1) for node in {*fronts, *media}}

    while sum(sessions()[node.name] for node in media) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    if len(sessions()) > 1:
        res.notes.append("sessions after set-up: " + ", ".join(f"node {k} {v}" for k, v in sorted(sessions().items())))
    time.sleep(SETUP_SETTLE_S)
    background = {"audio_base64": base64.b64encode(music_wav()).decode(), "loop": True, "duck": True,
                  "gain_db": -10, "label": "bg"}
    playing: list[SimCall] = []

    def start_background(i: int) -> None:
        call = streaming[i]
        with contextlib.suppress(httpx.HTTPError):
            r = http.post(f"{fronts[i % len(fronts)].url}/streams/{call.call_control_id}/inject", json=background)
            if r.status_code == 201:
                playing.append(call)
            elif len(res.notes) < 3:
                res.notes.append(f"background inject answered {r.status_code}: {r.text[:200]}")

    paced(n, SETUP_RATE, start_background, deadline)
    res.playing = len(playing)
    if len(playing) < n:
        raise RuntimeError(f"only {len(playing)} of {n} backgrounds started")
    time.sleep(WARMUP_S)
    return playing


def measure(res: Result, seconds: float, fronts: list[Node], media: list[Node], nodes: list[Node],
            services: Services | None, http: httpx.Client, playing: list[SimCall], rng: random.Random) -> Window:
    """The measured window: a tone into a random call every 100 ms, through a random front; CPU around it."""
    plan = {"mode": "every", "urls": [front.url for front in fronts], "calls": [c.call_control_id for c in playing],
            "seconds": seconds,
            "interval_s": TONE_INTERVAL_S, "quiet_s": min(1.0, len(playing) * TONE_INTERVAL_S / 2),
            "seed": rng.randrange(1 << 30), "body": tone_body(TONE_HZ)}
    injector = start_injector(plan)
    me = psutil.Process()

    def app_procs() -> list[psutil.Process]:
        return [p for node in nodes for p in node.procs()]

    try:
        time.sleep(INJECTOR_START_S)
        counters0 = media_counters(media, http)
        app0, svc0, gen0, busy0 = (cpu_seconds(app_procs()), cpu_seconds(service_procs(services)),
                                   cpu_seconds([me]), machine_busy_seconds())
        inj0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        w0 = go(injector)
    except BaseException:
        injector.kill()
        injector.wait()
        raise
    sent = injector_results(injector, INJECTOR_START_S + seconds + 60)
    rest = w0 + seconds - time.monotonic()
    if rest > 0:
        time.sleep(rest)
    w1 = time.monotonic()
    w = w1 - w0
    app1, svc1, gen1, busy1 = (cpu_seconds(app_procs()), cpu_seconds(service_procs(services)),
                               cpu_seconds([me]), machine_busy_seconds())
    inj1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the injector has exited: it is among the children
    gen1 += (inj1.ru_utime + inj1.ru_stime) - (inj0.ru_utime + inj0.ru_stime)
    res.app_cpu_pct = 100 * (app1 - app0) / w
    res.services_cpu_pct = 100 * (svc1 - svc0) / w if services is not None else None
    res.gen_cpu_pct = 100 * (gen1 - gen0) / w
    res.other_cpu_pct = max(0.0, 100 * ((busy1 - busy0) - (app1 - app0) - (svc1 - svc0) - (gen1 - gen0)) / w)
    counters1 = media_counters(media, http)
    if "ticks_late" in counters1:
        res.ticks_late = int(counters1["ticks_late"] - counters0.get("ticks_late", 0))
    if "ticks_skipped" in counters1:
        res.ticks_skipped = int(counters1["ticks_skipped"] - counters0.get("ticks_skipped", 0))
    by_id = {c.call_control_id: c for c in playing}
    tones: list[tuple[SimCall, float]] = []
    for call_id, t_req, status, _ in sent:
        res.tones_sent += 1
        if status == 201:
            tones.append((by_id[call_id], t_req))
        else:
            res.tones_failed += 1
    # Let the last tones arrive (and the window's requests finish) before the quiet window.
    last = tones[-1][1] if tones else w1
    if last + TONE_SEARCH_S > time.monotonic():
        time.sleep(last + TONE_SEARCH_S - time.monotonic())
    return Window(playing, tones, w0, w1)


def media_counters(media: list[Node], http: httpx.Client) -> dict[str, float]:
    """The media clock counters of the media nodes, summed."""
    total: dict[str, float] = {}
    for node in media:
        for key, value in node.counters(http).items():
            total[key] = total.get(key, 0.0) + value
    return total


HEARTBEAT_KEYS = ("mixer:node:", "mixer:nodes")  # cluster/directory.py: a node's lease and the set of nodes


class Monitor:
    """`redis-cli monitor`: every command Redis runs while it is open, to tell the heartbeat from the rest.

    Started before the first INFO of the quiet window, so INFO commandstats does not count its
    MONITOR; only what it saw between the bench's two INFO commands counts. (redis-cli's raw output,
    not redis-py's monitor parser, which gives up on a JSON argument.)"""

    def __init__(self, port: int, path: Path) -> None:
        self._path = path
        self._file = path.open("w")
        self._proc = subprocess.Popen([shutil.which("redis-cli") or "redis-cli", "-p", str(port), "monitor"],
                                      stdout=self._file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while not path.read_text().startswith("OK"):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self._proc.kill()
                self._proc.wait()
                self._file.close()
                raise RuntimeError(f"redis-cli monitor did not start: {path.read_text()[:200]!r}")
            time.sleep(0.05)

    def stop(self) -> tuple[int, list[str]]:
        """The number of heartbeat commands seen, and every other command (name and first key)."""
        self._proc.terminate()
        self._proc.wait(5)
        self._file.close()
        commands = [re.findall(r'"((?:[^"\\]|\\.)*)"', line.partition("] ")[2])[:2]
                    for line in self._path.read_text(errors="replace").splitlines()[1:]]
        # Only what ran between the window's two INFO commands, as INFO commandstats counts it.
        infos = [i for i, words in enumerate(commands) if words and words[0].upper() == "INFO"]
        heartbeat, other = 0, []
        for words in commands[infos[0] + 1:infos[-1]] if len(infos) >= 2 else []:
            if len(words) == 2 and words[1].startswith(HEARTBEAT_KEYS):
                heartbeat += 1
            else:
                other.append(" ".join(words))
        return heartbeat, other


def quiet(res: Result, seconds: float, services: Services) -> None:
    """Redis commands over `seconds` of calls playing with no request at all."""
    monitor = Monitor(services.redis.port, Path(services.redis.dir) / "monitor.log")
    client = redis.Redis.from_url(services.redis.url, socket_timeout=5)
    try:
        before = commandstats(client)
        t0 = time.monotonic()
        time.sleep(seconds)
        after = commandstats(client)
        res.quiet_s = time.monotonic() - t0
    finally:
        client.close()
        res.monitor_heartbeat, others = monitor.stop()
        res.monitor_other = len(others)
        if others:
            res.notes.append(f"Redis commands other than the heartbeat in the quiet window: {others[:10]}")
    delta = {name: calls - before.get(name, 0) for name, calls in after.items()}
    delta["info"] = delta.get("info", 0) - 1  # the first INFO, counted in the second
    res.redis_commands = {name: calls for name, calls in sorted(delta.items()) if calls > 0}


def analyse(res: Result, window: Window | None) -> None:
    if window is None:
        return
    gaps: list[Float] = []
    for call in window.playing:
        frames = window.received[id(call)]
        if not frames:
            continue
        arrivals = np.fromiter((a for a, _ in frames), dtype=np.float64, count=len(frames))
        late = late_frames(arrivals)
        in_window = (arrivals >= window.w0) & (arrivals <= window.w1)
        res.underruns += int(np.count_nonzero(late[in_window]))
        pair_inside = in_window[1:] & in_window[:-1]
        pair_inside[: LEAD_BURST - 1] = False  # the lead burst at the start of the call
        diffs = np.diff(arrivals)[pair_inside]
        res.long_gaps += int(np.count_nonzero(diffs > LONG_GAP_S))
        gaps.append(diffs)
    pooled = np.concatenate(gaps) if gaps else np.zeros(0)
    res.gap_p99_ms = _ms(pct(pooled, 99))
    res.gap_max_ms = _ms(float(pooled.max()) if pooled.size else None)
    latencies = tone_latencies(window, window.tones, TONE_HZ)
    res.tones_heard = len(latencies)
    res.inject_p50_ms, res.inject_p99_ms = _ms(pct(latencies, 50)), _ms(pct(latencies, 99))


ROWS: list[tuple[str, Callable[[Result], str]]] = [
    ("calls playing", lambda r: f"{r.playing}/{r.calls}"),
    ("inject-to-first-audio p50 (ms)", lambda r: _fmt(r.inject_p50_ms, 0)),
    ("inject-to-first-audio p99 (ms)", lambda r: _fmt(r.inject_p99_ms, 0)),
    ("tones heard / sent", lambda r: f"{r.tones_heard}/{r.tones_sent}"),
    ("webhook answer p50 (ms)", lambda r: _fmt(r.webhook_p50_ms, 0)),
    ("webhook answer p99 (ms)", lambda r: _fmt(r.webhook_p99_ms, 0)),
    ("webhooks (failed)", lambda r: f"{r.webhooks} ({r.webhook_failures})"),
    ("underruns (playout model)", lambda r: str(r.underruns)),
    ("gaps > 40 ms", lambda r: str(r.long_gaps)),
    ("gap p99 / max (ms)", lambda r: f"{_fmt(r.gap_p99_ms)} / {_fmt(r.gap_max_ms)}"),
    ("media clock ticks late / skipped", lambda r: "-" if r.ticks_late is None
     else f"{r.ticks_late} / {r.ticks_skipped}"),
    ("app CPU (% of a core)", lambda r: _fmt(r.app_cpu_pct, 0)),
    ("Redis + PostgreSQL CPU (%)", lambda r: _fmt(r.services_cpu_pct, 0)),
    ("generator CPU (%)", lambda r: _fmt(r.gen_cpu_pct, 0)),
    ("other CPU (%)", lambda r: _fmt(r.other_cpu_pct, 0)),
    ("Redis commands/s, quiet (all)", lambda r: _fmt(r.redis_per_s, 2)),
    ("  of them heartbeat / other", lambda r: "-" if r.monitor_heartbeat is None
     else f"{r.monitor_heartbeat / r.quiet_s:.2f} / {(r.monitor_other or 0) / r.quiet_s:.2f}"),
    ("Redis commands/call/s, all", lambda r: _fmt(r.redis_per_call_s, 3)),
    ("Redis commands/call/s, not heartbeat", lambda r: _fmt(r.redis_calls_per_call_s, 3)),
]


def print_results(results: list[Result], seconds: float) -> None:
    print()
    print_rows(["metric", *(r.config for r in results)], [[name, *(fn(r) for r in results)] for name, fn in ROWS],
               left=1)
    print(f"\n(window {seconds:g} s: a {TONE_HZ:g} Hz tone every {TONE_INTERVAL_S * 1000:.0f} ms into a random "
          "call, sent to a front node; inject-to-first-audio = from just before the POST to the first frame\n"
          " of that call in which the tone dominates; webhook answer = every signed webhook POST in set-up and "
          "window; underruns = bench_load's playout model, any lateness counts;\n"
          f" gaps > 40 ms = consecutive frames of a call over {LONG_GAP_S * 1000:.0f} ms apart, summed over calls; "
          "ticks = the media nodes' own /metrics; quiet = a second window of the same length\n"
          " with no request at all: Redis INFO commandstats before and after it (all), MONITOR meanwhile for which "
          "keys (heartbeat = mixer:node:*, mixer:nodes))")
    for r in results:
        if r.redis_commands is not None:
            print(f"{r.config}: Redis commands in the quiet window ({r.quiet_s:.1f} s): "
                  + (", ".join(f"{name} {calls}" for name, calls in r.redis_commands.items()) or "none"))
        for note in r.notes:
            print(f"{r.config}: {note}")
        if r.error:
            print(f"{r.config}: FAILED: {r.error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=100, help="concurrent calls in each configuration")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window, and the quiet window")
    parser.add_argument("--quick", action="store_true", help="20 calls, 5 s windows (smoke check)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--layouts", type=lambda s: s.split(","), default=list(LAYOUTS),
                        help=f"comma-separated, of: {', '.join(LAYOUTS)}")
    parser.add_argument("--wait-quiet", type=float, default=30.0,
                        help="before each configuration, wait up to this many seconds for other processes to go idle")
    args = parser.parse_args()
    n, seconds = (20, 5.0) if args.quick else (args.calls, args.seconds)
    if n < 1 or seconds < 1:
        parser.error("need --calls >= 1 and --seconds >= 1")
    if unknown := set(args.layouts) - set(LAYOUTS):
        parser.error(f"unknown layouts {sorted(unknown)}; choose from {', '.join(LAYOUTS)}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 16 * n + 1024))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    pin = len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, {GENERATOR_CPU})
    logging.basicConfig(level=logging.ERROR)  # the simulator's teardown warnings are not news here
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}; server at {revision(ROOT)}")
    print(f"pinning: app processes, Redis and PostgreSQL -> CPU {SERVER_CPU}; simulator and tone injector -> "
          f"CPU {GENERATOR_CPU}" if pin else "pinning: off (fewer than 2 usable CPUs)")
    print(f"{n} calls; windows {seconds:g} s; split: webhooks and REST to node a, media sockets on node b; "
          "mixed: webhooks, REST and sockets on both")
    results: list[Result] = []
    t_run = time.monotonic()
    for config in args.layouts:
        if args.wait_quiet > 0 and (other := wait_quiet(args.wait_quiet)) >= 10:
            print(f"\nthe machine is busy with other work ({other:.0f}% of a core); measuring anyway")
        print(f"\n{config}: setting up ...", flush=True)
        t0 = time.monotonic()
        res = run_config(config, n, seconds, pin, args.seed)
        results.append(res)
        print(f"{config}: {'FAILED: ' + res.error if res.error else 'done'} in {time.monotonic() - t0:.0f} s",
              flush=True)
    print_results(results, seconds)
    print(f"\ntotal {time.monotonic() - t_run:.0f} s")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
