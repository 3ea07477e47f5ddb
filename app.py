"""The application factory, and `python app.py` to serve it.

create_app is the only assembly point: config (defaults, .env, environment, test overrides),
the event log, the session registry, the Telnyx command runner, then the blueprints.
"""

from __future__ import annotations

import binascii
import ctypes
import fcntl
import functools
import gc
import logging
import os
import signal
import socket as socket_module
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

import apitoken
import cluster.views
import console
import errors
from cluster.node import ClusterNode
from config import ConfigError, load_config
from eventlog import EventLog, open_log, utc_now
from frontdoor import FrontDoor, HttpError, Limits
from metrics import Metrics
from mixer.mixer import DuckingConfig
from runtime import VERSION, Runtime
from streams import api, socket
from streams.auth import StreamAuth
from streams.callbacks import Callbacks, signing_key
from streams.feed import EventFeed
from streams.recording import Recordings
from streams.registry import SessionRegistry
from streams.resume import LocalResume, unix_seconds
from streams.session import SessionSettings
from webhooks import views as webhook_views
from webhooks.commands import CallCommands
from webhooks.flow import restream
from webhooks.signature import load_public_key

logger = logging.getLogger(__name__)
# Set in the processes run_workers starts: each serves, none starts more.
WORKER_ENV = "MIXER_WORKER"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    cfg = load_config(config)
    app = Flask(__name__, static_folder=None)  # no static files: no /static route
    app.config["MAX_CONTENT_LENGTH"] = cfg.MAX_UPLOAD_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]

    if cfg.TELNYX_PUBLIC_KEY:
        try:
            app.extensions["telnyx_public_key"] = load_public_key(cfg.TELNYX_PUBLIC_KEY)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    elif cfg.WEBHOOK_VERIFY:
        logger.warning("TELNYX_PUBLIC_KEY is not set: every webhook will be refused (401); "
                       "set it, or WEBHOOK_VERIFY=false for local experiments")

    if cfg.RECORDING:
        try:
            cfg.recording_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"RECORDING_DIR: cannot create {str(cfg.recording_dir)!r}: {exc.strerror}") from None
    log = open_log(cfg.DATABASE_URL, cfg.DATABASE_PATH)
    # Calls the last process was playing when it stopped: those young enough are asked of Telnyx
    # again once this one listens (serve), the rest marked interrupted. In scaled mode the other
    # nodes' calls are in the same history, and a dead node's are the survivors' to take over.
    alone = not cfg.scaled and _only_user_of(cfg.DATABASE_PATH, app)
    resumable = resumable_calls(log, cfg.RESUME_WINDOW_S) if alone else []
    interrupted = log.mark_interrupted(keep=frozenset(resumable)) if alone else []
    if interrupted:
        logger.warning("%d call(s) were live when the server last stopped; marked interrupted",
                       len(interrupted))
    node_id = cfg.NODE_ID or f"{socket_module.gethostname()}-{os.getpid()}"
    if WORKER_ENV in os.environ:
        node_id = f"{node_id}-{os.environ[WORKER_ENV]}" if cfg.NODE_ID else node_id
    metrics = Metrics(version=VERSION, node=node_id if cfg.scaled else None)
    metrics.gauge("events_dropped_total", lambda: log.dropped)
    settings = SessionSettings(
        codec=cfg.STREAM_CODEC,
        sample_rate=cfg.STREAM_SAMPLE_RATE,
        l16_byte_order=cfg.L16_BYTE_ORDER,
        frame_ms=cfg.OUTBOUND_CHUNK_MS,
        lead_ms=cfg.OUTBOUND_LEAD_MS,
        ducking=DuckingConfig(depth_db=cfg.DUCK_DEPTH_DB),
        recording=cfg.RECORDING,
    )
    commands = CallCommands(api_key=cfg.TELNYX_API_KEY, base_url=cfg.TELNYX_BASE_URL,
                            timeout_s=cfg.TELNYX_TIMEOUT_S, max_retries=cfg.TELNYX_MAX_RETRIES,
                            log=log, metrics=metrics)
    recordings = Recordings(cfg.recording_dir, buffer_s=cfg.RECORDING_BUFFER_S,
                            retention_days=cfg.RECORDING_RETENTION_DAYS, log=log, metrics=metrics,
                            node=node_id if cfg.scaled else None)
    registry = SessionRegistry(settings, log, metrics, recordings)
    try:
        key, key_kept = signing_key(cfg.CALLBACK_SIGNING_KEY, cfg.CLUSTER_SECRET if cfg.scaled else "")
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(f"CALLBACK_SIGNING_KEY: {exc}") from None
    if cfg.CALLBACK_URL and not key_kept:
        logger.warning("callbacks are signed with a key made at start-up (GET /callbacks/public-key); set "
                       "CALLBACK_SIGNING_KEY to keep one across restarts")
    registry.callbacks = Callbacks(url=cfg.CALLBACK_URL, key=key, log=log, allow_private=cfg.CALLBACK_ALLOW_PRIVATE)
    node = None
    if cfg.scaled:
        node = ClusterNode(redis_url=cfg.REDIS_URL, secret=cfg.CLUSTER_SECRET, node_id=node_id,
                           lease_ms=cfg.NODE_LEASE_MS, registry=registry, log=log,
                           request_timeout_s=cfg.AUDIO_URL_TIMEOUT_S + 5)
        registry.watcher = node
    else:
        registry.watcher = LocalResume(log)
    # Every node must accept the socket tokens any other node issued: one secret for all.
    stream_secret = cfg.STREAM_AUTH_SECRET or (f"stream:{cfg.CLUSTER_SECRET}" if cfg.scaled else "")
    rt = Runtime(config=cfg, log=log, metrics=metrics, registry=registry, commands=commands,
                 stream_auth=StreamAuth(static_token=cfg.STREAM_AUTH_TOKEN, secret=stream_secret),
                 recordings=recordings,
                 feed=EventFeed(log, max_listeners=cfg.EVENT_FEEDS_MAX, max_age_s=cfg.EVENT_FEED_MAX_S),
                 callbacks=registry.callbacks, callbacks_key_persistent=key_kept,
                 cluster=node, node_id=node_id)
    app.extensions["mixer_runtime"] = rt
    app.extensions["resumable_calls"] = resumable
    if node is not None:  # a survivor's takeover asks Telnyx to stream the call again
        node.restream = functools.partial(restream, rt)

    errors.register(app)
    if node is not None:  # a node's signed request is recognised before the token check...
        cluster.views.init_app(app, node)
    apitoken.init_app(app, cfg.API_TOKEN)
    if node is not None:  # ...and a client's is relayed to another node only after it
        cluster.views.init_relay(app, node)
    api.init_app(app)
    console.init_app(app)
    webhook_views.init_app(app)
    log.record("server.started", None, codec=cfg.STREAM_CODEC, sample_rate=cfg.STREAM_SAMPLE_RATE,
               interrupted=len(interrupted), resuming=len(resumable))
    recordings.start()
    return app


def _only_user_of(database: Path, app: Flask) -> bool:
    """Whether no other live process uses this SQLite database: only then are the calls it lists
    as live the last process's, to resume or mark. Held (flock) for the life of the app."""
    database.parent.mkdir(parents=True, exist_ok=True)
    lock = (database.parent / f"{database.name}.lock").open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        logger.warning("another process is using %s: its live calls are left to it", database)
        return False
    app.extensions["database_lock"] = lock
    return True


def resumable_calls(log: EventLog, window_s: float) -> list[str]:
    """The calls logged as live that began less than `window_s` ago."""
    if window_s <= 0:
        return []
    cutoff = time.time() - window_s
    return [ccid for ccid, created_at in log.live_calls() if unix_seconds(created_at) >= cutoff]


def resume_calls(app: Flask) -> None:
    """After a restart: ask Telnyx to stream again each call the last process was playing, to where
    it streamed then; the socket's arrival resumes its injections (streams/resume.py). A call
    Telnyx will not stream again is marked interrupted, as before."""
    rt: Runtime = app.extensions["mixer_runtime"]
    calls: list[str] = app.extensions.get("resumable_calls", [])
    attempt = f"restart-{int(time.time())}"
    for ccid in calls:
        sent = rt.log.events(call_control_id=ccid, event="command.sent", limit=1000)[0]
        urls = [e["data"]["params"].get("stream_url") for e in sent if e["data"].get("action") == "streaming_start"]
        rt.log.record("stream.resuming", ccid, reason="server_restart")
        restream(rt, ccid, attempt, urls[-1] if urls else None, functools.partial(_not_resumed, rt, ccid))
    if calls:
        logger.warning("asked Telnyx to stream %d call(s) again that were live when the server stopped", len(calls))


def _not_resumed(rt: Runtime, call_control_id: str, reason: str) -> None:
    view = rt.log.call(call_control_id) or {"call_control_id": call_control_id}
    view.update(status="interrupted", ended_at=view.get("ended_at") or utc_now(), end_reason="server_restart")
    rt.log.save_call(call_control_id, "interrupted", view)
    rt.log.record("stream.interrupted", call_control_id, reason="server_restart", detail=reason)


def shutdown(app: Flask, door: FrontDoor | None = None) -> None:
    """Stop every mixer, mark live calls interrupted, flush the event log. Idempotent.

    With the `door`, it is closed after the calls end; then the commands in flight finish. So
    nothing (Telnyx's streaming.stopped webhook, a command's outcome) is logged after
    "server.stopped".
    """
    rt: Runtime = app.extensions["mixer_runtime"]
    resume = rt.registry.watcher if isinstance(rt.registry.watcher, LocalResume) else None
    if rt.cluster is not None:
        rt.cluster.leave()  # the calls still here are the other nodes' to take over, not ended
    else:
        rt.registry.watcher = None  # their injections stay kept: the next start resumes them
    rt.registry.shutdown()
    if resume is not None:
        resume.close()  # the last changes written
    rt.recordings.stop()  # the calls have ended: every recording is finished
    if door is not None:
        door.stop()
    peers: FrontDoor | None = app.extensions.get("peer_door")
    if peers is not None:
        peers.stop()
    if rt.cluster is not None:
        rt.cluster.stop()
    rt.commands.close()  # waits for the commands in flight (their rows)
    rt.feed.close()
    rt.callbacks.close()
    rt.log.record("server.stopped", None)
    rt.log.flush()
    rt.log.close()
    lock = app.extensions.pop("database_lock", None)
    if lock is not None:
        lock.close()


def serve(app: Flask, host: str, port: int) -> FrontDoor:
    """Listen on HOST:PORT: the one front door (frontdoor/) for every connection.

    One process (calls live in its memory). The front door's loop reads every request with one
    parser, serves /stream sockets itself and hands every other complete request to a pool of
    SERVER_THREADS threads running the Flask app; the same loop runs the media clock, which
    sends every call's frames. See docs/architecture.md.
    """
    rt: Runtime = app.extensions["mixer_runtime"]
    cfg = rt.config
    clock = rt.registry.clock
    door = FrontDoor(host, port, ws_paths=("/stream",), accept=socket.acceptor(rt), wsgi_app=app,
                     reuse_port=cfg.WORKERS > 1,
                     http_workers=cfg.SERVER_THREADS, head_timeout_s=cfg.HTTP_HEAD_TIMEOUT_S,
                     body_min_rate=cfg.HTTP_BODY_MIN_RATE, max_body_bytes=cfg.MAX_UPLOAD_BYTES,
                     idle_timeout_s=cfg.WS_IDLE_TIMEOUT_S,
                     limits=Limits(max_message_size=socket.MAX_INBOUND_MESSAGE_BYTES,
                                   max_backlog=cfg.WS_MAX_BUFFERED_BYTES),
                     send_buffer_bytes=cfg.WS_SEND_BUFFER_BYTES or None, timer=clock)
    clock.drive_from(door.wake)
    rt.metrics.gauge("accept_failures_total", lambda: door.accept_failures)
    rt.metrics.gauge("http_refused_total", lambda: door.http_refused)
    rt.metrics.gauge("http_timeouts_total", lambda: door.http_timeouts)
    rt.metrics.gauge("websocket_protocol_errors_total", lambda: door.protocol_errors)
    door.start()
    resume_calls(app)
    if rt.cluster is not None:
        # A second listener for the other nodes: with WORKERS, PORT is shared and reaches any of them.
        peers = FrontDoor(cfg.CLUSTER_HOST or host, cfg.CLUSTER_PORT, ws_paths=(), accept=_no_sockets,
                          wsgi_app=app, http_workers=8, head_timeout_s=cfg.HTTP_HEAD_TIMEOUT_S,
                          body_min_rate=cfg.HTTP_BODY_MIN_RATE, max_body_bytes=cfg.MAX_UPLOAD_BYTES).start()
        app.extensions["peer_door"] = peers
        rt.cluster.start(cfg.CLUSTER_ADVERTISE_URL or f"http://{peers.host}:{peers.port}")
    return door


def _no_sockets(request: Any, remote_addr: str) -> Any:
    raise HttpError(404, "not_found", "No WebSocket here.")


def run_workers(count: int) -> int:
    """WORKERS=N: N processes of this server on one PORT (SO_REUSEPORT: the kernel spreads the
    connections), each a node of the cluster. SIGTERM and SIGINT are passed on; returns when all
    have exited, with the first non-zero exit status."""
    children = [subprocess.Popen([sys.executable, *sys.argv], env={**os.environ, WORKER_ENV: str(i)},
                                 preexec_fn=_die_with_parent) for i in range(count)]

    def pass_on(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, pass_on)
    codes = [child.wait() for child in children]
    return next((code for code in codes if code), 0)


def _die_with_parent() -> None:
    """In a worker, before it starts: SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def main() -> None:
    try:
        cfg = load_config()
        logging.basicConfig(level=cfg.LOG_LEVEL.upper(),
                            format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s")
        if cfg.WORKERS > 1 and WORKER_ENV not in os.environ:
            sys.exit(run_workers(cfg.WORKERS))
        app = create_app()
    except ConfigError as exc:
        sys.exit(f"configuration error: {exc}")
    # What start-up allocated lives for the whole process: keep it out of every later collection,
    # so full collections stay short instead of stalling the media clock.
    gc.freeze()
    # The media loop (sockets and clock) must not wait the default 5 ms for the GIL behind a
    # request thread: that wait shows up directly as frame-gap jitter.
    sys.setswitchinterval(0.001)
    door = serve(app, cfg.HOST, cfg.PORT)
    logger.info("serving on http://%s:%d (media sockets on /stream)", cfg.HOST, door.port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    rt: Runtime = app.extensions["mixer_runtime"]
    if rt.cluster is not None:  # a rolling deploy: the calls move to other nodes first
        door.stop_accepting()
        rt.cluster.drain(cfg.DRAIN_TIMEOUT_S)
    # Calls first (marked interrupted), then the sockets and the HTTP pool, then the log.
    shutdown(app, door)


if __name__ == "__main__":
    main()
