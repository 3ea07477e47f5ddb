"""The event-loop engine: one asyncio loop thread and one 20 ms ticker for every simulated call.

All streams (simulator.stream) share the loop and one absolute-deadline ticker that sends every
stream's caller frame. Calls are not in lockstep on a real network: each stream gets one of
PHASES offsets within the 20 ms period, so a tick sends a share of the calls' frames, not all.
Sends never wait: a stream whose app stops reading loses caller frames (counted) rather than
stall every other call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from simulator.stream import FRAME_S, MediaStream
from simulator.wsclient import ConnectionClosed

logger = logging.getLogger(__name__)

new_event_loop: Callable[[], asyncio.AbstractEventLoop]
try:
    # libuv's loop costs the media loop about a third less CPU per message than asyncio's own.
    from uvloop import new_event_loop
except ImportError:  # e.g. Windows: asyncio's loop does the same, only slower
    new_event_loop = asyncio.new_event_loop

T = TypeVar("T")

# Skip (and count) a caller frame rather than stall every call when one app stops reading.
MAX_WRITE_BUFFER = 256 * 1024
PHASES = 4  # offsets within a frame period at which streams send their caller frames


def _log_failure(future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("simulator task failed", exc_info=future.exception())


class MediaEngine:
    """The shared loop thread and 20 ms ticker for every stream of a FakeTelnyx."""

    def __init__(self, *, allow_non_loopback: bool = False, connect_timeout_s: float = 5.0) -> None:
        self.allow_non_loopback = allow_non_loopback
        self.connect_timeout_s = connect_timeout_s
        self._phases: list[dict[MediaStream, None]] = [{} for _ in range(PHASES)]  # by send offset
        self.ticks = 0  # frame periods
        self.late_ticks = 0  # frame periods that began more than one frame late (loop overloaded)
        self.resyncs = 0
        self._phases_given = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._ready = threading.Event()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "MediaEngine not started"
        return self._loop

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sim-media-loop", daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        loop = new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._ticker = loop.create_task(self._tick())
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self, timeout: float = 5.0) -> None:
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            streams = list(self.active)
            await asyncio.gather(*(s.stop(send_stop=False) for s in streams), return_exceptions=True)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout)
        except (TimeoutError, RuntimeError) as exc:
            logger.warning("media engine shutdown incomplete: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Fire and forget from another thread; a failure is logged, not lost."""
        self.submit(coro).add_done_callback(_log_failure)

    def call_soon(self, fn: Callable[[], None]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        self.loop.call_soon_threadsafe(self.loop.call_later, delay, fn)

    @property
    def active(self) -> set[MediaStream]:
        """The streams sending caller frames (loop thread only)."""
        return set().union(*self._phases)

    def join(self, stream: MediaStream) -> None:
        """`stream` starts sending caller frames, at the next send offset round robin (loop thread)."""
        self._phases_given += 1
        stream.phase = self._phases_given % PHASES
        self._phases[stream.phase][stream] = None

    def leave(self, stream: MediaStream) -> None:
        self._phases[stream.phase].pop(stream, None)

    async def _tick(self) -> None:
        deadline = time.monotonic()
        phase = 0
        while True:
            deadline += FRAME_S / PHASES
            phase = (phase + 1) % PHASES
            delay = deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -FRAME_S:
                if phase == 0:
                    self.late_ticks += 1
                if delay < -5 * FRAME_S:
                    # Overloaded or suspended: start again from now rather than send a burst.
                    deadline = time.monotonic()
                    self.resyncs += 1
            if phase == 0:
                self.ticks += 1
            now = time.monotonic()
            for stream in list(self._phases[phase]):
                ws = stream.ws
                if ws is None or stream.closing:
                    continue
                for due, name in stream.due_marks(now):
                    stream._echo_mark(name, due)
                frames = stream.tick(now)
                # Sends never wait: one app that stops reading loses its caller frames (counted)
                # instead of holding up every other call's tick.
                if ws.buffered() > MAX_WRITE_BUFFER:
                    stream.state.stats.frames_skipped += len(frames)
                    continue
                try:
                    for text in frames:
                        ws.send_text(text)
                    stream.state.stats.frames_sent += len(frames)
                except ConnectionClosed:
                    self.leave(stream)
