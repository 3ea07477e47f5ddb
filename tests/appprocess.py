"""`python app.py` as an operator runs it, for tests that need the real process (signals, limits,
several nodes)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from livecall import API_KEY, wait_until
from simulator import FakeTelnyx, SimCall
from simulator.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


class AppProcess:
    """`python app.py` on a free port against the simulator, its output in tmp_path/server.log."""

    def __init__(self, telnyx: FakeTelnyx, tmp_path: Path, env: Mapping[str, str] | None = None) -> None:
        """`env`: settings added to (or replacing) the ones below, e.g. {"STREAM_AUTH_TOKEN": "tok"}."""
        port = int(env["PORT"]) if env and "PORT" in env else free_port()
        self.db = tmp_path / "db.sqlite3"
        self.log_path = tmp_path / "server.log"
        environ = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "DATABASE_PATH": str(self.db),
                   "TELNYX_API_KEY": API_KEY, "TELNYX_BASE_URL": telnyx.base_url,
                   "TELNYX_PUBLIC_KEY": telnyx.public_key, "LOG_LEVEL": "WARNING", **(env or {})}
        self._log_file = self.log_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=environ, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, text=True)
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        telnyx.webhook_url = f"{self.url}/webhooks/voice"

    def playing_call(self, telnyx: FakeTelnyx) -> tuple[SimCall, dict[str, Any]]:
        """Once the server is up: a call playing a looping tone; returns it and the injection."""
        wait_until(lambda: healthy(self.url), timeout=30, what="server start")
        call = telnyx.place_call()
        call.wait_streaming(timeout=10)
        response = httpx.post(f"{self.url}/streams/{call.call_control_id}/inject",
                              json={"tone": {"frequency_hz": 300, "duration_ms": 500}, "loop": True})
        response.raise_for_status()
        wait_until(lambda: len(call.heard_pcm()) > 1600, what="audio from the real server")
        return call, response.json()

    def log(self) -> str:
        return self.log_path.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
