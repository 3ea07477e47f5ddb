"""A call outlives the node that played it: real `python app.py` nodes on real Redis and
PostgreSQL, one SIGKILLed or frozen (SIGSTOP) mid-call, judged by what the simulated caller heard.

Layout: Telnyx's webhooks and every REST request go to node a; every media socket goes through
a balancer to b or c (round-robin, passing over a node that refuses, as nginx does). So each
call is played by b or c, and a survivor must ask Telnyx to stream it again when its node dies.
"""

from __future__ import annotations

import base64
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from appprocess import AppProcess, free_port, healthy
from audio_checks import dominant_hz
from livecall import wait_until, wav_bytes
from simulator import FakeTelnyx, SimCall
from simulator.balancer import Balancer

SECRET = "s3cret-of-the-failover-test"
RATE = 8000
STEP_S = 1.0
STEPS = [400 + 100 * i for i in range(20)]  # the announcement: 20 s, a new pitch every second


class Nodes:
    def __init__(self, telnyx: FakeTelnyx, tmp_path: Path, redis_url: str, postgres_url: str) -> None:
        self.balancer = Balancer().start()
        self.nodes: dict[str, AppProcess] = {}
        for name in ("a", "b", "c"):
            (tmp_path / name).mkdir()
            self.nodes[name] = AppProcess(telnyx, tmp_path / name, env={
                "REDIS_URL": redis_url, "DATABASE_URL": postgres_url, "CLUSTER_SECRET": SECRET, "NODE_ID": name,
                "STREAM_WEBSOCKET_URL": f"ws://127.0.0.1:{self.balancer.port}/stream"})
        self.balancer.backends = [("127.0.0.1", self.nodes[n].port) for n in ("b", "c")]
        self.a = self.nodes["a"].url
        telnyx.webhook_url = f"{self.a}/webhooks/voice"
        for name, node in self.nodes.items():
            wait_until(lambda u=node.url: healthy(u), timeout=30, what=f"node {name} start")
        wait_until(lambda: len(httpx.get(f"{self.a}/health").json()["nodes"]) == 3, what="three nodes alive")

    def owner(self, call: SimCall) -> str | None:
        try:
            answer = httpx.get(f"{self.a}/streams/{call.call_control_id}", timeout=20)
        except httpx.TimeoutException:
            return None  # relayed to a node that is frozen
        return answer.json().get("node") if answer.status_code == 200 else None

    def events(self, call: SimCall) -> list[dict]:
        return httpx.get(f"{self.a}/stream-log", params={"call_control_id": call.call_control_id,
                                                          "limit": 1000}).json()["items"]

    def close(self) -> None:
        for node in self.nodes.values():
            if node.proc.poll() is None and node.proc.returncode is None:
                os.kill(node.proc.pid, signal.SIGCONT)  # a frozen one must be able to die
            node.close()
        self.balancer.close()


@pytest.fixture
def nodes(telnyx: FakeTelnyx, tmp_path: Path, redis_url: str, postgres_url: str) -> Iterator[Nodes]:
    cluster = Nodes(telnyx, tmp_path, redis_url, postgres_url)
    yield cluster
    cluster.close()


def _announcement() -> np.ndarray:
    t = np.arange(int(STEP_S * RATE)) / RATE
    return np.concatenate([0.4 * np.sin(2 * np.pi * hz * t) for hz in STEPS]).astype(np.float32)


def _two_calls_on_b_and_c(telnyx: FakeTelnyx, nodes: Nodes) -> dict[str, SimCall]:
    calls: dict[str, SimCall] = {}
    for _ in range(2):
        call = telnyx.place_call()
        call.wait_streaming(timeout=15)
        owner = wait_until(lambda c=call: nodes.owner(c) in ("b", "c") and nodes.owner(c), what="an owner")
        calls[owner] = call
    assert sorted(calls) == ["b", "c"]  # round-robin: one socket each
    return calls


def _inject(nodes: Nodes, call: SimCall, body: dict) -> dict:
    answer = httpx.post(f"{nodes.a}/streams/{call.call_control_id}/inject", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _longest_silence(pcm: np.ndarray) -> tuple[int, int]:
    """(start, length) in samples of the longest run of digital silence in what the caller heard."""
    quiet = np.concatenate([[False], np.abs(pcm.astype(np.int32)) <= 8, [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    starts, ends = edges[::2], edges[1::2]
    if not len(starts):
        return 0, 0
    k = int(np.argmax(ends - starts))
    return int(starts[k]), int(ends[k] - starts[k])


def _assert_on_the_announcement_s_clock(heard: np.ndarray, *, min_gap_s: float, max_gap_s: float) -> int:
    """The announcement's own clock ran on through the gap: after it, each second plays the pitch
    of that second of the announcement, counted from where it began, not from where it stopped.
    Returns where it resumed (a sample of `heard`)."""
    begin = int(np.flatnonzero(np.abs(heard.astype(np.int32)) > 1000)[0])
    while abs(dominant_hz(heard[begin:begin + 400], RATE) - STEPS[0]) > 30:
        begin += 80  # past a short tone before it, to the announcement's first pitch
    gap_start, gap = _longest_silence(heard[begin:begin + len(STEPS) * RATE])
    assert min_gap_s * RATE <= gap < max_gap_s * RATE, f"a gap of {gap / RATE:.2f} s"
    resumed_at = begin + gap_start + gap
    later = [i for i in range(len(STEPS)) if begin + i * RATE >= resumed_at + 0.3 * RATE]
    profile = [round(dominant_hz(heard[k:k + 800], RATE)) for k in range(begin, len(heard) - 800, 800)]
    assert len(later) >= 3, f"no time left after the gap ({gap_start / RATE:.2f} s + {gap / RATE:.2f} s): {profile}"
    for i in later[:-1]:
        middle = begin + int((i + 0.5) * RATE)
        assert abs(dominant_hz(heard[middle - 1200:middle + 1200], RATE) - STEPS[i]) < 30, f"second {i}: {profile}"
    return resumed_at


def test_a_killed_node_s_call_resumes_on_a_survivor_where_it_would_be_now(telnyx, nodes):
    calls = _two_calls_on_b_and_c(telnyx, nodes)
    victim, bystander = calls["b"], calls["c"]
    _inject(nodes, bystander, {"tone": {"frequency_hz": 700, "duration_ms": 400}, "loop": True})
    short = _inject(nodes, victim, {"tone": {"frequency_hz": 3000, "duration_ms": 300}})
    wait_until(lambda: httpx.get(f"{nodes.a}/streams/{victim.call_control_id}/injections/{short['id']}")
               .json()["status"] == "finished", what="the short tone played out")
    speech = _inject(nodes, victim, {"audio_base64": base64.b64encode(wav_bytes(_announcement())).decode()})
    wait_until(lambda: len(victim.heard_pcm()) > 2 * RATE and
               abs(dominant_hz(victim.heard_pcm()[-800:], RATE) - STEPS[2]) < 30, timeout=15,
               what="the announcement's third second")

    nodes.nodes["b"].close()  # SIGKILL

    victim.wait_for(lambda: victim.stream_started and victim.streaming_status == "streaming" and
                    len(victim.heard_pcm()) > 0, timeout=20, what="a new stream")
    wait_until(lambda: nodes.owner(victim) == "c", timeout=20, what="node c owns the call")
    wait_until(lambda: httpx.get(f"{nodes.a}/streams/{victim.call_control_id}/injections/{speech['id']}")
               .json()["status"] == "finished", timeout=30, what="the announcement to end")
    heard = victim.heard_pcm()
    resumed_at = _assert_on_the_announcement_s_clock(heard, min_gap_s=0.5, max_gap_s=12)
    # The short tone that had finished is not played again.
    after = heard[resumed_at:]
    windows = [after[k:k + 800] for k in range(0, len(after) - 800, 800)]
    assert all(abs(dominant_hz(w, RATE) - 3000) > 100 for w in windows if np.abs(w).max() > 1000)

    events = nodes.events(victim)
    names = [(e["event"], e["data"].get("injection_id")) for e in events]
    assert ("call.taken_over", None) in names
    # Logged by two nodes: in the order they happened, not necessarily in the order they were written.
    at = {name: e["at"] for name, e in zip(names, events, strict=True)}
    assert at[("injection.interrupted", speech["id"])] <= at[("injection.resumed", speech["id"])]
    assert ("injection.interrupted", short["id"]) not in names
    # The bystander on node c never stopped.
    other = bystander.heard_pcm()
    _, quiet = _longest_silence(other[int(np.flatnonzero(np.abs(other.astype(np.int32)) > 1000)[0]):])
    # Loosely: a loaded machine may be late; bench/bench_failover.py counts the late frames.
    assert quiet < 0.5 * RATE, f"the bystander was silent for {quiet / RATE:.2f} s"
    # Exactly one node has each call.
    items = httpx.get(f"{nodes.a}/streams").json()["items"]
    assert sorted((i["call_control_id"], i["node"]) for i in items) == sorted(
        [(victim.call_control_id, "c"), (bystander.call_control_id, "c")])


def test_a_frozen_node_is_fenced_when_it_wakes(telnyx, nodes):
    calls = _two_calls_on_b_and_c(telnyx, nodes)
    victim = calls["b"]
    _inject(nodes, victim, {"tone": {"frequency_hz": 600, "duration_ms": 500}, "loop": True})
    wait_until(lambda: abs(dominant_hz(victim.heard_pcm()[-800:], RATE) - 600) < 30, what="the tone")
    b = nodes.nodes["b"]
    os.kill(b.proc.pid, signal.SIGSTOP)  # cut off: its lease runs out while it still holds the socket
    # A frozen node still accepts TCP connections (the kernel does): the balancer's health check
    # takes it out, or the new stream could be sent to it.
    nodes.balancer.backends = [("127.0.0.1", nodes.nodes["c"].port)]
    try:
        wait_until(lambda: nodes.owner(victim) == "c", timeout=20, what="node c takes the call")
        victim.wait_for(lambda: victim.streaming_status == "streaming", timeout=20, what="the new stream")
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
    wait_until(lambda: any(e["event"] == "call.fenced" for e in nodes.events(victim)), timeout=20,
               what="node b to learn it was replaced")
    fenced = next(e for e in nodes.events(victim) if e["event"] == "call.fenced")
    assert fenced["data"] == {"node": "b", "owner": "c"}
    local = httpx.get(f"{b.url}/streams", params={"status": "active"}).json()["items"]
    assert victim.call_control_id not in [i["call_control_id"] for i in local if i.get("node", "b") == "b"]
    wait_until(lambda: abs(dominant_hz(victim.heard_pcm()[-800:], RATE) - 600) < 30, what="the tone, from c")


def test_a_node_stopped_for_a_deploy_hands_its_calls_over_first(telnyx, nodes):
    calls = _two_calls_on_b_and_c(telnyx, nodes)
    victim = calls["b"]
    speech = _inject(nodes, victim, {"audio_base64": base64.b64encode(wav_bytes(_announcement())).decode()})
    wait_until(lambda: len(victim.heard_pcm()) > 2 * RATE and
               abs(dominant_hz(victim.heard_pcm()[-800:], RATE) - STEPS[2]) < 30, timeout=15,
               what="the announcement's third second")
    b = nodes.nodes["b"]
    b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(30) == 0
    assert nodes.owner(victim) == "c"
    wait_until(lambda: httpx.get(f"{nodes.a}/streams/{victim.call_control_id}/injections/{speech['id']}")
               .json()["status"] == "finished", timeout=30, what="the announcement to end")
    # Handed over while b still lived: a short gap, not a lease's worth.
    _assert_on_the_announcement_s_clock(victim.heard_pcm(), min_gap_s=0, max_gap_s=1.5)
    names = [e["event"] for e in nodes.events(victim)]
    assert "call.moved" in names and "call.taken_over" not in names
    drained = [e["data"] for e in httpx.get(f"{nodes.a}/stream-log", params={"event": "node.drained"}).json()["items"]]
    assert drained == [{"node": "b", "calls_left": 0}]


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM"])
def test_one_process_restarted_resumes_its_calls(telnyx, tmp_path, stop):
    # No Redis: the calls' injections are kept in SQLite, and the next process on the same port
    # and database asks Telnyx to stream each call again and resumes them where they would be.
    settings = {"PORT": str(free_port()), "DATABASE_PATH": str(tmp_path / "db.sqlite3")}
    (tmp_path / "first").mkdir()
    first = AppProcess(telnyx, tmp_path / "first", env=settings)
    try:
        wait_until(lambda: healthy(first.url), timeout=30, what="the first process")
        call = telnyx.place_call()
        call.wait_streaming(timeout=15)
        answer = httpx.post(f"{first.url}/streams/{call.call_control_id}/inject",
                            json={"audio_base64": base64.b64encode(wav_bytes(_announcement())).decode()})
        assert answer.status_code == 201, answer.text
        speech = answer.json()
        wait_until(lambda: len(call.heard_pcm()) > 2 * RATE and
                   abs(dominant_hz(call.heard_pcm()[-800:], RATE) - STEPS[2]) < 30, timeout=15,
                   what="the announcement's third second")
        if stop == "SIGTERM":
            first.proc.send_signal(signal.SIGTERM)
            assert first.proc.wait(30) == 0
    finally:
        first.close()  # SIGKILL, if it still runs
    (tmp_path / "second").mkdir()
    second = AppProcess(telnyx, tmp_path / "second", env=settings)
    try:
        wait_until(lambda: healthy(second.url), timeout=30, what="the second process")
        url = f"{second.url}/streams/{call.call_control_id}/injections/{speech['id']}"
        wait_until(lambda: httpx.get(url).json()["status"] == "finished", timeout=40, what="the announcement's end")
        _assert_on_the_announcement_s_clock(call.heard_pcm(), min_gap_s=0.05, max_gap_s=12)
        events = [e["event"] for e in httpx.get(f"{second.url}/stream-log", params={
            "call_control_id": call.call_control_id, "limit": 1000}).json()["items"]]
        assert events.index("stream.resuming") < events.index("injection.resumed")
        assert httpx.get(f"{second.url}/streams/{call.call_control_id}").json()["status"] == "streaming"
    finally:
        second.close()
