"""Helpers for tests that run the real app on loopback against the simulator."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf
from flask import Flask
from werkzeug.serving import make_server

from app import create_app, serve, shutdown
from simulator import FakeTelnyx

API_KEY = "KEY_TEST"


@dataclass
class LiveServer:
    app: Flask
    url: str
    http: httpx.Client
    close_transport: Callable[[], None]

    def stop(self) -> None:
        shutdown(self.app)
        self.close_transport()
        self.http.close()

    def crash(self) -> None:
        """Go away without ending the calls, as a killed process would (what it logged so far is
        committed; nothing it would log later, like the sockets closing, reaches the file)."""
        log = self.app.extensions["mixer_runtime"].log
        log.flush()
        log.close()
        lock = self.app.extensions.pop("database_lock", None)
        if lock is not None:  # a dead process holds no lock on its database
            lock.close()
        self.close_transport()


def start_server(telnyx: FakeTelnyx, db: Path, media: Path, *, transport: str = "frontdoor",
                 **overrides: Any) -> LiveServer:
    """The app as `python app.py` serves it (the front door), or the WSGI app alone under werkzeug."""
    config = {
        "DATABASE_PATH": db,
        "MEDIA_DIR": media,
        "TELNYX_API_KEY": API_KEY,
        "TELNYX_BASE_URL": telnyx.base_url,
        "TELNYX_PUBLIC_KEY": telnyx.public_key,
        "TELNYX_MAX_RETRIES": 1,
        **overrides,
    }
    app = create_app(config)
    if transport == "frontdoor":
        door = serve(app, "127.0.0.1", 0)
        port, close = door.port, door.stop
    else:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, name="test-server", daemon=True)
        thread.start()
        port = server.server_port

        def close() -> None:
            server.shutdown()
            thread.join(5)

    url = f"http://127.0.0.1:{port}"
    telnyx.webhook_url = f"{url}/webhooks/voice"
    return LiveServer(app, url, httpx.Client(base_url=url, timeout=10), close)






def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `condition` until truthy; bounded, so a broken server fails the test instead of hanging."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class AudioHttp:
    """A loopback HTTP server for audio_url tests: registered files, /slow, /huge, /missing."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        files = self.files = {}
        stop = self.stop_event = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/slow":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    for _ in range(50):  # trickles for at most 5 s
                        if stop.wait(0.1):
                            return
                        self.wfile.write(b"\x00" * 10)
                    return
                if self.path == "/huge":
                    self.send_response(200)
                    self.end_headers()  # no Content-Length: the size shows only while reading
                    for _ in range(100):
                        self.wfile.write(b"\x00" * 10_000)
                    return
                body = files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="audio-http", daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def serve(self, name: str, body: bytes) -> str:
        self.files["/" + name] = body
        return self.url("/" + name)

    def close(self) -> None:
        self.stop_event.set()
        self.server.shutdown()
        self.server.server_close()


def wav_bytes(samples: np.ndarray, rate: int = 8000, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, subtype=subtype, format=fmt)
    return buf.getvalue()


def connected_call(telnyx, server):
    call = telnyx.place_call()
    call.wait_streaming(timeout=10)
    wait_until(lambda: server.http.get(f"/streams/{call.call_control_id}").json().get("status")
               == "streaming", what="stream status")
    return call


def inject(server, call, body, status=201):
    response = server.http.post(f"/streams/{call.call_control_id}/inject", json=body)
    assert response.status_code == status, response.text
    return response.json()


def wait_injection(server, call, inj_id, status, timeout=15):
    def done():
        view = server.http.get(f"/streams/{call.call_control_id}/injections/{inj_id}").json()
        return view if view["status"] == status else None

    return wait_until(done, timeout, f"injection {inj_id} to be {status}")
