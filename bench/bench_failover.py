"""Failover benchmark: N calls on several media nodes, one node SIGKILLed, then one drained (SIGTERM).

    .venv/bin/python bench/bench_failover.py                # 100 calls, 3 media nodes, 10 s windows
    .venv/bin/python bench/bench_failover.py --quick        # 20 calls (smoke check)
    .venv/bin/python bench/bench_failover.py --calls 200 --media-nodes 2 --keep

Layout (tests/e2e/test_failover.py's): a real redis-server and PostgreSQL (simulator/servers.py),
`python app.py` as node a, the front (Telnyx's webhooks and every REST request), and media nodes
b, c, d ... behind a connection balancer (simulator/balancer.py, round-robin, passing over a node
that refuses, as nginx does), which every node gives Telnyx as STREAM_WEBSOCKET_URL. The balancer
runs in a process of its own, so its 2 threads per socket do not share this process's GIL with
the simulator. Its backends are fixed at start: the media nodes and a port kept for the
replacement node of phase 2 (refused, so passed over, until that node starts). N calls are set up
as in bench_cluster (signed webhooks to a, talk-spurt caller audio), each with bench_load's
looping, ducked music injected through a. Server side (nodes, Redis, PostgreSQL) on CPU 0, this
generator (simulator, balancer) on CPU 1, as in bench_cluster.

Phases, each preceded by a quiet control window of --seconds (nothing happens; the bystanders'
late frames then are the machine's noise floor):

1. kill: SIGKILL the media node that owns the most calls (Redis `mixer:call:<id>` owner). Its
   lease (NODE_LEASE_MS) runs out, a survivor claims each call and asks Telnyx to stream it
   again; the node the new socket reaches resumes the background where the wall clock says.
2. drain: start a replacement media node (on the port kept for it), then SIGTERM the media node
   that owns the most calls: it stops accepting, asks Telnyx to stream each call again at once,
   waits until the others have taken them (DRAIN_TIMEOUT_S) and exits.

Measured per affected call (the victim's calls), from the simulator's kernel receive stamps of
the frames of that call (`call.received`; the new stream's frames follow the old ones in it):
- frame gap: the longest interval between consecutive frames from 1 s before the event to the
  end of the phase among those that end after Telnyx got the call's streaming_start (the switch
  from the old stream to the new one);
- audio gap: the same, from the last audible frame before the switch to the first audible frame
  after it (audible: a sample above mu-law's quietest codes), so silence the new node sends
  before the background resumes counts;
- resumed with the background: the 2 s after the first audible new frame are at least 30 % as
  loud (RMS) as the 2 s before the event;
- time to all owned: from the event until every affected call's owner in Redis is a live node
  other than the victim (polled every 50 ms); time to all playing: until the last call's first
  audible frame after the switch;
- lost: no audible frame after a switch by the end of the phase, or not owned by a live node.
Bystanders (the calls the other media nodes owned at the event): bench_load's playout model
(late_frames: a frame late by any amount counts) and "gaps > 40 ms" (two frame times), over the
--seconds after the event, against the control window before it.

Baseline: there is no older revision with failover; without it (before bcebabe) the calls of a
dead node stay silent until their callers hang up, and a stopped node's calls end with it. The
"no failover" column states that, derived from the calls affected; it is not measured.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_cluster import (  # noqa: E402
    GENERATOR_CPU,
    LONG_GAP_S,
    SERVER_CPU,
    Node,
    Services,
    cluster_services,
    service_procs,
    set_up,
)
from bench.bench_cluster import Result as SetUpResult  # noqa: E402
from bench.bench_load import (  # noqa: E402
    API_KEY,
    ULAW,
    WARMUP_S,
    Float,
    _fmt,
    cpu_seconds,
    late_frames,
    machine_busy_seconds,
    pct,
    print_rows,
    revision,
    wait_quiet,
)
from simulator import FakeTelnyx, SimCall  # noqa: E402
from simulator.cli import free_port  # noqa: E402

SECRET = "bench-failover-secret-0123456789"
POLL_S = 0.05  # how often the owners in Redis are looked at during a phase
SETTLE_S = 3.0  # a phase lasts at least this long after the last call plays again (the level check)
RECOVERY_TIMEOUT_S = 60.0  # past --seconds: a phase that has not recovered by then is over anyway
BEFORE_EVENT_S = 1.0  # the gap is looked for from this long before the event
LEVEL_S = 2.0  # the loudness before the event and after the resumption is compared over this long
MIN_LEVEL_RATIO = 0.3
SILENT = 8 / 32768  # |sample| at or below this is silence (as tests/e2e/test_failover.py's `<= 8`)
DRAIN_TARGET_S = 1.0
CALL_KEY = "mixer:call:"


# ---- the balancer, in a process of its own ----------------------------------------------------

def serve_balancer(backends: str) -> int:
    """`--balancer-for host:port,...`: print the port, balance until stdin closes."""
    from simulator.balancer import Balancer

    logging.basicConfig(level=logging.ERROR)  # a refused backend is expected here (a dead node, the spare)
    pairs = [(host, int(port)) for host, _, port in (b.rpartition(":") for b in backends.split(","))]
    with Balancer(pairs) as balancer:
        print(balancer.port, flush=True)
        sys.stdin.read()
    return 0


class BalancerProcess:
    def __init__(self, backends: list[int]) -> None:
        spec = ",".join(f"127.0.0.1:{port}" for port in backends)
        self.proc = subprocess.Popen([sys.executable, __file__, "--balancer-for", spec], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError(f"the balancer did not start: {line!r}")
        self.port = int(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# ---- one phase --------------------------------------------------------------------------------

@dataclass
class Phase:
    name: str  # "kill" or "drain"
    victim: str = "-"
    calls_before: dict[str, int] = field(default_factory=dict)  # calls per media node at the event
    affected: int = 0
    bystanders: int = 0
    frame_gaps: list[float] = field(default_factory=list)  # seconds, per affected call that resumed
    audio_gaps: list[float] = field(default_factory=list)
    owned_s: float | None = None  # event -> every affected call owned by a live node
    owned: int = 0  # affected calls owned by a live node other than the victim by the end
    playing_s: float | None = None  # event -> every affected call audible again
    with_background: int = 0
    lost: int = 0
    restreams: int = 0  # streaming_start commands Telnyx got for the affected calls after the event
    late: int = 0  # bystander frames late in the playout model, in the --seconds after the event
    long_gaps: int = 0
    gap_max_ms: float | None = None
    control_late: int = 0  # the same over the control window before the event
    control_long_gaps: int = 0
    control_gap_max_ms: float | None = None
    control_other_cpu: float | None = None  # other processes' CPU in the control window (% of a core)
    exit: str = "-"  # the victim's end
    listed: str = "-"  # GET a/streams at the end of the phase
    phase_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def over_target(self) -> int:
        return sum(1 for g in self.audio_gaps if g > DRAIN_TARGET_S)


@dataclass
class Watched:
    """What the poll loop saw of one affected call."""

    call: SimCall
    old_stream: Any  # the simulator's MediaStream at the event
    owned_at: float | None = None
    new_seen_at: float | None = None  # when this loop first saw the new stream started
    playing_at: float | None = None  # when a frame newer than that had arrived


def owners(client: redis.Redis, calls: list[SimCall]) -> dict[str, str | None]:
    pipe = client.pipeline(transaction=False)
    for call in calls:
        pipe.hget(CALL_KEY + call.call_control_id, "owner")
    return {call.call_control_id: (o.decode() if isinstance(o, bytes) else o)
            for call, o in zip(calls, pipe.execute(), strict=True)}


def restream_times(telnyx: FakeTelnyx, since: float) -> dict[str, list[float]]:
    """When Telnyx got each streaming_start after `since`, by call."""
    out: dict[str, list[float]] = {}
    for cmd in telnyx.commands:
        if cmd.action == "streaming_start" and cmd.at >= since:
            out.setdefault(cmd.call_control_id, []).append(cmd.at)
    return out


def bystander_counts(calls: list[SimCall], t0: float, t1: float) -> tuple[int, int, float | None]:
    """Late frames (playout model), gaps > 40 ms, and the longest gap (ms) of `calls` in [t0, t1]."""
    late = long_gaps = 0
    longest = 0.0
    for call in calls:
        frames = call.received
        if len(frames) < 2:
            continue
        arrivals = np.fromiter((a for a, _ in frames), dtype=np.float64, count=len(frames))
        inside = (arrivals >= t0) & (arrivals <= t1)
        late += int(np.count_nonzero(late_frames(arrivals)[inside]))
        diffs = np.diff(arrivals)[inside[1:] & inside[:-1]]
        long_gaps += int(np.count_nonzero(diffs > LONG_GAP_S))
        if diffs.size:
            longest = max(longest, float(diffs.max()))
    return late, long_gaps, (longest * 1000 if longest else None)


def level(payloads: list[bytes]) -> Float:
    """Per mu-law frame: its peak, in [0, 1]."""
    if not payloads:
        return np.zeros(0)
    return np.array([float(np.abs(ULAW[np.frombuffer(p, dtype=np.uint8)]).max()) if p else 0.0 for p in payloads])


def rms(payloads: list[bytes]) -> float:
    if not payloads:
        return 0.0
    x = ULAW[np.frombuffer(b"".join(payloads), dtype=np.uint8)]
    return float(np.sqrt(np.mean(x * x)))


def analyse_call(res: Phase, call: SimCall, t_event: float, t_end: float, restreams: list[float]) -> float | None:
    """The call's gaps into `res`; returns when it was audible again after the switch (None: lost)."""
    frames = call.received
    arrivals = np.fromiter((a for a, _ in frames), dtype=np.float64, count=len(frames))
    if not restreams:
        return None
    asked = restreams[0]
    j0 = int(np.searchsorted(arrivals, t_event - BEFORE_EVENT_S))
    j1 = int(np.searchsorted(arrivals, t_end, side="right"))
    seg = arrivals[j0:j1]
    if seg.size < 2 or seg[-1] <= asked:
        return None
    diffs = np.diff(seg)
    candidates = np.flatnonzero(seg[1:] > asked)  # intervals that end after Telnyx was asked
    k = int(candidates[np.argmax(diffs[candidates])])
    res.frame_gaps.append(float(diffs[k]))
    peaks = level([p for _, p in frames[j0:j1]])
    audible = peaks > SILENT
    before = np.flatnonzero(audible[:k + 1])
    after = np.flatnonzero(audible[k + 1:]) + k + 1
    if not before.size or not after.size:
        return None
    resumed = float(seg[after[0]])
    res.audio_gaps.append(resumed - float(seg[before[-1]]))
    was = rms([p for a, p in frames if t_event - LEVEL_S - 0.2 <= a < t_event - 0.2])
    now = rms([p for a, p in frames if resumed <= a < resumed + LEVEL_S])
    if was > 0 and now >= MIN_LEVEL_RATIO * was:
        res.with_background += 1
    elif len(res.notes) < 5:
        res.notes.append(f"{call.call_control_id[:16]}...: level after resumption {now:.4f}, before {was:.4f}")
    return resumed


@dataclass
class Cluster:
    telnyx: FakeTelnyx
    services: Services
    front: Node
    media: list[Node]  # in order of start; dead ones stay
    spare_port: int
    workdir: Path
    http: httpx.Client
    redis: redis.Redis
    env: dict[str, str]
    cpu: int | None
    balancer: psutil.Process
    calls: list[SimCall] = field(default_factory=list)

    def live(self) -> list[Node]:
        return [n for n in [self.front, *self.media] if n.proc.poll() is None]

    def start_replacement(self) -> Node:
        name = chr(ord(self.media[-1].name) + 1)
        node = Node(name, self.telnyx, self.workdir / name, {**self.env, "NODE_ID": name}, self.cpu,
                    port=self.spare_port)
        self.media.append(node)
        node.wait_healthy(self.http, nodes=len(self.live()))
        return node


def control(res: Phase, cl: Cluster, bystanders: list[SimCall], seconds: float) -> float:
    """The quiet window before an event; returns the event's time (its end)."""
    me = psutil.Process()
    procs = [p for n in cl.live() for p in n.procs()] + service_procs(cl.services) + [me, cl.balancer]
    busy0, ours0, t0 = machine_busy_seconds(), cpu_seconds(procs), time.monotonic()
    time.sleep(seconds)
    t1 = time.monotonic()
    res.control_other_cpu = max(0.0, 100 * ((machine_busy_seconds() - busy0) - (cpu_seconds(procs) - ours0))
                                / (t1 - t0))
    res.control_late, res.control_long_gaps, res.control_gap_max_ms = bystander_counts(bystanders, t0, t1)
    return t1


def run_phase(res: Phase, cl: Cluster, seconds: float, kill: bool) -> None:
    held = owners(cl.redis, cl.calls)
    media_names = {n.name for n in cl.media if n.proc.poll() is None}
    res.calls_before = {name: sum(1 for o in held.values() if o == name) for name in sorted(media_names)}
    if others := {o for o in held.values() if o not in media_names}:
        res.notes.append(f"calls owned by nodes other than the live media nodes: {sorted(map(str, others))}")
    res.victim = max(res.calls_before, key=lambda name: res.calls_before[name])
    victim = next(n for n in cl.media if n.name == res.victim)
    affected = [c for c in cl.calls if held[c.call_control_id] == victim.name]
    bystanders = [c for c in cl.calls if held[c.call_control_id] in media_names - {victim.name}]
    res.affected, res.bystanders = len(affected), len(bystanders)
    if not affected:
        raise RuntimeError(f"node {victim.name} owns no call")
    control(res, cl, bystanders, seconds)
    watched = {c.call_control_id: Watched(c, c.stream) for c in affected}
    if kill:
        victim.proc.kill()
    else:
        victim.proc.send_signal(signal.SIGTERM)
    t_event = time.monotonic()
    survivors = {n.name for n in cl.live()} - {victim.name}
    exited_at: float | None = None
    recovered_at: float | None = None
    deadline = t_event + seconds + RECOVERY_TIMEOUT_S
    while True:
        now = time.monotonic()
        if exited_at is None and victim.proc.poll() is not None:
            exited_at = now
        with contextlib.suppress(redis.RedisError):
            for ccid, owner in owners(cl.redis, [w.call for w in watched.values() if w.owned_at is None]).items():
                if owner in survivors:
                    watched[ccid].owned_at = now
        for w in watched.values():
            call = w.call
            if w.new_seen_at is None and call.stream is not w.old_stream and call.stream_started:
                w.new_seen_at = now
            received = call.media.received
            if w.playing_at is None and w.new_seen_at is not None and received and received[-1][0] > w.new_seen_at:
                w.playing_at = now
        if recovered_at is None and all(w.owned_at is not None and w.playing_at is not None
                                        for w in watched.values()) and (kill or exited_at is not None):
            recovered_at = now
        if now >= deadline or (recovered_at is not None and now >= max(t_event + seconds, recovered_at + SETTLE_S)):
            break
        time.sleep(POLL_S)
    t_end = time.monotonic()
    res.phase_s = t_end - t_event
    if recovered_at is None:
        res.notes.append(f"not recovered within {t_end - t_event:.0f} s")
    if kill:
        res.exit = f"SIGKILL ({victim.proc.wait(5)})"
    elif exited_at is not None:
        res.exit = f"exit {victim.proc.returncode} after {exited_at - t_event:.1f} s"
    else:
        res.exit = f"still running after {t_end - t_event:.0f} s"
    # Offline: the gaps, from the frames.
    asked = restream_times(cl.telnyx, t_event)
    res.restreams = sum(len(asked.get(c.call_control_id, [])) for c in affected)
    resumed: list[float] = []
    for call in affected:
        back = analyse_call(res, call, t_event, t_end, asked.get(call.call_control_id, []))
        w = watched[call.call_control_id]
        if back is None or w.owned_at is None:
            res.lost += 1
            if res.lost <= 2:
                res.notes += why_lost(cl, call, t_event)
        else:
            resumed.append(back)
    # Over the calls that got there (the rows say how many when some did not).
    res.owned = sum(1 for w in watched.values() if w.owned_at is not None)
    if res.owned:
        res.owned_s = max(w.owned_at for w in watched.values() if w.owned_at is not None) - t_event
    if resumed:
        res.playing_s = max(resumed) - t_event
    res.late, res.long_gaps, res.gap_max_ms = bystander_counts(bystanders, t_event, t_event + seconds)
    res.listed = listed(cl)


def why_lost(cl: Cluster, call: SimCall, t_event: float) -> list[str]:
    """What a lost call's Redis hash, the webhooks sent for it since the event, and node a's event log say."""
    ccid = call.call_control_id
    lines = [f"lost {ccid[:16]}...: Redis {cl.redis.hgetall(CALL_KEY + ccid)}"]
    hooks = [f"{d.event_type}#{d.attempt} +{d.at - t_event:.2f}s -> {d.status}"
             for d in cl.telnyx.deliveries if d.call_control_id == ccid and d.at >= t_event]
    lines.append(f"  webhooks since the event: {hooks}")
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        items = cl.http.get(f"{cl.front.url}/stream-log", params={"call_control_id": ccid, "limit": 1000},
                            timeout=10).json()["items"]
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - (time.monotonic() - t_event)))
        lines += [f"  event log: {e['at']} {e['event']} {e['data']}" for e in items if e["at"] >= since][:8]
    return lines


def listed(cl: Cluster) -> str:
    """Node a's cluster-wide list of calls: how many of ours it names, each once and on a live node."""
    try:
        r = cl.http.get(f"{cl.front.url}/streams", params={"status": "active"}, timeout=10)
        items = r.json()["items"] if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError):
        items = None
    if items is None:
        return "no answer"
    live = {n.name for n in cl.live()}
    ours = {c.call_control_id for c in cl.calls}
    seen = [i["call_control_id"] for i in items if i["call_control_id"] in ours]
    on_live = sum(1 for i in items if i["call_control_id"] in ours and i.get("node", cl.front.name) in live)
    return f"{len(set(seen))}/{len(ours)}" + ("" if len(seen) == len(set(seen)) == on_live else
                                              f" ({len(seen)} entries, {on_live} on live nodes)")


# ---- the run ------------------------------------------------------------------------------------

def run(n: int, media_nodes: int, seconds: float, pin: bool, lease_ms: int | None, keep: Path | None,
        ) -> tuple[list[Phase], list[str]]:
    phases = [Phase("kill"), Phase("drain")]
    notes: list[str] = []
    cpu = SERVER_CPU if pin else None
    workdir = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    media_ports = [free_port() for _ in range(media_nodes)]
    spare_port = free_port()
    gc.collect()
    gc.disable()  # as in bench_load: a full collection of the recordings stalls the simulator's loop
    nodes: list[Node] = []
    try:
        with cluster_services(cpu) as services, \
                FakeTelnyx(api_key=API_KEY, max_calls=n + 16, webhook_workers=8) as telnyx, \
                httpx.Client(timeout=10, trust_env=False, limits=httpx.Limits(max_connections=8)) as http, \
                contextlib.closing(redis.Redis.from_url(services.redis.url, socket_timeout=5)) as client:
            balancer = BalancerProcess([*media_ports, spare_port])
            try:
                env = {"REDIS_URL": services.redis.url, "DATABASE_URL": services.database_url,
                       "CLUSTER_SECRET": SECRET, "STREAM_WEBSOCKET_URL": f"ws://127.0.0.1:{balancer.port}/stream",
                       **({"NODE_LEASE_MS": str(lease_ms)} if lease_ms else {})}
                front = Node("a", telnyx, workdir / "a", {**env, "NODE_ID": "a"}, cpu)
                nodes.append(front)
                media = []
                for i, port in enumerate(media_ports):
                    name = chr(ord("b") + i)
                    media.append(Node(name, telnyx, workdir / name, {**env, "NODE_ID": name}, cpu, port=port))
                nodes += media
                for node in nodes:
                    node.wait_healthy(http, nodes=len(nodes))
                telnyx.webhook_url = f"{front.url}/webhooks/voice"
                cl = Cluster(telnyx, services, front, media, spare_port, workdir, http, client, env, cpu,
                             psutil.Process(balancer.proc.pid))
                setup = SetUpResult(config="failover", calls=n)
                cl.calls = set_up(setup, n, telnyx, [front], media, http)
                notes += setup.notes
                time.sleep(WARMUP_S)
                for k, phase in enumerate(phases):
                    if k == 1:
                        replacement = cl.start_replacement()
                        nodes.append(replacement)
                        notes.append(f"replacement node {replacement.name} started before the drain")
                        time.sleep(2.0)
                    print(f"{phase.name}: control window, then the event ...", flush=True)
                    try:
                        run_phase(phase, cl, seconds, kill=phase.name == "kill")
                    except (RuntimeError, TimeoutError, OSError, httpx.HTTPError, redis.RedisError) as exc:
                        phase.error = f"{type(exc).__name__}: {exc}"
                        break
                    print(f"{phase.name}: node {phase.victim}, {phase.affected} calls; done in "
                          f"{phase.phase_s:.0f} s", flush=True)
            finally:
                for node in nodes:
                    if node.proc.poll() is None:
                        node.proc.kill()  # no drains at teardown: the figures are in
                    node.stop()
                balancer.close()
                telnyx.stop()
        for node in nodes:
            notes += log_summary(node)
    except (RuntimeError, TimeoutError, OSError, httpx.HTTPError, redis.RedisError) as exc:
        for phase in phases:
            phase.error = phase.error or f"{type(exc).__name__}: {exc}"
    finally:
        gc.enable()
        gc.collect()
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for log in workdir.glob("*/server.log"):
                shutil.copy(log, keep / f"{log.parent.name}.log")
            notes.append(f"node logs kept in {keep}")
        shutil.rmtree(workdir, ignore_errors=True)
    return phases, notes


def log_summary(node: Node) -> list[str]:
    """The node's warnings and errors, by message (call ids and numbers left out), with counts."""
    kinds: dict[str, int] = {}
    for line in node.log_path.read_text(errors="replace").splitlines():
        if m := re.search(r" (WARNING|ERROR|CRITICAL) \S+ \S+: (.*)", line):
            text = re.sub(r"\d+(\.\d+)?", "N", re.sub(r"\[v3:[^]]*\]", "[call]", m[2]))
            kinds[f"{m[1]} {text[:160]}"] = kinds.get(f"{m[1]} {text[:160]}", 0) + 1
    return [f"node {node.name} log: {count} x {kind}" for kind, count in sorted(kinds.items())]


# ---- output -----------------------------------------------------------------------------------

def _gaps(values: list[float]) -> str:
    if not values:
        return "-"
    return " / ".join(_fmt(v * 1000 if v is not None else None, 0) for v in (pct(values, 50), pct(values, 99),
                                                                           max(values)))


def _some(seconds: float | None, calls: int, of: int) -> str:
    """A time over every affected call, or over the `calls` of them that got there (saying so)."""
    return _fmt(seconds, 2) + (f" ({calls} calls)" if calls < of and seconds is not None else "")


ROWS: list[tuple[str, Callable[[Phase], str], Callable[[Phase], str], Callable[[Phase], str]]] = [
    # metric, failover (measured), control window before the event, no failover (derived)
    ("calls on the victim node", lambda p: str(p.affected), lambda p: "-", lambda p: str(p.affected)),
    ("frame gap p50 / p99 / max (ms)", lambda p: _gaps(p.frame_gaps), lambda p: "-",
     lambda p: "rest of call"),
    ("audio gap p50 / p99 / max (ms)", lambda p: _gaps(p.audio_gaps), lambda p: "-",
     lambda p: "rest of call"),
    (f"audio gaps > {DRAIN_TARGET_S:g} s", lambda p: str(p.over_target()), lambda p: "-",
     lambda p: str(p.affected)),
    ("time to all owned again (s)", lambda p: _some(p.owned_s, p.owned, p.affected), lambda p: "-",
     lambda p: "never"),
    ("time to all playing again (s)", lambda p: _some(p.playing_s, p.affected - p.lost, p.affected), lambda p: "-",
     lambda p: "never"),
    ("resumed with the background", lambda p: f"{p.with_background}/{p.affected}", lambda p: "-",
     lambda p: f"0/{p.affected}"),
    ("calls lost", lambda p: str(p.lost), lambda p: "-", lambda p: str(p.affected)),
    ("streaming_start sent to Telnyx", lambda p: str(p.restreams), lambda p: "-", lambda p: "0"),
    ("bystander calls", lambda p: str(p.bystanders), lambda p: str(p.bystanders), lambda p: str(p.bystanders)),
    ("bystander late frames (playout)", lambda p: str(p.late), lambda p: str(p.control_late), lambda p: "-"),
    ("bystander gaps > 40 ms", lambda p: str(p.long_gaps), lambda p: str(p.control_long_gaps), lambda p: "-"),
    ("bystander gap max (ms)", lambda p: _fmt(p.gap_max_ms, 0), lambda p: _fmt(p.control_gap_max_ms, 0),
     lambda p: "-"),
    ("victim's end", lambda p: p.exit, lambda p: "-", lambda p: "-"),
    ("calls listed by node a after", lambda p: p.listed, lambda p: "-", lambda p: "-"),
    ("other processes' CPU (% of a core)", lambda p: "-", lambda p: _fmt(p.control_other_cpu, 0), lambda p: "-"),
]


def print_phase(p: Phase, seconds: float) -> None:
    event = "SIGKILL" if p.name == "kill" else "SIGTERM (drain)"
    spread = ", ".join(f"{k} {v}" for k, v in p.calls_before.items())
    print(f"\n{p.name}: {event} to node {p.victim} (calls per media node before: {spread})")
    print_rows(["metric", "failover", f"{seconds:g} s before", "no failover"],
               [[name, measured(p), before(p), without(p)] for name, measured, before, without in ROWS], left=1)
    for note in p.notes:
        print(f"{p.name}: {note}")
    if p.error:
        print(f"{p.name}: FAILED: {p.error}")


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--balancer-for":
        return serve_balancer(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=100, help="concurrent calls")
    parser.add_argument("--quick", action="store_true", help="20 calls (smoke check)")
    parser.add_argument("--media-nodes", type=int, default=3, help="media nodes behind the balancer at the start")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="each control window, and the bystanders' window after each event")
    parser.add_argument("--lease-ms", type=int, default=None, help="NODE_LEASE_MS of every node (default: the app's)")
    parser.add_argument("--keep", type=Path, default=None, help="copy the node logs into this directory")
    parser.add_argument("--wait-quiet", type=float, default=30.0,
                        help="first wait up to this many seconds for other processes to go idle")
    args = parser.parse_args()
    n = 20 if args.quick else args.calls
    if n < 2 or args.media_nodes < 2 or args.seconds < 1:
        parser.error("need --calls >= 2, --media-nodes >= 2 and --seconds >= 1")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 16 * n + 1024))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    pin = len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, {GENERATOR_CPU})
    logging.basicConfig(level=logging.ERROR)  # the simulator's teardown warnings, the balancer's refusals
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}; server at {revision(ROOT)}")
    print(f"pinning: app processes, Redis and PostgreSQL -> CPU {SERVER_CPU}; simulator and balancer -> "
          f"CPU {GENERATOR_CPU}" if pin else "pinning: off (fewer than 2 usable CPUs)")
    media = ", ".join(chr(ord("b") + i) for i in range(args.media_nodes))
    print(f"{n} calls, each with a looping ducked background; webhooks and REST to node a, media sockets "
          f"through a balancer to nodes {media}; NODE_LEASE_MS {args.lease_ms or 'default (3000)'}; "
          f"windows {args.seconds:g} s")
    if args.wait_quiet > 0 and (other := wait_quiet(args.wait_quiet)) >= 10:
        print(f"the machine is busy with other work ({other:.0f}% of a core); measuring anyway")
    t_run = time.monotonic()
    phases, notes = run(n, args.media_nodes, args.seconds, pin, args.lease_ms, args.keep)
    for phase in phases:
        print_phase(phase, args.seconds)
    print(f"\n(frame gap: per call on the victim, the longest interval between its frames across the switch to "
          f"the new stream, kernel receive stamps; audio gap: from its last audible frame before the switch\n"
          f" to its first audible one after; owned: Redis owner a live node other than the victim; playing: "
          f"the last call's first audible frame after the switch; lost: not audible again or not owned\n"
          f" by the end of the phase; bystanders: calls on the other media nodes, over the {args.seconds:g} s "
          f"after the event and the {args.seconds:g} s before it; late frames: bench_load's playout model,\n"
          f" any lateness counts; no failover: derived, not measured: a dead node's calls stay silent until "
          f"the caller hangs up)")
    for note in notes:
        print(note)
    print(f"\ntotal {time.monotonic() - t_run:.0f} s")
    return 1 if any(p.error or p.lost for p in phases) else 0


if __name__ == "__main__":
    sys.exit(main())
