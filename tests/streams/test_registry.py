"""streams/registry.py: the live calls by call and by stream, with a real EventLog. The media clock is
the real one, told an event loop drives it (a no-op waker), so it never starts a thread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from eventlog import EventLog
from frontdoor import CloseCode
from metrics import Metrics
from streams import registry as registry_module
from streams.registry import SessionRegistry
from streams.status import CallStatus
from tests.fakes import SETTINGS, FakeSender, logged, names, start_frame


@pytest.fixture
def registry(log: EventLog, metrics: Metrics) -> Iterator[SessionRegistry]:
    registry = SessionRegistry(SETTINGS, log, metrics)
    registry.clock.drive_from(lambda: None)  # no clock thread: nothing here ticks
    yield registry
    registry.clock.stop()


def test_open_creates_a_session_once(registry: SessionRegistry, log: EventLog, metrics: Metrics) -> None:
    session, created = registry.open("v3:a")
    assert session is not None and created
    assert session.call_control_id == "v3:a" and session.status == CallStatus.ANSWERING
    again, created_again = registry.open("v3:a")
    assert again is session and not created_again
    other, created_other = registry.open("v3:b")
    assert other is not None and other is not session and created_other
    assert registry.sessions() == [session, other]
    assert metrics.value("active_sessions") == 2
    assert names(log, "v3:a") == ["call.opened"]


def test_an_ended_call_is_never_revived_by_open(registry: SessionRegistry, log: EventLog) -> None:
    session, _ = registry.open("v3:a")
    assert session is not None
    registry.close(session, CallStatus.ENDED, "hangup: normal_clearing")
    assert registry.open("v3:a") == (None, False)
    assert registry.get("v3:a") is None and registry.ended("v3:a")
    assert names(log, "v3:a") == ["call.opened", "stream.ended"]


def test_ended_also_knows_the_calls_of_an_earlier_process(log: EventLog, metrics: Metrics) -> None:
    before = SessionRegistry(SETTINGS, log, metrics)
    session, _ = before.open("v3:old")
    assert session is not None
    before.close(session, CallStatus.ENDED, "hangup: normal_clearing")
    assert log.flush()
    after = SessionRegistry(SETTINGS, log, Metrics())  # a restart: nothing in memory
    assert after.ended("v3:old") and not after.ended("v3:new")


def test_get_by_call_and_by_stream(registry: SessionRegistry) -> None:
    session, _ = registry.open("v3:a")
    assert session is not None
    assert registry.get("v3:a") is session
    assert registry.get("stream-1") is None  # not indexed yet
    registry.index_stream(session, "stream-1")
    assert registry.get("stream-1") is session
    assert registry.get("v3:nope") is None and registry.get("") is None


def test_close_forgets_the_session_and_all_its_streams_but_keeps_the_history(
        registry: SessionRegistry, log: EventLog, metrics: Metrics) -> None:
    session, _ = registry.open("v3:a")
    keep, _ = registry.open("v3:b")
    assert session is not None and keep is not None
    first, second = FakeSender("first"), FakeSender("second")
    for stream_id, sender in (("stream-1", first), ("stream-2", second)):  # a reconnect: a second stream
        assert session.attach(start_frame("v3:a", stream_id), sender)
        registry.index_stream(session, stream_id)

    registry.close(session, CallStatus.FAILED, "streaming.failed: boom")

    assert session.status == CallStatus.FAILED
    assert [registry.get(k) for k in ("v3:a", "stream-1", "stream-2")] == [None, None, None]
    assert registry.sessions() == [keep] and metrics.value("active_sessions") == 1
    assert second.closed == [(CloseCode.NORMAL, "streaming.failed: boom")]
    assert log.flush()
    row = log.call("stream-2")
    assert row is not None and row["status"] == "failed" and row["end_reason"] == "streaming.failed: boom"
    assert logged(log, "v3:a")[-1] == ("stream.failed", {"reason": "streaming.failed: boom"})


def test_closing_twice_keeps_the_first_ending(registry: SessionRegistry, log: EventLog) -> None:
    session, _ = registry.open("v3:a")
    assert session is not None
    registry.close(session, CallStatus.ENDED, "hangup: normal_clearing")
    registry.close(session, CallStatus.INTERRUPTED, "server_shutdown")
    assert session.status == CallStatus.ENDED and session.end_reason == "hangup: normal_clearing"
    assert names(log, "v3:a") == ["call.opened", "stream.ended"]


def test_the_recently_ended_list_is_bounded(registry: SessionRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "RECENTLY_ENDED", 2)
    for n in range(3):
        session, _ = registry.open(f"v3:{n}")
        assert session is not None
        registry.close(session, CallStatus.ENDED, "hangup")
    assert [c for c in ("v3:0", "v3:1", "v3:2") if registry.open(c) == (None, False)] == ["v3:1", "v3:2"]


def test_shutdown_marks_every_live_call_interrupted(registry: SessionRegistry, log: EventLog) -> None:
    streaming, _ = registry.open("v3:streaming")
    answering, _ = registry.open("v3:answering")
    over, _ = registry.open("v3:over")
    assert streaming is not None and answering is not None and over is not None
    sender = FakeSender()
    assert streaming.attach(start_frame("v3:streaming"), sender)
    registry.close(over, CallStatus.ENDED, "hangup: normal_clearing")

    registry.shutdown()

    assert registry.sessions() == []
    assert streaming.status == answering.status == CallStatus.INTERRUPTED
    assert over.status == CallStatus.ENDED
    assert sender.closed == [(CloseCode.NORMAL, "server_shutdown")]
    assert log.flush()
    statuses = {c["call_control_id"]: (c["status"], c["end_reason"]) for c in log.calls(status=None)[0]}
    assert statuses == {"v3:streaming": ("interrupted", "server_shutdown"),
                        "v3:answering": ("interrupted", "server_shutdown"),
                        "v3:over": ("ended", "hangup: normal_clearing")}
    assert logged(log, "v3:answering")[-1] == ("stream.interrupted", {"reason": "server_shutdown"})
    assert registry.open("v3:streaming") == (None, False)
