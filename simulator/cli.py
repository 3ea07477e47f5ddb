"""`python -m simulator env|call|demo`.

env   prints the environment a server needs to trust this simulator (fixed port and key file).
call  places one call against a running server (started with that environment), injects sounds
      through the server's REST API, hangs up and prints a summary.
demo  does everything on its own: fake Telnyx, the server as a subprocess, a scripted call, and
      DIR/mix.wav + DIR/mix.png of what the caller heard.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from nacl.signing import SigningKey

from simulator.audio import CallerAudio
from simulator.fake import FakeTelnyx
from simulator.story import Step, demo_steps, run_story, save_caller, write_outputs

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_KEY_FILE = Path(tempfile.gettempdir()) / "telnyx-simulator.key"
DEFAULT_PORT = 8765
API_KEY = "KEY_SIMULATOR"


def load_seed(path: Path) -> bytes:
    """The signing key seed, created on first use so that `env` and `call` agree."""
    if path.exists():
        return base64.b64decode(path.read_text().strip())
    seed = bytes(SigningKey.generate())
    path.write_text(base64.b64encode(seed).decode())
    path.chmod(0o600)
    return seed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cmd_env(args: argparse.Namespace) -> int:
    fake = FakeTelnyx(API_KEY, signing_seed=load_seed(args.key_file))
    print(f"TELNYX_API_KEY={API_KEY}")
    print(f"TELNYX_BASE_URL=http://127.0.0.1:{args.port}/v2")
    print(f"TELNYX_PUBLIC_KEY={fake.public_key}")
    return 0


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
        steps.append(Step("inject", body, wait_s=max(args.gap, 3.0), label="text"))
    if args.clear:
        steps.append(Step("clear", wait_s=0.5))
    steps.append(Step("wait", wait_s=args.hold))
    return steps


def cmd_call(args: argparse.Namespace) -> int:
    with FakeTelnyx(API_KEY, signing_seed=load_seed(args.key_file), port=args.port) as fake:
        try:
            httpx.get(f"{args.server.rstrip('/')}/health", timeout=5, trust_env=False)
        except httpx.HTTPError as exc:
            print(f"server {args.server} is not reachable: {exc}", file=sys.stderr)
            return 2
        print("the server must run with:  " + "  ".join([
            f"TELNYX_API_KEY={API_KEY}", f"TELNYX_BASE_URL={fake.base_url}", f"TELNYX_PUBLIC_KEY={fake.public_key}"]))
        try:
            call, summary = run_story(fake, args.server, _inject_steps(args), caller_audio=_caller(args),
                                      api_token=args.api_token)
        except (TimeoutError, RuntimeError) as exc:
            rejected = [d for d in fake.deliveries if d.status is not None and d.status >= 400]
            hint = f" (webhooks answered {rejected[0].status}: is the server using this key?)" if rejected else ""
            print(f"the call did not start streaming: {exc}{hint}", file=sys.stderr)
            return 1
        if args.out:
            wav, png = write_outputs(call, Path(args.out))
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
    server_port = free_port()
    server = f"http://127.0.0.1:{server_port}"
    with FakeTelnyx(API_KEY) as fake:
        env = dict(os.environ, HOST="127.0.0.1", PORT=str(server_port), TELNYX_API_KEY=API_KEY,
                   TELNYX_BASE_URL=fake.base_url, TELNYX_PUBLIC_KEY=fake.public_key,
                   DATABASE_PATH=str(out / "mixer.sqlite3"),
                   STREAM_WEBSOCKET_URL=f"ws://127.0.0.1:{server_port}/stream")
        env.pop("API_TOKEN", None)
        log_path = out / "server.log"
        print(f"starting the server on {server} (log: {log_path})")
        with log_path.open("wb") as log:
            proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
            try:
                if not _wait_health(server, proc, args.start_timeout):
                    print(f"the server did not become healthy; see {log_path}", file=sys.stderr)
                    return 1
                print("placing a call: a talking caller, music ducked under them, a tone, DTMF, speech, clear")
                call, summary = run_story(fake, server, demo_steps(), caller_audio=CallerAudio.speech_like(seed=7))
            except (TimeoutError, RuntimeError) as exc:
                print(f"the demo call failed: {exc}; see {log_path}", file=sys.stderr)
                return 1
            finally:
                _stop(proc)
        wav, png = write_outputs(call, out)
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
    env.add_argument("--port", type=int, default=DEFAULT_PORT)
    env.add_argument("--key-file", type=Path, default=DEFAULT_KEY_FILE)
    env.set_defaults(func=cmd_env)

    call = sub.add_parser("call", help="place one call against a running server")
    call.add_argument("--server", default="http://127.0.0.1:5000")
    call.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of the fake Telnyx REST API")
    call.add_argument("--key-file", type=Path, default=DEFAULT_KEY_FILE)
    call.add_argument("--api-token", help="the server's API_TOKEN, if it has one")
    call.add_argument("--caller-wav", help="what the caller says (default: synthetic talk spurts)")
    call.add_argument("--audio", help="a sound file to inject (sent as audio_base64)")
    call.add_argument("--loop", action="store_true")
    call.add_argument("--duck", action="store_true")
    call.add_argument("--gain-db", type=float, default=0.0)
    call.add_argument("--tone", action="append", metavar="HZ:MS:DBFS", help="e.g. 440:1000:-6 (repeatable)")
    call.add_argument("--dtmf", help="digits to inject, e.g. 123#")
    call.add_argument("--text", help="text for the server to speak")
    call.add_argument("--voice")
    call.add_argument("--clear", action="store_true", help="POST /streams/<id>/clear at the end")
    call.add_argument("--gap", type=float, default=1.0, help="seconds between injections")
    call.add_argument("--hold", type=float, default=2.0, help="seconds to stay on the line before hanging up")
    call.add_argument("--out", help="directory for mix.wav and mix.png")
    call.set_defaults(func=cmd_call)

    demo = sub.add_parser("demo", help="run the whole story with the server as a subprocess")
    demo.add_argument("--out", default="demo-output")
    demo.add_argument("--start-timeout", type=float, default=30.0)
    demo.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))
