"""Several `python app.py` processes on one real Redis and one real PostgreSQL act as one server.

Each call is spread on purpose: Telnyx's webhooks reach node a, its media socket node b (every
node's STREAM_WEBSOCKET_URL points there) and the operator's requests node c.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from appprocess import ROOT, AppProcess, free_port
from audio_checks import assert_arrived_exactly, dominant_hz, sine_peak_dbfs
from livecall import wait_until, wav_bytes
from simulator import FakeTelnyx, SimCall
from simulator.balancer import Balancer
from simulator.webhooks import WebhookEvent
from sse import SseReader

SECRET = "s3cret-of-the-test-cluster"


class Cluster:
    def __init__(self, telnyx: FakeTelnyx, tmp_path: Path, redis_url: str, postgres_url: str,
                 names: tuple[str, ...] = ("a", "b", "c"), **settings: str) -> None:
        socket_port = free_port()
        self.nodes: dict[str, AppProcess] = {}
        for i, name in enumerate(names):
            (tmp_path / name).mkdir()
            env = {"REDIS_URL": redis_url, "DATABASE_URL": postgres_url, "CLUSTER_SECRET": SECRET,
                   "NODE_ID": name, "STREAM_WEBSOCKET_URL": f"ws://127.0.0.1:{socket_port}/stream", **settings}
            if i == 1:  # node b takes every media socket
                env["PORT"] = str(socket_port)
            self.nodes[name] = AppProcess(telnyx, tmp_path / name, env=env)
        telnyx.webhook_url = f"{self.url('a')}/webhooks/voice"
        for name in names:
            wait_until(lambda n=name: _up(self.url(n)), timeout=30, what=f"node {name} start")

    def url(self, name: str) -> str:
        return self.nodes[name].url

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def cluster(telnyx: FakeTelnyx, tmp_path: Path, redis_url: str, postgres_url: str) -> Iterator[Cluster]:
    nodes = Cluster(telnyx, tmp_path, redis_url, postgres_url)
    yield nodes
    nodes.close()


def _stable(view: dict) -> dict:
    """A call's view without what moves while it plays."""
    view = {k: v for k, v in view.items() if k not in ("frames", "caller_speaking", "levels")}
    view["injections"] = [{k: v for k, v in i.items() if k != "played_ms"} for i in view["injections"]]
    return view


def test_any_nodes_feed_and_console_carry_every_nodes_calls(telnyx, cluster):
    a, c = cluster.url("a"), cluster.url("c")
    feed = SseReader(f"{a}/events?event=injection")
    call = telnyx.place_call()
    call.wait_streaming(timeout=15)
    ccid = call.call_control_id
    wait_until(lambda: httpx.get(f"{c}/streams/{ccid}").json().get("node") == "b", what="node b owns the call")
    answer = httpx.post(f"{c}/streams/{ccid}/inject", json={"dtmf": "7"})
    assert answer.status_code == 201, answer.text
    refused = httpx.post(f"{a}/streams/{ccid}/inject", json={"dtmf": "x"})  # relayed to b, logged there once
    assert refused.status_code == 422
    wait_until(lambda: "injection.finished" in feed.names(), timeout=15, what="node b's events on node a's feed")
    life = [name for name in feed.names() if name != "injection.rejected"]
    assert life == ["injection.created", "injection.playing", "injection.finished"]
    assert feed.names().count("injection.rejected") == 1
    assert {event["call_control_id"] for event in feed.events} == {ccid}
    levels = httpx.get(f"{a}/streams/{ccid}").json()["levels"]  # relayed to b, which measures them
    assert set(levels) == {"caller_dbfs", "sent_dbfs"}
    assert b'data-test="call-list"' in httpx.get(f"{c}/console").content
    feed.close()


def test_webhooks_socket_and_requests_on_three_nodes_make_one_call(telnyx, cluster):
    a, b, c = cluster.url("a"), cluster.url("b"), cluster.url("c")
    health = httpx.get(f"{c}/health").json()
    assert health["node"] == "c" and health["nodes"] == ["a", "b", "c"]

    call = telnyx.place_call()
    call.wait_streaming(timeout=15)
    ccid = call.call_control_id
    wait_until(lambda: httpx.get(f"{c}/streams/{ccid}").json().get("node") == "b", what="node b owns the call")

    assert 'mixer_frames_sent_total{node="b"}' in httpx.get(f"{b}/metrics").text

    # Every live call of the cluster, from any node, with the node that plays it.
    for url in (a, b, c):
        items = httpx.get(f"{url}/streams").json()["items"]
        assert [(i["call_control_id"], i["node"], i["status"]) for i in items] == [(ccid, "b", "streaming")]

    # Injected through node c, mixed on node b, heard by the caller.
    answer = httpx.post(f"{c}/streams/{ccid}/inject",
                        json={"tone": {"frequency_hz": 1000, "duration_ms": 400, "level_dbfs": 0}, "loop": True,
                              "gain_db": -6})
    assert answer.status_code == 201, answer.text
    inj = answer.json()
    wait_until(lambda: len(call.heard_pcm()) > 8000, what="the tone on the caller's side")
    heard = call.heard_pcm()[-4000:]
    assert abs(dominant_hz(heard, 8000) - 1000) < 20
    assert sine_peak_dbfs(heard) == pytest.approx(-6, abs=0.5)

    # The same answer from every node, whether it owns the call or not.
    views = [_stable(httpx.get(f"{url}/streams/{ccid}").json()) for url in (a, b, c)]
    assert views[0] == views[1] == views[2]
    injection = [httpx.get(f"{url}/streams/{ccid}/injections/{inj['id']}").json()["status"] for url in (a, b, c)]
    assert injection == ["playing"] * 3
    missing = [httpx.get(f"{url}/streams/{ccid}/injections/inj_nope") for url in (a, c)]
    assert [r.status_code for r in missing] == [404, 404] and missing[0].json() == missing[1].json()
    bad = [httpx.post(f"{url}/streams/{ccid}/inject", json={"tone": {"frequency_hz": 1}}) for url in (a, b)]
    assert [r.status_code for r in bad] == [422, 422] and bad[0].json() == bad[1].json()

    patched = httpx.patch(f"{a}/streams/{ccid}/injections/{inj['id']}", json={"gain_db": -20})
    assert patched.status_code == 200 and patched.json()["gain_db"] == -20
    wait_until(lambda: sine_peak_dbfs(call.heard_pcm()[-1600:]) < -18, what="the quieter tone")
    stopped = httpx.delete(f"{c}/streams/{ccid}/injections/{inj['id']}")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"

    # Multipart upload to a node that does not own the call: the audio reaches the owner.
    tone = (np.sin(2 * np.pi * 440 * np.arange(8000) / 8000) * 8000).astype("<i2")
    wav = wav_bytes(tone)
    uploaded = httpx.post(f"{c}/streams/{ccid}/inject", files={"file": ("tone.wav", wav, "audio/wav")})
    assert uploaded.status_code == 201, uploaded.text
    wait_until(lambda: abs(dominant_hz(call.heard_pcm()[-1600:], 8000) - 440) < 20, what="the uploaded tone")

    call.hangup()
    wait_until(lambda: httpx.get(f"{c}/streams/{ccid}").json()["status"] == "ended", what="the call ended")
    assert httpx.get(f"{a}/streams").json()["items"] == []
    gone = httpx.post(f"{c}/streams/{ccid}/inject", json={"dtmf": "1"})
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "stream_not_active"

    # One log for the cluster, from any node: who handled what.
    events = httpx.get(f"{a}/stream-log", params={"call_control_id": ccid, "limit": 1000}).json()["items"]
    names = [e["event"] for e in events]
    assert {"webhook.received", "call.owned", "injection.created", "stream.ended"} <= set(names)
    owned = [e["data"] for e in events if e["event"] == "call.owned"]
    assert owned[0]["node"] == "b" and owned[0]["previous"] == "a"
    assert names.count("call.moved") == 1
    assert len(telnyx.commands_for("answer", call)) == 1
    assert len(telnyx.commands_for("streaming_start", call)) == 1


def test_one_webhook_delivered_to_two_nodes_at_once_is_handled_once(telnyx, cluster):
    held: list[WebhookEvent] = []
    telnyx.sender.hold()
    call = telnyx.place_call()
    wait_until(lambda: telnyx.sender.release(order=lambda events: held.extend(events) or []) or held,
               what="call.initiated held")
    assert [e.event_type for e in held] == ["call.initiated"]
    body = json.dumps({"data": held[0].data, "meta": {"attempt": 1}})
    headers = telnyx.signer.headers(body)
    answers: dict[str, dict] = {}

    def deliver(name: str) -> None:
        answers[name] = httpx.post(f"{cluster.url(name)}/webhooks/voice", content=body, headers=headers).json()

    threads = [threading.Thread(target=deliver, args=(name,)) for name in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a["status"] for a in answers.values()) == ["duplicate", "duplicate", "ok"]
    call.wait_streaming(timeout=15)
    assert len(telnyx.commands_for("answer", call)) == 1
    assert len(telnyx.commands_for("streaming_start", call)) == 1


def test_a_forged_forward_is_refused(telnyx, cluster):
    call = telnyx.place_call()
    call.wait_streaming(timeout=15)
    target = f"{cluster.url('b')}/streams/{call.call_control_id}/inject"
    for header in ("a 1 x", "a 99999999999 abc", "nonsense"):
        answer = httpx.post(target, json={"dtmf": "1"}, headers={"X-Mixer-Cluster": header})
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "invalid_cluster_signature"
    handoff = httpx.post(f"{cluster.url('b')}/cluster/calls/{call.call_control_id}/handoff")
    assert handoff.status_code == 403
    assert httpx.get(f"{cluster.url('c')}/streams/{call.call_control_id}").json()["status"] == "streaming"


def test_workers_share_one_port_as_nodes(telnyx, tmp_path, redis_url, postgres_url):
    app = AppProcess(telnyx, tmp_path, env={"REDIS_URL": redis_url, "DATABASE_URL": postgres_url,
                                            "CLUSTER_SECRET": SECRET, "NODE_ID": "w", "WORKERS": "2"})
    try:
        wait_until(lambda: _up(app.url) and len(httpx.get(f"{app.url}/health").json()["nodes"]) == 2,
                   timeout=30, what="two workers")
        assert httpx.get(f"{app.url}/health").json()["nodes"] == ["w-0", "w-1"]
        calls = [telnyx.place_call() for _ in range(4)]
        for call in calls:
            call.wait_streaming(timeout=15)
            answer = httpx.post(f"{app.url}/streams/{call.call_control_id}/inject",
                                json={"tone": {"frequency_hz": 600, "duration_ms": 300}, "loop": True})
            assert answer.status_code == 201, answer.text
        for call in calls:
            wait_until(lambda c=call: abs(dominant_hz(c.heard_pcm()[-1600:], 8000) - 600) < 20, what="the tone")
        nodes = {item["node"] for item in httpx.get(f"{app.url}/streams").json()["items"]}
        assert nodes <= {"w-0", "w-1"} and len(httpx.get(f"{app.url}/streams").json()["items"]) == 4
        app.proc.send_signal(signal.SIGTERM)
        assert app.proc.wait(timeout=30) == 0, app.log()
    finally:
        app.close()


def test_workers_without_redis_stop_start_up_saying_what_to_set(tmp_path):
    env = {**os.environ, "WORKERS": "2", "DATABASE_PATH": str(tmp_path / "db.sqlite3")}
    done = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "WORKERS" in done.stderr and "REDIS_URL" in done.stderr


@pytest.fixture
def pair(telnyx: FakeTelnyx, tmp_path: Path, redis_url: str, postgres_url: str) -> Iterator[Cluster]:
    """Nodes a (webhooks) and b (sockets)."""
    nodes = Cluster(telnyx, tmp_path, redis_url, postgres_url, names=("a", "b"))
    yield nodes
    nodes.close()


def _playing(telnyx: FakeTelnyx, nodes: Cluster) -> SimCall:
    call = telnyx.place_call()
    call.wait_streaming(timeout=15)
    ccid = call.call_control_id
    wait_until(lambda: httpx.get(f"{nodes.url('a')}/streams/{ccid}").json().get("node") == "b", what="owned by b")
    answer = httpx.post(f"{nodes.url('a')}/streams/{ccid}/inject",
                        json={"tone": {"frequency_hz": 500, "duration_ms": 300}, "loop": True})
    assert answer.status_code == 201, answer.text
    wait_until(lambda: len(call.heard_pcm()) > 4000, what="the tone")
    return call


def _keeps_playing(call: SimCall, seconds: float = 2.0) -> None:
    before = len(call.heard_pcm())
    wait_until(lambda: len(call.heard_pcm()) - before >= seconds * 8000 * 0.9, timeout=seconds * 3,
               what="audio while a server is down")
    assert abs(dominant_hz(call.heard_pcm()[-1600:], 8000) - 500) < 20


def test_audio_sent_to_a_node_that_does_not_own_the_call_arrives_bit_exact(telnyx, pair):
    # Uploaded to node a, relayed with its bytes to node b, mixed there: the caller hears exactly
    # the mu-law round trip of the source, as from one process (test_calls.py), base64 or multipart.
    a = pair.url("a")
    calls = [telnyx.place_call() for _ in range(2)]
    for call in calls:
        call.wait_streaming(timeout=15)
        wait_until(lambda c=call: httpx.get(f"{a}/streams/{c.call_control_id}").json().get("node") == "b",
                   what="owned by b")
    sources = []
    for i in range(len(calls)):
        rng = np.random.default_rng(40 + i)
        source = (rng.standard_normal(6000 + 320 * i) * 3000).clip(-20000, 20000).astype(np.int16)
        source[0] = 1500 + i  # a known first sample to align on
        sources.append(source)
    inject = f"{a}/streams/{{}}/inject"
    as_base64 = httpx.post(inject.format(calls[0].call_control_id),
                           json={"audio_base64": base64.b64encode(wav_bytes(sources[0])).decode()})
    as_upload = httpx.post(inject.format(calls[1].call_control_id),
                           files={"file": ("noise.wav", wav_bytes(sources[1]), "audio/wav")})
    for call, answer in zip(calls, (as_base64, as_upload), strict=True):
        assert answer.status_code == 201, answer.text
        url = f"{a}/streams/{call.call_control_id}/injections/{answer.json()['id']}"
        wait_until(lambda u=url: httpx.get(u).json()["status"] == "finished", what="played out")
        wait_until(call.idle, what="playout to drain")
    for call, source in zip(calls, sources, strict=True):
        assert_arrived_exactly(call, source)


def test_redis_down_calls_keep_playing_local_requests_served_and_it_heals(telnyx, redis_server, pair):
    a, b = pair.url("a"), pair.url("b")
    call = _playing(telnyx, pair)
    ccid = call.call_control_id
    redis_server.kill()
    try:
        wait_until(lambda: httpx.get(f"{b}/health").status_code == 503, what="b degraded")
        assert "Redis" in httpx.get(f"{b}/health").json()["reason"]
        _keeps_playing(call)
        local = httpx.get(f"{b}/streams/{ccid}")
        assert local.status_code == 200 and local.json()["status"] == "streaming"
        assert httpx.post(f"{b}/streams/{ccid}/inject", json={"dtmf": "5"}).status_code == 201
        remote = httpx.get(f"{a}/streams/{ccid}")
        assert remote.status_code == 503 and remote.json()["error"]["code"] == "cluster_unavailable"
    finally:
        redis_server.start()
    # Redis came back empty: b claims its call again, and a finds it there.
    wait_until(lambda: _up(a) and _up(b), what="both healthy again")
    wait_until(lambda: httpx.get(f"{a}/streams/{ccid}").status_code == 200, what="a relays again")
    assert httpx.get(f"{a}/streams/{ccid}").json()["node"] == "b"
    _keeps_playing(call)


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_postgres_down_events_wait_and_are_written_when_it_returns(telnyx, postgres_server, pair, how):
    a, b = pair.url("a"), pair.url("b")
    call = _playing(telnyx, pair)
    ccid = call.call_control_id
    if how == "killed":
        postgres_server.kill()  # SIGKILL: its connections drop at once, it recovers from its WAL at start
    else:
        postgres_server.stop()
    try:
        marked = httpx.post(f"{a}/streams/{ccid}/inject", json={"dtmf": "7", "label": "while-pg-down"})
        assert marked.status_code == 201, marked.text
        wait_until(lambda: httpx.get(f"{b}/health").status_code == 503, what="b degraded")
        assert "event log" in httpx.get(f"{b}/health").json()["reason"]
        _keeps_playing(call)
        assert 'mixer_events_dropped_total{node="b"} 0.0' in httpx.get(f"{b}/metrics").text  # under the bound
        down = httpx.get(f"{a}/stream-log")
        assert down.status_code == 503 and down.json()["error"]["code"] == "database_unavailable"
    finally:
        postgres_server.start()
    wait_until(lambda: _up(a) and _up(b), timeout=30, what="both healthy again")
    events = httpx.get(f"{a}/stream-log", params={"call_control_id": ccid, "event": "injection.created",
                                                  "limit": 100}).json()["items"]
    assert marked.json()["id"] in [e["data"]["injection_id"] for e in events]


def test_with_an_api_token_only_a_client_that_has_it_is_relayed(telnyx, tmp_path, redis_url, postgres_url):
    nodes = Cluster(telnyx, tmp_path, redis_url, postgres_url, names=("a", "b"), API_TOKEN="t0ken")
    a = nodes.url("a")
    try:
        call = telnyx.place_call()
        call.wait_streaming(timeout=15)
        auth = {"Authorization": "Bearer t0ken"}
        wait_until(lambda: httpx.get(f"{a}/streams/{call.call_control_id}", headers=auth).json().get("node") == "b",
                   what="owned by b")
        refused = httpx.post(f"{a}/streams/{call.call_control_id}/inject", json={"dtmf": "1"})
        assert refused.status_code == 401
        assert [e["event"] for e in httpx.get(f"{a}/stream-log", headers=auth,
                                              params={"event": "injection"}).json()["items"]] == []
        items = httpx.get(f"{a}/streams", headers=auth).json()["items"]
        assert [(i["call_control_id"], i["node"]) for i in items] == [(call.call_control_id, "b")]
        assert httpx.post(f"{a}/streams/{call.call_control_id}/inject", json={"dtmf": "1"},
                          headers=auth).status_code == 201
    finally:
        nodes.close()


def test_behind_a_round_robin_balancer_every_call_plays(telnyx, tmp_path, redis_url, postgres_url):
    # Webhooks, requests and media sockets all through one balancer, as behind nginx: each call's
    # pieces land on whichever node comes next, and every call still plays what it is sent.
    with Balancer() as balancer:
        nodes = Cluster(telnyx, tmp_path, redis_url, postgres_url,
                        STREAM_WEBSOCKET_URL=f"ws://127.0.0.1:{balancer.port}/stream")
        try:
            balancer.backends = [("127.0.0.1", node.port) for node in nodes.nodes.values()]
            telnyx.webhook_url = f"{balancer.url}/webhooks/voice"
            calls = [telnyx.place_call() for _ in range(6)]
            for i, call in enumerate(calls):
                call.wait_streaming(timeout=15)
                answer = httpx.post(f"{balancer.url}/streams/{call.call_control_id}/inject",
                                    json={"tone": {"frequency_hz": 400 + 100 * i, "duration_ms": 300}, "loop": True})
                assert answer.status_code == 201, answer.text
            for i, call in enumerate(calls):
                wait_until(lambda c=call, hz=400 + 100 * i: abs(dominant_hz(c.heard_pcm()[-1600:], 8000) - hz) < 20,
                           what=f"call {i}'s own tone")
            items = httpx.get(f"{balancer.url}/streams").json()["items"]
            assert sorted(i["call_control_id"] for i in items) == sorted(c.call_control_id for c in calls)
            assert len({i["node"] for i in items}) >= 2  # the sockets were spread
            assert min(balancer.connections) > 0
            for call in calls:
                assert len(telnyx.commands_for("answer", call)) == 1
                assert len(telnyx.commands_for("streaming_start", call)) == 1
        finally:
            nodes.close()


def test_a_recording_is_served_from_any_node_during_and_after_the_call(telnyx, tmp_path, redis_url, postgres_url):
    # Node a takes the webhooks and the requests, node b the media socket and so the recording
    # (on its own disk): a relays the live call's requests to b, and after the call asks b again,
    # the node named in the call's history.
    import io

    import soundfile as sf

    from simulator import g711

    nodes = Cluster(telnyx, tmp_path, redis_url, postgres_url, names=("a", "b"), RECORDING="on")
    a, b = nodes.url("a"), nodes.url("b")
    try:
        call = telnyx.place_call()
        call.wait_streaming(timeout=15)
        ccid = call.call_control_id
        wait_until(lambda: httpx.get(f"{a}/streams/{ccid}").json().get("node") == "b", what="owned by b")
        answer = httpx.post(f"{a}/streams/{ccid}/inject", json={"dtmf": "159"})
        assert answer.status_code == 201, answer.text
        inj = answer.json()["id"]
        wait_until(lambda: httpx.get(f"{a}/streams/{ccid}/injections/{inj}").json()["status"] == "finished",
                   timeout=15, what="the digits played")

        def sounding(pcm: np.ndarray) -> np.ndarray:
            """The 20 ms frames that are not digital silence, in order (DTMF has silent gaps)."""
            frames = pcm[: len(pcm) // 160 * 160].reshape(-1, 160)
            return frames[frames.any(axis=1)].reshape(-1)

        def sent(data: bytes) -> np.ndarray:
            pcm, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
            assert rate == 8000 and pcm.shape[1] == 2
            return sounding(pcm[:, 1])

        def heard() -> np.ndarray:
            return sounding(g711.decode(b"".join(p for _, p in call.received), "PCMU"))

        live = wait_until(lambda: (r := httpx.get(f"{a}/streams/{ccid}/recording")).status_code == 200
                          and len(sent(r.content)) >= len(heard()) and r, timeout=20, what="the digits on file")
        assert live.headers["content-type"] == "audio/wav"
        assert live.headers["content-disposition"].startswith('attachment; filename="recording-')
        assert np.array_equal(sent(live.content), heard())

        paused = httpx.patch(f"{a}/streams/{ccid}", json={"recording": False})
        assert paused.status_code == 200 and paused.json()["recording"]["status"] == "paused"
        assert paused.json()["recording"]["node"] == "b"

        call.hangup()
        wait_until(lambda: (httpx.get(f"{a}/streams/{ccid}").json().get("recording") or {}).get("status")
                   == "complete", timeout=15, what="the recording complete")
        after = [httpx.get(f"{url}/streams/{ccid}/recording") for url in (a, b)]
        assert [r.status_code for r in after] == [200, 200]
        assert after[0].content == after[1].content  # a has no file: it asked b
        assert np.array_equal(sent(after[0].content), heard())
        assert not (tmp_path / "a" / "recordings").exists() or not any((tmp_path / "a" / "recordings").iterdir())
    finally:
        nodes.close()
