"""What the nodes agree on, in Redis: who is alive, who owns each call, which ids were handled.

Keys (all under `mixer:`):
- `node:<id>`: the node's advertised URL and start time, with a lease (PX) the node renews; a
  node whose key is gone is dead. `nodes` is the set of ids ever seen, pruned as leases expire.
- `call:<call_control_id>`: hash {owner, fence}; `fence` rises at every change of owner, so an
  owner that was replaced can tell. An ended call keeps {ended} for an hour, so a late webhook
  delivered to any node does not revive it.
- `stream:<stream_id>`: the call of a Telnyx stream id (the REST routes take either).
- `webhook:<id>`: a webhook already handled by some node (Telnyx retries within the hour).

One lease per node, not per call: renewing it costs one round trip a second (a SET and an SADD),
however many calls the node plays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import redis

PREFIX = "mixer:"
ENDED_TTL_S = 3600
WEBHOOK_TTL_S = 3600
STREAM_TTL_S = 24 * 3600

# Who may own the call. KEYS[1]: the call's hash. ARGV: this node, the node-key prefix, and
# "claim" (take it only if no live node has it) or "take" (take it from whoever has it).
_CLAIM = """
if redis.call('HEXISTS', KEYS[1], 'ended') == 1 then return {'ended', '', 0} end
local owner = redis.call('HGET', KEYS[1], 'owner')
local fence = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
if owner == ARGV[1] then return {'mine', owner, fence} end
local alive = owner and redis.call('EXISTS', ARGV[2] .. owner) == 1
if alive and ARGV[3] == 'claim' then return {'other', owner, fence} end
fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
if alive then return {'took', owner, fence} end
return {'mine', ARGV[1], fence}
"""

Outcome = Literal["mine", "other", "took", "ended"]


@dataclass(frozen=True)
class Claim:
    """`mine`: this node owns the call now; `other`: `node` does; `took`: this node took it from
    the live `node`; `ended`: the call is over."""

    outcome: Outcome
    node: str
    fence: int


@dataclass(frozen=True)
class Owner:
    call_control_id: str
    node: str | None  # None: nobody alive owns it (not yet seen, or its owner died)
    url: str | None  # the owner's advertised URL
    ended: bool


class Directory:
    def __init__(self, client: redis.Redis, node_id: str, *, lease_ms: int) -> None:
        self._r = client
        self.node_id = node_id
        self.lease_ms = lease_ms
        self._claim = client.register_script(_CLAIM)

    # -- nodes --------------------------------------------------------------------------------

    def heartbeat(self, info: dict[str, Any]) -> None:
        pipe = self._r.pipeline(transaction=False)
        pipe.set(PREFIX + "node:" + self.node_id, json.dumps(info), px=self.lease_ms)
        pipe.sadd(PREFIX + "nodes", self.node_id)
        pipe.execute()

    def leave(self) -> None:
        pipe = self._r.pipeline(transaction=False)
        pipe.delete(PREFIX + "node:" + self.node_id)
        pipe.srem(PREFIX + "nodes", self.node_id)
        pipe.execute()

    def nodes(self) -> dict[str, dict[str, Any]]:
        """The nodes alive, by id: {url, started_at}."""
        ids = sorted(_text(i) for i in self._r.smembers(PREFIX + "nodes"))
        if not ids:
            return {}
        values = self._r.mget([PREFIX + "node:" + i for i in ids])
        dead = [i for i, v in zip(ids, values, strict=True) if v is None]
        if dead:
            self._r.srem(PREFIX + "nodes", *dead)
        return {i: json.loads(v) for i, v in zip(ids, values, strict=True) if v is not None}

    # -- calls --------------------------------------------------------------------------------

    def claim(self, call_control_id: str, *, take: bool = False) -> Claim:
        outcome, node, fence = self._claim(keys=[PREFIX + "call:" + call_control_id],
                                           args=[self.node_id, PREFIX + "node:", "take" if take else "claim"])
        return Claim(_text(outcome), _text(node), int(fence))  # type: ignore[arg-type]

    def owner(self, key: str) -> Owner | None:
        """The owner of a call named by call_control_id or stream_id; None if Redis never saw it."""
        call = self._r.hgetall(PREFIX + "call:" + key)
        ccid = key
        if not call:
            mapped = self._r.get(PREFIX + "stream:" + key)
            if mapped is None:
                return None
            ccid = _text(mapped)
            call = self._r.hgetall(PREFIX + "call:" + ccid)
            if not call:
                return None
        fields = {_text(k): _text(v) for k, v in call.items()}
        if "ended" in fields:
            return Owner(ccid, None, None, True)
        node = fields.get("owner")
        info = self.node(node) if node is not None else None
        return Owner(ccid, node if info else None, info["url"] if info else None, False)

    def node(self, node_id: str) -> dict[str, Any] | None:
        """A live node's {url, started_at}; None once its lease has expired."""
        value = self._r.get(PREFIX + "node:" + node_id)
        return json.loads(value) if value is not None else None

    def index_stream(self, stream_id: str, call_control_id: str) -> None:
        self._r.set(PREFIX + "stream:" + stream_id, call_control_id, ex=STREAM_TTL_S)

    def ended(self, call_control_id: str) -> None:
        key = PREFIX + "call:" + call_control_id
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, "ended", "1")
        pipe.expire(key, ENDED_TTL_S)
        pipe.execute()

    def reassert(self, call_control_ids: list[str]) -> None:
        """After Redis lost its data (a restart without persistence): this node's calls are its own
        again, unless another node took one meanwhile."""
        if not call_control_ids:
            return
        pipe = self._r.pipeline(transaction=False)
        for ccid in call_control_ids:
            pipe.hsetnx(PREFIX + "call:" + ccid, "owner", self.node_id)
        pipe.execute()

    # -- webhooks -----------------------------------------------------------------------------

    def first_time(self, webhook_id: str) -> bool:
        return bool(self._r.set(PREFIX + "webhook:" + webhook_id, self.node_id, nx=True, ex=WEBHOOK_TTL_S))

    def forget(self, webhook_id: str) -> None:
        self._r.delete(PREFIX + "webhook:" + webhook_id)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
