"""`python app.py` as an operator runs it: a real process, a real call, then SIGTERM or no descriptors left."""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import sqlite3
import subprocess
import sys

import httpx

from appprocess import ROOT, AppProcess, healthy
from livecall import wait_until


def test_bad_config_stops_start_up_naming_the_key(tmp_path):
    env = {**os.environ, "STREAM_CODEC": "G729", "DATABASE_PATH": str(tmp_path / "db.sqlite3")}
    done = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode != 0
    assert "STREAM_CODEC" in done.stderr


def test_sigterm_ends_calls_and_flushes_the_log(telnyx, tmp_path):
    app = AppProcess(telnyx, tmp_path)
    try:
        call, inj = app.playing_call(telnyx)
        app.proc.send_signal(signal.SIGTERM)
        assert app.proc.wait(timeout=30) == 0, app.log()
    finally:
        app.close()
    with sqlite3.connect(app.db) as conn:
        status = conn.execute("SELECT status FROM calls WHERE call_control_id = ?",
                              (call.call_control_id,)).fetchone()[0]
        events = [r[0] for r in conn.execute("SELECT event FROM events ORDER BY id")]
    assert status == "interrupted"
    assert "injection.stopped" in events and events[-1] == "server.stopped"
    assert inj["status"] == "created"


def test_running_out_of_descriptors_keeps_the_calls_and_accepting_resumes(telnyx, tmp_path):
    # Connections that never send a request use up every descriptor the process may open: the
    # call already streaming keeps its audio, and once they go the server accepts again.
    limit = 128
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    app = AppProcess(telnyx, tmp_path)
    hogs: list[socket.socket] = []
    try:
        # Set from here, not in a preexec_fn: this process runs threads, and a child must not take
        # locks between fork and exec. Start-up opens far fewer descriptors than this anyway.
        resource.prlimit(app.proc.pid, resource.RLIMIT_NOFILE, (limit, hard))
        call, _ = app.playing_call(telnyx)
        for _ in range(limit + 32):  # more than the process can hold; the rest wait in the backlog
            hogs.append(socket.create_connection(("127.0.0.1", app.port), timeout=5))
        wait_until(lambda: "accept failed" in app.log(), what="accepting to fail")
        heard = len(call.heard_pcm())
        wait_until(lambda: len(call.heard_pcm()) >= heard + 8000, what="a second more audio meanwhile")
        assert app.proc.poll() is None
        for hog in hogs:
            hog.close()
        wait_until(lambda: healthy(app.url), timeout=10, what="accepting again")
        # Logged by the loop after it hands /health off, so maybe a moment after the answer.
        wait_until(lambda: "accepting connections again" in app.log(), what="the episode's end logged")
        assert app.log().count("accept failed") == 1, app.log()  # once for the episode, not once per try
        metrics = httpx.get(f"{app.url}/metrics", timeout=5).text
        failures = re.search(r"^mixer_accept_failures_total (\S+)$", metrics, re.MULTILINE)
        assert failures is not None and float(failures[1]) >= 1, metrics
        assert call.streaming_status == "streaming"
    finally:
        for hog in hogs:
            hog.close()
        app.close()
