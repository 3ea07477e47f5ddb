"""Set-up shared by every test directory."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventlog import EventLog
from metrics import Metrics


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before each test, collect and freeze what is alive, as `python app.py` freezes what start-up
    # allocated (app.main). The server and the simulator run in this process, next to every test
    # module and every library the tests import (300,000 objects): unfrozen, a full collection
    # walked them all in 130-250 ms on this machine, and a test whose bystander call was playing
    # then heard the server's stall as a gap. Frozen, a collection walks one test's objects only.
    gc.collect()
    gc.freeze()


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EventLog]:
    """A real event log of the test's own, for unit tests of what writes to it."""
    log = EventLog(tmp_path / "events.sqlite3")
    yield log
    log.close()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()
