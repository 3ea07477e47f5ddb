"""Fixtures: a live server on loopback, driven by the simulator exactly as Telnyx would drive it.

Each test gets its own SQLite file, its own fake Telnyx (REST + signed webhooks + media
client) and the real app served by Werkzeug's threaded server on an ephemeral port.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from livecall import AudioHttp, LiveServer, start_server
from simulator import FakeTelnyx


@pytest.fixture
def make_server_(telnyx: FakeTelnyx, tmp_path: Path, media_dir: Path) -> Iterator[Callable[..., LiveServer]]:
    started: list[LiveServer] = []

    def make(**overrides: Any) -> LiveServer:
        live = start_server(telnyx, tmp_path / "mixer.sqlite3", media_dir, **overrides)
        started.append(live)
        return live

    yield make
    for live in started:
        live.stop()


@pytest.fixture
def server(make_server_: Callable[..., LiveServer]) -> LiveServer:
    return make_server_()


@pytest.fixture
def audio_http() -> Iterator[AudioHttp]:
    server = AudioHttp()
    yield server
    server.close()
