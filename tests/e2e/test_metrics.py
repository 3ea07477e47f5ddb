"""/metrics through prometheus-client: every metric declared once and exported from zero, typos
refused, process metrics and build info beside ours, one registry per app; bench_load reads the
media clock counters under the old names and the new."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.bench_load import server_counters
from metrics import METRICS, Metrics

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(got: Samples, name: str, **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


def test_every_metric_is_there_from_zero_with_its_known_labels(server):
    response = server.http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    got = samples(response.text)
    for outcome in ("handled", "ignored", "duplicate", "invalid", "invalid_json", "bad_signature"):
        assert sample(got, "mixer_webhooks_total", outcome=outcome) == 0
    for reason in ("missing", "invalid"):
        assert sample(got, "mixer_stream_auth_refused_total", reason=reason) == 0
    for status in ("finished", "stopped", "failed"):
        assert sample(got, "mixer_injections_total", status=status) == 0
    assert sample(got, "mixer_telnyx_commands_total", action="streaming_start", outcome="failed") == 0
    for name in ("frames_sent_total", "frames_received_total", "clock_ticks_late_total", "clock_ticks_skipped_total",
                 "accept_failures_total", "http_refused_total", "http_timeouts_total",
                 "websocket_protocol_errors_total", "active_sessions", "active_injections",
                 "clock_tick_lateness_seconds_count"):
        assert sample(got, f"mixer_{name}") == 0, name
    assert sample(got, "mixer_clock_tick_lateness_seconds_bucket", le="+Inf") == 0
    version = server.http.get("/health").json()["version"]
    assert sample(got, "mixer_build_info", version=version) == 1
    assert sample(got, "process_resident_memory_bytes") > 0 and sample(got, "process_cpu_seconds_total") > 0
    families = {f.name for f in text_string_to_metric_families(response.text)}
    assert all(name.startswith(("mixer_", "process_")) for name in families), families
    # Named for what they count: the media clock's ticks, not frames.
    for old in ("mixer_frames_late_total", "mixer_frames_skipped_total", "mixer_frame_lateness_seconds"):
        assert old not in response.text


def test_every_declared_metric_is_exported_with_its_kind():
    families = {f.name: f.type for f in text_string_to_metric_families(Metrics().render())}
    for name, spec in METRICS.items():
        exported = "mixer_" + name.removesuffix("_total")  # the parser names a counter's family without _total
        assert families.get(exported) == spec.kind, name
    assert families["mixer_build_info"] == "gauge"  # an Info, in the 0.0.4 text format


def test_a_typo_raises_instead_of_making_a_new_series():
    metrics = Metrics()
    with pytest.raises(ValueError, match=r"^metric 'frame_sent_total' is not declared"):
        metrics.inc("frame_sent_total")
    with pytest.raises(ValueError, match=r"^metric 'webhooks_total': outcome='handeld' is not declared"):
        metrics.inc("webhooks_total", outcome="handeld")
    with pytest.raises(ValueError, match=r"^metric 'webhooks_total' takes labels \['outcome'\], not \[\]"):
        metrics.inc("webhooks_total")
    with pytest.raises(ValueError, match=r"^metric 'webhooks_total' takes labels \['outcome'\], not \['outcom'\]"):
        metrics.inc("webhooks_total", outcom="handled")
    with pytest.raises(ValueError, match=r"^metric 'http_refused_total' is a counter read from a function"):
        metrics.inc("http_refused_total")
    with pytest.raises(ValueError, match=r"^metric 'active_sesions' is not declared"):
        metrics.gauge("active_sesions", lambda: 1)
    with pytest.raises(ValueError, match=r"^metric 'webhooks_total' is a counter counted by inc\(\)"):
        metrics.gauge("webhooks_total", lambda: 1)
    text = metrics.render()
    assert "handeld" not in text and "frame_sent" not in text and "outcom=" not in text


def test_counting_reading_and_the_histogram():
    metrics = Metrics(version="9.9.9")
    metrics.inc("webhooks_total", outcome="handled")
    metrics.inc("webhooks_total", 2, outcome="handled")
    metrics.inc("telnyx_commands_total", outcome="ok", action="answer")  # label order does not matter
    metrics.inc("telnyx_commands_total", action="answer", outcome="ok")
    metrics.inc("frames_sent_total", 160)
    metrics.observe_lateness([0.0005, 0.003, 0.5])
    metrics.gauge("active_sessions", lambda: 4)
    metrics.gauge("http_refused_total", lambda: 7)
    got = samples(metrics.render())
    assert sample(got, "mixer_webhooks_total", outcome="handled") == 3 == metrics.value("webhooks_total",
                                                                                        outcome="handled")
    assert sample(got, "mixer_telnyx_commands_total", action="answer", outcome="ok") == 2
    assert sample(got, "mixer_frames_sent_total") == 160
    assert sample(got, "mixer_active_sessions") == 4 == metrics.value("active_sessions")
    assert sample(got, "mixer_http_refused_total") == 7
    assert sample(got, "mixer_clock_tick_lateness_seconds_bucket", le="0.001") == 1
    assert sample(got, "mixer_clock_tick_lateness_seconds_bucket", le="0.005") == 2
    assert sample(got, "mixer_clock_tick_lateness_seconds_bucket", le="0.32") == 2
    assert sample(got, "mixer_clock_tick_lateness_seconds_count") == 3
    assert sample(got, "mixer_clock_tick_lateness_seconds_sum") == pytest.approx(0.5035)
    assert sample(got, "mixer_build_info", version="9.9.9") == 1
    assert not any(name.endswith("_created") for name, _ in got)


def test_each_metrics_has_its_own_registry():
    first, second = Metrics(version="1"), Metrics(version="2")
    first.inc("injections_total", status="finished")
    assert first.value("injections_total", status="finished") == 1
    assert second.value("injections_total", status="finished") == 0
    assert 'mixer_build_info{version="2"}' in second.render() and 'version="1"' not in second.render()


def test_bench_load_reads_the_old_names_and_the_new():
    old = ("# HELP mixer_frames_sent_total Media frames sent to Telnyx\n# TYPE mixer_frames_sent_total counter\n"
           "mixer_frames_sent_total 1200\nmixer_frames_late_total 3\nmixer_frames_skipped_total 2\n"
           'mixer_frame_lateness_seconds_bucket{le="0.001"} 50\n')
    new = Metrics()
    new.inc("frames_sent_total", 1200)
    new.inc("clock_ticks_late_total", 3)
    new.inc("clock_ticks_skipped_total", 2)
    expected = {"frames_sent": 1200.0, "ticks_late": 3.0, "ticks_skipped": 2.0}
    assert server_counters(old) == expected
    assert server_counters(new.render()) == expected
