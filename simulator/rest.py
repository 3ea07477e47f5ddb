"""The Call Control REST fake: `POST /v2/calls/{id}/actions/{action}` on loopback.

Served by werkzeug's threaded server so that a slow (fault-injected) answer does not hold up
other requests. Every request is recorded, including retries and rejected ones. The order of
checks: auth (401), JSON (400), injected fault, body validation (422 10015), call known
(422 90015), call alive (422 90018), command_id seen in the last 60 s (200, not executed),
call answered where needed (422 90034), then the action itself.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from simulator.validation import SCHEMAS, ValidationFailed, validate

logger = logging.getLogger(__name__)

RATE_LIMIT_BODY: dict[str, Any] = {"errors": [{"code": "10011", "title": "Too many requests",
                               "detail": "You have exceeded the maximum number of allowed requests."}]}


class CommandRejected(Exception):
    """A Telnyx error answer: HTTP status plus one entry of the `errors` array."""

    def __init__(self, status: int, code: str, title: str, detail: str, pointer: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error: dict[str, Any] = {"code": code, "title": title, "detail": detail}
        if pointer is not None:
            self.error["source"] = {"pointer": pointer}


@dataclass(frozen=True)
class RecordedCommand:
    action: str
    call_control_id: str
    body: dict[str, Any]
    headers: dict[str, str]
    status: int
    executed: bool
    response: dict[str, Any]
    at: float = field(default_factory=time.monotonic)

    @property
    def command_id(self) -> str | None:
        value = self.body.get("command_id")
        return value if isinstance(value, str) else None


@dataclass
class Fault:
    action: str  # "*" matches every action
    status: int
    times: int
    delay_s: float


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


Executor = Callable[[str, str, dict[str, Any]], bool]


class RestFake:
    """HTTP layer only; `execute(action, call_control_id, body) -> executed?` does the work."""

    def __init__(self, api_key: str, execute: Executor, *, host: str = "127.0.0.1", port: int = 0,
                 dedupe_window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.api_key = api_key
        self._execute = execute
        self._host, self._port = host, port
        self._dedupe_window_s = dedupe_window_s
        self._clock = clock
        self._lock = threading.Lock()  # guards _faults, _seen and _commands
        self._faults: list[Fault] = []
        self._seen: dict[tuple[str, str], float] = {}
        self._commands: list[RecordedCommand] = []
        self._stopping = threading.Event()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._urls = Map([Rule("/v2/calls/<path:call_control_id>/actions/<action>", endpoint="action",
                               methods=["POST"])])

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._server = make_server(self._host, self._port, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self._server.daemon_threads = True  # type: ignore[attr-defined]
        # A short poll interval keeps stop() quick (shutdown waits for the next poll).
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="sim-rest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def port(self) -> int:
        assert self._server is not None, "RestFake not started"
        return int(self._server.server_port)

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}/v2"

    # ---- test controls ---------------------------------------------------------------------

    @property
    def commands(self) -> list[RecordedCommand]:
        with self._lock:
            return list(self._commands)

    def fail_next(self, action: str, status: int = 500, times: int = 1, delay_s: float = 0.0) -> None:
        """The next `times` requests for `action` ("*" = any) answer `status` after `delay_s`.

        A status below 400 with a delay is a slow success: the command runs, the answer comes
        late (a client timeout followed by a retry with the same command_id is then deduped).
        """
        with self._lock:
            self._faults.append(Fault(action, status, times, delay_s))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _take_fault(self, action: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.action in (action, "*"):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # ---- request handling ------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        response = self._dispatch(request)
        return response(environ, start_response)

    def _dispatch(self, request: Request) -> Response:
        adapter = self._urls.bind_to_environ(request.environ)
        try:
            _endpoint, args = adapter.match()
        except HTTPException:
            return _json(404, {"errors": [{"code": "10005", "title": "Resource not found",
                                           "detail": f"No route for {request.method} {request.path}."}]})
        action, ccid = str(args["action"]), str(args["call_control_id"])
        # Lower-case names: HTTP header names are case-insensitive, lookups should not be.
        headers = {k.lower(): v for k, v in request.headers.items()}
        raw = request.get_data(as_text=True)
        try:
            body: Any = json.loads(raw) if raw.strip() else {}
        except ValueError:
            body = None
        status, payload, executed = self._handle(action, ccid, request.headers.get("Authorization"), body)
        with self._lock:
            self._commands.append(RecordedCommand(action, ccid, body if isinstance(body, dict) else {"_raw": raw},
                                                  headers, status, executed, payload))
        response = _json(status, payload)
        if status == 429:
            response.headers["x-ratelimit-limit"] = "100"
            response.headers["x-ratelimit-remaining"] = "0"
            response.headers["x-ratelimit-reset"] = "1"
        return response

    def _handle(self, action: str, ccid: str, auth: str | None, body: Any) -> tuple[int, dict[str, Any], bool]:
        if auth != f"Bearer {self.api_key}":
            return 401, {"errors": [{"code": "10009", "title": "Authentication failed",
                                     "detail": "The API key is missing or invalid."}]}, False
        if body is None:
            return 400, {"errors": [{"code": "10015", "title": "Bad Request",
                                     "detail": "The request body is not valid JSON."}]}, False
        if action not in SCHEMAS:
            return 404, {"errors": [{"code": "10005", "title": "Resource not found",
                                     "detail": f"Unknown call action '{action}'."}]}, False
        fault = self._take_fault(action)
        if fault is not None and fault.status >= 400:
            self._stopping.wait(fault.delay_s)
            payload: dict[str, Any] = RATE_LIMIT_BODY if fault.status == 429 else {
                "errors": [{"code": "10007", "title": "Unexpected error",
                            "detail": f"Injected fault: HTTP {fault.status}."}]}
            return fault.status, payload, False
        executed = False
        try:
            validate(action, body)
            executed = self._run(action, ccid, body)
            status, payload = 200, {"data": {"result": "ok"}}
        except ValidationFailed as exc:
            error: dict[str, Any] = {"code": "10015", "title": "Bad Request", "detail": exc.detail}
            if exc.field:
                error["source"] = {"pointer": f"/{exc.field}"}
            status, payload = 422, {"errors": [error]}
        except CommandRejected as exc:
            status, payload = exc.status, {"errors": [exc.error]}
        if fault is not None and fault.delay_s > 0:
            self._stopping.wait(fault.delay_s)
        return status, payload, executed

    def _run(self, action: str, ccid: str, body: dict[str, Any]) -> bool:
        command_id = body.get("command_id")
        if isinstance(command_id, str):
            key = (ccid, command_id)
            now = self._clock()
            with self._lock:
                self._seen = {k: t for k, t in self._seen.items() if now - t < self._dedupe_window_s}
                if key in self._seen:
                    return False  # Telnyx ignores a repeated command_id for the same call
                # Claimed before running so that a concurrent retry cannot run it twice.
                self._seen[key] = now
            try:
                return self._execute(action, ccid, body)
            except CommandRejected:
                with self._lock:
                    self._seen.pop(key, None)
                raise
        return self._execute(action, ccid, body)


def _json(status: int, payload: dict[str, Any]) -> Response:
    return Response(json.dumps(payload), status=status, content_type="application/json")
