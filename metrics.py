"""/metrics: every metric of the server, declared once in METRICS, exported by prometheus-client.

Callers name a metric as declared here (`inc("webhooks_total", outcome="handled")`); a name, a
label or a label value that is not declared raises ValueError instead of starting a new series,
so a typo fails its test rather than hiding in a counter nobody reads. Every declared label value
is exported from zero, so a rate over `outcome="bad_signature"` exists before the first one.

Each Metrics owns its CollectorRegistry (tests build many apps in one process), with the process
collector (`process_*`) and `mixer_build_info{version}` beside the server's own metrics.

The media path stays cheap: callers batch (the clock reports once per tick, the socket every
REPORT_FRAMES_EVERY frames), and inc() finds its prometheus child in a dict keyed by the call's
own arguments, so only the first call with a given label set pays for `labels()` and the checks.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import accumulate, product
from typing import Literal

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# `*_created` series (the time each counter child was made) double the output and nobody here
# reads them; prometheus-client keeps this switch process-wide.
disable_created_metrics()

Kind = Literal["counter", "gauge", "histogram"]

# The error codes POST /streams/<id>/inject can answer with (docs/api.md, Errors), for
# injections_rejected_total; any other is counted as "other".
REJECTION_CODES = (
    "invalid_json", "unsupported_media_type", "payload_too_large", "unknown_field", "invalid_field", "out_of_range",
    "missing_source", "multiple_sources", "undecodable_audio", "audio_too_long", "unknown_clip", "unknown_voice",
    "speech_unavailable", "audio_url_forbidden", "audio_url_too_large", "audio_url_unreachable", "audio_url_timeout",
    "audio_url_failed", "callback_url_forbidden", "too_many_injections", "stream_not_found", "stream_not_active",
    "unauthorized", "database_unavailable", "cluster_unavailable", "internal_error", "other",
)

# Upper bounds (seconds) of the lateness histogram: how late a media clock tick ran against its deadline.
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32)


@dataclass(frozen=True)
class Declared:
    kind: Kind
    help: str
    # Each label and every value it takes; every combination is exported from zero.
    labels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Counted elsewhere (e.g. by the front door) and read through gauge(name, read) at scrape time.
    read: bool = False


def _counter(text: str, **labels: tuple[str, ...]) -> Declared:
    return Declared("counter", text, labels)


def _read_counter(text: str) -> Declared:
    return Declared("counter", text, read=True)


# Names as callers give them; exported with the "mixer_" prefix. Counters end in _total.
METRICS: dict[str, Declared] = {
    "frames_sent_total": _counter("Media frames sent to Telnyx, all calls together"),
    "frames_received_total": _counter("Media frames received from Telnyx"),
    # One media clock ticks for every call at once: these count ticks, not frames.
    "clock_ticks_late_total": _counter("Media clock ticks that ran over a quarter frame late"),
    "clock_ticks_skipped_total": _counter("Media clock tick slots given up when it resynced after a stall"),
    "clock_tick_lateness_seconds": Declared("histogram", "Lateness of each media clock tick against its deadline"),
    "websocket_errors_total": _counter(
        "Malformed or unexpected WebSocket frames, by reason",
        reason=("malformed_frame", "wrong_call", "unexpected_start", "stream_not_active", "unsupported_codec",
                "telnyx_error", "undecodable_media")),
    "webhooks_total": _counter(
        "Webhooks by outcome",
        outcome=("handled", "ignored", "duplicate", "invalid", "invalid_json", "bad_signature")),
    "telnyx_commands_total": _counter(
        "Call Control commands by action and outcome",
        action=("answer", "streaming_start", "streaming_stop", "playback_start", "playback_stop", "hangup"),
        outcome=("ok", "failed")),
    "injections_total": _counter("Injections by final status", status=("finished", "stopped", "failed")),
    "injections_rejected_total": _counter("POST /streams/<id>/inject answered with an error, by its code "
                                          "(other: a code not listed here)", code=REJECTION_CODES),
    "stream_auth_refused_total": _counter("Media socket upgrades refused for a missing or invalid auth token",
                                          reason=("missing", "invalid")),
    "accept_failures_total": _read_counter("Tries to accept a connection that failed for want of descriptors "
                                           "or memory"),
    "http_refused_total": _read_counter("Requests the front door answered with an error itself "
                                        "(malformed, too large)"),
    "http_timeouts_total": _read_counter("Connections closed because their request did not arrive in time"),
    "websocket_protocol_errors_total": _read_counter("Media sockets closed for breaking RFC 6455"),
    "events_dropped_total": _read_counter("Event log rows dropped because more than the bound waited while the "
                                          "database could not be written"),
    "recording_gaps_total": _counter("Holes in recordings: frames dropped because the disk did not keep up"),
    "recording_frames_dropped_total": _counter("Recorded frames dropped because the recording buffer was full"),
    "recording_frames_late_total": _counter("Caller frames that arrived too late for their place in the recording"),
    "active_sessions": Declared("gauge", "Calls with a live session"),
    "active_injections": Declared("gauge", "Injections created or playing"),
}


class Metrics:
    def __init__(self, prefix: str = "mixer_", *, version: str = "unknown", node: str | None = None) -> None:
        # Scaled mode: every sample carries the node it came from (see render).
        self.node = node
        self.prefix = prefix
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        Info(f"{prefix}build", "The running server", registry=self.registry).info({"version": version})
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._read = _ReadCounters(prefix)
        self._lateness: _Lateness | None = None
        for name, spec in METRICS.items():
            full = prefix + name
            labelnames = tuple(spec.labels)
            if spec.kind == "counter" and spec.read:
                self._read.declare(name, spec.help)
            elif spec.kind == "counter":
                counter = Counter(full, spec.help, labelnames, registry=self.registry)
                if labelnames:
                    for values in product(*spec.labels.values()):
                        counter.labels(*values)  # present from zero
                self._counters[name] = counter
            elif spec.kind == "gauge":
                self._gauges[name] = Gauge(full, spec.help, registry=self.registry)
            else:
                self._lateness = _Lateness(full, spec.help)
                self.registry.register(self._lateness)
        self.registry.register(self._read)
        # (name, *labels.items()) as inc() was called -> the inc of the prometheus child it counts
        # into. Plain dict reads and writes are atomic; two threads missing at once resolve the same child.
        self._incs: dict[object, Callable[[float], None]] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, *labels.items()) if labels else name
        inc = self._incs.get(key)
        if inc is None:
            inc = self._incs[key] = self._child(name, labels).inc
        inc(amount)

    def observe_lateness(self, seconds: Iterable[float]) -> None:
        """One observation per media clock tick: how late it ran against its deadline."""
        assert self._lateness is not None
        self._lateness.observe(seconds)

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """Export `read()` at each scrape: a declared gauge, or a counter counted elsewhere."""
        spec = _declared(name)
        if spec.kind == "gauge":
            self._gauges[name].set_function(read)
        elif spec.read:
            self._read.set(name, read)
        else:
            raise ValueError(f"metric {name!r} is a {spec.kind} counted by inc(), not read from a function")

    def value(self, name: str, **labels: str) -> float:
        """The current value of a counter or gauge sample (0 if it has none yet)."""
        value = self.registry.get_sample_value(self.prefix + name, {k: str(v) for k, v in labels.items()})
        return value if value is not None else 0.0

    def render(self) -> str:
        if self.node is None:
            return generate_latest(self.registry).decode()
        return generate_latest(_Labelled(self.registry, {"node": self.node})).decode()

    def _child(self, name: str, labels: Mapping[str, str]) -> Counter:
        spec = _declared(name)
        counter = self._counters.get(name)
        if counter is None:
            raise ValueError(f"metric {name!r} is a {'counter read from a function' if spec.read else spec.kind}, "
                             "not counted by inc()")
        if set(labels) != set(spec.labels):
            raise ValueError(f"metric {name!r} takes labels {sorted(spec.labels)}, not {sorted(labels)}")
        for label, value in labels.items():
            if value not in spec.labels[label]:
                raise ValueError(f"metric {name!r}: {label}={value!r} is not declared; add it to METRICS in "
                                 "metrics.py")
        return counter.labels(**labels) if labels else counter


def _declared(name: str) -> Declared:
    spec = METRICS.get(name)
    if spec is None:
        raise ValueError(f"metric {name!r} is not declared; declare it in METRICS in metrics.py")
    return spec


class _Labelled:
    """A registry's metrics with `labels` added to every sample."""

    def __init__(self, registry: CollectorRegistry, labels: Mapping[str, str]) -> None:
        self._registry = registry
        self._labels = labels

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            metric.samples = [s._replace(labels={**s.labels, **self._labels}) for s in metric.samples]
            yield metric


class _ReadCounters(Collector):
    """Counters kept by someone else (the front door's accept and refusal counts), read at scrape time;
    0 until a reader is set (e.g. an app served without the front door)."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._help: dict[str, str] = {}
        self._readers: dict[str, Callable[[], float]] = {}

    def declare(self, name: str, text: str) -> None:
        self._help[name] = text

    def set(self, name: str, read: Callable[[], float]) -> None:
        self._readers[name] = read

    def collect(self) -> Iterator[Metric]:
        for name, text in self._help.items():
            read = self._readers.get(name)
            yield CounterMetricFamily(self._prefix + name, text, value=float(read()) if read else 0.0)

    def describe(self) -> Iterator[Metric]:
        for name, text in self._help.items():
            yield CounterMetricFamily(self._prefix + name, text)


class _Lateness(Collector):
    """The media clock's lateness histogram, kept as bucket counts and exported as a histogram.

    The clock adds each tick after the tick (registry._report_clock): one lock and a bisect per
    batch here, where prometheus-client's Histogram.observe takes two locks and scans the bounds
    for every value, twice the cost.
    """

    def __init__(self, name: str, text: str) -> None:
        self._name, self._text = name, text
        # Guards _counts and _sum: the ticking thread adds, a scrape copies.
        self._lock = threading.Lock()
        self._counts = [0] * (len(LATENESS_BUCKETS) + 1)  # per bucket, not cumulative; the last is +Inf
        self._sum = 0.0

    def observe(self, seconds: Iterable[float]) -> None:
        counts, bounds = self._counts, LATENESS_BUCKETS
        with self._lock:
            for s in seconds:
                counts[bisect.bisect_left(bounds, s)] += 1  # bisect_left: s == bound falls in `le` bound
                self._sum += s

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        bounds = [*(f"{b:g}" for b in LATENESS_BUCKETS), "+Inf"]
        yield HistogramMetricFamily(self._name, self._text, buckets=list(zip(bounds, accumulate(counts), strict=True)),
                                    sum_value=total)

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._text)
