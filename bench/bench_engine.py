"""Per-frame costs of the audio engine, printed as plain-text tables.

    .venv/bin/python bench/bench_engine.py

G.711 against audioop (the reference, when it is importable), the Mixer against a plain numpy
sum-and-clip of the same sources, and the calls one core could carry at one frame per period.
Each figure is the best of several timed runs of many repetitions (time.perf_counter).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mixer.batch import FrameBlock, finish_frames
from mixer.codecs import alaw_decode, alaw_encode, float_to_pcm16, get_codec, ulaw_decode, ulaw_encode
from mixer.geometry import FrameGeometry
from mixer.mixer import Mixer

RUNS = 5
GEOMETRY = FrameGeometry(8000)


def load_audioop() -> ModuleType | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:
            return None
    return audioop


def per_call_us(fn: Callable[[], object], reps: int) -> float:
    """Best-of-RUNS time of one call of fn, in microseconds."""
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - start) / reps)
    return best * 1e6


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def codec_table(audioop: ModuleType | None) -> dict[str, float]:
    n = GEOMETRY.samples_per_frame
    rng = np.random.default_rng(1)
    pcm = (rng.standard_normal(n) * 6000).clip(-32768, 32767).astype(np.int16)
    raw = pcm.tobytes()
    ulaw, alaw = ulaw_encode(pcm), alaw_encode(pcm)
    reps = 20000
    cases: list[tuple[str, Callable[[], object], Callable[[], object] | None]] = [
        ("PCMU encode", lambda: ulaw_encode(pcm), (lambda: audioop.lin2ulaw(raw, 2)) if audioop else None),
        ("PCMU decode", lambda: ulaw_decode(ulaw), (lambda: audioop.ulaw2lin(ulaw, 2)) if audioop else None),
        ("PCMA encode", lambda: alaw_encode(pcm), (lambda: audioop.lin2alaw(raw, 2)) if audioop else None),
        ("PCMA decode", lambda: alaw_decode(alaw), (lambda: audioop.alaw2lin(alaw, 2)) if audioop else None),
    ]
    rows, costs = [], {}
    for name, ours, ref in cases:
        us = per_call_us(ours, reps)
        costs[name] = us
        if ref is not None:
            ref_us = per_call_us(ref, reps)
            rows.append([name, f"{us:.2f}", f"{ref_us:.2f}", f"{us / ref_us:.2f}"])
        else:
            rows.append([name, f"{us:.2f}", "n/a", "n/a"])
    table(f"G.711, one {GEOMETRY.frame_ms} ms frame ({n} samples at {GEOMETRY.sample_rate} Hz), microseconds",
          ["operation", "numpy", "audioop", "numpy/audioop"], rows)
    return costs


def sources(count: int, seconds: float = 30.0) -> list[np.ndarray]:
    rate = GEOMETRY.sample_rate
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(count)
    return [(0.1 * np.sin(2 * np.pi * rng.uniform(200, 3000) * t)).astype(np.float32) for _ in range(count)]


def mixer_for(srcs: list[np.ndarray], gains_db: list[float]) -> Mixer:
    mixer = Mixer(GEOMETRY)
    for i, (src, gain) in enumerate(zip(srcs, gains_db, strict=True)):
        mixer.add(f"s{i}", src, gain_db=gain, loop=True, duck=i % 2 == 1)
    return mixer


def baseline_for(srcs: list[np.ndarray], gains_db: list[float]) -> Callable[[], np.ndarray]:
    """What a mixer without ramps, loops, ducking or limiter would do: scale, sum, clip, convert."""
    n = GEOMETRY.samples_per_frame
    gains = np.array([10 ** (g / 20) for g in gains_db], dtype=np.float32)
    stack = np.stack(srcs)
    period = stack.shape[1] - n
    pos = [0]

    def mix() -> np.ndarray:
        p = pos[0]
        pos[0] = (p + n) % period
        summed = gains @ stack[:, p:p + n]
        return np.clip(np.rint(summed * 32768), -32768, 32767).astype(np.int16)

    return mix


def batched_us(srcs: list[np.ndarray], gains_db: list[float], calls: int, reps: int) -> float:
    """Per call: every call mixes into a row of one block, finished and PCMU-encoded together
    (what the media clock does each tick, see streams/framer.py)."""
    mixers = [mixer_for(srcs, gains_db) for _ in range(calls)]
    block = FrameBlock(GEOMETRY.samples_per_frame)
    codec = get_codec("PCMU", GEOMETRY.sample_rate)

    def tick() -> bytes:
        rows = block.rows(calls)
        gains = []
        for mixer, row in zip(mixers, rows, strict=True):
            mixed = mixer.mix_unscaled_into(row)
            assert mixed is not None  # the sources loop
            gains.append(mixed[1])
        return codec.encode(finish_frames(rows, mixers, gains))

    return per_call_us(tick, reps) / calls


def mixer_table(encode_us: float) -> None:
    n = GEOMETRY.samples_per_frame
    frame_us = GEOMETRY.frame_seconds * 1e6
    calls = 100
    rows = []
    for count in (1, 4, 16):
        srcs = sources(count)
        gains = [-6.0 - (i % 4) for i in range(count)]
        mixer = mixer_for(srcs, gains)
        baseline = baseline_for(srcs, gains)
        reps = 4000 if count < 16 else 1500
        mix_us = per_call_us(mixer.mix, reps)
        base_us = per_call_us(baseline, reps)
        per_call = mix_us + encode_us
        batched = batched_us(sources(count, 2.0), gains, calls, max(20, reps // calls))
        rows.append([str(count), f"{mix_us:.1f}", f"{base_us:.1f}", f"{mix_us / base_us:.1f}",
                     f"{per_call:.1f}", f"{batched:.1f}", f"{frame_us / batched:,.0f}"])
    table(f"Mixer.mix(), one call-frame ({n} samples), microseconds; sources loop, half of them duck",
          ["sources", "Mixer.mix", "numpy sum+clip", "ratio", "mix+PCMU encode", f"batched, {calls} calls",
           "calls per core"], rows)
    print(f"\nbatched = per call when {calls} calls each mix into a row of one block that is limited, "
          "converted and encoded at once (the media clock's tick);\n"
          f"calls per core = {GEOMETRY.frame_ms} ms / batched: the engine alone, "
          "without the JSON/base64/WebSocket send")


def main() -> None:
    started = time.perf_counter()
    audioop = load_audioop()
    print(f"numpy {np.__version__}, python {sys.version.split()[0]}; best of {RUNS} runs")
    costs = codec_table(audioop)
    mixer_table(costs["PCMU encode"])
    # Sanity: what the table measured is what the tests prove exact.
    check = Mixer(GEOMETRY)
    src = sources(1, 0.1)[0]
    check.add("x", src)
    frame = check.mix()
    assert frame is not None and np.array_equal(frame.pcm, float_to_pcm16(src[:GEOMETRY.samples_per_frame]))
    print(f"\ntotal bench time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
