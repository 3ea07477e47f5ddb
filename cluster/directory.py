"""What the nodes agree on, in Redis: who is alive, who owns each call, which ids were handled.

Keys (all under `mixer:`):
- `node:<id>`: the node's advertised URL and start time, with a lease (PX) the node renews; a
  node whose key is gone is dead. `nodes` is the set of ids seen, pruned once a dead node's
  calls have all been taken over.
- `call:<call_control_id>`: hash {owner, fence, stream_url}; `fence` rises at every change of
  owner, so an owner that was replaced can tell. An ended call keeps {ended} for an hour, so a
  late webhook delivered to any node does not revive it.
- `calls-of:<node>`: the calls a node owns, for the survivors to find when it dies.
- `injections:<call_control_id>` and `audio:<call_control_id>`: hashes by injection id of each
  injection's state (JSON) and of its audio (float32 at the call's rate), so that the node a
  call moves to after its owner died resumes them.
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
# A call's injections and their audio, renewed at each change; a call longer than this without
# one loses what it had for a takeover (Telnyx ends calls after 4 h by default).
STATE_TTL_S = 6 * 3600

# Who may own the call. KEYS[1]: the call's hash. ARGV: this node, the key prefix, and "claim"
# (take it only if no live node has it), "take" (take it from whoever has it) or "orphan" (take
# it only from the dead node ARGV[4]: a survivor's takeover). Keeps calls-of:<node> in step.
_CLAIM = """
if redis.call('HEXISTS', KEYS[1], 'ended') == 1 then return {'ended', '', 0} end
local owner = redis.call('HGET', KEYS[1], 'owner')
local fence = tonumber(redis.call('HGET', KEYS[1], 'fence') or '0')
local ccid = string.sub(KEYS[1], string.len(ARGV[2]) + 6)
if owner == ARGV[1] then return {'mine', owner, fence} end
local alive = owner and redis.call('EXISTS', ARGV[2] .. 'node:' .. owner) == 1
if ARGV[3] == 'orphan' and (alive or owner ~= ARGV[4]) then
  if owner ~= ARGV[4] then redis.call('SREM', ARGV[2] .. 'calls-of:' .. ARGV[4], ccid) end
  return {'other', owner or '', fence}
end
if alive and ARGV[3] == 'claim' then return {'other', owner, fence} end
fence = redis.call('HINCRBY', KEYS[1], 'fence', 1)
redis.call('HSET', KEYS[1], 'owner', ARGV[1])
if owner then redis.call('SREM', ARGV[2] .. 'calls-of:' .. owner, ccid) end
redis.call('SADD', ARGV[2] .. 'calls-of:' .. ARGV[1], ccid)
if owner then return {'took', owner, fence} end
return {'mine', ARGV[1], fence}
"""

# The call is over: off its owner's list, its state gone, a tombstone for an hour. KEYS: the
# call's hash, its injections, their audio. ARGV: the key prefix, the call, the tombstone's TTL.
_END = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then redis.call('SREM', ARGV[1] .. 'calls-of:' .. owner, ARGV[2]) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'ended', '1')
redis.call('EXPIRE', KEYS[1], ARGV[3])
"""

Outcome = Literal["mine", "other", "took", "ended"]


@dataclass(frozen=True)
class Claim:
    """`mine`: this node owns the call now (nobody had it); `other`: `node` does; `took`: this
    node took it from `node`, alive ("take") or dead (any mode: then the caller must see to the
    call's stream, as a survivor's takeover does); `ended`: the call is over."""

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
        self._end = client.register_script(_END)

    # -- nodes --------------------------------------------------------------------------------

    def heartbeat(self, info: dict[str, Any]) -> bool:
        """Renew this node's lease; False if it had run out (others may have taken its calls)."""
        pipe = self._r.pipeline(transaction=False)
        pipe.set(PREFIX + "node:" + self.node_id, json.dumps(info), px=self.lease_ms, get=True)
        pipe.sadd(PREFIX + "nodes", self.node_id)
        previous, _ = pipe.execute()
        return previous is not None

    def leave(self) -> None:
        """The lease goes at once; the id stays in `nodes` until every call it still owns is taken over."""
        self._r.delete(PREFIX + "node:" + self.node_id)

    def nodes(self) -> dict[str, dict[str, Any]]:
        """The nodes alive, by id: {url, started_at}."""
        ids = sorted(_text(i) for i in self._r.smembers(PREFIX + "nodes"))
        if not ids:
            return {}
        values = self._r.mget([PREFIX + "node:" + i for i in ids])
        return {i: json.loads(v) for i, v in zip(ids, values, strict=True) if v is not None}

    def orphans(self) -> dict[str, list[str]]:
        """The calls of dead nodes, by node; a dead node with none left is forgotten."""
        ids = sorted(_text(i) for i in self._r.smembers(PREFIX + "nodes"))
        if not ids:
            return {}
        values = self._r.mget([PREFIX + "node:" + i for i in ids])
        out: dict[str, list[str]] = {}
        for node, value in zip(ids, values, strict=True):
            if value is not None:
                continue
            calls = sorted(_text(c) for c in self._r.smembers(PREFIX + "calls-of:" + node))
            if calls:
                out[node] = calls
            else:
                self._r.srem(PREFIX + "nodes", node)
        return out

    # -- calls --------------------------------------------------------------------------------

    def claim(self, call_control_id: str, *, take: bool = False, orphan_of: str | None = None) -> Claim:
        mode = "orphan" if orphan_of is not None else "take" if take else "claim"
        outcome, node, fence = self._claim(keys=[PREFIX + "call:" + call_control_id],
                                           args=[self.node_id, PREFIX, mode, orphan_of or ""])
        return Claim(_text(outcome), _text(node), int(fence))  # type: ignore[arg-type]

    def owners(self, call_control_ids: list[str]) -> dict[str, str | None]:
        """The owner named in Redis of each call (None: ended or unknown)."""
        pipe = self._r.pipeline(transaction=False)
        for ccid in call_control_ids:
            pipe.hget(PREFIX + "call:" + ccid, "owner")
        return {ccid: _text(o) if o is not None else None
                for ccid, o in zip(call_control_ids, pipe.execute(), strict=True)}

    def set_stream_url(self, call_control_id: str, url: str) -> None:
        """The stream URL Telnyx was given: a survivor asks Telnyx to stream there again."""
        self._r.hset(PREFIX + "call:" + call_control_id, "stream_url", url)

    def stream_url(self, call_control_id: str) -> str | None:
        value = self._r.hget(PREFIX + "call:" + call_control_id, "stream_url")
        return _text(value) if value is not None else None

    # -- injections, for a call to resume on another node ------------------------------------

    def save_injection(self, call_control_id: str, injection_id: str, state: dict[str, Any],
                       audio: bytes | None = None) -> None:
        pipe = self._r.pipeline(transaction=True)
        if audio is not None:
            pipe.hset(PREFIX + "audio:" + call_control_id, injection_id, audio)
            pipe.expire(PREFIX + "audio:" + call_control_id, STATE_TTL_S)
        pipe.hset(PREFIX + "injections:" + call_control_id, injection_id, json.dumps(state))
        pipe.expire(PREFIX + "injections:" + call_control_id, STATE_TTL_S)
        pipe.execute()

    def injections(self, call_control_id: str) -> list[tuple[dict[str, Any], bytes | None]]:
        """Each injection's state and audio (None when it has none, e.g. a Telnyx playback)."""
        pipe = self._r.pipeline(transaction=False)
        pipe.hgetall(PREFIX + "injections:" + call_control_id)
        pipe.hgetall(PREFIX + "audio:" + call_control_id)
        states, audio = pipe.execute()
        return [(json.loads(state), audio.get(key)) for key, state in states.items()]

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
        self._end(keys=[PREFIX + "call:" + call_control_id, PREFIX + "injections:" + call_control_id,
                        PREFIX + "audio:" + call_control_id], args=[PREFIX, call_control_id, ENDED_TTL_S])

    def reassert(self, call_control_ids: list[str]) -> None:
        """After Redis lost its data (a restart without persistence): this node's calls are its own
        again, unless another node took one meanwhile."""
        if not call_control_ids:
            return
        pipe = self._r.pipeline(transaction=False)
        for ccid in call_control_ids:
            pipe.hsetnx(PREFIX + "call:" + ccid, "owner", self.node_id)
        pipe.sadd(PREFIX + "calls-of:" + self.node_id, *call_control_ids)
        pipe.execute()

    # -- webhooks -----------------------------------------------------------------------------

    def first_time(self, webhook_id: str) -> bool:
        return bool(self._r.set(PREFIX + "webhook:" + webhook_id, self.node_id, nx=True, ex=WEBHOOK_TTL_S))

    def forget(self, webhook_id: str) -> None:
        self._r.delete(PREFIX + "webhook:" + webhook_id)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
