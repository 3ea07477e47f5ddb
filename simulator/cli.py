"""`python -m simulator env|serve|call|demo`.

env    prints the environment a server needs to trust this simulator's fake Telnyx, and records
       where that fake will listen (a session, below).
serve  runs the server (`python app.py`) with that environment: `make sim-serve`.
call   places one call against that server: `make call`. It injects nothing unless asked to
       (--tone, --dtmf, --text, --audio, --clear): it prints the call_control_id and curl
       commands that inject into the call and show it, keeps the call up with the caller talking
       until Ctrl-C, --seconds or the server hangs up, then hangs up and prints a summary.
demo   does everything on its own: fake Telnyx, the server as a subprocess, a scripted call, and
       DIR/mix.wav + DIR/mix.png of what the caller heard.

Sessions. The fake Telnyx runs inside `call`, but the server needs its address (TELNYX_BASE_URL)
and public key before that. So `serve` (or `env`) picks a free port for the fake (and `serve`
one for the server), and records them in a session named by --session ("default"): two files in
the temporary directory, telnyx-simulator-NAME.key (the webhook signing key) and
telnyx-simulator-NAME.json (the fake's port; from `serve` also the server's URL and API token).
`call --session NAME` reads them. Sessions with different names run side by side:

    make sim-serve                 make call                  # one terminal each
    make sim-serve SESSION=two     make call SESSION=two      # a second session at the same time

--port / --server-port fix the ports instead. A port found free can be taken by another program
before `call` listens on it; `call` then says so, and restarting `serve` picks another.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from nacl.signing import SigningKey

from simulator.audio import CallerAudio
from simulator.fake import FakeTelnyx, SimCall
from simulator.servers import PostgresServer, RedisServer, started
from simulator.story import (
    Moment,
    Step,
    demo_steps,
    end_call,
    play_steps,
    playout_seconds,
    run_story,
    save_caller,
    start_call,
    write_outputs,
)
from simulator.webhooks import WebhookSigner

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
SESSION_DIR = Path(tempfile.gettempdir())
DEFAULT_SESSION = "default"
DEFAULT_SERVER = "http://127.0.0.1:5000"  # `call` against a server started by hand (after `env`)
API_KEY = "KEY_SIMULATOR"


def load_seed(path: Path) -> bytes:
    """The signing key seed, created on first use so that `serve`/`env` and `call` agree."""
    if path.exists():
        return base64.b64decode(path.read_text().strip())
    seed = bytes(SigningKey.generate())
    path.write_text(base64.b64encode(seed).decode())
    path.chmod(0o600)
    return seed


def free_port(*, other_than: int | None = None) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != other_than:
            return port


def port_taken(port: int) -> str | None:
    """Why 127.0.0.1:`port` cannot be listened on, or None if it can (as of now)."""
    with socket.socket() as s:
        # As the REST fake's server binds: a previous run's connections in TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


class Session:
    """What `serve`/`env` chose and `call` needs, in two files named after the session."""

    def __init__(self, name: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name) or name.startswith("."):
            raise ValueError(f"session name {name!r}: use letters, digits, '_', '-' or '.'")
        self.name = name
        self.key_file = SESSION_DIR / f"telnyx-simulator-{name}.key"
        self.record_file = SESSION_DIR / f"telnyx-simulator-{name}.json"

    def seed(self) -> bytes:
        return load_seed(self.key_file)

    def public_key(self) -> str:
        return WebhookSigner(self.seed()).public_key

    def save(self, **fields: Any) -> None:
        self.record_file.write_text(json.dumps(fields))
        self.record_file.chmod(0o600)  # it may hold the server's API token

    def load(self) -> dict[str, Any]:
        try:
            record = json.loads(self.record_file.read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}


def cmd_env(args: argparse.Namespace) -> int:
    session = Session(args.session)
    port = args.port or free_port()
    session.save(telnyx_port=port)
    print(f"TELNYX_API_KEY={API_KEY}")
    print(f"TELNYX_BASE_URL=http://127.0.0.1:{port}/v2")
    print(f"TELNYX_PUBLIC_KEY={session.public_key()}")
    return 0


def server_env(session: Session, telnyx_port: int, server_port: int, api_token: str) -> dict[str, str]:
    """The server's environment for a session: loopback only, its own database, this fake's key."""
    return dict(os.environ, HOST="127.0.0.1", PORT=str(server_port), TELNYX_API_KEY=API_KEY,
                TELNYX_BASE_URL=f"http://127.0.0.1:{telnyx_port}/v2", TELNYX_PUBLIC_KEY=session.public_key(),
                STREAM_WEBSOCKET_URL=f"ws://127.0.0.1:{server_port}/stream", API_TOKEN=api_token,
                DATABASE_PATH=str(REPO_ROOT / "data" / f"simulator-{session.name}.sqlite3"))


def cmd_serve(args: argparse.Namespace) -> int:
    session = Session(args.session)
    telnyx_port = args.port or free_port()
    server_port = args.server_port or free_port(other_than=telnyx_port)
    server = f"http://127.0.0.1:{server_port}"
    env = server_env(session, telnyx_port, server_port, args.api_token)
    session.save(telnyx_port=telnyx_port, server=server, api_token=args.api_token)
    more = "" if session.name == DEFAULT_SESSION else f" SESSION={session.name}"
    print(f"simulator session {session.name!r}: the server on {server}, the fake Telnyx (run by `make call`) on "
          f"port {telnyx_port}, the database {env['DATABASE_PATH']}")
    print(f"place a call from another terminal with:  make call{more}", flush=True)
    os.chdir(REPO_ROOT)
    # The server takes this process's place, so Ctrl-C and signals reach it directly.
    os.execve(sys.executable, [sys.executable, "app.py"], env)
    return 0  # not reached


def _inject_steps(args: argparse.Namespace) -> list[Step]:
    steps: list[Step] = []
    if args.audio:
        body = {"audio_base64": base64.b64encode(Path(args.audio).read_bytes()).decode(), "loop": args.loop,
                "duck": args.duck, "gain_db": args.gain_db}
        steps.append(Step("inject", body, wait_s=args.gap, label=f"audio {args.audio}"))
    for spec in args.tone or []:
        freq, ms, level = (float(x) for x in spec.split(":"))
        steps.append(Step("inject", {"tone": {"frequency_hz": freq, "duration_ms": int(ms), "level_dbfs": level}},
                          wait_s=max(args.gap, ms / 1000), label=f"tone {spec}"))
    if args.dtmf:
        steps.append(Step("inject", {"dtmf": args.dtmf}, wait_s=args.gap, label=f"dtmf {args.dtmf}"))
    if args.text:
        body = {"text": args.text}
        if args.voice:
            body["voice"] = args.voice
        steps.append(Step("inject", body, wait_s=max(args.gap, 3.0), label="text to speech"))
    if args.clear:
        steps.append(Step("clear", wait_s=0.5))
    return steps


def curl_lines(server: str, call_control_id: str, api_token: str | None) -> list[str]:
    """Commented, ready-to-paste curl commands against one call of `server`."""
    base = f"{server.rstrip('/')}/streams/{call_control_id}"
    auth = f" -H {shlex.quote(f'Authorization: Bearer {api_token}')}" if api_token else ""
    inject = f"curl -sS -X POST {shlex.quote(base + '/inject')}{auth} -H 'Content-Type: application/json' -d "
    examples = [
        ("a 440 Hz tone for one second", {"tone": {"frequency_hz": 440, "duration_ms": 1000, "level_dbfs": -6}}),
        ("DTMF digits", {"dtmf": "123#"}),
        ("text, spoken by the server", {"text": "Hello from the audio mixer."}),
    ]
    lines = []
    for what, body in examples:
        lines += [f"# {what}", inject + shlex.quote(json.dumps(body))]
    lines += ["# the call: its stream and its injections", f"curl -sS {shlex.quote(base)}{auth}"]
    return lines


def hold(call: SimCall, seconds: float | None) -> str:
    """Keep the call up, the caller talking, until `seconds` on the line, or the call ends; says which."""
    while call.state != "ended":
        if seconds is not None and playout_seconds(call) >= seconds:
            return f"{seconds:g} s on the line: hanging up"
        time.sleep(0.1)
    return f"the call ended ({call.hangup_cause})"


def cmd_call(args: argparse.Namespace) -> int:
    session = Session(args.session)
    record = session.load()
    port = args.port or record.get("telnyx_port")
    if not isinstance(port, int):
        print(f"no simulator session {session.name!r}: start the server with `make sim-serve` (or run "
              f"`python -m simulator env --session {session.name}` and start it with that environment)",
              file=sys.stderr)
        return 2
    server = str(args.server or record.get("server") or DEFAULT_SERVER).rstrip("/")
    api_token = args.api_token if args.api_token is not None else record.get("api_token") or None
    try:
        httpx.get(f"{server}/health", timeout=5, trust_env=False)
    except httpx.HTTPError as exc:
        print(f"the server {server} is not reachable ({exc}): is `make sim-serve` running?", file=sys.stderr)
        return 2
    taken = port_taken(port)
    if taken:
        print(f"the fake Telnyx cannot listen on port {port} ({taken}): restart `make sim-serve` to pick another",
              file=sys.stderr)
        return 2
    with FakeTelnyx(API_KEY, signing_seed=session.seed(), port=port) as fake:
        try:
            call = start_call(fake, server, caller_audio=_caller(args))
        except (TimeoutError, RuntimeError) as exc:
            rejected = [d for d in fake.deliveries if d.status is not None and d.status >= 400]
            hint = f" (webhooks answered {rejected[0].status}: is the server using this session's key?)" \
                if rejected else ""
            print(f"the call did not start streaming: {exc}{hint}", file=sys.stderr)
            return 1
        responses: list[tuple[str, int, Any]] = []
        moments: list[Moment] = []
        try:
            responses, moments = play_steps(call, server, _inject_steps(args), api_token=api_token)
            print(f"call_control_id: {call.call_control_id}\n")
            print("\n".join(curl_lines(server, call.call_control_id, api_token)))
            limit = f"after {args.seconds:g} s or on Ctrl-C" if args.seconds is not None else "on Ctrl-C"
            print(f"\nthe caller is talking; the call hangs up {limit}", flush=True)
            why = hold(call, args.seconds)
        except KeyboardInterrupt:
            why = "Ctrl-C: hanging up"
        print(f"\n{why}", flush=True)
        summary = end_call(fake, call, responses, moments)
        if args.out:
            wav, png = write_outputs(call, Path(args.out), summary.moments)
            print(f"wrote {wav} and {png}")
        print("\n".join(summary.lines()))
    return 0


def _caller(args: argparse.Namespace) -> CallerAudio:
    if getattr(args, "caller_wav", None):
        return CallerAudio.from_wav(args.caller_wav, loop=True)
    return CallerAudio.speech_like(seed=7)


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        fake = stack.enter_context(FakeTelnyx(API_KEY))
        env = dict(os.environ, HOST="127.0.0.1", TELNYX_API_KEY=API_KEY, TELNYX_BASE_URL=fake.base_url,
                   TELNYX_PUBLIC_KEY=fake.public_key, DATABASE_PATH=str(out / "mixer.sqlite3"))
        env.pop("API_TOKEN", None)
        nodes = ("a", "b") if args.cluster else ("",)
        if args.cluster:
            # Real Redis and PostgreSQL: two nodes; Telnyx's webhooks and the operator's requests go
            # to node a, the media socket to node b, so the call moves to b and is reached through a.
            redis = stack.enter_context(contextlib.closing(started(RedisServer)))
            postgres = stack.enter_context(contextlib.closing(started(PostgresServer)))
            env.update(REDIS_URL=redis.url, DATABASE_URL=postgres.url, CLUSTER_SECRET=secrets.token_hex(16))
        ports = {name: free_port() for name in nodes}
        socket_port = ports[nodes[-1]]
        servers = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        server = servers[nodes[0]]
        for name in nodes:
            log_path = out / (f"server-{name}.log" if name else "server.log")
            print(f"starting the server{' node ' + name if name else ''} on {servers[name]} (log: {log_path})")
            log = stack.enter_context(log_path.open("wb"))
            proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                    env=dict(env, PORT=str(ports[name]), NODE_ID=name or "demo",
                                             STREAM_WEBSOCKET_URL=f"ws://127.0.0.1:{socket_port}/stream"))
            stack.callback(_stop, proc)
            if not _wait_health(servers[name], proc, args.start_timeout):
                print(f"the server did not become healthy; see {log_path}", file=sys.stderr)
                return 1
        print("placing a call: a talking caller, music ducked under them, a tone, DTMF, speech, clear")
        try:
            call, summary = run_story(fake, server, demo_steps(), caller_audio=CallerAudio.speech_like(seed=7))
        except (TimeoutError, RuntimeError) as exc:
            print(f"the demo call failed: {exc}; see the server logs in {out}", file=sys.stderr)
            return 1
        wav, png = write_outputs(call, out, summary.moments)
        save_caller(call, out / "caller.wav")
        print(f"wrote {wav}, {png} and {out / 'caller.wav'}")
        print("\n".join(summary.lines()))
    return 0


def _wait_health(server: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(f"{server}/health", timeout=1, trust_env=False).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    env = sub.add_parser("env", help="print the environment a server needs to trust this simulator")
    env.add_argument("--session", default=DEFAULT_SESSION, help="session name (see above)")
    env.add_argument("--port", type=int, help="port for the fake Telnyx (default: a free one)")
    env.set_defaults(func=cmd_env)

    serve = sub.add_parser("serve", help="run the server (python app.py) with a session's environment")
    serve.add_argument("--session", default=DEFAULT_SESSION, help="session name (see above)")
    serve.add_argument("--port", type=int, help="port for the fake Telnyx (default: a free one)")
    serve.add_argument("--server-port", type=int, help="port for the server (default: a free one)")
    serve.add_argument("--api-token", default="", help="API_TOKEN for the server's REST API (default: none)")
    serve.set_defaults(func=cmd_serve)

    call = sub.add_parser("call", help="place one call against a running server")
    call.add_argument("--session", default=DEFAULT_SESSION, help="session name (see above)")
    call.add_argument("--server", help=f"the server's URL (default: the session's, else {DEFAULT_SERVER})")
    call.add_argument("--port", type=int, help="port of the fake Telnyx REST API (default: the session's)")
    call.add_argument("--api-token", help="the server's API_TOKEN (default: the session's)")
    call.add_argument("--seconds", type=float, help="hang up after this long on the line (default: on Ctrl-C)")
    call.add_argument("--caller-wav", help="what the caller says (default: synthetic talk spurts)")
    call.add_argument("--audio", help="a sound file to inject (sent as audio_base64)")
    call.add_argument("--loop", action="store_true")
    call.add_argument("--duck", action="store_true")
    call.add_argument("--gain-db", type=float, default=0.0)
    call.add_argument("--tone", action="append", metavar="HZ:MS:DBFS", help="e.g. 440:1000:-6 (repeatable)")
    call.add_argument("--dtmf", help="digits to inject, e.g. 123#")
    call.add_argument("--text", help="text for the server to speak")
    call.add_argument("--voice")
    call.add_argument("--clear", action="store_true", help="POST /streams/<id>/clear after the injections")
    call.add_argument("--gap", type=float, default=1.0, help="seconds between injections")
    call.add_argument("--out", help="directory for mix.wav and mix.png")
    call.set_defaults(func=cmd_call)

    demo = sub.add_parser("demo", help="run the whole story with the server as a subprocess")
    demo.add_argument("--out", default="demo-output")
    demo.add_argument("--start-timeout", type=float, default=30.0)
    demo.add_argument("--cluster", action="store_true",
                      help="two nodes on real Redis and PostgreSQL: webhooks and requests on one, "
                           "the socket on the other")
    demo.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))
