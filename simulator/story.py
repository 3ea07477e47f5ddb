"""A scripted call against a running server: place it, inject sounds over the server's REST API,
hang up, and summarise what the caller heard. Used by `python -m simulator call` and `demo`."""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf

from simulator.audio import CallerAudio, Int16Array, wav_bytes
from simulator.fake import FakeTelnyx, SimCall

logger = logging.getLogger(__name__)

# Audio arriving up to this long after the previous chunk ran out is a late frame (a hole the
# caller hears); longer gaps are the server idling between injections.
HOLE_LIMIT_S = 0.1


@dataclass(frozen=True)
class Step:
    """kind: "inject" (body = injection JSON), "clear", "caller_dtmf" (body = {"digits"}), "wait"."""

    kind: str
    body: dict[str, Any] = field(default_factory=dict)
    wait_s: float = 0.0
    label: str = ""


@dataclass
class Summary:
    call_control_id: str = ""
    stream_id: str | None = None
    media_messages: int = 0
    audio_seconds: float = 0.0
    late_frames: int = 0
    worst_hole_ms: float = 0.0
    peak_dbfs: float = float("-inf")
    rms_dbfs: float = float("-inf")
    marks: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    responses: list[tuple[str, int, Any]] = field(default_factory=list)
    webhooks: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"call {self.call_control_id}  stream {self.stream_id}",
               f"media messages received from the app: {self.media_messages} ({self.audio_seconds:.2f} s of audio)",
               f"late frames (holes < {HOLE_LIMIT_S * 1000:.0f} ms in the playout): {self.late_frames}"
               f" (worst {self.worst_hole_ms:.1f} ms)",
               f"heard level: peak {self.peak_dbfs:.1f} dBFS, rms {self.rms_dbfs:.1f} dBFS",
               f"marks echoed: {len(self.marks)} {self.marks[:8]}{' …' if len(self.marks) > 8 else ''}",
               f"error frames sent to the app: {len(self.errors)}",
               "webhooks: " + ", ".join(f"{k}={v}" for k, v in sorted(self.webhooks.items()))]
        for label, status, body in self.responses:
            out.append(f"  {label}: HTTP {status} {_short(body)}")
        return out


def _short(body: Any) -> str:
    if isinstance(body, dict) and "id" in body:
        return f"id={body['id']} status={body.get('status')}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return f"{body['error'].get('code')}: {body['error'].get('message')}"
    text = str(body)
    return text if len(text) <= 160 else text[:157] + "..."


def dbfs(x: float) -> float:
    return 20 * float(np.log10(x)) if x > 0 else float("-inf")


def summarize(call: SimCall, fake: FakeTelnyx, responses: list[tuple[str, int, Any]]) -> Summary:
    heard = call.heard_pcm().astype(np.float64) / 32768
    params = call.stream_params
    rate = params.playout_rate if params else 8000
    bps = 2 if params is not None and params.playout_encoding == "L16" else 1
    late, worst, end = 0, 0.0, None
    total = 0.0
    for arrival, payload in call.received:
        duration = len(payload) / bps / rate
        total += duration
        if end is not None and 0 < arrival - end < HOLE_LIMIT_S:
            late += 1
            worst = max(worst, arrival - end)
        end = max(end or arrival, arrival) + duration
    webhooks: dict[str, int] = {}
    for d in fake.deliveries:
        if d.call_control_id == call.call_control_id:
            key = f"{d.event_type}:{d.status}"
            webhooks[key] = webhooks.get(key, 0) + 1
    return Summary(call_control_id=call.call_control_id, stream_id=call.stream_id, media_messages=len(call.received),
                   audio_seconds=total, late_frames=late, worst_hole_ms=worst * 1000,
                   peak_dbfs=dbfs(float(np.abs(heard).max())) if len(heard) else float("-inf"),
                   rms_dbfs=dbfs(float(np.sqrt(np.mean(heard ** 2)))) if len(heard) else float("-inf"),
                   marks=call.marks_echoed, errors=call.errors_sent, responses=responses, webhooks=webhooks)


def run_story(fake: FakeTelnyx, server: str, steps: list[Step], *, caller_audio: CallerAudio,
              api_token: str | None = None, stream_timeout_s: float = 15.0) -> tuple[SimCall, Summary]:
    """Place a call to `server` (its webhooks at /webhooks/voice), play `steps`, hang up."""
    server = server.rstrip("/")
    fake.webhook_url = f"{server}/webhooks/voice"
    headers = {"Authorization": f"Bearer {api_token}"} if api_token else {}
    responses: list[tuple[str, int, Any]] = []
    call = fake.place_call(caller_audio=caller_audio)
    call.wait_streaming(stream_timeout_s)
    base = f"{server}/streams/{call.call_control_id}"
    with httpx.Client(timeout=30, trust_env=False, headers=headers) as http:
        for step in steps:
            label = step.label or step.kind
            if step.kind == "inject":
                r = http.post(f"{base}/inject", json=step.body)
                responses.append((label, r.status_code, _json(r)))
            elif step.kind == "clear":
                r = http.post(f"{base}/clear")
                responses.append((label, r.status_code, _json(r)))
            elif step.kind == "caller_dtmf":
                call.send_dtmf(str(step.body["digits"]))
            time.sleep(step.wait_s)
    call.hangup()
    fake.wait_webhooks_idle(10)
    return call, summarize(call, fake, responses)


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        return r.text


def chord_music(sample_rate: int = 16000, seconds_per_chord: float = 1.0, level_dbfs: float = -9.0) -> bytes:
    """A few bars of synthetic chords (I-vi-IV-V in C) as WAV bytes, loop-friendly."""
    chords = [(261.63, 329.63, 392.00), (220.00, 261.63, 329.63), (174.61, 220.00, 261.63), (196.00, 246.94, 293.66)]
    n = round(seconds_per_chord * sample_rate)
    t = np.arange(n) / sample_rate
    envelope = np.minimum(1.0, t / 0.03) * np.exp(-1.2 * t)  # soft attack, piano-like decay
    bars = []
    for chord in chords:
        tone = sum(np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t) + 0.1 * np.sin(6 * np.pi * f * t)
                   for f in chord)
        bass = 0.8 * np.sin(np.pi * chord[0] * t)
        bars.append((np.asarray(tone) + bass) * envelope)
    music = np.concatenate(bars)
    music *= 10 ** (level_dbfs / 20) / np.abs(music).max()
    return wav_bytes(np.rint(music * 32767).astype(np.int16), sample_rate)


def demo_steps() -> list[Step]:
    music = base64.b64encode(chord_music()).decode()
    return [
        Step("inject", {"audio_base64": music, "loop": True, "duck": True, "gain_db": -6, "label": "music"},
             wait_s=6.0, label="music (looped, ducked under the caller)"),
        Step("inject", {"tone": {"frequency_hz": 440, "duration_ms": 1000, "level_dbfs": -6}, "label": "beep"},
             wait_s=1.5, label="tone 440 Hz"),
        Step("inject", {"dtmf": "123#", "label": "digits"}, wait_s=1.5, label="dtmf 123#"),
        Step("caller_dtmf", {"digits": "5"}, wait_s=0.2, label="caller presses 5"),
        Step("inject", {"text": "Hello, this is the custom audio mixer speaking.", "label": "speech"},
             wait_s=3.5, label="text to speech"),
        Step("clear", wait_s=1.0, label="clear"),
    ]


def write_outputs(call: SimCall, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    wav = call.save_wav(out_dir / "mix.wav")
    png = plot_mix(call.heard_pcm(), call.caller_pcm(), call.sample_rate, out_dir / "mix.png")
    return wav, png


def plot_mix(heard: Int16Array, caller: Int16Array, rate: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(12, 8), sharex=True)
    t_heard = np.arange(len(heard)) / rate
    t_caller = np.arange(len(caller)) / rate
    axes[0].plot(t_caller, caller / 32768, lw=0.4, color="tab:gray")
    axes[0].set_ylabel("caller said")
    axes[1].plot(t_heard, heard / 32768, lw=0.4, color="tab:blue")
    axes[1].set_ylabel("caller heard")
    for ax in axes[:2]:
        ax.set_ylim(-1, 1)
    if len(heard) > 256:
        with np.errstate(divide="ignore"):  # digital silence has no finite dB value
            axes[2].specgram(heard.astype(np.float64) / 32768, NFFT=256, Fs=rate, noverlap=192, cmap="magma")
    axes[2].set_ylabel("Hz")
    axes[2].set_xlabel("seconds since the stream started")
    fig.suptitle("What the caller heard")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_caller(call: SimCall, path: Path) -> None:
    sf.write(path, call.caller_pcm(), call.stream_params.media_rate if call.stream_params else 8000)
