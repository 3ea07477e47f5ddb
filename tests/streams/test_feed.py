"""streams.feed: one reader of the event log for every listener, each with its own filters and
cursor; a listener whose client is gone or not reading is dropped, the others go on."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from eventlog import EventLog
from streams.feed import GAP_WAIT_S, EventFeed, FeedsFull, QueueSink


class Sink:
    def __init__(self, accept: bool = True) -> None:
        self.data = b""
        self.accept = accept
        self.ended = False
        self.closed = False

    def write(self, data: bytes) -> bool:
        if not self.accept:
            self.closed = True
            return False
        self.data += data
        return True

    def end(self) -> None:
        self.ended = True

    def events(self) -> list[dict]:
        return [json.loads(line[6:]) for line in self.data.decode().splitlines() if line.startswith("data: ")]

    def ids(self) -> list[int]:
        return [int(line[4:]) for line in self.data.decode().splitlines() if line.startswith("id: ")]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def feed(log: EventLog) -> Iterator[tuple[EventFeed, Clock]]:
    clock = Clock()
    feed = EventFeed(log, max_listeners=3, max_age_s=60, heartbeat_s=15, clock=clock, threaded=False)
    yield feed, clock
    feed.close()


def test_each_listener_gets_what_its_filters_match_after_its_cursor(feed: tuple[EventFeed, Clock],
                                                                   log: EventLog) -> None:
    events, _ = feed
    log.record("call.opened", "v3:a")
    log.record("call.opened", "v3:b")
    log.flush()
    start = events.last_id()
    everything, call_a, injections, from_start = Sink(), Sink(), Sink(), Sink()
    events.listen(lambda: everything, call_control_id=None, event=None, after=start)
    events.listen(lambda: call_a, call_control_id="v3:a", event=None, after=start)
    events.listen(lambda: injections, call_control_id=None, event="INJECTION", after=start)
    with pytest.raises(FeedsFull):
        events.listen(lambda: from_start, call_control_id=None, event=None, after=0)
    log.record("injection.created", "v3:a", injection_id="inj_1")
    log.record("injection_other", "v3:b")  # not a prefix match: the dot is part of the prefix
    log.record("stream.started", "v3:b")
    log.flush()
    events.poll()
    assert [e["event"] for e in everything.events()] == ["injection.created", "injection_other", "stream.started"]
    assert [e["event"] for e in call_a.events()] == ["injection.created"]
    assert [e["event"] for e in injections.events()] == ["injection.created"]
    assert everything.events()[0]["data"] == {"injection_id": "inj_1"}
    assert everything.ids() == [e["id"] for e in everything.events()]
    events.poll()  # nothing new: nothing sent twice
    assert len(everything.events()) == 3


def test_a_listener_resumes_after_its_cursor_and_misses_nothing(feed: tuple[EventFeed, Clock],
                                                                log: EventLog) -> None:
    events, _ = feed
    for i in range(1200):  # more than a page
        log.record("dtmf.received", "v3:a", digit=str(i % 10))
    log.flush()
    resumed = Sink()
    events.listen(lambda: resumed, call_control_id=None, event=None, after=100)
    while len(resumed.events()) < 1100:
        before = len(resumed.events())
        events.poll()
        assert len(resumed.events()) > before
    assert resumed.ids() == list(range(101, 1201))


def test_gone_and_overflowing_listeners_are_dropped_and_others_go_on(feed: tuple[EventFeed, Clock],
                                                                     log: EventLog) -> None:
    events, _ = feed
    stuck, fine, gone = Sink(accept=False), Sink(), Sink()
    for sink in (stuck, fine, gone):
        events.listen(lambda sink=sink: sink, call_control_id=None, event=None, after=events.last_id())
    gone.closed = True
    log.record("call.opened", "v3:a")
    log.flush()
    events.poll()
    assert len(events) == 1 and len(fine.events()) == 1
    events.listen(lambda: Sink(), call_control_id=None, event=None, after=0)  # room again


def test_quiet_listeners_get_heartbeats_and_old_ones_are_ended(feed: tuple[EventFeed, Clock], log: EventLog) -> None:
    events, clock = feed
    quiet = Sink()
    events.listen(lambda: quiet, call_control_id="v3:nobody", event=None, after=events.last_id())
    events.poll()
    assert quiet.data == b""
    clock.now = 15.0
    events.poll()
    assert quiet.data == b": keep-alive\n\n"
    clock.now = 61.0
    events.poll()
    assert quiet.ended and len(events) == 0


def test_a_queue_sink_is_bounded_and_its_body_ends_with_it() -> None:
    sink = QueueSink(max_pending=10)
    body = sink.body(b"retry: 1\n\n")
    assert next(body) == b"retry: 1\n\n"
    assert sink.write(b"12345")
    assert next(body) == b"12345"
    assert sink.write(b"1234567890")
    assert not sink.write(b"x")  # 11 bytes waiting: the client is not reading
    assert sink.closed
    assert next(body) == b"1234567890"
    assert list(body) == []


class GappyLog:
    """An event log whose ids commit out of order, as two PostgreSQL writers' may."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, *ids: int) -> None:
        self.rows += [{"id": i, "at": "", "call_control_id": None, "event": "e", "data": {}} for i in ids]
        self.rows.sort(key=lambda row: row["id"])

    def events(self, *, after_id: int, limit: int, **_: object) -> tuple[list[dict], None]:
        return [row for row in self.rows if row["id"] > after_id][:limit], None


def test_a_feed_waits_at_a_gap_in_the_ids_for_a_while_then_goes_on() -> None:
    log, clock = GappyLog(), Clock()
    events = EventFeed(log, max_listeners=2, max_age_s=600, clock=clock, threaded=False)  # type: ignore[arg-type]
    sink = Sink()
    events.listen(lambda: sink, call_control_id=None, event=None, after=0)
    log.add(1, 2, 4)  # 3 is inserted, not yet committed
    events.poll()
    assert sink.ids() == [1, 2]
    clock.now = 0.5
    log.add(3)
    events.poll()
    assert sink.ids() == [1, 2, 3, 4]  # in order, nothing lost
    log.add(6)  # 5 was used up by a failed write: it never comes
    events.poll()
    assert sink.ids() == [1, 2, 3, 4]
    clock.now = 0.5 + GAP_WAIT_S
    events.poll()
    assert sink.ids() == [1, 2, 3, 4, 6]
    log.add(7)
    events.poll()
    assert sink.ids() == [1, 2, 3, 4, 6, 7]
