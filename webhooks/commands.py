"""Call Control commands through the official telnyx SDK, run off the request thread.

Webhooks must be answered within 2 s, so commands go to a small pool; the commands of one call
run one after the other, in the order they were submitted (a playback_stop must not overtake the
playback_start it stops, even while the SDK retries that one). Every command carries a
`command_id`: the SDK retries POSTs on 408/409/429/5xx and timeouts, and Telnyx ignores a
repeated command_id for the same call, so retries are safe. Each outcome is an event on the call.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import telnyx

from eventlog import EventLog
from metrics import Metrics

logger = logging.getLogger(__name__)

Done = Callable[[bool, str | None], None]


class CallCommands:
    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        timeout_s: float,
        max_retries: int,
        log: EventLog,
        metrics: Metrics,
        workers: int = 8,
    ) -> None:
        self._log = log
        self._metrics = metrics
        self._has_key = bool(api_key)
        self._client = telnyx.Telnyx(
            api_key=api_key or "missing",
            base_url=base_url or None,
            timeout=timeout_s,
            max_retries=max_retries,
        )
        actions = self._client.calls.actions
        self._methods: dict[str, Callable[..., Any]] = {
            "answer": actions.answer,
            "streaming_start": actions.start_streaming,
            "streaming_stop": actions.stop_streaming,
            "playback_start": actions.start_playback,
            "playback_stop": actions.stop_playback,
            "hangup": actions.hangup,
        }
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="telnyx-command")
        # Guards _queues and _closed. A call has a queue while one pool thread drains it.
        self._lock = threading.Lock()
        self._queues: dict[str, deque[tuple[Future[bool], Callable[[], bool]]]] = {}
        self._closed = False

    def submit(
        self,
        action: str,
        call_control_id: str,
        *,
        command_id: str,
        on_done: Done | None = None,
        **params: Any,
    ) -> Future[bool]:
        future: Future[bool] = Future()
        job = functools.partial(self.run, action, call_control_id, command_id=command_id, on_done=on_done, **params)
        with self._lock:
            queue = self._queues.get(call_control_id)
            if queue is not None:  # its drainer takes it after the ones before it
                queue.append((future, job))
                return future
            self._queues[call_control_id] = deque([(future, job)])
        self._pool.submit(self._drain, call_control_id)
        return future

    def _drain(self, call_control_id: str) -> None:
        """Run the call's commands in order until its queue is empty (on a pool thread)."""
        while True:
            with self._lock:
                queue = self._queues[call_control_id]
                if not queue or self._closed:
                    del self._queues[call_control_id]
                    dropped = list(queue)
                    break
                future, job = queue.popleft()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(job())
                except BaseException as exc:
                    future.set_exception(exc)
        for future, _ in dropped:  # closing: queued commands are dropped
            future.cancel()

    def run(
        self,
        action: str,
        call_control_id: str,
        *,
        command_id: str,
        on_done: Done | None = None,
        **params: Any,
    ) -> bool:
        shown = {k: ("***" if "token" in k else v) for k, v in params.items()}
        self._log.record("command.sent", call_control_id, action=action, command_id=command_id,
                         params=shown)
        error: str | None = None
        if not self._has_key:
            error = "TELNYX_API_KEY is not set; Telnyx commands cannot be sent"
        else:
            try:
                self._methods[action](call_control_id, command_id=command_id, **params)
            except telnyx.APIStatusError as exc:
                error = f"Telnyx answered {exc.status_code}: {_describe(exc.body)}"
            except telnyx.APIError as exc:
                error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a failure here must still reach the log and on_done
                logger.exception("[%s] %s raised", call_control_id, action)
                error = f"{type(exc).__name__}: {exc}"
        ok = error is None
        self._metrics.inc("telnyx_commands_total", action=action, outcome="ok" if ok else "failed")
        if ok:
            self._log.record("command.ok", call_control_id, action=action, command_id=command_id)
        else:
            logger.error("[%s] %s failed: %s", call_control_id, action, error)
            self._log.record("command.failed", call_control_id, action=action,
                             command_id=command_id, error=error)
        if on_done is not None:
            on_done(ok, error)
        return ok

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()


def _describe(body: object) -> str:
    """Telnyx errors come as {"errors": [{"code", "title", "detail"}]}."""
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
        first = body["errors"][0]
        if isinstance(first, dict):
            return f"{first.get('code')} {first.get('title')}: {first.get('detail')}"
    return str(body)[:300]
