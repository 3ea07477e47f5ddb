"""Injections that outlive the process playing them: kept as they change, resumed by the process
that gets the call's next stream, where the wall clock says each would be by then.

Two stores keep them: the event log's database for one process restarted after a crash or a
SIGTERM (LocalResume here), Redis for a node of a cluster (cluster/node.py). Resuming is the
same for both (resume_injections).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import numpy as np

from eventlog import EventLog, Unavailable
from streams.session import CallSession, Injection
from streams.status import InjectionStatus

logger = logging.getLogger(__name__)

Kept = list[tuple[dict[str, Any], bytes | None]]  # each injection's state, and its audio (float32)


def resume_injections(session: CallSession, kept: Kept, log: EventLog) -> None:
    """Play again what the call's previous process was playing, from where it would be now: the
    gap is skipped, not replayed, and a one-shot that would have ended meanwhile is not played."""
    rate = session.sample_rate
    for state, audio in sorted(kept, key=lambda item: str(item[0].get("created_at"))):
        if state.get("id") in session.injections or audio is None or state.get("status") not in (
                InjectionStatus.CREATED, InjectionStatus.PLAYING):
            continue
        inj = Injection(**state)
        inj.status = InjectionStatus(inj.status)
        samples = np.frombuffer(audio, dtype=np.float32)
        start_at = 0
        if inj.started_at is not None:
            start_at = max(0, round((time.time() - unix_seconds(inj.started_at)) * rate))
        if not inj.loop and start_at >= len(samples):
            log.record("injection.finished", session.call_control_id, injection_id=inj.id,
                       played_ms=inj.duration_ms, error=None, while_moving=True)
            continue
        session.resume_injection(inj, samples, start_at)


def save_until_current(save: Callable[[dict[str, Any], bytes | None], None], inj: Injection,
                       audio: bytes | None) -> None:
    """Save `inj` (and its audio); again while it changed meanwhile, so that a copy taken before
    a change saved by another thread never has the last word."""
    state = dataclasses.asdict(inj)
    save(state, audio)
    while (now := dataclasses.asdict(inj)) != state:
        state = now
        save(state, None)


def audio_bytes(samples: np.ndarray | None) -> bytes | None:
    return samples.astype(np.float32).tobytes() if samples is not None else None


def unix_seconds(iso: str) -> float:
    """The API's time format (ISO 8601 UTC with a Z) as Unix seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class LocalResume:
    """One process: each live call's injections in the event log's database (the registry's
    watcher when there is no cluster). Reads and deletes run on a thread of their own, never on
    the media loop."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resume")

    def injection_saved(self, session: CallSession, inj: Injection, samples: np.ndarray | None) -> None:
        """On request threads: kept before the answer, so a crash right after loses nothing acknowledged."""
        try:
            save_until_current(lambda state, audio: self._log.save_injection(
                session.call_control_id, inj.id, state, audio), inj, audio_bytes(samples))
        except Unavailable as exc:
            logger.warning("[%s] injection %s not kept for a restart: %s", session.call_control_id, inj.id, exc)

    def injection_updated(self, session: CallSession, inj: Injection) -> None:
        self._pool.submit(self.injection_saved, session, inj, None)

    def stream_attached(self, session: CallSession, stream_id: str) -> None:
        self._pool.submit(self._resume, session)

    def call_closed(self, call_control_id: str) -> None:
        self._pool.submit(self._forget, call_control_id)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _resume(self, session: CallSession) -> None:
        try:
            resume_injections(session, self._log.injections(session.call_control_id), self._log)
        except Unavailable as exc:
            logger.warning("[%s] its injections cannot be read to resume them: %s", session.call_control_id, exc)

    def _forget(self, call_control_id: str) -> None:
        try:
            self._log.forget_injections(call_control_id)
        except Unavailable as exc:
            logger.warning("[%s] its kept injections stay in the database: %s", call_control_id, exc)
