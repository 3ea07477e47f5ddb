"""webhooks/flow.py: what each Call Control event does, with a FakeCommands for Telnyx, a real
registry and EventLog, and events parsed from webhook documents by webhooks.events.parse_event."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from config import load_config
from eventlog import EventLog
from metrics import Metrics
from runtime import Runtime
from streams.auth import StreamAuth, StreamAuthError
from streams.callbacks import Callbacks
from streams.feed import EventFeed
from streams.recording import Recordings
from streams.registry import SessionRegistry
from streams.status import CallStatus, InjectionStatus
from tests.fakes import SETTINGS, FakeCommands, FakeSender, injection, logged, start_frame
from webhooks.events import WebhookEvent, parse_event
from webhooks.flow import CallFlow

CCID = "v3:flow-call"
STREAM_URL = "wss://mixer.example.com/stream"
_ids = itertools.count(1)


def event(event_type: str, call_control_id: str = CCID, **payload: Any) -> WebhookEvent:
    """A webhook as Telnyx delivers it, through the same parser as the view."""
    return parse_event({
        "data": {
            "record_type": "event",
            "event_type": event_type,
            "id": f"0ccc7b54-4df3-4bca-a65a-{next(_ids):012d}",
            "occurred_at": "2026-12-03T10:00:00.000000Z",
            "payload": {"call_control_id": call_control_id, "call_leg_id": "leg-1",
                        "call_session_id": "session-1", "connection_id": "conn-1", **payload},
        },
        "meta": {"attempt": 1, "delivered_to": "https://mixer.example.com/webhooks/voice"},
    })


@pytest.fixture
def rt(tmp_path: Path, log: EventLog) -> Iterator[Runtime]:
    config = load_config({"DATABASE_PATH": tmp_path / "events.sqlite3", "STREAM_CODEC": "L16",
                          "STREAM_SAMPLE_RATE": 16000, "STREAM_TRACK": "both_tracks",
                          "STREAM_TARGET_LEGS": "opposite"}, environ={}, dotenv=None)
    metrics = Metrics()
    recordings = Recordings(config.recording_dir, buffer_s=config.RECORDING_BUFFER_S, retention_days=0, log=log,
                            metrics=metrics)
    registry = SessionRegistry(SETTINGS, log, metrics, recordings)
    registry.clock.drive_from(lambda: None)  # no clock thread
    yield Runtime(config=config, log=log, metrics=metrics, registry=registry, commands=FakeCommands(),
                  stream_auth=StreamAuth(secret="s" * 32), recordings=recordings,
                  feed=EventFeed(log, max_listeners=1, max_age_s=1),
                  callbacks=Callbacks(url="", key=SigningKey.generate(), log=log, allow_private=False))
    registry.clock.stop()


@pytest.fixture
def flow(rt: Runtime) -> CallFlow:
    return CallFlow(rt, STREAM_URL)


def commands(rt: Runtime) -> FakeCommands:
    assert isinstance(rt.commands, FakeCommands)
    return rt.commands


def test_an_incoming_call_is_answered_with_a_command_id(flow: CallFlow, rt: Runtime) -> None:
    assert flow.handle(event("call.initiated", direction="incoming", **{"from": "+13125550100"},
                             to="+13125550199", state="parked"))
    (answer,) = commands(rt).submitted
    assert (answer.action, answer.call_control_id, answer.command_id, answer.params) == (
        "answer", CCID, f"answer-{CCID}", {})
    session = rt.registry.get(CCID)
    assert session is not None and session.status == CallStatus.ANSWERING
    assert session.info == {"from": "+13125550100", "to": "+13125550199", "direction": "incoming"}


def test_a_repeated_call_initiated_repeats_the_same_command_id(flow: CallFlow, rt: Runtime) -> None:
    flow.handle(event("call.initiated", direction="incoming"))
    flow.handle(event("call.initiated", direction="incoming"))
    assert [s.command_id for s in commands(rt).submitted] == [f"answer-{CCID}"] * 2  # Telnyx runs it once


def test_an_outgoing_call_is_not_answered(flow: CallFlow, rt: Runtime) -> None:
    assert flow.handle(event("call.initiated", direction="outgoing"))
    assert commands(rt).submitted == [] and rt.registry.get(CCID) is not None


def test_call_answered_starts_streaming_with_every_field(flow: CallFlow, rt: Runtime) -> None:
    flow.handle(event("call.initiated", direction="incoming"))
    assert flow.handle(event("call.answered"))
    start = commands(rt).submitted[-1]
    assert (start.action, start.call_control_id, start.command_id) == (
        "streaming_start", CCID, f"streaming_start-{CCID}")
    token = start.params.pop("stream_auth_token")
    assert start.params == {
        "stream_url": STREAM_URL,
        "stream_track": "both_tracks",
        "stream_bidirectional_mode": "rtp",
        "stream_bidirectional_codec": "L16",
        "stream_codec": "L16",
        "stream_bidirectional_sampling_rate": 16000,
        "stream_bidirectional_target_legs": "opposite",
    }
    assert rt.stream_auth.check(token).call_control_id == CCID
    session = rt.registry.get(CCID)
    assert session is not None and session.status == CallStatus.ANSWERED


def test_the_stream_token_is_for_that_call_only(flow: CallFlow, rt: Runtime) -> None:
    flow.handle(event("call.answered", "v3:one"))
    flow.handle(event("call.answered", "v3:two"))
    one, two = (s.params["stream_auth_token"] for s in commands(rt).submitted)
    assert one != two
    assert rt.stream_auth.check(two).call_control_id == "v3:two"
    with pytest.raises(StreamAuthError) as info:
        StreamAuth(secret="t" * 32).check(one)  # another server's secret
    assert info.value.reason == "invalid"


def test_a_second_call_answered_does_not_start_a_second_stream(flow: CallFlow, rt: Runtime) -> None:
    flow.handle(event("call.answered"))
    flow.handle(event("call.answered"))  # before the socket came: the same command_id, which Telnyx ignores
    session = rt.registry.get(CCID)
    assert session is not None and session.attach(start_frame(CCID), FakeSender())
    flow.handle(event("call.answered"))  # streaming: nothing to do
    assert [(s.action, s.command_id) for s in commands(rt).submitted] == [
        ("streaming_start", f"streaming_start-{CCID}")] * 2
    assert session.status == CallStatus.STREAMING


def test_streaming_failed_ends_the_call_as_failed(flow: CallFlow, rt: Runtime, log: EventLog) -> None:
    flow.handle(event("call.answered"))
    session = rt.registry.get(CCID)
    assert session is not None
    params = {"stream_url": STREAM_URL, "track": "both_tracks"}
    assert flow.handle(event("streaming.failed", failure_reason="connection_failed", stream_id="s-1",
                             stream_type="websocket", stream_params=params))
    assert session.status == CallStatus.FAILED
    assert session.end_reason == "streaming.failed: connection_failed"
    assert rt.registry.get(CCID) is None
    assert ("stream.telnyx_failed", {"failure_reason": "connection_failed", "stream_params": params}) in \
        logged(log, CCID)
    flow.handle(event("call.answered"))  # a late one: the call stays over
    assert commands(rt).actions() == ["streaming_start"] and rt.registry.get(CCID) is None


def test_hangup_ends_the_call(flow: CallFlow, rt: Runtime, log: EventLog) -> None:
    flow.handle(event("call.initiated", direction="incoming"))
    session = rt.registry.get(CCID)
    assert session is not None
    assert flow.handle(event("call.hangup", hangup_cause="normal_clearing", hangup_source="caller"))
    assert session.status == CallStatus.ENDED and session.end_reason == "hangup: normal_clearing"
    assert rt.registry.get(CCID) is None
    flow.handle(event("call.initiated", direction="incoming"))  # late or repeated: not revived
    flow.handle(event("call.answered"))
    assert commands(rt).actions() == ["answer"] and rt.registry.get(CCID) is None
    assert log.flush()
    assert log.call(CCID)["status"] == "ended"  # type: ignore[index]


def test_a_hangup_for_an_unseen_call_is_still_recorded(flow: CallFlow, rt: Runtime, log: EventLog) -> None:
    assert flow.handle(event("call.hangup", "v3:unseen"))
    assert rt.registry.get("v3:unseen") is None
    assert log.flush()
    row = log.call("v3:unseen")
    assert row is not None and (row["status"], row["end_reason"]) == ("ended", "hangup: unknown")


@pytest.mark.parametrize(("status", "expected"), [
    ("completed", InjectionStatus.FINISHED),
    (None, InjectionStatus.FINISHED),
    ("call_hangup", InjectionStatus.STOPPED),
    ("cancelled", InjectionStatus.STOPPED),
])
def test_playback_ended_finishes_the_playback_injection(flow: CallFlow, rt: Runtime, status: str | None,
                                                         expected: InjectionStatus) -> None:
    flow.handle(event("call.answered"))
    session = rt.registry.get(CCID)
    assert session is not None
    inj = injection(CCID, "inj-42", mode="playback")
    session.add_injection(inj, None, max_active=5)
    session.playback_result(inj, True, None)
    state = base64.b64encode(b"inj-42").decode()
    flow.handle(event("call.playback.started", client_state=state, media_url="https://x/a.mp3"))
    assert inj.status == InjectionStatus.PLAYING
    extra = {} if status is None else {"status": status}
    assert flow.handle(event("call.playback.ended", client_state=state, media_url="https://x/a.mp3", **extra))
    assert inj.status == expected and inj.error is None


@pytest.mark.parametrize(("status", "detail", "error"), [
    ("failed", "overlay needs another playback", "Telnyx playback ended with status 'failed': overlay needs "
                                                 "another playback"),
    ("file_not_found", None, "Telnyx playback ended with status 'file_not_found'"),
])
def test_a_playback_that_ends_otherwise_fails_with_the_reason(flow: CallFlow, rt: Runtime, status: str,
                                                              detail: str | None, error: str) -> None:
    flow.handle(event("call.answered"))
    session = rt.registry.get(CCID)
    assert session is not None
    inj = injection(CCID, "inj-43", mode="playback")
    session.add_injection(inj, None, max_active=5)
    session.playback_result(inj, True, None)
    state = base64.b64encode(b"inj-43").decode()
    extra = {"status_detail": detail} if detail else {}
    flow.handle(event("call.playback.ended", client_state=state, media_url="https://x/a.mp3", status=status, **extra))
    assert inj.status == InjectionStatus.FAILED and inj.error == error
    rt.log.flush()
    failed = [e for e in rt.log.events(event="injection.failed")[0] if e["data"]["injection_id"] == "inj-43"]
    assert failed[0]["data"]["error"] == error
    assert rt.metrics.value("injections_total", status="failed") == 1


@pytest.mark.parametrize("client_state", [None, "not base64!", base64.b64encode(b"inj-other").decode()])
def test_playback_ended_of_someone_else_changes_nothing(flow: CallFlow, rt: Runtime,
                                                       client_state: str | None) -> None:
    flow.handle(event("call.answered"))
    session = rt.registry.get(CCID)
    assert session is not None
    inj = injection(CCID, "inj-42", mode="playback")
    session.add_injection(inj, None, max_active=5)
    extra = {} if client_state is None else {"client_state": client_state}
    flow.handle(event("call.playback.ended", status="completed", **extra))
    assert inj.status == InjectionStatus.CREATED


def test_unknown_events_and_events_without_a_call_are_ignored(flow: CallFlow, rt: Runtime) -> None:
    assert not flow.handle(event("call.dtmf.received", digit="1"))
    assert not flow.handle(event("call.answered", ""))
    assert rt.registry.sessions() == [] and commands(rt).submitted == []
