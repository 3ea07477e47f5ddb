"""The application factory, and `python app.py` to serve it.

create_app is the only assembly point: config (defaults, .env, environment, test overrides),
the event log, the session registry, the Telnyx command runner, then the blueprints.
"""

from __future__ import annotations

import binascii
import ctypes
import gc
import logging
import os
import signal
import socket as socket_module
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import Any

from flask import Flask

import apitoken
import cluster.views
import console
import errors
from cluster.node import ClusterNode
from config import ConfigError, load_config
from eventlog import open_log
from frontdoor import FrontDoor, HttpError, Limits
from metrics import Metrics
from mixer.mixer import DuckingConfig
from runtime import VERSION, Runtime
from streams import api, socket
from streams.auth import StreamAuth
from streams.callbacks import Callbacks, signing_key
from streams.feed import EventFeed
from streams.registry import SessionRegistry
from streams.session import SessionSettings
from webhooks import views as webhook_views
from webhooks.commands import CallCommands
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

    log = open_log(cfg.DATABASE_URL, cfg.DATABASE_PATH)
    # In scaled mode the other nodes' calls are in the same history: not this process's to mark.
    interrupted = [] if cfg.scaled else log.mark_interrupted()
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
    )
    commands = CallCommands(api_key=cfg.TELNYX_API_KEY, base_url=cfg.TELNYX_BASE_URL,
                            timeout_s=cfg.TELNYX_TIMEOUT_S, max_retries=cfg.TELNYX_MAX_RETRIES,
                            log=log, metrics=metrics)
    registry = SessionRegistry(settings, log, metrics)
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
    # Every node must accept the socket tokens any other node issued: one secret for all.
    stream_secret = cfg.STREAM_AUTH_SECRET or (f"stream:{cfg.CLUSTER_SECRET}" if cfg.scaled else "")
    rt = Runtime(config=cfg, log=log, metrics=metrics, registry=registry, commands=commands,
                 stream_auth=StreamAuth(static_token=cfg.STREAM_AUTH_TOKEN, secret=stream_secret),
                 feed=EventFeed(log, max_listeners=cfg.EVENT_FEEDS_MAX, max_age_s=cfg.EVENT_FEED_MAX_S),
                 callbacks=registry.callbacks, callbacks_key_persistent=key_kept,
                 cluster=node, node_id=node_id)
    app.extensions["mixer_runtime"] = rt

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
               interrupted=len(interrupted))
    return app


def shutdown(app: Flask, door: FrontDoor | None = None) -> None:
    """Stop every mixer, mark live calls interrupted, flush the event log. Idempotent.

    With the `door`, it is closed after the calls end; then the commands in flight finish. So
    nothing (Telnyx's streaming.stopped webhook, a command's outcome) is logged after
    "server.stopped".
    """
    rt: Runtime = app.extensions["mixer_runtime"]
    rt.registry.shutdown()
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
    # Calls first (marked interrupted), then the sockets and the HTTP pool, then the log.
    shutdown(app, door)


if __name__ == "__main__":
    main()
