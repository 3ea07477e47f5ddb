"""Everything one app instance owns, kept in app.extensions["mixer_runtime"].

Views reach it through current_app; threads are handed the exact objects they need.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from flask import current_app

from config import Config
from eventlog import EventLog
from metrics import Metrics
from streams.auth import StreamAuth
from streams.callbacks import Callbacks
from streams.feed import EventFeed
from streams.injections import Limits
from streams.recording import Recordings
from streams.registry import SessionRegistry
from streams.session import CallSession, Injection

if TYPE_CHECKING:
    from cluster.node import ClusterNode

VERSION = "0.1.0"


def current() -> Runtime:
    """The runtime of the app handling this request (views only; threads are handed theirs)."""
    rt: Runtime = current_app.extensions["mixer_runtime"]
    return rt


class CommandSender(Protocol):
    def submit(self, action: str, call_control_id: str, *, command_id: str, on_done: Any = None,
               **params: Any) -> Any: ...

    def close(self) -> None:
        """Finish the commands in flight (queued ones are dropped) and release the client."""


@dataclass
class Runtime:
    config: Config
    log: EventLog
    metrics: Metrics
    registry: SessionRegistry
    commands: CommandSender
    stream_auth: StreamAuth
    recordings: Recordings
    feed: EventFeed
    callbacks: Callbacks
    callbacks_key_persistent: bool = True
    cluster: ClusterNode | None = None  # scaled mode only
    node_id: str = ""
    started: float = field(default_factory=time.monotonic)

    def limits(self, sample_rate: int) -> Limits:
        c = self.config
        return Limits(sample_rate=sample_rate, max_seconds=c.MAX_INJECTION_SECONDS,
                      max_bytes=c.MAX_UPLOAD_BYTES, media_dir=c.MEDIA_DIR,
                      url_timeout_s=c.AUDIO_URL_TIMEOUT_S, url_allow_private=c.AUDIO_URL_ALLOW_PRIVATE)

    def start_playback(self, session: CallSession, inj: Injection, audio_url: str) -> None:
        """mode "playback": Telnyx fetches and plays the file itself; we track its webhooks."""
        self.commands.submit(
            "playback_start", session.call_control_id, command_id=f"playback_start-{inj.id}",
            audio_url=audio_url, loop="infinity" if inj.loop else 1, overlay=False,
            target_legs=self.config.STREAM_TARGET_LEGS,
            client_state=base64.b64encode(inj.id.encode()).decode(),
            on_done=lambda ok, error: session.playback_result(inj, ok, error),
        )

    def stop_playback(self, session: CallSession, *, everything: bool = False) -> None:
        self.commands.submit("playback_stop", session.call_control_id,
                             command_id=f"playback_stop-{time.monotonic_ns()}",
                             stop="all" if everything else "current")
