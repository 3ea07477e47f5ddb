"""cluster.directory against a real Redis: who owns a call, fencing, tombstones, dedupe."""

from __future__ import annotations

import time

import redis

from cluster.directory import Directory


def _node(url: str, name: str, lease_ms: int = 5000) -> Directory:
    directory = Directory(redis.Redis.from_url(url), name, lease_ms=lease_ms)
    directory.heartbeat({"url": f"http://{name}.invalid", "started_at": "now"})
    return directory


def test_the_first_claim_wins_and_a_take_raises_the_fence(redis_url):
    a, b = _node(redis_url, "a"), _node(redis_url, "b")
    first = a.claim("call-1")
    assert (first.outcome, first.node) == ("mine", "a")
    assert (b.claim("call-1").outcome, b.claim("call-1").node) == ("other", "a")
    assert a.claim("call-1").outcome == "mine"  # asking again changes nothing
    taken = b.claim("call-1", take=True)
    assert (taken.outcome, taken.node, taken.fence) == ("took", "a", first.fence + 1)
    owner = a.owner("call-1")
    assert owner is not None and (owner.node, owner.url) == ("b", "http://b.invalid")


def test_a_dead_owners_call_can_be_claimed_and_an_ended_call_cannot(redis_url):
    a = _node(redis_url, "a", lease_ms=1000)
    b = _node(redis_url, "b")
    a.claim("call-1")
    time.sleep(1.2)  # a's lease runs out
    assert b.owner("call-1").node is None
    assert a.node_id in b.orphans()
    took = b.claim("call-1")  # a webhook reaching b before a survivor's sweep: b takes it over
    assert (took.outcome, took.node) == ("took", "a")
    assert b.orphans() == {}  # off a's list, and a forgotten: nothing left to sweep
    assert sorted(b.nodes()) == ["b"]
    b.ended("call-1")
    assert a.claim("call-1", take=True).outcome == "ended"
    assert b.owner("call-1").ended


def test_a_stream_id_names_its_call_and_webhooks_are_handled_once(redis_url):
    a, b = _node(redis_url, "a"), _node(redis_url, "b")
    a.claim("call-1")
    a.index_stream("stream-9", "call-1")
    owner = b.owner("stream-9")
    assert owner is not None and (owner.call_control_id, owner.node) == ("call-1", "a")
    assert b.owner("nobody") is None
    assert a.first_time("wh-1") and not b.first_time("wh-1")
    a.forget("wh-1")
    assert b.first_time("wh-1")


def test_after_redis_lost_its_data_a_node_reasserts_its_calls(redis_url):
    a, b = _node(redis_url, "a"), _node(redis_url, "b")
    a.claim("call-1")
    redis.Redis.from_url(redis_url).flushall()
    b.heartbeat({"url": "http://b.invalid", "started_at": "now"})
    a.heartbeat({"url": "http://a.invalid", "started_at": "now"})
    a.reassert(["call-1"])
    assert b.owner("call-1").node == "a"
