"""Process-wide counters and a frame-lateness histogram, rendered in Prometheus text format."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable

# Upper bounds (seconds) of the lateness histogram: how late a frame left against its deadline.
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32)

HELP = {
    "frames_sent_total": ("counter", "Media frames sent to Telnyx"),
    "frames_late_total": ("counter", "Media clock ticks that ran over a quarter frame late"),
    "frames_skipped_total": ("counter", "Media clock ticks skipped when it resynced after a stall"),
    "frames_received_total": ("counter", "Media frames received from Telnyx"),
    "websocket_errors_total": ("counter", "Malformed or unexpected WebSocket frames, by reason"),
    "webhooks_total": ("counter", "Webhooks by outcome"),
    "telnyx_commands_total": ("counter", "Call Control commands by action and outcome"),
    "injections_total": ("counter", "Injections by final status"),
    "accept_failures_total": ("counter", "Tries to accept a connection that failed for want of descriptors or memory"),
    "stream_auth_refused_total": ("counter", "Media socket upgrades refused for a missing or invalid auth token"),
    "http_refused_total": ("counter", "Requests the front door answered with an error itself (malformed, too large)"),
    "http_timeouts_total": ("counter", "Connections closed because their request did not arrive in time"),
    "websocket_protocol_errors_total": ("counter", "Media sockets closed for breaking RFC 6455"),
    "active_sessions": ("gauge", "Calls with a live session"),
    "active_injections": ("gauge", "Injections created or playing"),
    "frame_lateness_seconds": ("histogram", "Lateness of each media clock tick against its deadline"),
}

Labels = tuple[tuple[str, str], ...]


class Metrics:
    def __init__(self, prefix: str = "mixer_") -> None:
        self.prefix = prefix
        # Guards _counters and the histogram; held only for a dict update.
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, Labels], float] = defaultdict(float)
        self._buckets = [0] * (len(LATENESS_BUCKETS) + 1)
        self._lateness_sum = 0.0
        self._gauges: dict[str, Callable[[], float]] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] += amount

    def observe_lateness(self, seconds: Iterable[float]) -> None:
        with self._lock:
            for s in seconds:
                self._buckets[bisect.bisect_left(LATENESS_BUCKETS, s)] += 1
                self._lateness_sum += s

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        self._gauges[name] = read

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            counters = dict(self._counters)
            buckets = list(self._buckets)
            total = self._lateness_sum
        names = sorted({n for n, _ in counters} | set(self._gauges) | {"frame_lateness_seconds"})
        for name in names:
            kind, text = HELP.get(name, ("counter", name))
            full = self.prefix + name
            lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}"]
            if name in self._gauges:
                lines.append(f"{full} {self._gauges[name]():g}")
            elif kind == "histogram":
                running = 0
                for bound, count in zip((*LATENESS_BUCKETS, float("inf")), buckets, strict=True):
                    running += count
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    lines.append(f'{full}_bucket{{le="{le}"}} {running}')
                lines += [f"{full}_sum {total:.6f}", f"{full}_count {running}"]
            else:
                for (n, labels), value in sorted(counters.items()):
                    if n == name:
                        lines.append(f"{full}{_labels(labels)} {value:g}")
        return "\n".join(lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
