"""Edges (mixer.edges, applied by the Mixer): a source that starts or stops mid-waveform reaches
the caller without a click; a source whose edges do not click is played bit for bit."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from audio_checks import max_jump
from mixer import edges, sources
from mixer.codecs import float_to_pcm16
from mixer.geometry import FrameGeometry
from mixer.mixer import Mixer

G8 = FrameGeometry(8000)
N = G8.samples_per_frame
EDGE = G8.ms_to_samples(edges.EDGE_RAMP_MS)


def play(mixer: Mixer, frames: int | None = None) -> np.ndarray:
    """int16 of every frame until idle (or `frames` frames)."""
    out = []
    while frames is None or len(out) < frames:
        frame = mixer.mix()
        if frame is None:
            break
        out.append(frame.pcm)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)


def heard(samples: np.ndarray, geometry: FrameGeometry = G8, **options: object) -> np.ndarray:
    """What a caller hears of `samples` alone: silence, the mix, silence."""
    mixer = Mixer(geometry)
    mixer.add("a", samples, **options)  # type: ignore[arg-type]
    silence = np.zeros(geometry.samples_per_frame, dtype=np.int16)
    return np.concatenate([silence, play(mixer), silence])


def wav(x: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def cosine(freq: float, seconds: float, rate: int, amp: float) -> np.ndarray:
    """Starts at its peak: a file cut mid-waveform."""
    return amp * np.cos(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)


def noise(n: int, level: float, seed: int = 7) -> np.ndarray:
    return (level * np.random.default_rng(seed).uniform(-1, 1, n)).astype(np.float32)


# -- through decoding and the Mixer, as a caller hears it --------------------------------------

@pytest.mark.parametrize("rate", [8000, 16000])
def test_a_file_that_begins_at_full_scale_starts_without_a_click(rate):
    g = FrameGeometry(rate)
    data = wav(cosine(20, 0.5, rate, 1.0), rate)  # first sample 32767
    samples = sources.decode_audio(data, rate, max_seconds=5)
    assert samples[0] > 0.99  # decoding leaves it as it is; the Mixer softens the edge
    pcm = heard(samples, g)
    start = g.samples_per_frame  # the first sample of the source
    # Before the edge ramp the first step was ~29,000 (the limiter's -1 dBFS); a 2 ms raised
    # cosine of full scale climbs at most pi / 2 / (k + 1) of it per sample (~3,000 at 8 kHz,
    # half that at 16 kHz), and a 20 Hz wave hardly moves in between.
    assert max_jump(pcm[:start + g.ms_to_samples(20)]) < 0.11 * 32768 * 8000 / rate
    assert abs(int(pcm[start])) < 600
    # The ramp is over after EDGE_RAMP_MS: the rest is the (limited) file as it was.
    assert abs(int(pcm[start + g.ms_to_samples(edges.EDGE_RAMP_MS)])) > 0.85 * 32768


def test_a_file_that_ends_at_full_scale_stops_without_a_click():
    samples = sources.decode_audio(wav(cosine(100, 0.5, 8000, 0.89)[::-1].copy(), 8000), 8000, max_seconds=5)
    assert abs(samples[-1]) > 0.85
    pcm = heard(samples)
    assert max_jump(pcm) < 0.1 * 32768
    end = N + len(samples)
    assert abs(int(pcm[end - 1])) < 600 and not pcm[end:].any()


def test_only_the_edge_samples_change_and_exactly_as_soften_edges_says():
    source = np.full(1000, 0.5, dtype=np.float32)  # a DC step at both ends: both click
    source[500:] = -0.3
    pcm = heard(source)[N:N + len(source)]
    softened = edges.soften_edges(source, 8000)
    assert np.array_equal(pcm, float_to_pcm16(softened))
    assert np.array_equal(pcm[EDGE:-EDGE], float_to_pcm16(source)[EDGE:-EDGE])
    assert not np.array_equal(pcm[:EDGE], float_to_pcm16(source)[:EDGE])
    assert not np.array_equal(pcm[-EDGE:], float_to_pcm16(source)[-EDGE:])


@pytest.mark.parametrize("gain_db", [-6.0, 6.0])
def test_edges_are_ramped_at_any_gain(gain_db):
    source = np.full(1000, 0.2, dtype=np.float32)
    mixer = Mixer(G8)
    mixer.add("a", source, gain_db=gain_db)
    pcm = play(mixer)[:len(source)]
    expected = edges.soften_edges(source, 8000) * np.float32(10 ** (gain_db / 20))
    assert np.abs(pcm.astype(np.int32) - float_to_pcm16(expected)).max() <= 1  # the order of two products


# -- the bit-exactness promise: edges that do not click are not touched -------------------------

@pytest.mark.parametrize(
    "source",
    [
        sources.tone(440, 300, 8000, -3.0),                     # starts and ends silent
        noise(3001, 0.85),                                      # noise: its own steps are larger
        np.concatenate([np.zeros(5), noise(995, 0.85)]),        # silence first
        np.full(900, 2.0 ** -11, dtype=np.float32),             # a step below -60 dBFS
        np.array([0.1, 0.25, 0.1], dtype=np.float32),           # no steeper than itself
    ],
    ids=["tone", "noise", "silence-first", "inaudible-dc", "ramp"],
)
def test_a_source_whose_edges_do_not_click_is_played_bit_exact(source):
    assert edges.edges_that_click(source, 8000) == (False, False)
    assert np.array_equal(edges.soften_edges(source, 8000), source)
    assert np.array_equal(heard(source)[N:N + len(source)], float_to_pcm16(source))


def test_the_rule_compares_the_edge_step_with_the_sources_own_steps():
    rate = 8000
    hum = cosine(100, 0.2, rate, 0.5).astype(np.float32)  # starts at its peak, moves ~0.04 a sample
    assert edges.edges_that_click(hum, rate)[0]
    fast = cosine(3000, 0.2, rate, 0.5).astype(np.float32)  # steps of ~0.9 hide a 0.5 start
    assert not edges.edges_that_click(fast, rate)[0]
    assert edges.edges_that_click(np.zeros(0, dtype=np.float32), rate) == (False, False)
    broken = np.full(100, 0.5, dtype=np.float32)
    broken[[0, -1]] = np.nan
    assert edges.edges_that_click(broken, rate) == (False, False)


def test_edge_ramp_shape():
    ramp = edges.edge_ramp(8000, 10_000)
    assert ramp.dtype == np.float32 and len(ramp) == EDGE == 16
    assert np.all((ramp > 0) & (ramp < 1)) and np.all(np.diff(ramp) > 0)
    assert len(edges.edge_ramp(16000, 10_000)) == 32
    assert len(edges.edge_ramp(8000, 9)) == 4  # never more than half the source
    assert len(edges.edge_ramp(8000, 1)) == 0


def test_soften_edges_is_pure():
    source = np.full(100, 0.5, dtype=np.float32)
    before = source.copy()
    out = edges.soften_edges(source, 8000)
    assert np.array_equal(source, before) and out is not source
    assert out[0] < 0.01 and out[-1] < 0.01 and np.all(out[EDGE:-EDGE] == 0.5)


def test_head_and_tail_gains_in_any_frame_split():
    ramp = edges.edge_ramp(8000, 100)
    whole = edges.soften_edges(np.ones(100, dtype=np.float32) * 0.5, 8000) / np.float32(0.5)
    for m in (1, 7, 16, 33, 100):
        head = np.concatenate([edges.head_gain(ramp, p, min(m, 100 - p)) for p in range(0, 100, m)])
        tail = np.concatenate([edges.tail_gain(ramp, p, min(m, 100 - p), 100) for p in range(0, 100, m)])
        assert np.array_equal(head * tail, whole), m


# -- fades and loops ----------------------------------------------------------------------------

def test_a_fade_is_the_edge_no_ramp_is_added():
    source = np.full(2000, 0.5, dtype=np.float32)
    mixer = Mixer(G8)
    mixer.add("a", source, fade_in_ms=10)
    first = play(mixer, 1)
    fade = np.minimum(np.arange(N) / G8.ms_to_samples(10), 1.0).astype(np.float32)
    assert np.array_equal(first, float_to_pcm16(source[:N] * fade))


def test_a_loop_ramps_its_first_start_only_and_its_seam_is_crossfaded():
    # A file whose end and start do not meet: 0.37 s rising from 0.3 to 0.8 (a sawtooth looped).
    source = np.linspace(0.3, 0.8, 2960).astype(np.float32)
    wrapped = float_to_pcm16(np.concatenate([source, source]))
    assert max_jump(wrapped) > 15000  # the naive loop clicks at the seam
    mixer = Mixer(G8)
    mixer.add("a", source, loop=True)
    pcm = play(mixer, 60)
    assert max_jump(np.concatenate([[0], pcm])) < 0.1 * 32768
    assert abs(int(pcm[0])) < 100  # the start out of silence is ramped, once
    assert np.array_equal(pcm[EDGE:1000], float_to_pcm16(source[EDGE:1000]))
