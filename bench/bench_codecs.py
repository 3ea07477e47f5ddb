"""The media clock's cost per call-frame for each codec and rate, against PCMU in the same run.

    .venv/bin/python bench/bench_codecs.py [--calls 50]

For each format, CALLS calls play two looping sources (one ducking). A tick is what the media
clock does (streams.framer.Framer): every call mixes into a row of one block, the block is
limited and converted, then encoded (G.711 and L16: the block at once; G.722 and OPUS: call by
call, each by its own encoder) and wrapped in media messages. The caller's side is one 20 ms
payload per call decoded as the session does (G.711/L16 in one batch per codec with the ducking
levels; G.722/OPUS one by one, by each call's own decoder). Each figure is the best of 5 timed
runs (time.perf_counter), in microseconds per call-frame.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_engine import RUNS, per_call_us
from mixer.codecs import Codec, get_codec
from mixer.ducking import levels_dbfs
from mixer.geometry import FrameGeometry
from mixer.mixer import Mixer
from streams.framer import Framer, OutFrame
from streams.levels import SentMeter

FORMATS = [("PCMU", 8000), ("PCMA", 8000), ("G722", 16000), ("OPUS", 8000), ("OPUS", 16000),
           ("L16", 8000), ("L16", 16000), ("L16", 22050), ("L16", 24000), ("L16", 48000)]


class Call:
    """A call as the framer sees it (streams.framer.Framed), with a real Mixer and codecs."""

    def __init__(self, name: str, encoding: str, rate: int, seed: int) -> None:
        self.call_control_id = name
        self.codec: Codec = get_codec(encoding, rate)
        self.decoder: Codec = get_codec(encoding, rate)  # the same object for stateless codecs
        self.geometry = FrameGeometry(self.codec.sample_rate)
        self.mixer = Mixer(self.geometry)
        rng = np.random.default_rng(seed)
        sr = self.geometry.sample_rate
        t = np.arange(2 * sr) / sr
        music = (0.2 * np.sin(2 * np.pi * rng.uniform(200, 3000) * t)).astype(np.float32)
        noise = (0.05 * rng.standard_normal(2 * sr)).astype(np.float32)
        self.mixer.add("music", music, gain_db=-3.0, loop=True, duck=True)
        self.mixer.add("noise", noise, gain_db=-6.0, loop=True)
        self.bytes_sent = 0
        self.frames_sent = 0
        self.sent_meter = SentMeter()  # the framer measures one tick in five for the calls' meters

    @property
    def frame_samples(self) -> int:
        return self.geometry.samples_per_frame

    def take_caller_audio(self) -> tuple[Mixer, list[tuple[Codec, bytes]]] | None:
        return None  # measured separately (inbound_us)

    def begin_frame(self, out: np.ndarray) -> OutFrame | None:
        mixed = self.mixer.mix_unscaled_into(out)
        return None if mixed is None else OutFrame(None, self.mixer, self.codec, *mixed)  # type: ignore[arg-type]

    def end_frame(self, frame: OutFrame, message: bytes, payload: bytes | np.ndarray | None = None) -> bool:
        self.bytes_sent += len(message)
        self.frames_sent += 1
        return True


def best_us(fn: Callable[[], object], reps: int, per: int) -> float:
    """bench_engine's best-of-runs time of one call of fn, per call-frame of `per` calls."""
    return per_call_us(fn, reps) / per


def caller_payloads(encoding: str, rate: int, frames: int) -> tuple[Codec, list[bytes]]:
    """A second of speech-like noise as the caller's side would send it, one payload per frame."""
    enc = get_codec(encoding, rate)
    n = enc.sample_rate // 50
    rng = np.random.default_rng(7)
    pcm = np.clip(rng.standard_normal(n * frames) * 4000, -32768, 32767).astype(np.int16)
    return enc, [enc.encode(pcm[i * n:(i + 1) * n]) for i in range(frames)]


def outbound_us(encoding: str, rate: int, calls: int, reps: int) -> tuple[float, float]:
    group = [Call(f"{encoding}-{i}", encoding, rate, seed=i) for i in range(calls)]
    framer = Framer()

    def tick() -> None:
        framer.produce(group)

    us = best_us(tick, reps, calls)
    sent = sum(c.frames_sent for c in group)
    return us, sum(c.bytes_sent for c in group) / sent


def inbound_us(encoding: str, rate: int, calls: int, reps: int) -> tuple[float, float]:
    enc, payloads = caller_payloads(encoding, rate, 50)
    decoders = [get_codec(encoding, rate) for _ in range(calls)]
    samples = enc.sample_rate // 50
    pos = [0]

    if enc.stateful:
        pcm_codec = get_codec("L16", enc.sample_rate, "little")

        def tick() -> None:
            payload = payloads[pos[0] % len(payloads)]
            pos[0] += 1
            decoded = [pcm_codec.encode(d.decode(payload)) for d in decoders]  # the socket readers
            chunks = [c for c in decoded if c]  # (a resampler's first call may give nothing yet)
            if chunks:
                pcm = pcm_codec.decode(b"".join(chunks))  # the clock's batch, as for L16
                levels_dbfs(pcm, [len(c) // 2 for c in chunks])
    else:
        def tick() -> None:
            payload = payloads[pos[0] % len(payloads)]
            pos[0] += 1
            pcm = enc.decode(payload * calls)
            levels_dbfs(pcm, [samples] * calls)

    return best_us(tick, reps, calls), float(np.mean([len(p) for p in payloads]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50, help="calls per format (default 50)")
    parser.add_argument("--reps", type=int, default=40, help="ticks per timed run (default 40)")
    parser.add_argument("--passes", type=int, default=3,
                        help="passes over all formats, the best of each kept (default 3): on a shared "
                             "machine, a burst of someone else's load then spoils one pass, not a format")
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"numpy {np.__version__}, python {sys.version.split()[0]}; {args.calls} calls per format, "
          f"best of {args.passes} passes x {RUNS} runs of {args.reps} ticks")
    best: dict[tuple[str, int], tuple[float, float, float]] = {}
    for _ in range(args.passes):
        for fmt in FORMATS:
            out_us, _message_bytes = outbound_us(*fmt, args.calls, args.reps)
            in_us, payload_bytes = inbound_us(*fmt, args.calls, args.reps)
            old = best.get(fmt, (float("inf"), float("inf"), 0.0))
            best[fmt] = (min(old[0], out_us), min(old[1], in_us), payload_bytes)
    rows = []
    pcmu_total = None
    for encoding, rate in FORMATS:
        out_us, in_us, payload_bytes = best[(encoding, rate)]
        total = out_us + in_us
        pcmu_total = pcmu_total or total
        samples = get_codec(encoding, rate).sample_rate // 50
        kbps = payload_bytes * 8 * 50 / 1000
        rows.append([f"{encoding} {rate}", str(samples), f"{kbps:.0f}", f"{out_us:.1f}", f"{in_us:.1f}",
                     f"{total:.1f}", f"{total / pcmu_total:.1f}", f"{20_000 / total:,.0f}"])
    header = ["format", "samples", "kbit/s", "mix+encode+send", "decode caller", "per call-frame",
              "x PCMU", "calls per core"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("\nOne 20 ms call-frame, microseconds (both directions: our mix out, the caller's audio in)")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    print("\nmix+encode+send = the framer's tick per call (two looping sources, limiter, encode, media JSON);\n"
          "decode caller = one inbound payload decoded and measured for ducking; calls per core = 20 ms / "
          "per call-frame,\nthe engine alone, without the WebSocket reads and writes")
    print(f"\ntotal bench time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
