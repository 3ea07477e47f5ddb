"""Frames finished together (mixer.batch) are bit for bit the frames each mixer makes alone.

Mixer.mix, the reference here, is checked against direct arithmetic in test_mixer_mixer.py
(bit-exact 0 dB tracks, sums, gains, ramps, fades, loop seams, the limiter).
"""

from __future__ import annotations

import numpy as np
import pytest

from mixer.batch import FrameBlock, finish_frames
from mixer.codecs import float_to_pcm16, get_codec
from mixer.ducking import levels_dbfs, rms_dbfs
from mixer.geometry import FrameGeometry
from mixer.mixer import Mixer

G = FrameGeometry(8000)
N = G.samples_per_frame
FRAMES = 150


def scripted_mixer(seed: int) -> Mixer:
    """A mixer with a different mix of everything that shapes a frame: gains, fades, loops,
    one-shots ending mid-frame, ducking, and sums loud enough to make the limiter act."""
    rng = np.random.default_rng(seed)
    mixer = Mixer(G)
    for k in range(1 + seed % 3):
        length = int(rng.integers(N // 2, 3 * G.sample_rate))
        samples = (rng.uniform(-1, 1, length) * rng.uniform(0.05, 0.9)).astype(np.float32)
        mixer.add(f"t{k}", samples, gain_db=float(rng.choice([0.0, -6.0, 6.0])), loop=bool(rng.integers(2)),
                  fade_in_ms=int(rng.choice([0, 30])), fade_out_ms=int(rng.choice([0, 50])),
                  duck=bool(rng.integers(2)))
    return mixer


def drive(mixer: Mixer, frame: int, seed: int) -> None:
    """The same control events for both copies of a mixer, between frames."""
    if frame == 20:
        mixer.feed_caller(np.full(N, 8000 if seed % 2 else 0, dtype=np.int16))
    if frame == 40 and seed % 4 == 1:
        mixer.set_gain("t0", -20.0)
    if frame == 90 and seed % 5 == 2:
        mixer.stop("t0")


def test_a_block_of_calls_matches_each_call_mixed_alone() -> None:
    seeds = range(12)
    alone = [scripted_mixer(seed) for seed in seeds]
    batched = [scripted_mixer(seed) for seed in seeds]
    codec = get_codec("PCMU", 8000)
    block = FrameBlock(N)
    limited = 0
    for frame in range(FRAMES):
        for seed, a, b in zip(seeds, alone, batched, strict=True):
            drive(a, frame, seed)
            drive(b, frame, seed)
        expected = [a.mix() for a in alone]
        rows = block.rows(len(batched))
        finished = [b.mix_into(row) for b, row in zip(batched, rows, strict=True)]
        playing = [i for i, f in enumerate(finished) if f is not None]
        assert playing == [i for i, e in enumerate(expected) if e is not None]
        if not playing:
            continue
        # Rows of calls with nothing to play are left out of the block, as the clock does.
        live = np.ascontiguousarray(rows[playing])
        limited += sum(1 for i in playing if np.abs(live[playing.index(i)]).max() > batched[i].limiter.threshold)
        pcm = finish_frames(live, [batched[i] for i in playing])
        data = codec.encode(pcm)
        for j, i in enumerate(playing):
            exp = expected[i]
            assert exp is not None
            assert np.array_equal(pcm[j], exp.pcm), (frame, i)
            assert data[j * N:(j + 1) * N] == codec.encode(exp.pcm)
            assert finished[i] == exp.finished
    assert limited > 0  # the limiter really acted on some rows


def test_levels_of_many_chunks_are_each_chunks_rms() -> None:
    rng = np.random.default_rng(7)
    chunks = [rng.integers(-3000, 3000, n).astype(np.int16) for n in (160, 160, 80, 320, 1)]
    chunks.append(np.zeros(160, dtype=np.int16))
    levels = levels_dbfs(np.concatenate(chunks), [len(c) for c in chunks])
    for chunk, level in zip(chunks[:-1], levels[:-1], strict=True):
        x = chunk.astype(np.float64) / 32768
        assert level == pytest.approx(10 * np.log10(np.mean(x * x)), abs=1e-9)
        assert rms_dbfs(chunk) == level
    assert levels[-1] == float("-inf")
    full = np.full(160, 32767, dtype=np.int16)
    assert abs(rms_dbfs(full)) < 0.001  # a full-scale square wave is 0 dBFS


def test_a_lone_steady_track_leaves_its_gain_to_the_caller_and_others_do_not():
    music = (np.random.default_rng(3).uniform(-0.5, 0.5, 4000)).astype(np.float32)
    deferred, reference = Mixer(G), Mixer(G)
    for mixer in (deferred, reference):
        mixer.add("music", music, gain_db=-6.0, loop=True)
    row = np.empty(N, dtype=np.float32)
    finished, gain = deferred.mix_unscaled_into(row)
    assert finished == () and gain == pytest.approx(10 ** (-6 / 20))
    assert np.array_equal(row, music[:N])  # unscaled
    alone = np.empty(N, dtype=np.float32)
    reference.mix_into(alone)
    assert np.array_equal(row * np.float32(gain), alone)
    # finish_frames applies the gain it was left: the same int16 as the reference mixed alone.
    mixed_alone = alone.copy()
    reference.limiter.process(mixed_alone)
    assert np.array_equal(finish_frames(row[None].copy(), [deferred], [gain])[0], float_to_pcm16(mixed_alone))
    for mixer in (deferred, reference):
        mixer.add("beep", music[:N] * 2)  # two tracks: the mixer applies every gain itself
    finished, gain = deferred.mix_unscaled_into(row)
    assert finished == ("beep",) and gain == 1.0
    reference.mix_into(alone)
    assert np.array_equal(row, alone)


def test_a_frame_with_a_nan_is_limited_as_mix_would():
    # Decoded sources never hold NaN (sources.decode_audio zeroes them); Mixer.add takes any array.
    samples = np.full(4 * N, 0.25, dtype=np.float32)
    samples[5] = np.nan
    batched, reference = Mixer(G), Mixer(G)
    for mixer in (batched, reference):
        mixer.add("odd", samples)
    block = FrameBlock(N)
    with np.errstate(invalid="ignore"):
        for _ in range(3):
            rows = block.rows(1)
            batched.mix_into(rows[0])
            assert np.array_equal(finish_frames(rows, [batched])[0], reference.mix().pcm)
