"""REST routes: /health, /streams*, /stream-log, /events, /clips, /voices, /metrics, /openapi.json.
Views stay thin: parse (streams.schemas), act, render."""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

import apitoken
from cluster import views as cluster_views
from cluster.node import ClusterUnavailable
from errors import ApiError
from eventlog import Unavailable
from frontdoor.stream import OPEN_STREAM
from metrics import REJECTION_CODES
from mixer import sources, speech
from mixer.errors import AudioError
from runtime import VERSION
from runtime import current as runtime
from streams import injections, schemas
from streams.callbacks import CallbackUrlError, check_url
from streams.feed import RETRY_MS, FeedsFull, QueueSink, Sink
from streams.recording import wav_header
from streams.session import CallSession, Injection
from streams.status import CallNotActive, TooManyInjections

bp = Blueprint("streams", __name__)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


@bp.get("/health")
@apitoken.public
def health() -> tuple[Response, int]:
    rt = runtime()
    problems = [] if rt.log.healthy else [f"event log cannot write: {rt.log.last_error or 'writer stopped'}"]
    if rt.cluster is not None and not rt.cluster.healthy:
        problems.append(f"Redis is unreachable: {rt.cluster.redis_error}")
    draining = rt.cluster is not None and rt.cluster.draining
    if draining:  # a load balancer checking /health sends this node nothing new
        problems.append("draining: this node is moving its calls to others before it stops")
    body: dict[str, Any] = {
        "status": "draining" if draining else "degraded" if problems else "ok",
        "uptime_seconds": round(time.monotonic() - rt.started, 3),
        "active_sessions": len(rt.registry.sessions()),
        "version": VERSION,
    }
    if rt.cluster is not None:
        body["node"] = rt.node_id
        try:
            body["nodes"] = sorted(rt.cluster.nodes())
        except ClusterUnavailable:
            body["nodes"] = None
    if problems:
        body["reason"] = "; ".join(problems)
    return jsonify(body), 503 if problems else 200


@bp.get("/streams")
def list_streams() -> Response:
    """The live calls (status=active, the default), or pages of every call ever (status=all, or
    one status such as ended), oldest first, live ones as they are now."""
    query = schemas.parse(schemas.StreamsQuery, request.args.to_dict())
    rt = runtime()
    live = {s.call_control_id: _view(s) for s in rt.registry.sessions() if s.live}
    if rt.cluster is not None and cluster_views.peer() is None:
        live.update((view["call_control_id"], view) for view in rt.cluster.live_views())  # every node's
    if query.status == "active":
        return jsonify({"items": list(live.values()), "next_cursor": None})
    rt.log.flush()  # every session is logged when it is created: the history holds them all
    logged, next_id = rt.log.calls(status=None if query.status == "all" else query.status,
                                   after=query.cursor, limit=query.limit)
    items = [live.get(call["call_control_id"], call) for call in logged]
    return jsonify({"items": items, "next_cursor": str(next_id) if next_id is not None else None})


@bp.get("/streams/<key>")
def get_stream(key: str) -> Response:
    session = runtime().registry.get(key)
    if session is not None:
        return jsonify(_view(session))
    return jsonify(_history(key))


@bp.patch("/streams/<key>")
def patch_stream(key: str) -> Response:
    """The call's switches: {"recording": true|false}."""
    session = _live_session(key)
    fields, _ = _request_fields(json_only=True)
    patch = schemas.parse(schemas.StreamPatch, fields)
    try:
        session.set_recording(patch.recording)
    except CallNotActive as exc:
        raise _not_active(exc.call_control_id, exc.status) from None
    return jsonify(_view(session))


@bp.get("/streams/<key>/recording")
def get_recording(key: str) -> Response:
    """The recording as a WAV: complete once the call has ended, what is written so far before."""
    rt = runtime()
    session = rt.registry.get(key)
    if session is not None:
        ccid, info = session.call_control_id, session.recording_view()
    else:
        view = _history(key)
        ccid, info = view["call_control_id"], view.get("recording")
    data = rt.recordings.read(ccid)
    if data is None:
        live = rt.recordings.active(ccid)
        if live is not None and live.status == "recording":
            data = wav_header(live.sample_rate, 0)  # nothing written yet: the file starts empty
    if data is None:
        node = info.get("node") if info else None
        if rt.cluster is not None and cluster_views.peer() is None and node and node != rt.node_id:
            return cluster_views.forward_here(rt.cluster, rt.cluster.node_url(node))
        if info and info.get("status") == "complete":
            raise ApiError(404, "recording_not_found",
                           f"The recording of call {ccid} is no longer kept (RECORDING_RETENTION_DAYS).")
        raise ApiError(404, "recording_not_found", f"Call {ccid} has no recording.")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", ccid)[:100]
    return Response(data, mimetype="audio/wav",
                    headers={"Content-Disposition": f'attachment; filename="recording-{name}.wav"'})


@bp.post("/streams/<key>/inject")
def inject(key: str) -> tuple[Response, int]:
    rt = runtime()
    session = _live_session(key)
    fields, files = _request_fields()
    req = injections.parse_request(fields, files)
    if req.callback_url is not None:
        try:
            check_url(req.callback_url, allow_private=rt.config.CALLBACK_ALLOW_PRIVATE)
        except CallbackUrlError as exc:
            raise ApiError(422, "callback_url_forbidden", str(exc), "callback_url") from None
    if session.active_injections() >= rt.config.MAX_ACTIVE_INJECTIONS:
        raise _too_many()  # early, before decoding; add_injection checks again atomically
    inj_id = "inj_" + secrets.token_hex(8)
    samples = None
    duration_ms: int | None = None
    if req.mode == "mix":
        samples = injections.load_samples(req, rt.limits(session.sample_rate))
        duration_ms = None if req.loop else len(samples) * 1000 // session.sample_rate
    inj = Injection(
        id=inj_id, call_control_id=session.call_control_id, source=injections.describe(req),
        gain_db=float(req.gain_db), loop=req.loop, fade_in_ms=req.fade_in_ms,
        fade_out_ms=req.fade_out_ms, duck=req.duck, label=req.label, mode=req.mode,
        duration_ms=duration_ms, callback_url=req.callback_url,
    )
    # The answer shows it as created (DESIGN §5): the clock may start playing it before we reply.
    view = session.injection_view(inj)
    try:
        session.add_injection(inj, samples, max_active=rt.config.MAX_ACTIVE_INJECTIONS)
    except TooManyInjections:
        raise _too_many() from None
    except CallNotActive as exc:  # the call ended while the source was decoding
        raise _not_active(exc.call_control_id, exc.status) from None
    if req.mode == "playback":
        rt.start_playback(session, inj, req.value)
    return jsonify(view), 201


@bp.after_request
def _log_rejected_injection(response: Response) -> Response:
    """A refused injection is an event of its call (injection.rejected) and a count by code, so
    operators see what the API told the client. Not for a request without the API token: a
    stranger must not be able to write into a call's log."""
    if request.endpoint != "streams.inject" or response.status_code < 400 or g.get("relayed"):
        return response
    error = (response.get_json(silent=True) or {}).get("error") or {}
    code = str(error.get("code") or "other")
    rt = runtime()
    rt.metrics.inc("injections_rejected_total", code=code if code in REJECTION_CODES else "other")
    if response.status_code == 401:
        return response
    key = str((request.view_args or {}).get("key", ""))
    session = rt.registry.get(key)
    call_control_id = session.call_control_id if session is not None else None
    if call_control_id is None and code != "stream_not_found":
        try:
            known = rt.log.call(key)
        except Unavailable:
            known = None
        call_control_id = known["call_control_id"] if known else None
    rt.log.record("injection.rejected", call_control_id, status=response.status_code, code=code,
                  message=str(error.get("message", ""))[:500], field=error.get("field"),
                  **({} if call_control_id else {"key": key[:200]}))
    return response


@bp.get("/streams/<key>/injections/<inj_id>")
def get_injection(key: str, inj_id: str) -> Response:
    session = runtime().registry.get(key)
    if session is None:
        for view in _history(key).get("injections", []):
            if view["id"] == inj_id:
                return jsonify(view)
        raise _injection_not_found(inj_id)
    return jsonify(session.injection_view(_injection(session, inj_id)))


@bp.patch("/streams/<key>/injections/<inj_id>")
def patch_injection(key: str, inj_id: str) -> Response:
    session = _live_session(key)
    inj = _injection(session, inj_id)
    fields, _ = _request_fields(json_only=True)
    patch = schemas.parse(schemas.GainPatch, fields)
    if not inj.active:
        raise ApiError(409, "injection_not_active", f"Injection {inj_id} is already {inj.status}.")
    if inj.mode != "mix":
        raise ApiError(409, "injection_not_mixed", "Telnyx plays this injection; its gain is fixed.")
    session.set_gain(inj, patch.gain_db)
    return jsonify(session.injection_view(inj))


@bp.delete("/streams/<key>/injections/<inj_id>")
def delete_injection(key: str, inj_id: str) -> Response:
    rt = runtime()
    session = _live_session(key)
    inj = _injection(session, inj_id)
    was_active = inj.active
    session.stop_injection(inj)
    if was_active and inj.mode == "playback":
        rt.stop_playback(session)
    return jsonify(session.injection_view(inj))


@bp.post("/streams/<key>/clear")
def clear(key: str) -> Response:
    session = _live_session(key)
    stopped = session.clear()
    if any(inj.mode == "playback" for inj in stopped):  # Telnyx plays these itself: `clear` misses them
        runtime().stop_playback(session, everything=True)
    return jsonify({"stopped": len(stopped)})


@bp.get("/stream-log")
def stream_log() -> Response:
    query = schemas.parse(schemas.StreamLogQuery, request.args.to_dict())
    log = runtime().log
    log.flush()
    items, next_id = log.events(call_control_id=query.call_control_id, event=query.event, since=query.since,
                                after_id=query.cursor, limit=query.limit)
    return jsonify({"items": items, "next_cursor": str(next_id) if next_id is not None else None})


@bp.get("/events")
def events() -> Response:
    """The event log live, as Server-Sent Events: from `cursor` or Last-Event-ID, else from now on.

    Under `python app.py` the feed is a stream of the front door and holds no thread; behind
    another WSGI server it holds one of that server's threads for as long as it lasts."""
    query = schemas.parse(schemas.EventsQuery, request.args.to_dict())
    rt = runtime()
    header = request.headers.get("Last-Event-ID")
    after = query.cursor if query.cursor is not None else schemas.last_event_id(header) if header else None
    if after is None:
        after = rt.feed.last_id()
    open_stream = request.environ.get(OPEN_STREAM)
    fallback: list[QueueSink] = []

    def open_sink() -> Sink:
        if open_stream is not None:
            stream: Sink = open_stream()
            return stream
        fallback.append(QueueSink())
        return fallback[0]

    try:
        rt.feed.listen(open_sink, call_control_id=query.call_control_id, event=query.event, after=after)
    except FeedsFull:
        raise ApiError(503, "too_many_feeds", f"All {rt.feed.max_listeners} event feeds are in use (EVENT_FEEDS_MAX); "
                       "try again later.") from None
    first = f"retry: {RETRY_MS}\n\n".encode()
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    body = fallback[0].body(first) if fallback else first
    return Response(body, mimetype="text/event-stream", headers=headers)


@bp.get("/clips")
def clips() -> Response:
    """The media library (MEDIA_DIR): the names an injection's `clip` may take."""
    listed = sources.library(runtime().config.MEDIA_DIR)
    return jsonify({"items": [dataclasses.asdict(clip) for clip in listed]})


@bp.get("/voices")
def voices() -> Response:
    """The voices a `text` injection may name (espeak-ng's language codes)."""
    try:
        names = speech.isolated_engine().voices()
    except AudioError as exc:  # the speech worker could not start
        raise ApiError(503, exc.code, str(exc)) from None
    return jsonify({"items": names})


@bp.get("/callbacks/public-key")
def callback_key() -> Response:
    """The Ed25519 key that signs every callback (streams.callbacks), to verify them with."""
    rt = runtime()
    return jsonify({"public_key": rt.callbacks.public_key, "persistent": rt.callbacks_key_persistent})


@bp.get("/metrics")
def metrics() -> Response:
    return Response(runtime().metrics.render(), mimetype="text/plain; version=0.0.4")


@bp.get("/openapi.json")
def openapi() -> Response:
    """This API described in OpenAPI 3.1, generated from streams.schemas: it needs the API token
    like every route but /health and the webhooks (it maps the whole API)."""
    document = current_app.extensions.get("openapi")
    if document is None:
        document = current_app.extensions["openapi"] = schemas.openapi(current_app, VERSION)
    return jsonify(document)


# -- helpers --------------------------------------------------------------------------------------


def _view(session: CallSession) -> dict[str, Any]:
    """The call as the API shows it, with its levels now; in scaled mode with the node that plays it."""
    view = session.view()
    if session.live:
        view["levels"] = session.levels()
    rt = runtime()
    if rt.cluster is not None:
        view["node"] = rt.node_id
    return view


def _request_fields(json_only: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    if request.mimetype == "multipart/form-data" and not json_only:
        return request.form.to_dict(), request.files.to_dict()
    if request.mimetype not in ("application/json", "") and not request.mimetype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type",
                       "Send application/json" + ("" if json_only else " or multipart/form-data") + ".")
    body = request.get_json(silent=True, force=True)
    if body is None:
        raise ApiError(400, "invalid_json", "The body is not valid JSON.")
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_field", "The body must be a JSON object.")
    return body, {}


def _too_many() -> ApiError:
    limit = runtime().config.MAX_ACTIVE_INJECTIONS
    return ApiError(429, "too_many_injections",
                    f"This call already has {limit} active injections; stop one first.")


def _history(key: str) -> dict[str, Any]:
    log = runtime().log
    log.flush()
    view = log.call(key)
    if view is None:
        raise ApiError(404, "stream_not_found", f"No call or stream {key!r} is known.")
    return view


def _not_active(key: str, status: str) -> ApiError:
    return ApiError(409, "stream_not_active", f"Call {key} is {status}; it takes no more injections.")


def _live_session(key: str) -> CallSession:
    session = runtime().registry.get(key)
    if session is None:
        view = _history(key)
        raise _not_active(key, view.get("status", "ended"))
    if not session.live:
        raise _not_active(key, session.status)
    return session


def _injection(session: CallSession, inj_id: str) -> Injection:
    inj = session.injections.get(inj_id)
    if inj is None:
        raise _injection_not_found(inj_id)
    return inj


def _injection_not_found(inj_id: str) -> ApiError:
    return ApiError(404, "injection_not_found", f"No injection {inj_id!r} on this call.")
