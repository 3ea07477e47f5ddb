"""A scripted call against a running server: place it, inject sounds over the server's REST API,
hang up, summarise what the caller heard and draw it with what happened when. Used by
`python -m simulator call` and `demo`."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf

from simulator import wideband
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


@dataclass(frozen=True)
class Moment:
    """A step as it happened, in seconds on the playout timeline (0 = the stream's first `start`).

    An injection's `end_s` is where its audio ended: the position of its mark (the server names
    the mark after the injection), else the next clear; None if neither came before the hangup.
    """

    label: str
    kind: str
    start_s: float  # when the step was taken (the request went out)
    injection_id: str | None = None
    duration_s: float | None = None  # an injection's length, if it has one (not looped)
    end_s: float | None = None
    ducked: bool = False  # an injection asked to be lowered while the caller speaks

    @property
    def heard_from_s(self) -> float:
        """Where an injection's audio began: its end less its length (text is heard after synthesis)."""
        if self.end_s is not None and self.duration_s is not None:
            return max(self.start_s, self.end_s - self.duration_s)
        return self.start_s


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
    moments: list[Moment] = field(default_factory=list)

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


def summarize(call: SimCall, fake: FakeTelnyx, responses: list[tuple[str, int, Any]],
              moments: Sequence[Moment] = ()) -> Summary:
    heard = call.heard_pcm().astype(np.float64) / 32768
    params = call.stream_params
    rate = params.playout_rate if params else 8000
    encoding = params.playout_encoding if params is not None else "PCMU"
    bps = 2 if encoding == "L16" else 1
    late, worst, end = 0, 0.0, None
    total = 0.0
    for arrival, payload in call.received:
        try:
            samples = wideband.payload_samples(encoding, payload, rate) if encoding in wideband.CODECS \
                else len(payload) // bps
        except wideband.DecodeError:
            continue  # the simulator refused it: nothing was played
        duration = samples / rate
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
                   marks=call.marks_echoed, errors=call.errors_sent, responses=responses, webhooks=webhooks,
                   moments=with_ends(call, moments))


def with_ends(call: SimCall, moments: Sequence[Moment]) -> list[Moment]:
    """`moments` with each injection's end_s filled in from its mark, or the clear that cut it."""
    rate = call.sample_rate
    cleared = set(call.marks_cleared)
    ends = {name: due / rate for name, _, due in call.mark_positions if name not in cleared}
    clears = [m.start_s for m in moments if m.kind == "clear"]
    out = []
    for m in moments:
        end = None
        if m.injection_id is not None:
            end = ends.get(m.injection_id)
            if end is None:
                end = next((c for c in clears if c > m.start_s), None)
        out.append(replace(m, end_s=end))
    return out


def start_call(fake: FakeTelnyx, server: str, *, caller_audio: CallerAudio,
               stream_timeout_s: float = 15.0) -> SimCall:
    """Place a call to `server` (its webhooks at /webhooks/voice); returns once it streams."""
    fake.webhook_url = f"{server.rstrip('/')}/webhooks/voice"
    call = fake.place_call(caller_audio=caller_audio)
    call.wait_streaming(stream_timeout_s)
    return call


def playout_seconds(call: SimCall) -> float:
    """Now, in seconds on the call's playout timeline (0 = its first `start`)."""
    origin = call.media.recorder.origin
    return time.monotonic() - origin if origin is not None else 0.0


def play_steps(call: SimCall, server: str, steps: list[Step], *,
               api_token: str | None = None) -> tuple[list[tuple[str, int, Any]], list[Moment]]:
    """Run `steps` against the call through the server's REST API: (responses, moments)."""
    headers = {"Authorization": f"Bearer {api_token}"} if api_token else {}
    responses: list[tuple[str, int, Any]] = []
    moments: list[Moment] = []
    base = f"{server.rstrip('/')}/streams/{call.call_control_id}"
    with httpx.Client(timeout=30, trust_env=False, headers=headers) as http:
        for step in steps:
            label = step.label or step.kind
            at = playout_seconds(call)
            injection_id, duration_s = None, None
            if step.kind == "inject":
                r = http.post(f"{base}/inject", json=step.body)
                body = _json(r)
                responses.append((label, r.status_code, body))
                if isinstance(body, dict) and r.status_code == 201:
                    injection_id = body.get("id")
                    if isinstance(body.get("duration_ms"), int | float):
                        duration_s = body["duration_ms"] / 1000
            elif step.kind == "clear":
                r = http.post(f"{base}/clear")
                responses.append((label, r.status_code, _json(r)))
            elif step.kind == "caller_dtmf":
                call.send_dtmf(str(step.body["digits"]))
            if step.kind != "wait":
                moments.append(Moment(label, step.kind, at, injection_id, duration_s,
                                      ducked=step.kind == "inject" and step.body.get("duck") is True))
            time.sleep(step.wait_s)
    return responses, moments


def end_call(fake: FakeTelnyx, call: SimCall, responses: list[tuple[str, int, Any]],
             moments: list[Moment]) -> Summary:
    """The caller hangs up; what they heard, summarised once every webhook is delivered."""
    call.hangup()
    fake.wait_webhooks_idle(10)
    return summarize(call, fake, responses, moments)


def run_story(fake: FakeTelnyx, server: str, steps: list[Step], *, caller_audio: CallerAudio,
              api_token: str | None = None, stream_timeout_s: float = 15.0) -> tuple[SimCall, Summary]:
    """Place a call to `server` (its webhooks at /webhooks/voice), play `steps`, hang up."""
    call = start_call(fake, server, caller_audio=caller_audio, stream_timeout_s=stream_timeout_s)
    responses, moments = play_steps(call, server, steps, api_token=api_token)
    return call, end_call(fake, call, responses, moments)


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


def write_outputs(call: SimCall, out_dir: Path, moments: Sequence[Moment] = ()) -> tuple[Path, Path]:
    """DIR/mix.wav (what the caller heard) and DIR/mix.png (it drawn, `moments` marked on it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    wav = call.save_wav(out_dir / "mix.wav")
    caller_rate = call.stream_params.media_audio_rate if call.stream_params else call.sample_rate
    png = plot_mix(call.heard_pcm(), call.caller_pcm(), call.sample_rate, out_dir / "mix.png", moments,
                   caller_rate=caller_rate)
    return wav, png


# Below this level (20 ms RMS) the caller is taken to be silent; the test caller's pauses are
# digital silence, a real recording's room noise sits well under it.
SPEAKING_DBFS = -45.0
SPEAKING_FRAME_S = 0.02
SPEAKING_BRIDGE_S = 0.3  # quieter stretches shorter than this are syllable gaps, not pauses


def speaking_spans(caller: Int16Array, rate: int) -> list[tuple[float, float]]:
    """(start, end) seconds where the caller's 20 ms RMS is above SPEAKING_DBFS, short gaps bridged."""
    n = max(1, round(SPEAKING_FRAME_S * rate))
    frames = len(caller) // n
    if frames == 0:
        return []
    x = caller[: frames * n].astype(np.float64).reshape(frames, n) / 32768
    loud = np.sqrt(np.mean(x ** 2, axis=1)) > 10 ** (SPEAKING_DBFS / 20)
    spans: list[tuple[float, float]] = []
    for i in np.flatnonzero(loud):
        start, end = i * n / rate, (i + 1) * n / rate
        if spans and start - spans[-1][1] < SPEAKING_BRIDGE_S:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


_STEP_COLOURS = ["tab:green", "tab:orange", "tab:purple", "tab:red", "tab:brown", "tab:olive", "tab:cyan"]
_SPEAKING_COLOUR = "tab:gray"


def plot_mix(heard: Int16Array, caller: Int16Array, rate: int, path: Path, moments: Sequence[Moment] = (), *,
             caller_rate: int | None = None) -> Path:
    """Draw what the caller said and heard on one time axis, with what happened when above it.

    Top: one bar per injection, from where its audio began to where it ended (its mark, or the
    clear that cut it), with a line back to its request if it began later; the caller's DTMF and
    the clear as labelled lines. The caller's talk spurts are shaded on every panel: where they
    overlap an injection that asked to duck, the server lowered it ("ducked").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    caller_rate = caller_rate or rate
    end_s = max(len(heard) / rate, len(caller) / caller_rate, *(m.start_s for m in moments), 0.1)
    injections = [m for m in moments if m.kind == "inject"]
    instants = [m for m in moments if m.kind in ("clear", "caller_dtmf")]
    spans = speaking_spans(caller, caller_rate)

    fig, axes = plt.subplots(4, 1, figsize=(13, 9.5), sharex=True,
                             gridspec_kw={"height_ratios": [max(1.0, 0.42 * len(injections) + 0.5), 1.2, 1.2, 1.6]})
    steps_ax, said_ax, heard_ax, spec_ax = axes

    # What happened when: one row per injection, newest at the bottom.
    for row, m in enumerate(injections):
        colour = _STEP_COLOURS[row % len(_STEP_COLOURS)]
        start, stop = m.heard_from_s, m.end_s if m.end_s is not None else end_s
        steps_ax.barh(row, stop - start, left=start, height=0.62, color=colour, alpha=0.85)
        if start - m.start_s > 0.15:  # heard later than asked for (text is synthesised first)
            steps_ax.plot([m.start_s, start], [row, row], color=colour, lw=1.5)
            steps_ax.plot([m.start_s], [row], marker="|", markersize=12, color=colour)
        text = m.label + ("" if m.end_s is not None else " (until the hangup)")
        inside = stop - start > 0.12 * end_s
        steps_ax.text(start + 0.08 if inside else stop + 0.08, row, text, va="center", fontsize=9,
                      color="white" if inside else "black", fontweight="bold" if inside else "normal")
        for ax in (heard_ax, spec_ax):
            ax.axvline(start, color=colour, lw=1.0, ls="--", alpha=0.9)
    steps_ax.set_yticks([])
    if not moments:
        steps_ax.text(0.5, 0.5, "no steps recorded (injections made by hand, e.g. with curl, are not drawn here)",
                      transform=steps_ax.transAxes, ha="center", va="center", fontsize=9, color="0.4")
    steps_ax.set_ylim(len(injections) - 0.4, -0.6)
    for m in instants:
        steps_ax.text(m.start_s, len(injections) - 0.45, " " + m.label, fontsize=9, va="bottom", ha="left",
                      color="black")
        for ax in axes:
            ax.axvline(m.start_s, color="black", lw=1.2, ls=":")
    steps_ax.set_title("each injection: a bar from its first sound to its end (its mark, or the clear); "
                       "a thin line back to the request when it was heard later", fontsize=9, loc="left")

    for ax in axes:
        for a, b in spans:
            ax.axvspan(a, b, color=_SPEAKING_COLOUR, alpha=0.13, lw=0)

    said_ax.plot(np.arange(len(caller)) / caller_rate, caller / 32768, lw=0.4, color="0.35")
    said_ax.set_ylabel("caller said")
    heard_ax.plot(np.arange(len(heard)) / rate, heard / 32768, lw=0.4, color="tab:blue")
    heard_ax.set_ylabel("caller heard")
    for ax in (said_ax, heard_ax):
        ax.set_ylim(-1, 1)
    for m in (m for m in injections if m.ducked):
        stop = m.end_s if m.end_s is not None else end_s
        for talk_start, talk_end in spans:
            a, b = max(talk_start, m.heard_from_s), min(talk_end, stop)
            if b - a > 0.04 * end_s:  # room for the word
                heard_ax.text((a + b) / 2, 0.78, f"{m.label.split()[0]} ducked", fontsize=8, ha="center",
                              color="0.2")
    legend = [Patch(color=_SPEAKING_COLOUR, alpha=0.25, label="caller speaking"),
              Line2D([], [], color="0.3", ls="--", lw=1, label="an injection's first sound"),
              Line2D([], [], color="black", ls=":", lw=1.2, label="caller's DTMF, clear")]
    fig.legend(handles=legend, loc="upper right", ncol=3, fontsize=9, frameon=False)
    if len(heard) > 256:
        with np.errstate(divide="ignore"):  # digital silence has no finite dB value
            spec_ax.specgram(heard.astype(np.float64) / 32768, NFFT=256, Fs=rate, noverlap=192, cmap="magma")
    spec_ax.set_ylabel("caller heard, Hz")
    spec_ax.set_xlabel("seconds since the stream started")
    spec_ax.set_xlim(0, end_s)
    fig.suptitle("What the caller heard, and what happened when", x=0.02, ha="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_caller(call: SimCall, path: Path) -> None:
    sf.write(path, call.caller_pcm(), call.stream_params.media_audio_rate if call.stream_params else 8000)
