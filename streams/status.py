"""The statuses of a call and of an injection, and the domain errors of changing them.

They are StrEnums: written to the event log and rendered in JSON as their plain values, and
checked by mypy wherever a status is compared or set.
"""

from __future__ import annotations

from enum import StrEnum

from eventlog import LIVE_STATUSES


class CallStatus(StrEnum):
    ANSWERING = "answering"
    ANSWERED = "answered"
    STREAMING = "streaming"
    DISCONNECTED = "disconnected"  # the socket dropped without `stop`; Telnyx may reconnect
    ENDED = "ended"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the server stopped (or died) while the call was live


# The event log marks exactly these interrupted at start-up: one list, kept there.
LIVE = frozenset(CallStatus(s) for s in LIVE_STATUSES)


class InjectionStatus(StrEnum):
    CREATED = "created"
    PLAYING = "playing"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"


TERMINAL = frozenset({InjectionStatus.FINISHED, InjectionStatus.STOPPED, InjectionStatus.FAILED})


class CallNotActive(Exception):
    def __init__(self, call_control_id: str, status: CallStatus) -> None:
        super().__init__(f"call {call_control_id} is {status}")
        self.call_control_id = call_control_id
        self.status = status


class TooManyInjections(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} active injections per call")
        self.limit = limit
