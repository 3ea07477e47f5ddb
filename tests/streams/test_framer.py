"""The media clock's tick (streams.framer, streams.clock driven by a loop): each call gets exactly
the bytes it would get mixed and encoded alone, whatever codecs share the tick, and one call's
failure costs no other call its frame."""

from __future__ import annotations

import numpy as np
import pytest

from mixer.codecs import Codec, get_codec
from mixer.geometry import FrameGeometry
from mixer.mixer import Mixer
from streams.clock import MediaClock
from streams.framer import Framer, OutFrame
from streams.levels import FLOOR_DBFS, SENT_EVERY_TICKS, SentMeter
from streams.protocol import media_frame

LOUD, QUIET = 12000, 3


class Call:
    """A Framed call with a real mixer and codec; `twin` mixes the same sources for reference."""

    def __init__(self, name: str, codec: str, rate: int, *, seed: int = 0, playing: bool = True) -> None:
        self.call_control_id = name
        self.codec: Codec = get_codec(codec, rate)
        self.twin_codec = get_codec(codec, rate)  # G.722/OPUS: its own state, in step with codec's
        self.geometry = FrameGeometry(self.codec.sample_rate)
        self.mixer, self.twin = Mixer(self.geometry), Mixer(self.geometry)
        self.sent: list[bytes] = []
        self.sent_meter = SentMeter()
        self.caller: list[tuple[Codec, bytes]] = []
        self.broken = False
        if playing:
            rng = np.random.default_rng(seed)
            music = (rng.uniform(-0.5, 0.5, rate // 3)).astype(np.float32)
            for mixer in (self.mixer, self.twin):
                mixer.add("music", music, gain_db=-3.0, loop=True, duck=True)
                mixer.add("beep", music[: rate // 10] * 2, fade_out_ms=30)

    @property
    def frame_samples(self) -> int:
        return self.geometry.samples_per_frame

    def take_caller_audio(self) -> tuple[Mixer, list[tuple[Codec, bytes]]] | None:
        if self.broken:
            raise RuntimeError("broken call")
        chunks, self.caller = self.caller, []
        return (self.mixer, chunks) if chunks else None

    def begin_frame(self, out: np.ndarray) -> OutFrame | None:
        if self.broken:
            raise RuntimeError("broken call")
        mixed = self.mixer.mix_unscaled_into(out)
        return None if mixed is None else OutFrame(None, self.mixer, self.codec, *mixed)  # type: ignore[arg-type]

    def end_frame(self, frame: OutFrame, message: bytes, payload: bytes | np.ndarray | None = None) -> bool:
        # The payload handed over for the recording is exactly the audio in the message.
        assert payload is not None
        raw = payload if isinstance(payload, bytes) else payload.tobytes()
        assert media_frame(raw).encode() == message
        self.sent.append(message)
        return True

    def expected(self) -> bytes | None:
        frame = self.twin.mix()
        return None if frame is None else media_frame(self.twin_codec.encode(frame.pcm)).encode()


def test_every_call_gets_its_own_bytes_whatever_shares_the_tick() -> None:
    calls = [Call("ulaw", "PCMU", 8000, seed=1), Call("broken", "PCMU", 8000, seed=2),
             Call("alaw", "PCMA", 8000, seed=3), Call("idle", "PCMU", 8000, playing=False),
             Call("l16-wide", "L16", 16000, seed=4), Call("l16", "L16", 8000, seed=5)]
    calls[1].broken = True
    framer = Framer()
    for tick in range(40):
        sent = framer.produce(calls)
        assert {c.call_control_id for c in sent} == {"ulaw", "alaw", "l16-wide", "l16"}
        for call in sent:
            assert call.sent[-1] == call.expected(), (tick, call.call_control_id)
    assert not calls[1].sent and not calls[3].sent


@pytest.mark.parametrize(("codec", "rate"), [("G722", 16000), ("G722", 8000), ("OPUS", 16000), ("OPUS", 8000)])
def test_stateful_codecs_are_encoded_call_by_call_each_with_its_own_state(codec: str, rate: int) -> None:
    # Three calls of one format and frame size: batched like G.711, they would share one ADPCM /
    # OPUS state (or fail on OPUS's variable packet sizes). Each must match its call alone.
    calls = [Call(f"{codec}-{i}", codec, rate, seed=i) for i in range(3)]
    calls.append(Call("ulaw", "PCMU", 8000, seed=9))
    framer = Framer()
    for tick in range(30):
        sent = framer.produce(calls)
        assert len(sent) == 4
        for call in sent:
            assert call.sent[-1] == call.expected(), (tick, call.call_control_id)


@pytest.mark.parametrize(("codec", "rate"), [("PCMU", 8000), ("PCMA", 8000), ("L16", 8000), ("L16", 16000),
                                             ("L16", 22050), ("L16", 24000), ("L16", 48000)])
def test_calls_on_one_codec_are_encoded_and_wrapped_together_bit_exact(codec: str, rate: int) -> None:
    calls = [Call(f"{codec}-{i}", codec, rate, seed=i) for i in range(3)]
    framer = Framer()
    for tick in range(30):
        framer.produce(calls)
        for call in calls:
            assert call.sent[-1] == call.expected(), (tick, call.call_control_id)


def test_each_calls_sent_level_is_measured_from_its_own_row() -> None:
    loud, quiet, idle = Call("loud", "PCMU", 8000, seed=1), Call("quiet", "PCMU", 8000, playing=False), \
        Call("idle", "PCMU", 8000, playing=False)
    quiet.mixer.add("hum", np.full(8000, 0.001, dtype=np.float32))
    framer = Framer()
    for _ in range(SENT_EVERY_TICKS - 1):
        framer.produce([loud, quiet, idle])
        loud.twin.mix()
    assert loud.sent_meter.dbfs(0.0) == FLOOR_DBFS  # not measured yet: one tick in SENT_EVERY_TICKS
    framer.produce([loud, quiet, idle])
    frame = loud.twin.mix()
    assert frame is not None
    rms = 20 * np.log10(np.sqrt(np.mean(frame.pcm.astype(np.float64) ** 2)) / 32768)
    stamps = [at for at, _ in loud.sent_meter._frames]
    assert len(stamps) == 1
    now = stamps[-1]
    assert loud.sent_meter.dbfs(now) == pytest.approx(rms, abs=0.1)
    assert -70 < quiet.sent_meter.dbfs(now) < -50  # 0.001 of full scale: -60 dBFS
    assert idle.sent_meter.dbfs(now) == FLOOR_DBFS  # sent nothing


def test_caller_levels_reach_each_calls_ducking_in_one_pass() -> None:
    speaker, listener, broken = Call("a", "PCMU", 8000), Call("b", "L16", 16000), Call("c", "PCMA", 8000)
    broken.broken = True
    loud = np.full(160, LOUD, dtype=np.int16)
    speaker.caller = [(speaker.codec, speaker.codec.encode(loud))]
    # A chunk that arrived before a reconnect changed the codec is measured with its own codec
    # (-QUIET in mu-law is 0x7E7E...: read as L16, that would be loud).
    ulaw = get_codec("PCMU", 8000)
    listener.caller = [(ulaw, ulaw.encode(np.full(160, -QUIET, dtype=np.int16))),
                       (listener.codec, listener.codec.encode(np.full(320, QUIET, dtype=np.int16)))]
    Framer().feed_levels([speaker, broken, listener])
    assert speaker.mixer.caller_speaking and not listener.mixer.caller_speaking


class Clock:
    now = 100.0


def test_a_loop_drives_the_clock_on_absolute_deadlines_with_the_lead_first() -> None:
    pokes: list[int] = []
    clock = MediaClock(frame_seconds=0.02, lead_seconds=0.06)
    clock.drive_from(lambda: pokes.append(1))
    assert clock.next_deadline(Clock.now) is None  # nobody to tick for: the loop may sleep
    call = Call("a", "PCMU", 8000)
    clock.add(call)  # type: ignore[arg-type]
    assert pokes and clock.next_deadline(Clock.now) == Clock.now
    assert clock.run_due(Clock.now)
    assert len(call.sent) == 4  # the frame due now and 60 ms of lead
    assert not clock.run_due(Clock.now + 0.019)  # no tick due: it says so
    assert len(call.sent) == 4
    assert clock.next_deadline(Clock.now + 0.019) == pytest.approx(Clock.now + 0.02)
    for k in range(1, 51):
        clock.run_due(Clock.now + k * 0.02 + 0.001)
    assert len(call.sent) == 54 and clock.stats.skipped == 0
    clock.remove(call)  # type: ignore[arg-type]
    assert clock.run_due(Clock.now + 51 * 0.02)  # nothing plays: the clock goes idle until poked
    assert clock.next_deadline(Clock.now + 52 * 0.02) is None
    assert not clock.run_due(Clock.now + 53 * 0.02)


def test_a_late_tick_is_caught_up_and_a_stall_past_the_lead_resends_it() -> None:
    clock = MediaClock(frame_seconds=0.02, lead_seconds=0.06)
    clock.drive_from(lambda: None)
    call = Call("a", "PCMU", 8000)
    clock.add(call)  # type: ignore[arg-type]
    t0 = Clock.now
    assert clock.next_deadline(t0) == t0 and clock.run_due(t0)
    for k in range(1, 10):
        clock.run_due(t0 + k * 0.02)
    assert len(call.sent) == 13  # the lead, then one a tick

    # 75 ms past tick 10's deadline (ticks 10-13 due): less than lead + frame (Telnyx had a gap
    # of 15 ms at most). The late ticks run back to back on the old grid; no slot is given up.
    # A call that starts playing on the first of them gets its lead, not that plus the rest.
    starter = Call("b", "PCMU", 8000)
    clock.add(starter)  # type: ignore[arg-type]
    now = t0 + 10 * 0.02 + 0.075
    ticks = 0
    while clock.run_due(now):
        ticks += 1
    assert ticks == 4 and len(call.sent) == 17
    assert len(starter.sent) == 4  # the frame due and 60 ms of lead, as any start
    clock.remove(starter)  # type: ignore[arg-type]
    assert clock.stats.skipped == 0 and clock.stats.resyncs == 0
    assert clock.next_deadline(now) == pytest.approx(t0 + 14 * 0.02)

    # 110 ms past tick 14's deadline: the queue has played dry, so the clock restarts now and
    # the call sends its lead again with the frame due, as when it started.
    now = t0 + 14 * 0.02 + 0.11
    assert clock.run_due(now)
    assert clock.stats.resyncs == 1 and clock.stats.skipped == 5
    assert len(call.sent) == 17 + 4
    assert not clock.run_due(now + 0.019) and clock.run_due(now + 0.02)
    assert len(call.sent) == 22  # then one a tick again


class Exploding(Call):
    @property
    def frame_samples(self) -> int:
        raise RuntimeError("a bug outside any one call's guard")


def test_a_failing_tick_moves_the_clock_on_instead_of_spinning_on_its_deadline() -> None:
    clock = MediaClock(frame_seconds=0.02, lead_seconds=0.0)
    clock.drive_from(lambda: None)
    clock.add(Exploding("x", "PCMU", 8000))  # type: ignore[arg-type]
    assert clock.next_deadline(Clock.now) == Clock.now
    clock.run_due(Clock.now)
    assert clock.next_deadline(Clock.now) == pytest.approx(Clock.now + 0.02)
