"""The CLI: sessions (env, serve), a call held open with curl commands to paste, demo music, the plot."""

from __future__ import annotations

import io
import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from simulator import FakeTelnyx, cli
from simulator.cli import API_KEY, Session, curl_lines, load_seed, main
from simulator.story import Moment, Step, chord_music, demo_steps, plot_mix, speaking_spans, with_ends


@pytest.fixture
def sessions(tmp_path, monkeypatch) -> Path:
    """Session files in a directory of the test's own."""
    monkeypatch.setattr(cli, "SESSION_DIR", tmp_path)
    return tmp_path


class Exec(Exception):
    """What os.execve was asked to run, instead of running it."""

    def __init__(self, path: str, argv: list[str], env: dict[str, str]) -> None:
        super().__init__(path)
        self.path, self.argv, self.env = path, argv, env


def fake_execve(path: str, argv: list[str], env: dict[str, str]) -> None:
    raise Exec(path, argv, env)


def test_env_prints_what_a_server_needs_with_a_stable_key_and_records_the_port(sessions, capsys):
    assert main(["env", "--session", "one", "--port", "8799"]) == 0
    first = capsys.readouterr().out.splitlines()
    assert main(["env", "--session", "one", "--port", "8799"]) == 0
    assert capsys.readouterr().out.splitlines() == first
    public_key = FakeTelnyx(signing_seed=load_seed(sessions / "telnyx-simulator-one.key")).public_key
    assert first == [f"TELNYX_API_KEY={API_KEY}", "TELNYX_BASE_URL=http://127.0.0.1:8799/v2",
                     f"TELNYX_PUBLIC_KEY={public_key}"]
    assert Session("one").load() == {"telnyx_port": 8799}


def test_env_without_a_port_picks_a_free_one_for_call_to_use(sessions, capsys):
    assert main(["env", "--session", "two"]) == 0
    port = Session("two").load()["telnyx_port"]
    assert f"TELNYX_BASE_URL=http://127.0.0.1:{port}/v2" in capsys.readouterr().out.splitlines()
    assert cli.port_taken(port) is None
    assert Session("two").public_key() != Session("one").public_key()  # each session signs with its own key


def test_serve_runs_the_server_with_the_sessions_environment(sessions, monkeypatch, capsys):
    monkeypatch.setattr(os, "execve", fake_execve)
    monkeypatch.setattr(os, "chdir", lambda path: None)
    with pytest.raises(Exec) as ran:
        main(["serve", "--session", "s1"])
    env = ran.value.env
    assert ran.value.argv[1:] == ["app.py"]
    record = Session("s1").load()
    telnyx_port, server = record["telnyx_port"], record["server"]
    assert server == f"http://127.0.0.1:{env['PORT']}" and int(env["PORT"]) != telnyx_port
    assert record["api_token"] == "" and env["API_TOKEN"] == ""  # set, so that a .env's token does not apply
    assert env["TELNYX_BASE_URL"] == f"http://127.0.0.1:{telnyx_port}/v2"
    assert env["TELNYX_PUBLIC_KEY"] == Session("s1").public_key() and env["TELNYX_API_KEY"] == API_KEY
    assert env["STREAM_WEBSOCKET_URL"] == f"ws://127.0.0.1:{env['PORT']}/stream" and env["HOST"] == "127.0.0.1"
    assert env["DATABASE_PATH"].endswith("data/simulator-s1.sqlite3")
    assert "make call SESSION=s1" in capsys.readouterr().out

    with pytest.raises(Exec) as again:
        main(["serve", "--session", "s2", "--port", "8798", "--server-port", "8797", "--api-token", "secret"])
    assert Session("s2").load() == {"telnyx_port": 8798, "server": "http://127.0.0.1:8797", "api_token": "secret"}
    assert again.value.env["API_TOKEN"] == "secret"
    assert Session("s1").load() == record  # sessions do not share files


def test_session_names_cannot_leave_the_directory():
    for name in ("../x", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(ValueError, match="session name"):
            Session(name)


def test_call_without_a_session_or_with_its_port_taken_says_what_to_do(sessions, capsys):
    assert main(["call", "--session", "none"]) == 2
    assert "no simulator session 'none': start the server with `make sim-serve`" in capsys.readouterr().err
    Session("nobody").save(telnyx_port=cli.free_port(), server="http://127.0.0.1:9")
    assert main(["call", "--session", "nobody"]) == 2
    assert "the server http://127.0.0.1:9 is not reachable" in capsys.readouterr().err
    with FakeTelnyx(API_KEY) as other:  # something else took the port the session recorded
        port = other.rest.port
        Session("taken").save(telnyx_port=port, server=f"http://127.0.0.1:{port}")  # it answers /health: 404
        assert main(["call", "--session", "taken"]) == 2
        assert f"the fake Telnyx cannot listen on port {port}" in capsys.readouterr().err


def test_curl_lines_are_ready_to_paste():
    lines = curl_lines("http://127.0.0.1:5001/", "v3:abc_-1", "to ken")
    commands = [shlex.split(line) for line in lines if not line.startswith("#")]
    assert [c[c.index("-d") + 1] if "-d" in c else None for c in commands] == [
        '{"tone": {"frequency_hz": 440, "duration_ms": 1000, "level_dbfs": -6}}', '{"dtmf": "123#"}',
        '{"text": "Hello from the audio mixer."}', None]
    assert commands[0][:5] == ["curl", "-sS", "-X", "POST", "http://127.0.0.1:5001/streams/v3:abc_-1/inject"]
    assert commands[3] == ["curl", "-sS", "http://127.0.0.1:5001/streams/v3:abc_-1", "-H",
                           "Authorization: Bearer to ken"]
    assert all("Authorization" not in line for line in curl_lines("http://h", "v3:x", None))


def run_curl(command: list[str]) -> httpx.Response:
    """What curl would do with one of curl_lines' commands (no curl needed)."""
    url = next(a for a in command if a.startswith("http"))
    headers = dict(command[i + 1].split(": ", 1) for i, a in enumerate(command) if a == "-H")
    body = command[command.index("-d") + 1] if "-d" in command else None
    return httpx.request("POST" if body is not None else "GET", url, content=body, headers=headers, timeout=10)


class Output(io.TextIOBase):
    """stdout for a call running in another thread: lines as they come."""

    def __init__(self) -> None:
        self.text = ""
        self.lines: queue.Queue[str] = queue.Queue()

    def write(self, s: str) -> int:
        self.text += s
        for line in s.splitlines():
            self.lines.put(line)
        return len(s)


def live_server(session: Session, tmp_path: Path) -> Any:
    """The app on loopback, configured as `serve` would configure it for `session`."""
    from livecall import start_server  # this test runs the server; the others here need none of it

    port = cli.free_port()
    session.save(telnyx_port=port)
    stand_in = SimpleNamespace(base_url=f"http://127.0.0.1:{port}/v2", public_key=session.public_key(),
                               webhook_url=None)
    server = start_server(stand_in, tmp_path / "mixer.sqlite3", tmp_path, TELNYX_API_KEY=API_KEY)  # type: ignore[arg-type]
    session.save(telnyx_port=port, server=server.url, api_token="")
    return server


def test_call_holds_the_line_while_its_curl_commands_inject_then_hangs_up_with_a_summary(sessions, tmp_path,
                                                                                           monkeypatch):
    server = live_server(Session("live"), tmp_path)
    out = Output()
    monkeypatch.setattr("sys.stdout", out)
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(main(["call", "--session", "live", "--seconds", "4",
                                                                 "--out", str(tmp_path / "out")])))
    try:
        runner.start()
        printed: list[str] = []
        while not printed or not printed[-1].startswith("the caller is talking"):
            printed.append(out.lines.get(timeout=15))
        ccid = printed[0].removeprefix("call_control_id: ")
        commands = [shlex.split(line) for line in printed if line.startswith("curl ")]
        assert len(commands) == 4 and all(ccid in " ".join(c) for c in commands)
        tone = run_curl(commands[0])
        assert tone.status_code == 201, tone.text
        time.sleep(1.3)  # one second of tone, and its mark
        view = run_curl(commands[3]).json()
        assert view["status"] == "streaming" and view["injections"][0]["status"] == "finished"
        runner.join(15)
    finally:
        server.stop()
    assert result == [0]
    assert "4 s on the line: hanging up" in out.text
    assert f"call {ccid}" in out.text and "marks echoed: 1" in out.text and "call.hangup:200=1" in out.text
    assert (tmp_path / "out" / "mix.png").exists()


def test_ctrl_c_hangs_up_and_still_prints_the_summary(sessions, tmp_path, monkeypatch, capsys):
    server = live_server(Session("ctrlc"), tmp_path)

    def interrupted(call: Any, seconds: float | None) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "hold", interrupted)
    try:
        assert main(["call", "--session", "ctrlc", "--dtmf", "1", "--gap", "0.5"]) == 0
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert "Ctrl-C: hanging up" in out and "call.hangup:200=1" in out
    assert "dtmf 1: HTTP 201" in out


def test_demo_music_is_a_loopable_wav_of_chords():
    data, rate = sf.read(io.BytesIO(chord_music(16000)), dtype="float32")
    assert rate == 16000 and len(data) == 4 * 16000
    assert 0.3 < np.abs(data).max() < 0.4  # -9 dBFS peak
    steps = demo_steps()
    assert all(isinstance(s, Step) for s in steps)
    assert [s.kind for s in steps].count("inject") == 4 and steps[-1].kind == "clear"


def test_speaking_spans_bridge_syllable_gaps_but_not_pauses():
    rate = 8000
    x = np.zeros(rate * 3, dtype=np.int16)
    x[800:4000] = 3000  # 0.1-0.5 s
    x[5000:8000] = 3000  # 0.625-1.0 s: a 125 ms gap, bridged
    x[16000:20000] = 3000  # 2.0-2.5 s: after a pause
    assert speaking_spans(x, rate) == [(0.1, 1.0), (2.0, 2.5)]
    assert speaking_spans(np.zeros(10, dtype=np.int16), rate) == []


def test_moments_end_at_their_mark_or_at_the_clear():
    moments = [Moment("music", "inject", 0.1, "inj_music"), Moment("tone", "inject", 2.0, "inj_tone", 1.0),
               Moment("clear", "clear", 5.0)]
    call = SimpleNamespace(sample_rate=8000, marks_cleared=[], mark_positions=[("inj_tone", 26000, 24800)])
    music, tone, clear = with_ends(call, moments)  # type: ignore[arg-type]
    assert (music.end_s, tone.end_s, clear.end_s) == (5.0, 3.1, None)
    assert (music.heard_from_s, tone.heard_from_s) == (0.1, 2.1)


def test_plot_writes_a_png_with_or_without_moments(tmp_path):
    rng = np.random.default_rng(1)
    pcm = (rng.standard_normal(8000 * 4) * 3000).astype(np.int16)
    path = plot_mix(pcm, pcm, 8000, tmp_path / "mix.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    moments = [Moment("music", "inject", 0.0, "a", None, 3.5, ducked=True),
               Moment("tone", "inject", 1.0, "b", 0.5, 1.6),
               Moment("caller presses 5", "caller_dtmf", 2.0), Moment("clear", "clear", 3.5)]
    labelled = plot_mix(pcm, pcm, 8000, tmp_path / "labelled.png", moments)
    assert labelled.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_session_record_is_private(sessions):
    Session("p").save(telnyx_port=1, api_token="secret")
    assert (sessions / "telnyx-simulator-p.json").stat().st_mode & 0o077 == 0
    assert json.loads((sessions / "telnyx-simulator-p.json").read_text())["api_token"] == "secret"


def test_demo_cluster_plays_the_call_through_two_nodes(tmp_path):
    # `make demo-cluster`: real Redis, PostgreSQL and two `python app.py` nodes; the call moves to
    # the node of its socket, and the WAV holds what the caller heard.
    done = subprocess.run([sys.executable, "-m", "simulator", "demo", "--cluster", "--out", str(tmp_path)],
                          cwd=cli.REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "mix.wav").stat().st_size > 100_000 and (tmp_path / "mix.png").exists()
    assert "call.initiated:200=1" in done.stdout
