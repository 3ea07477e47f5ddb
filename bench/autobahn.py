r"""RFC 6455 conformance of the front door, next to the `websockets` library, by Autobahn|Testsuite.

    .venv/bin/python bench/autobahn.py [--wstest /tmp/ab27/bin/wstest] [--cases 1.*,2.*,...] [--outdir DIR]

Two echo servers start in this process on free 127.0.0.1 ports (text echoed as text, binary as
binary, messages up to 16 MiB): the FrontDoor on its own loop thread ("frontdoor",
ws://127.0.0.1:PORT/stream) and websockets' asyncio server on another thread ("websockets").
Autobahn's fuzzingclient (`wstest -m fuzzingclient`, Python 2.7 only, so a separate virtualenv)
then runs cases 1.* to 7.* and 10.* against both, with its default options (failByDrop on).
From its report index this prints, per agent, the count of each verdict (OK, NON-STRICT,
INFORMATIONAL, UNIMPLEMENTED, FAILED) by case group, then every FAILED and NON-STRICT case with
its description, the events an OK run shows against those seen, and the close codes.
The HTML/JSON reports stay in --outdir (default: a new temporary directory, printed at the end).
Exit status 1 when any case FAILED.

Setting up the Python 2.7 tool (PyPI only; --isolated keeps pip to pypi.org and this machine's
CA bundle; the constraints are the last Python-2 releases autobahntestsuite 0.8.2 works with):

    /root/.pyenv/versions/2.7.18/bin/python -m pip install "virtualenv<20.22"
    /root/.pyenv/versions/2.7.18/bin/python -m virtualenv /tmp/ab27
    printf 'autobahn==0.10.9\ntxaio==2.1.0\nTwisted==20.3.0\n' > /tmp/ab27-constraints.txt
    /tmp/ab27/bin/pip --isolated --cert /etc/ssl/certs/ca-certificates.crt \
        install -c /tmp/ab27-constraints.txt autobahntestsuite==0.8.2
    /tmp/ab27/bin/wstest -a   # Autobahn 0.10.9, AutobahnTestSuite 0.8.2

(pip then picks, among others: Twisted 20.3.0, autobahn 0.10.9 with wsaccel 0.6.6 and ujson
2.0.3, txaio 2.1.0, klein 20.6.0, Werkzeug 1.0.1, pyOpenSSL 21.0.0, cryptography 3.3.2,
service-identity 21.1.0, zope.interface 5.5.2.)

Running it, from the repository root:

    .venv/bin/python bench/autobahn.py --wstest /tmp/ab27/bin/wstest
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from frontdoor import Connection, FrontDoor, Limits

MAX_MESSAGE = 16 << 20
DEFAULT_CASES = ("1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*")
VERDICTS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
GROUPS = {
    "1": "framing", "2": "ping/pong", "3": "reserved bits", "4": "opcodes", "5": "fragmentation",
    "6": "UTF-8", "7": "close handling", "9": "performance", "10": "misc", "12": "deflate",
    "13": "deflate params",
}


# -- the two echo servers ----------------------------------------------------------------------


class Echo:
    """The front door's handler: every message goes straight back, text as text."""

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        if isinstance(data, str):
            conn.send_text(data)
        else:
            conn.send_binary(data)

    def on_close(self, conn: Connection, code: int | None) -> None:
        pass


def start_frontdoor() -> tuple[FrontDoor, str]:
    door = FrontDoor("127.0.0.1", 0, ws_paths={"/stream"}, accept=lambda *_: Echo(),
                     limits=Limits(max_message_size=MAX_MESSAGE), idle_timeout_s=30)
    door.start()
    return door, f"ws://127.0.0.1:{door.port}/stream"


class WebsocketsServer:
    """websockets' asyncio echo server, on an event loop in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),),
                                        name="websockets-echo", daemon=True)

    def start(self) -> str:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the websockets server did not start")
        return f"ws://127.0.0.1:{self.port}/"

    async def _serve(self) -> None:
        from websockets.asyncio.server import ServerConnection, serve
        from websockets.exceptions import ConnectionClosed

        async def echo(ws: ServerConnection) -> None:
            try:
                async for message in ws:
                    await ws.send(message)  # str goes out as text, bytes as binary
            except ConnectionClosed:
                pass

        self._stop = asyncio.Event()
        async with serve(echo, "127.0.0.1", 0, max_size=MAX_MESSAGE) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


# -- the report --------------------------------------------------------------------------------


def case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def group_of(case_id: str) -> str:
    return case_id.split(".", 1)[0]


def verdict(entry: dict[str, Any]) -> str:
    """The case's overall verdict: its protocol behaviour, or the close behaviour when that
    failed (the suite's own report counts a case whose close failed as FAILED)."""
    behavior = str(entry.get("behavior", "?"))
    if behavior != "FAILED" and entry.get("behaviorClose") == "FAILED":
        return "FAILED"
    return behavior


def print_table(agent: str, cases: dict[str, dict[str, Any]]) -> None:
    groups = sorted({group_of(c) for c in cases}, key=int)
    counts = {g: Counter(verdict(cases[c]) for c in cases if group_of(c) == g) for g in groups}
    total: Counter[str] = Counter(verdict(entry) for entry in cases.values())
    seconds = sum(float(entry.get("duration", 0)) for entry in cases.values()) / 1000
    print(f"\n{agent}: {len(cases)} cases, {seconds:.1f} s of case time")
    head = f"  {'group':<20}{'cases':>6}" + "".join(f"{v:>15}" for v in VERDICTS)
    print(head)
    print("  " + "-" * (len(head) - 2))
    for g in groups:
        name = f"{g}.* {GROUPS.get(g, '')}"
        n = sum(counts[g].values())
        print(f"  {name:<20}{n:>6}" + "".join(f"{counts[g][v]:>15}" for v in VERDICTS))
    other = sorted(set(total) - set(VERDICTS))
    print(f"  {'all':<20}{len(cases):>6}" + "".join(f"{total[v]:>15}" for v in VERDICTS)
          + (f"   other: {', '.join(f'{v}={total[v]}' for v in other)}" if other else ""))


def print_problems(agent: str, cases: dict[str, dict[str, Any]], outdir: Path) -> None:
    for wanted in ("FAILED", "NON-STRICT"):
        ids = sorted((c for c in cases if verdict(cases[c]) == wanted), key=case_key)
        print(f"\n{agent}: {wanted} cases: {len(ids) or 'none'}")
        for case_id in ids:
            entry = cases[case_id]
            report = load_case_report(outdir, entry)
            print(f"  {case_id}  behavior {entry.get('behavior')}, close {entry.get('behaviorClose')}: "
                  f"{plain(report.get('description', ''))}")
            expected = report.get("expected")
            if isinstance(expected, dict) and "OK" in expected:
                print(f"      OK would be: {events(expected['OK'])}; got: {events(report.get('received', []))}")
            close = report.get("expectedClose")
            if isinstance(close, dict):
                print(f"      close code expected {close.get('closeCode')}, server sent {report.get('remoteCloseCode')}"
                      f" ({plain(report.get('resultClose', ''))})")


def plain(text: object) -> str:
    """A report's HTML-ish text on one line."""
    return " ".join(re.sub(r"<br\s*/?>", " ", re.sub(r"</?b>", "", str(text))).split())


def events(items: object) -> str:
    """The suite's event lists ([["message", payload, binary], ["timeout", "A"], ...]), short."""
    if not isinstance(items, list) or not items:
        return "nothing"
    out = []
    for item in items:
        if isinstance(item, list) and item:
            kind, *rest = item
            if kind == "message" and rest:
                payload = str(rest[0])
                payload = payload if len(payload) <= 24 else payload[:20] + "..."
                out.append(f"{'binary' if len(rest) > 1 and rest[1] else 'text'} {payload!r}")
            else:
                out.append(" ".join(str(r) for r in item))
        else:
            out.append(str(item))
    return ", ".join(out)


def load_case_report(outdir: Path, entry: dict[str, Any]) -> dict[str, Any]:
    name = str(entry.get("reportfile", ""))
    path = outdir / Path(name).with_suffix(".json").name
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# -- main --------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--wstest", default="/tmp/ab27/bin/wstest",
                        help="Autobahn|Testsuite's wstest, in its Python 2.7 virtualenv (default: %(default)s)")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help="comma-separated case patterns (default: %(default)s)")
    parser.add_argument("--outdir", type=Path, default=None,
                        help="where the spec and reports go (default: a new temporary directory)")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not Path(args.wstest).exists():
        print(f"wstest not found at {args.wstest}; see this script's docstring for the set-up", file=sys.stderr)
        return 2
    outdir: Path = (args.outdir or Path(tempfile.mkdtemp(prefix="autobahn-"))).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    reports = outdir / "reports"

    door, door_url = start_frontdoor()
    ws_server = WebsocketsServer()
    ws_url = ws_server.start()
    agents = {"frontdoor": door_url, "websockets": ws_url}
    spec = {
        "outdir": str(reports),
        "servers": [{"agent": agent, "url": url} for agent, url in agents.items()],
        "cases": [c.strip() for c in args.cases.split(",") if c.strip()],
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }
    spec_path = outdir / "fuzzingclient.json"
    spec_path.write_text(json.dumps(spec, indent=2))
    for agent, url in agents.items():
        print(f"{agent:<11} {url}")
    print(f"running {args.wstest} -m fuzzingclient -s {spec_path}", flush=True)

    start = time.monotonic()
    try:
        with (outdir / "wstest.log").open("w") as log:
            proc = subprocess.run([args.wstest, "-m", "fuzzingclient", "-s", str(spec_path)], cwd=outdir,
                                  stdout=log, stderr=subprocess.STDOUT, check=False)
    finally:
        elapsed = time.monotonic() - start
        door.stop()
        ws_server.stop()
    print(f"wstest exited {proc.returncode} after {elapsed:.1f} s (its output: {outdir / 'wstest.log'})")

    try:
        index: dict[str, dict[str, dict[str, Any]]] = json.loads((reports / "index.json").read_text())
    except (OSError, ValueError) as exc:
        print(f"no report index: {exc}", file=sys.stderr)
        return 2
    for agent in agents:
        print_table(agent, index.get(agent, {}))
    for agent in agents:
        print_problems(agent, index.get(agent, {}), reports)
    print(f"\nreports: {reports / 'index.html'}")
    failed = any(verdict(e) == "FAILED" for cases in index.values() for e in cases.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
