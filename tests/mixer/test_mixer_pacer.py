"""The pacer on a fake clock: no drift, lead, stalls without bursts, idling, stopping."""

from __future__ import annotations

import itertools
import random
import threading

import pytest

from mixer.pacer import Pacer, PacerStats, run_pacer

FRAME = 0.02
LEAD = 0.06


class FakeClock:
    """Monotonic time that only moves when the pacer sleeps (plus whatever a test injects)."""

    def __init__(self, start: float = 1000.0, oversleep: float = 0.0, seed: int = 1) -> None:
        self.now = start
        self.oversleep = oversleep
        self.sleeps: list[float] = []
        self._rng = random.Random(seed)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds + self._rng.uniform(0, self.oversleep)


class FakeWake:
    """A wake Event on the fake clock: wait() lets `idle_for` seconds pass, then reports a wake."""

    def __init__(self, clock: FakeClock, idle_for: float) -> None:
        self.clock = clock
        self.idle_for = idle_for
        self.waits = 0
        self.flag = False

    def wait(self, timeout: float | None = None) -> bool:
        self.waits += 1
        self.clock.now += self.idle_for
        return True

    def clear(self) -> None:
        self.flag = False

    def set(self) -> None:
        self.flag = True

    def is_set(self) -> bool:
        return self.flag


def pace(produce, clock: FakeClock, stop: threading.Event, wake=None, **kw) -> PacerStats:
    return run_pacer(produce, frame_seconds=FRAME, lead_seconds=LEAD, stop=stop,
                     wake=wake if wake is not None else threading.Event(), clock=clock,
                     sleep=clock.sleep, **kw)


def sender(clock: FakeClock, stop: threading.Event, frames: int, sent: list[float]):
    def produce() -> bool:
        sent.append(clock())
        if len(sent) >= frames:
            stop.set()
        return True
    return produce


def test_no_drift_over_100000_frames():
    clock, stop, sent = FakeClock(), threading.Event(), []
    t0 = clock()
    stats = pace(sender(clock, stop, 100_000, sent), clock, stop)
    lead_frames = round(LEAD / FRAME)
    # The frames that play within the lead go out at once, with the one due now.
    assert sent[:lead_frames + 1] == [t0] * (lead_frames + 1)
    for k in (lead_frames, 1000, 50_000, 99_999):
        assert sent[k] == pytest.approx(t0 + k * FRAME - LEAD, abs=1e-9)
    worst = max(abs(s - (t0 + k * FRAME - LEAD)) for k, s in enumerate(sent) if k >= lead_frames)
    assert worst < 1e-8
    assert (stats.sent, stats.late, stats.skipped, stats.resyncs) == (100_000, 0, 0, 0)
    assert len(stats.lateness) == 100_000 and stats.max_lateness < 1e-8


def test_no_drift_when_every_sleep_oversleeps():
    # Each sleep overshoots by up to 4 ms; absolute deadlines keep the error from adding up.
    clock, stop, sent = FakeClock(oversleep=0.004), threading.Event(), []
    t0 = clock()
    stats = pace(sender(clock, stop, 20_000, sent), clock, stop)
    errors = [s - (t0 + k * FRAME - LEAD) for k, s in enumerate(sent) if k >= 3]
    assert min(errors) >= -1e-9 and max(errors) <= 0.004 + 1e-9
    assert sent[-1] - (t0 + 19_999 * FRAME - LEAD) <= 0.004 + 1e-9
    assert stats.late == 0 and stats.skipped == 0  # 4 ms is within the default quarter frame
    assert 0 < stats.max_lateness <= 0.004 + 1e-9


def test_late_frames_are_counted():
    clock, stop, sent = FakeClock(oversleep=0.008), threading.Event(), []
    stats = pace(sender(clock, stop, 2000, sent), clock, stop)
    assert 0 < stats.late < stats.sent == 2000
    assert stats.late == sum(1 for x in stats.lateness if x > FRAME / 4)


def test_a_long_stall_resyncs_without_a_burst():
    clock, stop, sent = FakeClock(), threading.Event(), []

    def produce() -> bool:
        sent.append(clock())
        if len(sent) == 100:
            clock.now += 1.005  # the thread was descheduled for a second
        if len(sent) >= 300:
            stop.set()
        return True

    stats = pace(produce, clock, stop)
    resumed = sent[100]
    # After the stall: the lead again (4 frames at once, as at any start), then one frame per
    # period. No catch-up of the ~49 frames the stall covered.
    burst = [s for s in sent[100:] if s - resumed < FRAME / 2]
    assert len(burst) == 4
    gaps = [b - a for a, b in itertools.pairwise(sent[103:])]
    assert gaps == pytest.approx([FRAME] * len(gaps), abs=1e-9)
    assert stats.resyncs == 1
    # Frame 100 was due to play at t0 + 2.0 s; we got there at t0 + 1.98 - 0.06 + 1.005: 0.925 s
    # past it, i.e. 46 whole frame slots lost.
    assert stats.skipped == 46
    assert stats.sent == 300 and stats.late == 1 and stats.max_lateness == pytest.approx(1.005 - FRAME)


def test_a_short_stall_within_the_lead_catches_up_without_skipping():
    clock, stop, sent = FakeClock(), threading.Event(), []

    def produce() -> bool:
        sent.append(clock())
        if len(sent) == 100:
            clock.now += 0.045  # less than the 60 ms lead: Telnyx still has audio queued
        if len(sent) >= 200:
            stop.set()
        return True

    t0 = clock()
    stats = pace(produce, clock, stop)
    assert stats.skipped == 0 and stats.resyncs == 0
    assert sent[-1] == pytest.approx(t0 + 199 * FRAME - LEAD, abs=1e-9)  # back on the original grid


def test_a_lead_kept_outside_the_pacer_counts_in_its_stall_rule():
    # The media clock keeps each call's lead itself (lead_seconds=0 here): a tick 70 ms late is
    # caught up, since Telnyx had 60 ms queued; 90 ms late (past the lead and a frame), given up.
    clock = FakeClock()
    for stall, resyncs in ((0.07, 0), (0.09, 1)):
        stats = PacerStats()
        pacer = Pacer(lambda: True, frame_seconds=FRAME, lead_seconds=0.0, outside_lead_seconds=LEAD, stats=stats)
        pacer.restart(clock())
        deadline = pacer.next_deadline
        fired = 0
        while pacer.next_deadline <= deadline + stall:
            pacer.fire(deadline + stall)
            fired += 1
        assert stats.resyncs == resyncs
        assert fired == (4 if resyncs == 0 else 1)  # back to back on the old grid, or a new run


def test_idle_sends_nothing_and_restarts_the_clock_on_wake():
    clock, stop = FakeClock(), threading.Event()
    wake = FakeWake(clock, idle_for=5.0)
    calls: list[tuple[float, bool]] = []
    plan = [True] * 10 + [False] + [True] * 10

    def produce() -> bool:
        result = plan[len(calls)]
        calls.append((clock(), result))
        if len(calls) == len(plan):
            stop.set()
        return result

    stats = pace(produce, clock, stop, wake=wake)
    assert wake.waits == 1 and stats.idles == 1
    assert stats.sent == 20 and stats.skipped == 0 and stats.late == 0
    woke = calls[10][0] + 5.0
    after = [t for t, _ in calls[11:]]
    assert after[:4] == [woke] * 4  # a fresh run: the lead at once, then the period
    assert after[4:] == pytest.approx([woke + k * FRAME for k in range(1, 7)], abs=1e-9)


def test_idle_waits_on_the_real_event_until_woken():
    stop, wake = threading.Event(), threading.Event()
    playing = threading.Event()
    produced: list[bool] = []

    def produce() -> bool:
        if playing.is_set():
            produced.append(True)
            stop.set()
            return True
        produced.append(False)
        return False

    stats = PacerStats()
    worker = threading.Thread(target=run_pacer, name="pacer-test",
                              kwargs={"produce": produce, "stop": stop, "wake": wake, "stats": stats,
                                      "frame_seconds": FRAME, "lead_seconds": LEAD})
    worker.start()
    while not produced:
        threading.Event().wait(0.001)
    # Idle: produce() is not called again until woken (the poll interval is a whole second).
    threading.Event().wait(0.05)
    assert produced == [False]
    playing.set()
    wake.set()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert produced == [False, True] and stats.sent == 1 and stats.idles == 1


def test_stop_ends_the_loop_from_another_thread():
    stop, wake = threading.Event(), threading.Event()
    stats = PacerStats()
    worker = threading.Thread(target=run_pacer, name="pacer-stop",
                              kwargs={"produce": lambda: True, "stop": stop, "wake": wake, "stats": stats,
                                      "frame_seconds": 0.005, "lead_seconds": 0.0})
    worker.start()
    while stats.sent < 3:
        threading.Event().wait(0.001)
    stop.set()
    worker.join(timeout=5)
    assert not worker.is_alive()


def test_stop_while_idle_is_prompt():
    stop, wake = threading.Event(), threading.Event()
    worker = threading.Thread(target=run_pacer, name="pacer-idle",
                              kwargs={"produce": lambda: False, "stop": stop, "wake": wake})
    worker.start()
    stop.set()
    wake.set()  # what the owner does to end an idle pacer
    worker.join(timeout=5)
    assert not worker.is_alive()


def test_bad_arguments():
    with pytest.raises(ValueError):
        run_pacer(lambda: True, frame_seconds=0, stop=threading.Event(), wake=threading.Event())
