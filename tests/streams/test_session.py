"""streams/session.py: one call's statuses, injections, marks and views, with a FakeSender for the
socket, a FakeClock for the media clock and a real EventLog; the tests drive the frames themselves."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import numpy as np
import pytest

from eventlog import EventLog
from frontdoor import CloseCode
from metrics import Metrics
from mixer.codecs import get_codec
from mixer.errors import CorruptPayload
from streams import protocol, schemas
from streams.framer import Framer
from streams.session import CallSession
from streams.status import LIVE, CallNotActive, CallStatus, InjectionStatus, TooManyInjections
from tests.fakes import SETTINGS, FakeClock, FakeSender, injection, logged, names, start_frame

CCID = "v3:call-session"
RATE = SETTINGS.sample_rate
TONE_40MS = (0.25 * np.sin(2 * np.pi * 440.0 * np.arange(RATE * 40 // 1000) / RATE)).astype(np.float32)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def session(log: EventLog, metrics: Metrics, clock: FakeClock) -> CallSession:
    return CallSession(CCID, SETTINGS, log, metrics, clock)  # type: ignore[arg-type]


def streaming(session: CallSession, sender: FakeSender | None = None) -> FakeSender:
    sender = sender or FakeSender()
    assert session.attach(start_frame(CCID), sender)
    return sender


def play_until_finished(session: CallSession, max_frames: int = 20) -> tuple[str, ...]:
    """Tick the call as the clock does until a track finishes; the keys that finished."""
    for _ in range(max_frames):
        out = np.zeros(session.frame_samples, np.float32)
        frame = session.begin_frame(out)
        assert frame is not None, "nothing to send"
        assert session.end_frame(frame, b"media")
        if frame.finished:
            return frame.finished
    raise AssertionError(f"no track finished within {max_frames} frames")


def play_one_frame(session: CallSession) -> None:
    frame = session.begin_frame(np.zeros(session.frame_samples, np.float32))
    assert frame is not None
    assert session.end_frame(frame, b"media")


# -- statuses ----------------------------------------------------------------------------------


def test_status_follows_answer_stream_drop_and_reconnect(session: CallSession, log: EventLog,
                                                         clock: FakeClock) -> None:
    assert session.status == CallStatus.ANSWERING and session.live
    session.set_status(CallStatus.ANSWERED)
    assert session.status == CallStatus.ANSWERED

    first = streaming(session)
    assert session.status == CallStatus.STREAMING
    assert session.stream_id == "stream-1" and session.started_at is not None
    assert clock.calls == [session]

    session.detach(first, stopped=False)
    assert session.status == CallStatus.DISCONNECTED
    assert clock.calls == []

    second = FakeSender("second")
    assert session.attach(start_frame(CCID, "stream-2"), second)
    assert session.status == CallStatus.STREAMING and session.stream_id == "stream-2"
    assert clock.calls == [session]
    assert first.closed == [] and second.closed == []  # the first was already gone
    assert names(log, CCID)[:2] == ["stream.started", "stream.disconnected"]
    assert log.call(CCID)["status"] == "streaming"  # type: ignore[index]


def test_a_later_start_is_logged_as_reconnected_even_if_nothing_was_played(session: CallSession,
                                                                          log: EventLog) -> None:
    first = streaming(session)
    session.detach(first, stopped=False)
    assert session.attach(start_frame(CCID, "stream-2"), FakeSender("second"))
    assert names(log, CCID) == ["stream.started", "stream.disconnected", "stream.reconnected"]


def test_a_start_after_audio_was_sent_is_logged_as_reconnected(session: CallSession, log: EventLog) -> None:
    first = streaming(session)
    session.add_injection(injection(CCID), TONE_40MS, max_active=5)
    play_one_frame(session)
    session.detach(first, stopped=False)
    assert session.attach(start_frame(CCID, "stream-2"), FakeSender("second"))
    assert [n for n in names(log, CCID) if n.startswith("stream.")] == [
        "stream.started", "stream.disconnected", "stream.reconnected"]


def test_a_new_socket_replaces_the_old_one_which_is_closed(session: CallSession) -> None:
    old = streaming(session)
    new = FakeSender("new")
    assert session.attach(start_frame(CCID, "stream-2"), new)
    assert old.closed == [(CloseCode.NORMAL, "replaced by a new connection")]
    session.detach(old, stopped=True)  # the old socket's handler cleaning up: not the call's socket any more
    assert session.status == CallStatus.STREAMING


@pytest.mark.parametrize("status", sorted(LIVE))
def test_end_from_every_live_status(session: CallSession, log: EventLog, clock: FakeClock,
                                    status: CallStatus) -> None:
    sender = streaming(session)
    if status == CallStatus.DISCONNECTED:
        session.detach(sender, stopped=False)
    else:
        session.set_status(status)
    session.end(CallStatus.FAILED, "streaming.failed: boom")
    assert session.status == CallStatus.FAILED
    assert session.end_reason == "streaming.failed: boom" and session.ended_at is not None
    assert clock.calls == []
    assert names(log, CCID)[-1] == "stream.failed"
    assert logged(log, CCID)[-1][1] == {"reason": "streaming.failed: boom"}


def test_end_closes_the_socket_unless_telnyx_hung_up(log: EventLog, metrics: Metrics) -> None:
    hung_up = CallSession("v3:a", SETTINGS, log, metrics, FakeClock())  # type: ignore[arg-type]
    interrupted = CallSession("v3:b", SETTINGS, log, metrics, FakeClock())  # type: ignore[arg-type]
    a, b = FakeSender(), FakeSender()
    assert hung_up.attach(start_frame("v3:a"), a) and interrupted.attach(start_frame("v3:b", "s-b"), b)
    hung_up.end(CallStatus.ENDED, "hangup: normal_clearing")
    interrupted.end(CallStatus.INTERRUPTED, "server_shutdown")
    assert a.closed == []  # Telnyx closes it itself after the hang-up
    assert b.closed == [(CloseCode.NORMAL, "server_shutdown")]


def test_an_ended_call_is_never_revived(session: CallSession, log: EventLog, clock: FakeClock) -> None:
    sender = streaming(session)
    session.end(CallStatus.ENDED, "hangup: normal_clearing")
    ended_at = session.ended_at

    session.end(CallStatus.FAILED, "late")
    session.set_status(CallStatus.ANSWERED)
    assert not session.attach(start_frame(CCID, "stream-late"), FakeSender("late"))
    session.detach(sender, stopped=False)

    assert session.status == CallStatus.ENDED and not session.live
    assert (session.end_reason, session.ended_at) == ("hangup: normal_clearing", ended_at)
    assert session.stream_id == "stream-1" and clock.calls == []
    assert names(log, CCID) == ["stream.started", "stream.ended"]
    assert log.call(CCID)["status"] == "ended"  # type: ignore[index]


# -- injections --------------------------------------------------------------------------------


def test_add_injection_to_an_ended_call_raises_call_not_active(session: CallSession, log: EventLog) -> None:
    session.end(CallStatus.ENDED, "hangup: normal_clearing")
    with pytest.raises(CallNotActive, match=rf"^call {CCID} is ended$") as info:
        session.add_injection(injection(CCID), TONE_40MS, max_active=5)
    assert info.value.status == CallStatus.ENDED
    assert session.injections == {} and not session.mixer.has_active()
    assert "injection.created" not in names(log, CCID)


def test_too_many_injections_counts_only_active_ones(session: CallSession) -> None:
    first = injection(CCID, "inj-1", mode="playback")
    session.add_injection(first, None, max_active=1)
    with pytest.raises(TooManyInjections, match=r"^at most 1 active injections per call$") as info:
        session.add_injection(injection(CCID, "inj-2", mode="playback"), None, max_active=1)
    assert info.value.limit == 1
    assert list(session.injections) == ["inj-1"]
    session.stop_injection(first)
    session.add_injection(injection(CCID, "inj-3", mode="playback"), None, max_active=1)
    assert list(session.injections) == ["inj-1", "inj-3"] and session.active_injections() == 1


def test_the_limit_holds_when_requests_race(session: CallSession) -> None:
    start = threading.Barrier(8)
    outcomes: list[str] = []

    def add(n: int) -> None:
        start.wait()
        try:
            session.add_injection(injection(CCID, f"inj-{n}", mode="playback"), None, max_active=3)
            outcomes.append("added")
        except TooManyInjections:
            outcomes.append("refused")

    threads = [threading.Thread(target=add, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert sorted(outcomes) == ["added"] * 3 + ["refused"] * 5
    assert len(session.injections) == 3 and session.active_injections() == 3


def test_stop_injection_stops_it_once(session: CallSession, log: EventLog, metrics: Metrics) -> None:
    streaming(session, FakeSender())
    inj = injection(CCID)
    session.add_injection(inj, TONE_40MS, max_active=5)
    play_one_frame(session)
    assert inj.status == InjectionStatus.PLAYING and inj.started_at is not None
    session.stop_injection(inj)
    session.stop_injection(inj)
    assert inj.status == InjectionStatus.STOPPED and inj.ended_at is not None
    assert inj.played_ms == 20  # one frame of 20 ms was mixed before the stop
    assert [e for e in logged(log, CCID) if e[0].startswith("injection.")] == [
        ("injection.created", {"injection_id": "inj-1", "source": inj.source, "mode": "mix", "label": "test"}),
        ("injection.playing", {"injection_id": "inj-1"}),
        ("injection.stopped", {"injection_id": "inj-1", "played_ms": 20, "error": None}),
    ]
    assert metrics.value("injections_total", status="stopped") == 1


def test_clear_flushes_telnyx_and_stops_every_injection(session: CallSession, log: EventLog) -> None:
    sender = streaming(session)
    mixed, delegated = injection(CCID, "inj-mix"), injection(CCID, "inj-play", mode="playback")
    session.add_injection(mixed, TONE_40MS, max_active=5)
    session.add_injection(delegated, None, max_active=5)
    stopped = session.clear()
    assert stopped == [mixed, delegated]
    assert mixed.status == delegated.status == InjectionStatus.STOPPED
    assert sender.texts == [protocol.clear_frame()]
    assert ("stream.cleared", {"stopped": 2}) in logged(log, CCID)
    assert session.clear() == []
    assert logged(log, CCID)[-1] == ("stream.cleared", {"stopped": 0})


# -- marks -------------------------------------------------------------------------------------


def test_the_echoed_mark_named_after_an_injection_finishes_it(session: CallSession, log: EventLog) -> None:
    sender = streaming(session)
    inj = injection(CCID, "inj-1", duration_ms=40)
    session.add_injection(inj, TONE_40MS, max_active=5)
    assert play_until_finished(session) == ("inj-1",)
    assert sender.texts == [protocol.mark_frame("inj-1")]
    assert inj.status == InjectionStatus.PLAYING  # all sent, not yet heard

    session.on_mark("someone-else")
    assert inj.status == InjectionStatus.PLAYING
    session.on_mark("inj-1")
    assert inj.status == InjectionStatus.FINISHED and inj.played_ms == 40
    session.on_mark("inj-1")  # a repeated echo changes nothing
    assert names(log, CCID).count("injection.finished") == 1


def test_a_mark_returned_by_a_clear_does_not_finish_the_injection(session: CallSession, log: EventLog) -> None:
    streaming(session)
    inj = injection(CCID)
    session.add_injection(inj, TONE_40MS, max_active=5)
    play_until_finished(session)
    session.clear()
    session.on_mark("inj-1")  # Telnyx returns the marks a clear flushed
    assert inj.status == InjectionStatus.STOPPED
    assert "injection.finished" not in names(log, CCID)


def test_a_socket_gone_before_the_mark_came_back_finishes_its_injections(session: CallSession) -> None:
    sender = streaming(session)
    inj = injection(CCID)
    session.add_injection(inj, TONE_40MS, max_active=5)
    play_until_finished(session)
    session.detach(sender, stopped=False)
    assert inj.status == InjectionStatus.FINISHED and inj.played_ms == 40


def test_a_dead_socket_does_not_use_up_the_audio(session: CallSession) -> None:
    streaming(session, FakeSender(accepts=False))
    inj = injection(CCID)
    session.add_injection(inj, TONE_40MS, max_active=5)
    frame = session.begin_frame(np.zeros(session.frame_samples, np.float32))
    assert frame is not None and not session.end_frame(frame, b"media")
    assert session.begin_frame(np.zeros(session.frame_samples, np.float32)) is None
    assert session.frames_sent == 0 and inj.status == InjectionStatus.CREATED


# -- mode "playback" ---------------------------------------------------------------------------


def test_playback_result_and_end(session: CallSession, log: EventLog) -> None:
    ok, failed = injection(CCID, "inj-ok", mode="playback"), injection(CCID, "inj-bad", mode="playback")
    session.add_injection(ok, None, max_active=5)
    session.add_injection(failed, None, max_active=5)

    session.playback_result(ok, True, None)
    session.playback_result(failed, False, "Telnyx answered 422: 90018 Call has already ended: gone")
    assert ok.status == InjectionStatus.PLAYING and ok.started_at is not None
    assert failed.status == InjectionStatus.FAILED
    assert failed.error == "Telnyx answered 422: 90018 Call has already ended: gone"

    session.playback_ended(ok, InjectionStatus.FINISHED)
    session.playback_ended(ok, InjectionStatus.STOPPED)  # already over: ignored
    session.playback_ended(failed, InjectionStatus.FINISHED)
    assert ok.status == InjectionStatus.FINISHED and ok.played_ms == 40
    assert failed.status == InjectionStatus.FAILED
    assert [e for e in logged(log, CCID) if e[0] != "injection.created"] == [
        ("injection.playing", {"injection_id": "inj-ok"}),
        ("injection.failed", {"injection_id": "inj-bad", "played_ms": 0,
                              "error": "Telnyx answered 422: 90018 Call has already ended: gone"}),
        ("injection.finished", {"injection_id": "inj-ok", "played_ms": 40, "error": None}),
    ]


def test_a_late_playback_result_does_not_revive_a_stopped_injection(session: CallSession) -> None:
    inj = injection(CCID, mode="playback")
    session.add_injection(inj, None, max_active=5)
    session.stop_injection(inj)
    session.playback_result(inj, True, None)
    assert inj.status == InjectionStatus.STOPPED and inj.started_at is None


# -- views -------------------------------------------------------------------------------------


def test_views_have_the_documented_fields(session: CallSession) -> None:
    session.info["direction"] = "incoming"
    streaming(session)
    inj = injection(CCID)
    session.add_injection(inj, TONE_40MS, max_active=5)
    play_one_frame(session)

    view: dict[str, Any] = session.view()
    schemas.Stream.model_validate(view)  # extra="forbid": exactly the documented fields
    assert {k: view[k] for k in ("call_control_id", "stream_id", "status", "from", "to", "direction",
                                 "codec", "sample_rate", "end_reason", "caller_speaking", "frames")} == {
        "call_control_id": CCID, "stream_id": "stream-1", "status": "streaming", "from": "+13125550100",
        "to": "+13125550199", "direction": "incoming", "codec": "PCMU", "sample_rate": 8000,
        "end_reason": None, "caller_speaking": False, "frames": {"sent": 1, "received": 0},
    }
    (shown,) = view["injections"]
    assert shown == session.injection_view(inj)
    schemas.Injection.model_validate(shown)
    assert {k: shown[k] for k in ("id", "call_control_id", "stream_id", "status", "mode", "duration_ms",
                                  "played_ms", "error", "ended_at")} == {
        "id": "inj-1", "call_control_id": CCID, "stream_id": "stream-1", "status": "playing", "mode": "mix",
        "duration_ms": 40, "played_ms": 20, "error": None, "ended_at": None,
    }


def test_the_saved_row_is_the_view(session: CallSession, log: EventLog) -> None:
    streaming(session)
    session.end(CallStatus.ENDED, "hangup: normal_clearing")
    assert log.flush()
    assert log.call(CCID) == session.view()
    assert log.call("stream-1") == log.call(CCID)  # found by stream_id too


# -- recording ---------------------------------------------------------------------------------


@pytest.fixture
def recordings(tmp_path, log: EventLog, metrics: Metrics):
    from streams.recording import Recordings

    recordings = Recordings(tmp_path / "rec", buffer_s=10, retention_days=0, log=log, metrics=metrics)
    yield recordings
    recordings.stop()


def recorded_session(log: EventLog, metrics: Metrics, clock: FakeClock, recordings: Any, *,
                     on: bool) -> CallSession:
    import dataclasses

    settings = dataclasses.replace(SETTINGS, recording=on)
    return CallSession(CCID, settings, log, metrics, clock, recordings)  # type: ignore[arg-type]


def test_a_recording_waits_for_the_stream_then_takes_both_directions(log: EventLog, metrics: Metrics,
                                                                     clock: FakeClock, recordings: Any) -> None:
    session = recorded_session(log, metrics, clock, recordings, on=True)
    assert session.view()["recording"]["status"] == "waiting" and recordings.active(CCID) is None
    streaming(session)
    rec = recordings.active(CCID)
    assert rec is not None and session.view()["recording"]["status"] == "recording"
    ulaw = session._codec
    session.on_caller_audio(protocol.Media(ulaw.encode(np.full(160, 800, np.int16)), "inbound", 1, "stream-1"))
    session.on_caller_audio(protocol.Media(b"\x00" * 160, "outbound", 2, "stream-1"))  # not the caller
    session.add_injection(injection(CCID), TONE_40MS, max_active=4)
    frame = session.begin_frame(np.zeros(session.frame_samples, np.float32))
    assert frame is not None and session.end_frame(frame, b"media", b"\x12" * 160)
    assert [item[0] for item in rec._buffer] == [0, 1]  # one caller frame, one sent, nothing decoded yet
    assert rec._buffer[1][3] == b"\x12" * 160  # the bytes that went out
    session.end(CallStatus.ENDED, "hangup")
    assert rec.closing and not rec.enabled
    recordings.run_once()
    assert rec.status == "complete"
    assert log.flush() and log.call(CCID)["recording"]["status"] == "complete"  # saved again when done


def test_the_switch_before_the_stream_and_across_a_handoff(log: EventLog, metrics: Metrics, clock: FakeClock,
                                                          recordings: Any) -> None:
    first = recorded_session(log, metrics, clock, recordings, on=False)
    assert first.view()["recording"] is None
    first.set_recording(True)  # on the node that has the webhooks, before the socket exists
    assert first.view()["recording"]["status"] == "waiting" and recordings.active(CCID) is None
    state = first.export()
    second = recorded_session(log, metrics, clock, recordings, on=False)
    streaming(second)
    assert recordings.active(CCID) is None
    second.absorb(state)  # the node with the socket takes the call and its switch
    assert recordings.active(CCID) is not None and second.view()["recording"]["status"] == "recording"
    second.set_recording(False)
    assert second.view()["recording"]["status"] == "paused" and not recordings.active(CCID).enabled
    second.end(CallStatus.ENDED, "hangup")
    with pytest.raises(CallNotActive):
        second.set_recording(True)
    assert [e for e, _ in logged(log, CCID) if e.startswith("recording.")] == ["recording.started",
                                                                              "recording.paused"]


def test_a_change_of_sample_rate_ends_the_recording(log: EventLog, metrics: Metrics, clock: FakeClock,
                                                     recordings: Any) -> None:
    session = recorded_session(log, metrics, clock, recordings, on=True)
    streaming(session)
    rec = recordings.active(CCID)
    assert session.attach(start_frame(CCID, "stream-2", encoding="L16", sample_rate=16000), FakeSender())
    assert rec.closing and "sample rate changed" in rec.error
    assert recordings.active(CCID) is rec  # until the writer finishes it
    session.set_recording(True)
    assert not rec.enabled  # a finished recording is not revived
    assert [e for e, _ in logged(log, CCID) if e.startswith("recording.")] == ["recording.started"]
# -- stateful codecs (G.722, OPUS) -------------------------------------------------------------


def wideband_session(log: EventLog, metrics: Metrics, encoding: str, rate: int) -> CallSession:
    settings = dataclasses.replace(SETTINGS, codec=encoding, sample_rate=rate)
    return CallSession(CCID, settings, log, metrics, FakeClock())  # type: ignore[arg-type]


def inbound(payload: bytes) -> protocol.Media:
    return protocol.Media(payload, "inbound", None, "stream-1")


@pytest.mark.parametrize(("encoding", "nominal", "rate"), [("G722", 8000, 16000), ("OPUS", 16000, 16000)])
def test_a_wideband_call_runs_at_its_codec_rate_with_its_own_codec_state(
        log: EventLog, metrics: Metrics, encoding: str, nominal: int, rate: int) -> None:
    session = wideband_session(log, metrics, encoding, nominal)
    assert session.sample_rate == rate and session.frame_samples == rate // 50
    other = wideband_session(log, metrics, encoding, nominal)
    first = FakeSender()
    assert session.attach(start_frame(CCID, encoding=encoding, sample_rate=nominal), first)
    encoder, decoder = session._codec, session._decoder
    assert encoder is not decoder and encoder.stateful
    assert encoder is not other._codec  # never shared between calls
    assert session.view()["codec"] == encoding and session.view()["sample_rate"] == rate
    # A reconnect starts from fresh codec state: Telnyx's side starts a new stream too.
    assert session.attach(start_frame(CCID, "stream-2", encoding=encoding, sample_rate=nominal), FakeSender("2"))
    assert session._codec is not encoder and session._decoder is not decoder


def test_wideband_caller_audio_is_decoded_in_order_for_the_ducking_detector(log: EventLog,
                                                                            metrics: Metrics) -> None:
    session = wideband_session(log, metrics, "G722", 16000)
    assert session.attach(start_frame(CCID, encoding="G722", sample_rate=16000), FakeSender())
    x = (0.3 * 32767 * np.sin(2 * np.pi * 500 * np.arange(3200) / 16000)).astype(np.int16)
    caller = get_codec("G722", 16000)  # the caller's encoder: one stream
    for i in range(10):
        session.on_caller_audio(inbound(caller.encode(x[i * 320:(i + 1) * 320])))
    taken = session.take_caller_audio()
    assert taken is not None
    chunks = taken[1]
    assert len(chunks) == 10 and all(codec.name == "L16" and codec.sample_rate == 16000 for codec, _ in chunks)
    pcm = np.concatenate([codec.decode(chunk) for codec, chunk in chunks])
    expected = get_codec("G722", 16000).decode(get_codec("G722", 16000).encode(x))
    # Decoded frame by frame in order equals the whole stream decoded at once.
    assert pcm.tolist() == expected.tolist()


def test_an_undecodable_payload_is_a_frame_of_silence_and_an_error(log: EventLog, metrics: Metrics) -> None:
    session = wideband_session(log, metrics, "OPUS", 16000)
    assert session.attach(start_frame(CCID, encoding="OPUS", sample_rate=16000), FakeSender())
    with pytest.raises(CorruptPayload):
        session.on_caller_audio(inbound(b"\xff" * 7))
    taken = session.take_caller_audio()
    assert taken is not None
    [(codec, chunk)] = taken[1]
    assert codec.decode(chunk).tolist() == [0] * 320
    assert session.frames_received == 1


def test_after_a_sound_a_stateful_encoder_gets_one_silent_frame_to_flush(log: EventLog, metrics: Metrics) -> None:
    session = wideband_session(log, metrics, "OPUS", 16000)
    assert session.attach(start_frame(CCID, encoding="OPUS", sample_rate=16000), FakeSender())
    tone = (0.25 * np.sin(2 * np.pi * 440.0 * np.arange(640) / 16000)).astype(np.float32)
    session.add_injection(injection(CCID), tone, max_active=5)
    assert play_until_finished(session) == ("inj-1",)
    out = np.full(320, 0.5, np.float32)
    flush = session.begin_frame(out)
    assert flush is not None and flush.finished == () and flush.gain == 1.0 and not out.any()
    assert session.end_frame(flush, b"media")
    assert session.begin_frame(np.zeros(320, np.float32)) is None  # then idle


def test_stateless_codecs_get_no_flush_frame(session: CallSession) -> None:
    streaming(session)
    session.add_injection(injection(CCID), TONE_40MS, max_active=5)
    assert play_until_finished(session) == ("inj-1",)
    assert session.begin_frame(np.zeros(session.frame_samples, np.float32)) is None


@pytest.mark.parametrize(("encoding", "rate"), [("PCMU", 8000), ("G722", 16000), ("OPUS", 16000), ("OPUS", 8000)])
def test_the_ducking_detector_hears_the_caller_in_the_frame_they_start(
        log: EventLog, metrics: Metrics, encoding: str, rate: int) -> None:
    # G.722 and OPUS decoding adds no frame of delay: OPUS's 48 kHz output is resampled with
    # 1 ms held back (a streaming soxr held 16 ms, and the caller was heard a frame or two late).
    session = wideband_session(log, metrics, encoding, rate)
    assert session.attach(start_frame(CCID, encoding=encoding, sample_rate=rate), FakeSender())
    n = session.frame_samples
    speech = np.zeros(60 * n, np.int16)
    speech[20 * n:] = (0.25 * 32767 * np.sin(2 * np.pi * 440 * np.arange(40 * n) / session.sample_rate))
    caller = get_codec(encoding, rate)
    framer = Framer()
    heard = None
    for i in range(60):
        session.on_caller_audio(inbound(caller.encode(speech[i * n:(i + 1) * n])))
        framer.feed_levels([session])
        if session.mixer.caller_speaking:
            heard = i
            break
    assert heard == 20
