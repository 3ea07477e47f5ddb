"""Call Control playback (`playback_start` / `playback_stop`) as the app sees it: its webhooks.

The simulator fetches and plays nothing: an `audio_url` is never requested, and the caller's
recording (simulator.recorder) holds only what came over the media stream. What it models is
the life cycle Telnyx reports, in the shape of the OpenAPI spec's CallPlaybackStarted and
CallPlaybackEnded events (payload: the call's ids and client_state, `media_url` or
`media_name`, `overlay`; on the end, `status` and, for a failure, `status_detail`):

- playback_start queues a playback; playbacks with `overlay: false` play one after another,
  those with `overlay: true` in a second queue on top. The one at the head of its queue sends
  `call.playback.started`, plays for its duration, then sends `call.playback.ended` with
  status "completed" and the next one starts.
- Duration: `seconds_per_play` (FakeTelnyx's `playback_seconds`, 2 s unless set) for an
  `audio_url` or `media_name`, the file's own length for `playback_content` it can read, times
  `loop`; `loop: "infinity"` never ends on its own.
- `stop` on playback_start, and playback_stop (`stop` "current", or "all", the default; its
  `overlay` picks the queue), end the current playback, or it and every queued one, with
  status "cancelled".
- A hangup ends every playback with status "call_hangup", before `call.hangup`.
- `overlay: true` with no `overlay: false` playback playing ends at once with status "failed"
  (the spec: overlay "will only work if there is another audio file already being played").

Choices where Telnyx's documentation is silent: every accepted playback_start gets exactly one
`call.playback.ended`, also when it is cancelled while still queued (then without a started);
`client_state` is the call's current one when the event is sent, as for every other webhook of
the fake; playback_stop with nothing playing does nothing.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import soundfile as sf

logger = logging.getLogger(__name__)

DEFAULT_SECONDS_PER_PLAY = 2.0

# (event_type, payload fields beyond the call's own) -> the webhook goes out
Emit = Callable[[str, dict[str, Any]], None]
# (delay in seconds, callback) -> the callback runs on the same thread as every other method
Schedule = Callable[[float, Callable[[], None]], object]


@dataclass
class Playback:
    id: int
    source: dict[str, str]  # media_url or media_name as the webhooks carry it; empty for playback_content
    overlay: bool
    seconds: float | None  # how long it plays in all (loops included); None: until stopped
    state: str = "queued"  # queued -> playing -> ended
    status: str | None = None  # how it ended: completed | cancelled | call_hangup | failed

    def fields(self) -> dict[str, Any]:
        return {**self.source, "overlay": self.overlay}


class Playbacks:
    """One call's playback queues. Every method but `history` runs on one thread (the engine loop)."""

    def __init__(self, call_control_id: str, emit: Emit, schedule: Schedule,
                 seconds_per_play: float = DEFAULT_SECONDS_PER_PLAY) -> None:
        self.call_control_id = call_control_id
        self._emit = emit
        self._schedule = schedule
        self.seconds_per_play = seconds_per_play
        self._ids = itertools.count(1)
        self._queues: dict[bool, deque[Playback]] = {False: deque(), True: deque()}  # by overlay
        self._closed = False  # the call hung up
        self._lock = threading.Lock()  # guards _all and the Playback objects in it (tests read them)
        self._all: list[Playback] = []

    def history(self) -> list[Playback]:
        """Copies of every playback so far, in the order they were started."""
        with self._lock:
            return [dataclasses.replace(p) for p in self._all]

    # ---- commands ------------------------------------------------------------------------------

    def start(self, body: dict[str, Any]) -> None:
        """playback_start, already validated."""
        if self._closed:
            return
        overlay = bool(body.get("overlay") or False)
        stop = body.get("stop")
        if stop == "current":
            self._end_current(overlay, "cancelled")
        elif stop == "all":
            self._end_all(overlay, "cancelled")
        per_play = self._seconds_per_play(body)
        loop = body.get("loop") or 1
        pb = Playback(next(self._ids), _source(body), overlay, None if loop == "infinity" else per_play * int(loop))
        with self._lock:
            self._all.append(pb)
        if overlay and not self._playing(False):
            self._end(pb, "failed", detail="overlay: true needs a playback with overlay: false playing")
            return
        queue = self._queues[overlay]
        queue.append(pb)
        if len(queue) == 1:
            self._begin(pb)

    def stop(self, body: dict[str, Any]) -> None:
        """playback_stop, already validated."""
        overlay = bool(body.get("overlay") or False)
        if body.get("stop") == "current":
            self._end_current(overlay, "cancelled")
        else:
            self._end_all(overlay, "cancelled")

    def hangup(self) -> None:
        """The call ended: every playback ends with it."""
        self._closed = True
        for overlay in (True, False):
            self._end_all(overlay, "call_hangup")

    # ---- the queues ----------------------------------------------------------------------------

    def _playing(self, overlay: bool) -> Playback | None:
        queue = self._queues[overlay]
        return queue[0] if queue and queue[0].state == "playing" else None

    def _begin(self, pb: Playback) -> None:
        with self._lock:
            pb.state = "playing"
        self._emit("call.playback.started", pb.fields())
        if pb.seconds is not None:
            self._schedule(pb.seconds, lambda: self._played(pb))

    def _played(self, pb: Playback) -> None:
        if pb.state == "playing" and not self._closed:
            self._end_current(pb.overlay, "completed")

    def _end_current(self, overlay: bool, status: str) -> None:
        """End the head of the queue and start the next one."""
        queue = self._queues[overlay]
        if not queue:
            return
        self._end(queue.popleft(), status)
        if queue and not self._closed:
            self._begin(queue[0])

    def _end_all(self, overlay: bool, status: str) -> None:
        """End the playing one and every queued one, starting nothing."""
        queue = self._queues[overlay]
        ended = list(queue)
        queue.clear()
        for pb in ended:
            self._end(pb, status)

    def _end(self, pb: Playback, status: str, *, detail: str | None = None) -> None:
        with self._lock:
            pb.state, pb.status = "ended", status
        fields = {**pb.fields(), "status": status}
        if detail is not None:
            fields["status_detail"] = detail
        self._emit("call.playback.ended", fields)

    def _seconds_per_play(self, body: dict[str, Any]) -> float:
        content = body.get("playback_content")
        if isinstance(content, str):
            try:
                return float(sf.info(io.BytesIO(base64.b64decode(content, validate=True))).duration)
            except (binascii.Error, ValueError, sf.LibsndfileError, RuntimeError, TypeError):
                logger.debug("[%s] playback_content is no audio file the simulator can read; playing it %s s",
                             self.call_control_id, self.seconds_per_play)
        return self.seconds_per_play


def _source(body: dict[str, Any]) -> dict[str, str]:
    if isinstance(body.get("audio_url"), str):
        return {"media_url": body["audio_url"]}
    if isinstance(body.get("media_name"), str):
        return {"media_name": body["media_name"]}
    # The spec: with playback_content, "media_url and media_name in the playback_started and
    # playback_ended webhooks will be empty".
    return {"media_url": "", "media_name": ""}
