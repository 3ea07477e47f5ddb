"""The dependency rules of the layout: mixer/ is a pure library, the simulator knows only the wire."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_roots(package: str) -> set[str]:
    roots: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split(".")[0])
    return roots


def test_mixer_imports_no_web_db_or_network_code():
    forbidden = {"flask", "flask_sock", "sqlite3", "telnyx", "httpx", "requests", "urllib",
                 "socket", "streams", "webhooks", "eventlog", "simulator", "app", "config"}
    assert imported_roots("mixer") & forbidden == set()


def test_simulator_does_not_import_the_server():
    assert imported_roots("simulator") & {"streams", "webhooks", "eventlog", "app", "config"} == set()


def test_frontdoor_knows_nothing_of_calls_or_telnyx():
    forbidden = {"flask", "flask_sock", "telnyx", "streams", "webhooks", "eventlog", "simulator", "mixer", "app",
                 "config"}
    assert imported_roots("frontdoor") & forbidden == set()


def test_streams_does_no_transport_of_its_own():
    # The one door for /stream is frontdoor/; streams/ holds the call domain.
    assert imported_roots("streams") & {"flask_sock", "simple_websocket", "wsproto", "httptools"} == set()
