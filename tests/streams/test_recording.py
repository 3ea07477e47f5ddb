"""streams.recording on a fake clock: where each frame lands, holes when the buffer is full,
late frames, valid partial files, safe names and the retention sweep."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from eventlog import EventLog
from metrics import Metrics
from mixer.codecs import get_codec
from streams.recording import REORDER_WINDOW_S, Recording, Recordings, file_name, read_wav, wav_header

RATE = 8000
SLOT = 160
ULAW = get_codec("PCMU", RATE)
L16 = get_codec("L16", 16000)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def frame(value: int, samples: int = SLOT) -> np.ndarray:
    return np.full(samples, value, dtype=np.int16)


def ulaw(value: int) -> bytes:
    return ULAW.encode(frame(value))


def decoded(value: int) -> int:
    return int(ULAW.decode(ulaw(value))[0])


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def recordings(tmp_path: Path, log: EventLog, metrics: Metrics, clock: Clock) -> Iterator[Recordings]:
    recordings = Recordings(tmp_path / "rec", buffer_s=10.0, retention_days=7, log=log, metrics=metrics,
                            clock=clock, wall=lambda: 0.0)
    yield recordings
    for call in ("v3:call", "v3:wide", "v3:live"):
        rec = recordings.active(call)
        if rec is not None:
            rec.closing = True
    recordings.run_once()


def finish(recordings: Recordings, rec: Recording) -> np.ndarray:
    rec.closing = True
    recordings.run_once()
    assert rec.status == "complete"
    data = read_wav(rec.path)
    assert data is not None and data == rec.path.read_bytes()  # the header is final
    pcm, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    assert rate == rec.sample_rate
    return pcm


def test_frames_land_on_the_timeline_in_chunk_order_with_missing_chunks_silent(recordings: Recordings,
                                                                                clock: Clock) -> None:
    rec = recordings.open("v3:call", RATE)
    t0 = rec.origin
    # The caller's chunks 1..6 arrive out of order and chunk 4 never does; the first one to
    # arrive (chunk 2, 3 slots in) anchors the stream.
    for chunk, at in ((2, 0.061), (1, 0.065), (3, 0.081), (6, 0.141), (5, 0.125)):
        rec.caller(ULAW, ulaw(100 * chunk), chunk, t0 + at)
    # We send a burst (the lead: 3 frames at once), one more a tick later, then nothing (the
    # clock idles) and one frame 200 ms in: Telnyx plays the burst back to back, the idle is silence.
    for i in range(3):
        rec.sent(ULAW, ulaw(1000 + i), t0 + 0.001)
    rec.sent(ULAW, ulaw(1003), t0 + 0.021)
    rec.sent(ULAW, ulaw(1004), t0 + 0.2)
    pcm = finish(recordings, rec)
    slots = pcm[: len(pcm) // SLOT * SLOT].reshape(-1, SLOT, 2)
    caller = [int(s[0, 0]) for s in slots]
    sent = [int(s[0, 1]) for s in slots]
    assert caller[:9] == [0, 0, decoded(100), decoded(200), decoded(300), 0, decoded(500), decoded(600), 0]
    assert sent[:11] == [decoded(1000), decoded(1001), decoded(1002), decoded(1003), 0, 0, 0, 0, 0, 0,
                         decoded(1004)]
    assert len(slots) == 11 and (slots == slots[:, :1]).all()  # whole frames, nothing in between
    assert rec.info()["frames_late"] == 0


def test_a_stream_without_chunk_numbers_follows_arrival(recordings: Recordings) -> None:
    rec = recordings.open("v3:call", RATE)
    for i, at in enumerate((0.0, 0.005, 0.07)):  # the third arrives after a gap of two slots
        rec.caller(ULAW, ulaw(100 + i), None, rec.origin + at)
    pcm = finish(recordings, rec)
    assert [int(pcm[k * SLOT, 0]) for k in range(4)] == [decoded(100), decoded(101), 0, decoded(102)]


def test_a_reconnect_starts_its_chunks_again_after_the_old_stream(recordings: Recordings) -> None:
    rec = recordings.open("v3:call", RATE)
    rec.caller(ULAW, ulaw(100), 1, rec.origin)
    rec.caller(ULAW, ulaw(200), 2, rec.origin + 0.02)
    rec.new_stream()
    rec.caller(ULAW, ulaw(300), 1, rec.origin + 0.021)  # chunk 1 again, a slot that is taken
    pcm = finish(recordings, rec)
    assert [int(pcm[k * SLOT, 0]) for k in range(3)] == [decoded(100), decoded(200), decoded(300)]


def test_the_file_is_at_the_call_rate_and_a_live_one_reads_as_a_valid_prefix(recordings: Recordings,
                                                                           clock: Clock) -> None:
    rec = recordings.open("v3:wide", 16000)
    pcm16 = (np.arange(320) * 50 - 8000).astype(np.int16)
    for k in range(200):  # 4 s of caller audio, 20 ms frames
        rec.caller(L16, L16.encode(pcm16), k + 1, rec.origin + k * 0.02)
    clock.now = rec.origin + 4.0
    recordings.run_once()  # writes what is older than the reorder window
    assert rec.written == int((4.0 - REORDER_WINDOW_S) * 16000)
    live = read_wav(rec.path)
    assert live is not None
    torn = rec.path.with_name("torn.wav")
    torn.write_bytes(rec.path.read_bytes() + b"\x01\x02\x03")  # a write in progress, mid-sample
    assert read_wav(torn) == live  # whole sample frames only, sizes in the header set
    got, rate = sf.read(io.BytesIO(live), dtype="int16", always_2d=True)
    assert rate == 16000 and got.shape == (rec.written, 2)
    assert np.array_equal(got[:320, 0], pcm16) and not got[:, 1].any()
    assert len(finish(recordings, rec)) == 200 * 320


def test_a_full_buffer_drops_frames_and_reports_the_hole(tmp_path: Path, log: EventLog, clock: Clock) -> None:
    metrics = Metrics()
    recordings = Recordings(tmp_path, buffer_s=0.1, retention_days=0, log=log, metrics=metrics, clock=clock)
    rec = recordings.open("v3:call", RATE)
    assert rec.capacity == 10  # 5 frames a channel, 0.1 s
    t0 = rec.origin
    for k in range(40):  # the writer runs at the 30th only: 20 frames find the buffer full
        clock.now = t0 + k * 0.02
        if k == 30:
            recordings.run_once()  # the hole ends when it makes room
        rec.caller(ULAW, ulaw(100), k + 1, clock.now)
    pcm = finish(recordings, rec)
    info = rec.info()
    assert (info["gaps"], info["frames_dropped"], info["gap_ms"]) == (1, 20, 400)
    assert info["status"] == "complete"
    log.flush()
    events, _ = log.events(call_control_id="v3:call", event="recording.gap", limit=10)
    assert [e["data"] for e in events] == [{"at_ms": 200, "duration_ms": 400, "frames": 20}]
    assert "mixer_recording_gaps_total 1.0" in metrics.render()
    assert "mixer_recording_frames_dropped_total 20.0" in metrics.render()
    caller = pcm[:, 0].reshape(-1, SLOT)[:, 0]
    assert (caller[:10] != 0).all() and not caller[10:30].any() and (caller[30:40] != 0).all()


def test_a_slow_disk_never_holds_up_the_media_loop(tmp_path: Path, log: EventLog, metrics: Metrics,
                                                   clock: Clock) -> None:
    """The writer is stuck in a write; the loop's calls return all the same (they only append)."""
    recordings = Recordings(tmp_path, buffer_s=0.1, retention_days=0, log=log, metrics=metrics, clock=clock)
    stuck, release = threading.Event(), threading.Event()

    def slow_disk() -> None:
        stuck.set()
        release.wait(30)

    recordings.before_write = slow_disk
    rec = recordings.open("v3:call", RATE)
    rec.caller(ULAW, ulaw(100), 1, rec.origin)
    clock.now += 5  # old enough to be written at once
    writer = threading.Thread(target=recordings.run_once)
    writer.start()
    try:
        assert stuck.wait(10)
        for k in range(1000):
            rec.sent(ULAW, ulaw(5), rec.origin + k * 0.02)  # returns: nothing waits on the disk
        assert len(rec._buffer) == rec.capacity and rec._lost == 1000 - rec.capacity
    finally:
        release.set()
        writer.join(10)
    rec.closing = True
    recordings.run_once()
    assert rec.info()["gaps"] == 1 and rec.info()["frames_dropped"] == 1000 - rec.capacity


def test_a_frame_later_than_the_window_is_dropped_as_late(recordings: Recordings, clock: Clock) -> None:
    rec = recordings.open("v3:call", RATE)
    rec.caller(ULAW, ulaw(100), None, rec.origin)
    clock.now = rec.origin + REORDER_WINDOW_S + 1
    recordings.run_once()
    rec.sent(ULAW, ulaw(200), rec.origin)  # its slot is in the file already
    clock.now += 1
    recordings.run_once()
    assert rec.info()["frames_late"] == 1
    pcm = finish(recordings, rec)
    assert not pcm[:, 1].any()


def test_file_names_never_leave_the_directory(recordings: Recordings) -> None:
    for ccid in ("../../etc/passwd", "/abs/path", "v3:a/b\\c", "..", "\x00", "é" * 300, "v3:\udcff"):
        path = recordings.path(ccid)
        assert path.parent == recordings.directory and len(path.name) == 36 and path.suffix == ".wav"
    assert file_name("v3:a") != file_name("v3:b")


def test_the_sweep_deletes_old_recordings_but_not_recent_or_live_ones(recordings: Recordings, tmp_path: Path,
                                                                       clock: Clock) -> None:
    day = 86400.0
    now = 1_900_000_000.0
    directory = recordings.directory
    directory.mkdir()
    old, recent = directory / file_name("v3:old"), directory / file_name("v3:recent")
    other = directory / "notes.txt"
    for path, age in ((old, 8 * day), (recent, 6 * day), (other, 30 * day)):
        path.write_bytes(wav_header(RATE, 0))
        os.utime(path, (now - age, now - age))
    live = recordings.open("v3:live", RATE)
    live.caller(ULAW, ulaw(1), None, live.origin)
    clock.now += 10
    recordings.run_once()  # creates its file
    os.utime(live.path, (now - 9 * day, now - 9 * day))
    assert recordings.sweep(now) == 1
    assert not old.exists() and recent.exists() and other.exists() and live.path.exists()
    recordings.retention_days = 0  # keep for ever
    assert recordings.sweep(now + 100 * day) == 0 and recent.exists()


def test_a_disk_error_fails_the_recording_not_the_call(tmp_path: Path, log: EventLog, metrics: Metrics) -> None:
    (tmp_path / "file").write_text("in the way")
    recordings = Recordings(tmp_path / "file" / "rec", buffer_s=1, retention_days=0, log=log, metrics=metrics)
    done: list[str] = []
    rec = recordings.open("v3:call", RATE, on_done=lambda: done.append(rec.status))
    rec.caller(ULAW, ulaw(100), None, rec.origin)
    recordings.run_once()  # with the reorder window, it would not write yet: make it finish
    rec.closing = True
    recordings.run_once()
    assert rec.info()["status"] == "failed" and "NotADirectoryError" in rec.info()["error"]
    assert done == ["failed"] and recordings.active("v3:call") is None
    rec.caller(ULAW, ulaw(100), None, rec.origin)  # the loop may still call: nothing is kept
    assert not rec._buffer


def test_a_call_too_short_to_write_anything_still_has_an_empty_file(recordings: Recordings) -> None:
    rec = recordings.open("v3:call", RATE)
    pcm = finish(recordings, rec)
    assert pcm.shape == (0, 2) and rec.info()["duration_ms"] == 0
