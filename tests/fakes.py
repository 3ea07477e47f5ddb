"""Hand-written fakes shared by the unit tests of streams/ and webhooks/ (no sockets, no threads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eventlog import EventLog
from frontdoor import CloseCode
from mixer.mixer import DuckingConfig
from streams import protocol
from streams.session import Injection, SessionSettings

SETTINGS = SessionSettings(codec="PCMU", sample_rate=8000, l16_byte_order="big", frame_ms=20, lead_ms=60,
                           ducking=DuckingConfig())


class FakeSender:
    """The socket side of a session (streams.connection.Sender): records what was sent and closed."""

    def __init__(self, label: str = "fake", *, accepts: bool = True) -> None:
        self.label = label
        self.accepts = accepts  # what send() answers: False plays a socket that is gone
        self.sent: list[str | bytes] = []
        self.closed: list[tuple[int, str]] = []

    def send(self, text: str | bytes) -> bool:
        self.sent.append(text)
        return self.accepts

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        self.closed.append((code, reason))

    @property
    def texts(self) -> list[str]:
        """The control frames sent (media messages arrive as bytes from the clock)."""
        return [m for m in self.sent if isinstance(m, str)]


class FakeClock:
    """The media clock as a session sees it: who joined and left it, how often it was poked."""

    def __init__(self) -> None:
        self.calls: list[Any] = []  # the calls on the clock now
        self.added: list[str] = []  # call_control_id per add(), in order
        self.removed: list[str] = []
        self.pokes = 0

    def add(self, call: Any) -> None:
        if call not in self.calls:
            self.calls.append(call)
        self.added.append(call.call_control_id)
        self.pokes += 1

    def remove(self, call: Any) -> None:
        if call in self.calls:
            self.calls.remove(call)
        self.removed.append(call.call_control_id)

    def poke(self) -> None:
        self.pokes += 1


@dataclass
class Submitted:
    action: str
    call_control_id: str
    command_id: str
    params: dict[str, Any]
    on_done: Any = None


@dataclass
class FakeCommands:
    """The Telnyx side (runtime.CommandSender): records each command instead of sending it."""

    submitted: list[Submitted] = field(default_factory=list)
    closed: bool = False

    def submit(self, action: str, call_control_id: str, *, command_id: str, on_done: Any = None,
               **params: Any) -> None:
        self.submitted.append(Submitted(action, call_control_id, command_id, params, on_done))

    def close(self) -> None:
        self.closed = True

    def actions(self) -> list[str]:
        return [s.action for s in self.submitted]


def start_frame(call_control_id: str, stream_id: str = "stream-1", *, encoding: str = "PCMU",
                sample_rate: int = 8000) -> protocol.Start:
    return protocol.Start(stream_id=stream_id, call_control_id=call_control_id,
                          media_format=protocol.MediaFormat(encoding, sample_rate, 1),
                          from_number="+13125550100", to_number="+13125550199")


def injection(call_control_id: str, inj_id: str = "inj-1", *, mode: str = "mix",
              duration_ms: int | None = 40) -> Injection:
    return Injection(id=inj_id, call_control_id=call_control_id,
                     source={"kind": "tone", "frequency_hz": 440.0, "duration_ms": duration_ms or 0,
                             "level_dbfs": -12.0},
                     gain_db=0.0, loop=False, fade_in_ms=0, fade_out_ms=0, duck=False, label="test",
                     mode=mode, duration_ms=duration_ms)


def logged(log: EventLog, call_control_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The call's events as (event, data), in log order, after a flush."""
    assert log.flush()
    items, _ = log.events(call_control_id=call_control_id, limit=1000)
    return [(e["event"], e["data"]) for e in items]


def names(log: EventLog, call_control_id: str) -> list[str]:
    return [name for name, _ in logged(log, call_control_id)]
