"""webhooks/commands.py through the telnyx SDK's real HTTP path, against the simulator's REST fake
(simulator.rest.RestFake) served on loopback by a thread: CallCommands builds its own client, so
the fake is the one place to answer it. The fake's executor is a function of this module."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from eventlog import EventLog
from metrics import Metrics
from simulator.rest import CommandRejected, RestFake
from tests.fakes import logged
from webhooks.commands import CallCommands

API_KEY = "KEY-commands"
GONE = ("Call has already ended", "This call is no longer active and can't receive commands.")


class Executor:
    """What the fake Telnyx does with each command that passed its checks: records it, and may
    reject it or hold it (to see what else runs meanwhile)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards trace
        self.trace: list[str] = []  # "start <action>" / "end <action>"
        self.reject: dict[str, CommandRejected] = {}
        self.hold: dict[str, threading.Event] = {}  # action -> released when set (or after 1 s)

    def __call__(self, action: str, call_control_id: str, body: dict[str, Any]) -> bool:
        with self.lock:
            self.trace.append(f"start {action}")
        for other, event in self.hold.items():
            if other != action:
                event.set()  # another command ran while that one was held
        if action in self.hold:
            self.hold[action].wait(1.0)
        with self.lock:
            self.trace.append(f"end {action}")
        if action in self.reject:
            raise self.reject[action]
        return True


@pytest.fixture
def executor() -> Executor:
    return Executor()


@pytest.fixture
def fake(executor: Executor) -> Iterator[RestFake]:
    fake = RestFake(API_KEY, executor)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def commands(fake: RestFake, log: EventLog, metrics: Metrics) -> Iterator[CallCommands]:
    commands = CallCommands(api_key=API_KEY, base_url=fake.base_url, timeout_s=5.0, max_retries=1,
                            log=log, metrics=metrics)
    yield commands
    commands.close()


def test_a_command_succeeds_and_is_logged(commands: CallCommands, fake: RestFake, log: EventLog,
                                          metrics: Metrics) -> None:
    outcomes: list[tuple[bool, str | None]] = []
    future = commands.submit("streaming_start", "v3:ok", command_id="streaming_start-v3:ok",
                             on_done=lambda ok, error: outcomes.append((ok, error)),
                             stream_url="wss://mixer.example.com/stream", stream_auth_token="secret-token")
    assert future.result(5) is True
    assert outcomes == [(True, None)]
    (sent,) = fake.commands
    assert (sent.action, sent.call_control_id, sent.status, sent.executed) == ("streaming_start", "v3:ok", 200, True)
    assert sent.body == {"command_id": "streaming_start-v3:ok", "stream_url": "wss://mixer.example.com/stream",
                         "stream_auth_token": "secret-token"}
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert logged(log, "v3:ok") == [
        ("command.sent", {"action": "streaming_start", "command_id": "streaming_start-v3:ok",
                          "params": {"stream_url": "wss://mixer.example.com/stream", "stream_auth_token": "***"}}),
        ("command.ok", {"action": "streaming_start", "command_id": "streaming_start-v3:ok"}),
    ]
    assert metrics.value("telnyx_commands_total", action="streaming_start", outcome="ok") == 1


def test_a_422_is_not_retried_and_is_logged_with_the_error(commands: CallCommands, fake: RestFake,
                                                           executor: Executor, log: EventLog,
                                                           metrics: Metrics) -> None:
    executor.reject["answer"] = CommandRejected(422, "90018", *GONE)
    outcomes: list[tuple[bool, str | None]] = []
    ok = commands.run("answer", "v3:gone", command_id="answer-v3:gone",
                      on_done=lambda ok, error: outcomes.append((ok, error)))
    error = f"Telnyx answered 422: 90018 {GONE[0]}: {GONE[1]}"
    assert not ok and outcomes == [(False, error)]
    assert [(c.action, c.status) for c in fake.commands] == [("answer", 422)]
    assert logged(log, "v3:gone")[-1] == ("command.failed", {"action": "answer", "command_id": "answer-v3:gone",
                                                             "error": error})
    assert metrics.value("telnyx_commands_total", action="answer", outcome="failed") == 1


def test_a_500_is_retried_with_the_same_command_id(commands: CallCommands, fake: RestFake,
                                                   log: EventLog) -> None:
    fake.fail_next("hangup", status=500)
    assert commands.run("hangup", "v3:retry", command_id="hangup-v3:retry")
    assert [(c.status, c.command_id) for c in fake.commands] == [(500, "hangup-v3:retry"), (200, "hangup-v3:retry")]
    assert [c.executed for c in fake.commands] == [False, True]
    assert [name for name, _ in logged(log, "v3:retry")] == ["command.sent", "command.ok"]


def test_a_500_every_time_fails_after_the_retries(commands: CallCommands, fake: RestFake, log: EventLog) -> None:
    fake.fail_next("hangup", status=503, times=2)
    assert not commands.run("hangup", "v3:down", command_id="hangup-v3:down")
    assert [c.status for c in fake.commands] == [503, 503]  # the first try and max_retries=1 more
    name, data = logged(log, "v3:down")[-1]
    assert name == "command.failed"
    assert data["error"] == "Telnyx answered 503: 10007 Unexpected error: Injected fault: HTTP 503."


def test_without_an_api_key_nothing_is_sent_and_the_failure_is_logged(fake: RestFake, log: EventLog,
                                                                      metrics: Metrics) -> None:
    keyless = CallCommands(api_key="", base_url=fake.base_url, timeout_s=5.0, max_retries=0, log=log,
                           metrics=metrics)
    try:
        assert not keyless.run("answer", "v3:nokey", command_id="answer-v3:nokey")
    finally:
        keyless.close()
    assert fake.commands == []
    assert logged(log, "v3:nokey")[-1][1]["error"] == "TELNYX_API_KEY is not set; Telnyx commands cannot be sent"


def test_commands_for_one_call_run_in_order(commands: CallCommands, executor: Executor) -> None:
    executor.hold["playback_start"] = threading.Event()  # Telnyx is slow with the first one
    first = commands.submit("playback_start", "v3:order", command_id="playback_start-inj-1",
                            audio_url="https://example.com/a.mp3")
    time.sleep(0.05)  # submitted in this order, by two requests a moment apart
    second = commands.submit("playback_stop", "v3:order", command_id="playback_stop-1", stop="current")
    assert first.result(5) and second.result(5)
    assert executor.trace == ["start playback_start", "end playback_start", "start playback_stop",
                              "end playback_stop"]
