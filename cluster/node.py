"""This process as a node: its lease, where each request for a call belongs, and calls moving in.

Threads: `cluster-heartbeat` renews the lease every lease/5, notices Redis going and coming
back, and takes over the calls of nodes whose lease ran out; `cluster-worker` runs what the
media socket and the media clock must not wait for (taking a call over when its socket arrives,
marking a call ended, saving an injection's start). Request threads ask the directory directly.

Failover: every injection's state and audio are kept in Redis while the call lives. When a
node dies, one survivor per call wins an "orphan" claim (a higher fence), logs the call's
injections `interrupted` and asks Telnyx to stream the call again (`restream`); whichever node
the new socket reaches takes the call over as usual and resumes each injection where the wall
clock says it would be now, so the gap is skipped, not replayed. A node whose lease ran out
while it lived (cut off from Redis) learns at its next renewal and lets go of the calls that
were taken from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import queue
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import redis

from cluster.directory import Directory
from cluster.signing import HEADER, Signer
from eventlog import EventLog, utc_now
from streams.registry import SessionRegistry
from streams.resume import audio_bytes, resume_injections, save_until_current
from streams.session import CallSession, Injection
from streams.status import CallStatus, InjectionStatus

logger = logging.getLogger(__name__)

# Headers a proxy must not pass on (RFC 9110 §7.6.1), and ours, which the forwarder sets itself.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                         "transfer-encoding", "upgrade", "host", "content-length", HEADER.lower()})
ENDED = "ended"
# A node that cannot list its calls within this fails the cluster-wide list (503), rather than
# holding it up for as long as a relayed inject may take (it may download audio).
GATHER_TIMEOUT_S = 3.0
# restream(call_control_id, attempt, stream_url, on_lost): ask Telnyx to stream the call again;
# `attempt` makes the command ids new (the fence of a takeover, or "drain").
Restream = Callable[[str, str, str | None, Callable[[str], None]], None]
DRAIN_POLL_S = 0.05
DRAIN_RECHECK_S = 0.5


class ClusterUnavailable(Exception):
    """The request needs another node or Redis, and cannot reach it: 503 cluster_unavailable."""


class Forwarded:
    """Another node's answer, passed on as it is."""

    def __init__(self, status: int, body: bytes, content_type: str, disposition: str | None = None) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.disposition = disposition  # Content-Disposition (a recording's file name)


class ClusterNode:
    def __init__(self, *, redis_url: str, secret: str, node_id: str, lease_ms: int,
                 registry: SessionRegistry, log: EventLog, request_timeout_s: float) -> None:
        self.node_id = node_id
        self.url = ""  # advertised at start()
        self.lease_ms = lease_ms
        self.registry = registry
        self.log = log
        # Short timeouts: a request thread asking Redis must fail fast when it is gone.
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.directory = Directory(self.redis, node_id, lease_ms=lease_ms)
        self.signer = Signer(secret, node_id)
        self.http = httpx.Client(timeout=request_timeout_s, trust_env=False, follow_redirects=False)
        self.redis_error: str | None = None  # set while Redis is unreachable (heartbeat thread)
        self.started_at = utc_now()
        self._stop = threading.Event()
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        # Calls whose socket arrived while Redis was away: taken over once it is back.
        self._unadopted: dict[str, CallSession] = {}
        self._threads: list[threading.Thread] = []
        self._gather = ThreadPoolExecutor(max_workers=4, thread_name_prefix="cluster-gather")
        self._beats = 0
        self.draining = False
        # Not before then: after an outage of its own, a node gives the others one lease to renew
        # theirs, rather than taking the calls of nodes that were only cut off like itself.
        self._sweep_after = 0.0
        self.restream: Restream | None = None  # set by the app: Telnyx commands live in webhooks/

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, url: str) -> None:
        self.url = url
        self._beat()
        for name, target in (("cluster-heartbeat", self._heartbeat_loop), ("cluster-worker", self._work_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.log.record("node.started", None, node=self.node_id, url=url)

    def stop(self) -> None:
        self._stop.set()
        self._work.put(None)
        for thread in self._threads:
            thread.join(5)
        with contextlib.suppress(redis.RedisError):
            self.directory.leave()
        self._gather.shutdown(wait=False, cancel_futures=True)
        self.http.close()
        self.redis.close()

    @property
    def healthy(self) -> bool:
        return self.redis_error is None

    def drain(self, timeout_s: float) -> int:
        """SIGTERM: hand every call here to another node, as a dying node's would be but at once,
        and wait (at most `timeout_s`) until none is left. The public listener is closed first
        (the caller's job), so the new streams reach other nodes; each takes its call over from
        this one (handoff) and resumes it. Returns how many calls did not move."""
        self.draining = True
        self._beat()  # the others see it draining now, and do not send it calls
        sessions = self.registry.sessions()
        self.log.record("node.draining", None, node=self.node_id, calls=len(sessions))
        if not self._others_taking_calls():  # the whole server is stopping: nowhere to move them
            logger.warning("draining: no other node takes calls; %d call(s) stop here", len(sessions))
            self.log.record("node.drained", None, node=self.node_id, calls_left=len(sessions))
            return len(sessions)
        logger.warning("draining: moving %d call(s) to other nodes", len(sessions))
        for session in sessions:
            ccid = session.call_control_id
            try:
                url = self.directory.stream_url(ccid)
            except redis.RedisError as exc:
                logger.error("[%s] cannot move the call while Redis is unreachable: %s", ccid, exc)
                continue
            if self.restream is not None:
                self.restream(ccid, f"drain-{self.node_id}", url, functools.partial(self._lost, ccid))
        deadline = time.monotonic() + timeout_s
        next_look = time.monotonic() + DRAIN_RECHECK_S
        while self.registry.sessions() and time.monotonic() < deadline:
            time.sleep(DRAIN_POLL_S)
            if time.monotonic() >= next_look:  # the others may be stopping too
                next_look += DRAIN_RECHECK_S
                if not self._others_taking_calls():
                    break
        left = len(self.registry.sessions())
        self.log.record("node.drained", None, node=self.node_id, calls_left=left)
        return left

    def _others_taking_calls(self) -> bool:
        try:
            nodes = self.directory.nodes()
        except redis.RedisError:
            return False
        return any(not info.get("draining") for node, info in nodes.items() if node != self.node_id)

    def leave(self) -> None:
        """This node stops: its calls are no longer ended here but left to the others, which take
        them over at once, since the lease goes now rather than when it runs out."""
        self._stop.set()  # no heartbeat renews the lease after this
        for thread in self._threads:
            if thread.name == "cluster-heartbeat":
                thread.join(5)
        self.registry.watcher = None
        with contextlib.suppress(redis.RedisError):
            self.directory.leave()

    def nodes(self) -> dict[str, dict[str, Any]]:
        try:
            return self.directory.nodes()
        except redis.RedisError as exc:
            raise ClusterUnavailable(f"Redis is unreachable: {exc}") from None

    # -- where a request belongs (request threads) ----------------------------------------------

    def owner_url(self, key: str) -> str | None:
        """The URL of the node that owns the call `key`, or None when this node answers for it."""
        if self.registry.get(key) is not None:
            return None
        try:
            owner = self.directory.owner(key)
        except redis.RedisError as exc:
            raise ClusterUnavailable(f"Redis is unreachable, so the node of call {key} is unknown: {exc}") from None
        if owner is None or owner.ended or owner.node == self.node_id:
            return None  # this node's history answers (404, or the call as it ended)
        if owner.url is None:
            raise ClusterUnavailable(f"The node that held call {owner.call_control_id} is gone.")
        return owner.url

    def node_url(self, node_id: str) -> str:
        """The URL of a live node (e.g. the one whose disk holds an ended call's recording)."""
        try:
            info = self.directory.node(node_id)
        except redis.RedisError as exc:
            raise ClusterUnavailable(f"Redis is unreachable: {exc}") from None
        if info is None:
            raise ClusterUnavailable(f"Node {node_id}, which holds what was asked for, is not running.")
        return str(info["url"])

    def webhook_target(self, call_control_id: str) -> str | None:
        """Where a webhook of this call is handled: None here, ENDED nowhere, else a node's URL.

        The first node to need a call claims it; a later one forwards to it.
        """
        if self.registry.get(call_control_id) is not None:
            return None
        try:
            claim = self.directory.claim(call_control_id)
            if claim.outcome == "ended":
                return ENDED
            if claim.outcome == "took":  # its node died, and this webhook came before the sweep
                self._take_over(call_control_id, claim.node, claim.fence)
            if claim.outcome != "other":
                return None
            info = self.directory.node(claim.node)
        except redis.RedisError as exc:
            raise ClusterUnavailable(f"Redis is unreachable: {exc}") from None
        if info is None:  # its lease ran out between the two questions
            raise ClusterUnavailable(f"The node that holds call {call_control_id} is gone.")
        return str(info["url"])

    def remember_stream_url(self, call_control_id: str, url: str) -> None:
        try:
            self.directory.set_stream_url(call_control_id, url)
        except redis.RedisError as exc:
            logger.warning("[%s] could not keep the stream URL in Redis (%s); a takeover will use "
                           "STREAM_WEBSOCKET_URL", call_control_id, exc)

    def first_time(self, webhook_id: str) -> bool:
        try:
            return self.directory.first_time(webhook_id)
        except redis.RedisError as exc:
            raise ClusterUnavailable(f"Redis is unreachable: {exc}") from None

    def forget(self, webhook_id: str) -> None:
        try:
            self.directory.forget(webhook_id)
        except redis.RedisError:
            logger.warning("webhook %s: could not forget it in Redis; Telnyx's retry will be a duplicate",
                           webhook_id)

    # -- talking to other nodes (request threads) ------------------------------------------------

    def forward(self, base_url: str, method: str, path: str, query: str, headers: Iterable[tuple[str, str]],
                body: bytes, *, timeout_s: float | None = None) -> Forwarded:
        """Ask the node at `base_url` to serve this request itself; its answer, as it gave it."""
        target = urllib.parse.quote(path) + (f"?{query}" if query else "")
        received = list(headers)
        sent = {k: v for k, v in received if k.lower() not in _HOP_BY_HOP}
        # The node that serves it must see the address the client used (the stream URL is built
        # from it), not the peer listener's.
        host = next((v for k, v in received if k.lower() == "host"), None)
        if host and not any(k.lower() == "x-forwarded-host" for k in sent):
            sent["X-Forwarded-Host"] = host
        sent[HEADER] = self.signer.sign(method, target, body)
        try:
            response = self.http.request(method, base_url + target, headers=sent, content=body,
                                         timeout=timeout_s if timeout_s is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.HTTPError as exc:
            raise ClusterUnavailable(f"The node at {base_url} did not answer: {exc}") from None
        return Forwarded(response.status_code, response.content,
                         response.headers.get("content-type", "application/json"),
                         response.headers.get("content-disposition"))

    def live_views(self) -> list[dict[str, Any]]:
        """The live calls of every other node, each marked with its node."""
        others = [(nid, info["url"]) for nid, info in self.nodes().items() if nid != self.node_id]

        def ask(node_id: str, url: str) -> list[dict[str, Any]]:
            answer = self.forward(url, "GET", "/streams", "status=active", (), b"", timeout_s=GATHER_TIMEOUT_S)
            if answer.status != 200:
                raise ClusterUnavailable(f"Node {node_id} answered {answer.status} for its calls.")
            items: list[dict[str, Any]] = json.loads(answer.body)["items"]
            for item in items:
                item["node"] = node_id
            return items

        views: list[dict[str, Any]] = []
        for items in self._gather.map(lambda pair: ask(*pair), others):
            views += items
        return views

    # -- injections kept for a takeover ---------------------------------------------------------

    def injection_saved(self, session: CallSession, inj: Injection, samples: np.ndarray | None) -> None:
        """An injection was made or changed (request threads): in Redis before the answer, so
        nothing acknowledged is lost with this node."""
        if self.redis_error is not None:
            return  # not waiting for a timeout per request: saved when Redis is back (_save_all)
        try:
            save_until_current(lambda state, audio: self.directory.save_injection(
                session.call_control_id, inj.id, state, audio), inj, audio_bytes(samples))
        except redis.RedisError as exc:
            # The call plays on; the heartbeat saves it again once Redis is back.
            logger.warning("[%s] injection %s not kept in Redis: %s", session.call_control_id, inj.id, exc)

    def _save_all(self) -> None:
        """After an outage: every live injection of this node's calls, with its audio, again."""
        for session in self.registry.sessions():
            for inj in list(session.injections.values()):
                if inj.active:
                    self.directory.save_injection(session.call_control_id, inj.id, dataclasses.asdict(inj),
                                                  audio_bytes(session.mixer.source(inj.id)))

    def injection_updated(self, session: CallSession, inj: Injection) -> None:
        """It started or finished (the clock's or the socket's thread): saved off that thread."""
        self._work.put(lambda: self.injection_saved(session, inj, None))

    def _resume(self, session: CallSession) -> None:
        """The injections the call had on a node that died, resumed where they would be now."""
        try:
            kept = self.directory.injections(session.call_control_id)
        except redis.RedisError as exc:
            logger.warning("[%s] cannot read its injections from Redis: %s", session.call_control_id, exc)
            return
        resume_injections(session, kept, self.log)

    # -- failover (cluster-heartbeat) -------------------------------------------------------------

    def _sweep(self) -> None:
        """Take over the calls of nodes whose lease ran out; several survivors share them out."""
        if time.monotonic() < self._sweep_after:
            return
        for dead, calls in self.directory.orphans().items():
            random.shuffle(calls)
            for ccid in calls:
                claim = self.directory.claim(ccid, orphan_of=dead)
                if claim.outcome == "took":
                    self._take_over(ccid, dead, claim.fence)

    def _take_over(self, ccid: str, dead: str, fence: int) -> None:
        url = self.directory.stream_url(ccid)
        if url is None:
            return  # it never streamed: its webhooks, retried by Telnyx, start it here as usual
        self.log.record("call.taken_over", ccid, node=self.node_id, previous=dead, fence=fence)
        logger.warning("[%s] node %s is gone: asking Telnyx to stream the call again", ccid, dead)
        for state, audio in self.directory.injections(ccid):
            if state.get("status") in (InjectionStatus.CREATED, InjectionStatus.PLAYING) and audio is not None:
                self.log.record("injection.interrupted", ccid, injection_id=state.get("id"), node=dead)
        if self.restream is not None:
            self.restream(ccid, str(fence), url, functools.partial(self._lost, ccid))

    def _let_go_of_taken_calls(self) -> None:
        """This node's lease had run out: calls another node took meanwhile are not ours to play."""
        sessions = {s.call_control_id: s for s in self.registry.sessions()}
        if not sessions:
            return
        for ccid, owner in self.directory.owners(list(sessions)).items():
            if owner is not None and owner != self.node_id:
                session = sessions[ccid]
                session.fenced()
                self.registry.forget(session)
                self.log.record("call.fenced", ccid, node=self.node_id, owner=owner)
                logger.error("[%s] node %s took the call while this node was cut off; stopped sending",
                             ccid, owner)

    # -- calls moving (cluster-worker; the handoff view) ----------------------------------------

    def stream_attached(self, session: CallSession, stream_id: str) -> None:
        """The call's media socket is on this node (the loop thread): own the call, off the loop."""
        self._work.put(lambda: self._adopt(session, stream_id))

    def call_closed(self, call_control_id: str) -> None:
        self._work.put(lambda: self._mark_ended(call_control_id))

    def release(self, call_control_id: str, to: str) -> dict[str, Any]:
        """Node `to` has the call's socket: give it the call (status, info, injections)."""
        session = self.registry.get(call_control_id)
        if session is None:
            return {}
        session.moved()  # first: an injection arriving now is refused, not exported half-way
        state = session.export()
        self.registry.forget(session)
        self.log.record("call.moved", call_control_id, node=self.node_id, to=to)
        return state

    def _adopt(self, session: CallSession, stream_id: str) -> None:
        ccid = session.call_control_id
        try:
            self.directory.index_stream(stream_id, ccid)
            claim = self.directory.claim(ccid, take=True)
            previous = self.directory.node(claim.node) if claim.outcome == "took" else None
        except redis.RedisError as exc:
            logger.warning("[%s] cannot own the call in Redis yet (%s); retrying when it is back", ccid, exc)
            self._unadopted[ccid] = session
            return
        self._unadopted.pop(ccid, None)
        if claim.outcome == "ended":
            self.registry.close(session, CallStatus.ENDED, "ended on another node")
            return
        self.log.record("call.owned", ccid, node=self.node_id, fence=claim.fence,
                        previous=claim.node if claim.outcome == "took" else None)
        self._resume(session)  # first: what the handoff brings without its audio is here by then
        if previous is not None:
            target = f"/cluster/calls/{ccid}/handoff"  # forward() quotes it
            try:
                answer = self.forward(str(previous["url"]), "POST", target, "", (), b"")
                state = json.loads(answer.body) if answer.status == 200 else {}
            except (ClusterUnavailable, ValueError) as exc:
                logger.error("[%s] node %s did not hand the call over: %s", ccid, claim.node, exc)
                state = {}
            if state:
                session.absorb(state)

    def _lost(self, call_control_id: str, reason: str) -> None:
        """Telnyx would not stream the call again (restream): it is over for every node."""
        self._work.put(lambda: self._mark_ended(call_control_id))

    def _mark_ended(self, call_control_id: str) -> None:
        try:
            self.directory.ended(call_control_id)
        except redis.RedisError as exc:
            logger.warning("[%s] could not mark the call ended in Redis: %s", call_control_id, exc)

    def _work_loop(self) -> None:
        while (task := self._work.get()) is not None:
            try:
                task()
            except Exception:
                logger.exception("cluster task failed")

    def _beat(self) -> None:
        try:
            renewed = self.directory.heartbeat({"url": self.url, "started_at": self.started_at,
                                                "draining": self.draining})
            if not renewed and self._beats:
                logger.error("this node's lease had run out: other nodes may have taken its calls")
                self._let_go_of_taken_calls()
            self._beats += 1
            if self.redis_error is not None:
                # Back: Redis may have lost everything; this node's calls are its own again.
                self.directory.reassert([s.call_control_id for s in self.registry.sessions()])
                self._let_go_of_taken_calls()
                self._save_all()
                self._sweep_after = time.monotonic() + self.lease_ms / 1000
                logger.warning("Redis is reachable again (was: %s)", self.redis_error)
                self.log.record("node.redis_recovered", None, node=self.node_id)
                self.redis_error = None
                for ccid, session in list(self._unadopted.items()):
                    stream_id = session.stream_id
                    if stream_id is not None:
                        self.stream_attached(session, stream_id)
                    self._unadopted.pop(ccid, None)
            self._sweep()
        except redis.RedisError as exc:
            if self.redis_error is None:
                logger.error("Redis is unreachable: %s; calls here keep playing", exc)
                self.log.record("node.redis_lost", None, node=self.node_id, error=str(exc))
            self.redis_error = str(exc) or type(exc).__name__

    def _heartbeat_loop(self) -> None:
        interval = self.lease_ms / 5000
        while not self._stop.wait(interval):
            started = time.monotonic()
            self._beat()
            if time.monotonic() - started > interval:
                logger.warning("cluster heartbeat took %.1f s", time.monotonic() - started)

