"""Ducking: the detector's hysteresis and hold, and the ducked gain's attack and release timing."""

from __future__ import annotations

import numpy as np
import pytest

from mixer.codecs import float_to_pcm16
from mixer.ducking import DuckingConfig, levels_dbfs, rms_dbfs, row_levels_dbfs
from mixer.edges import soften_edges
from mixer.geometry import FrameGeometry
from mixer.mixer import Mixer

G = FrameGeometry(8000)
N = G.samples_per_frame
CONFIG = DuckingConfig(depth_db=-12.0, threshold_dbfs=-35.0, hysteresis_db=6.0, attack_ms=100,
                       release_ms=300, hold_ms=200)


def caller_frame(rms_dbfs_level: float) -> np.ndarray:
    """20 ms of a 300 Hz sine whose RMS is `rms_dbfs_level` (the detector measures RMS)."""
    amplitude = 10 ** (rms_dbfs_level / 20) * np.sqrt(2)
    t = np.arange(N) / G.sample_rate
    return float_to_pcm16(amplitude * np.sin(2 * np.pi * 300 * t))


SPEECH, SILENCE, BETWEEN = caller_frame(-20), np.zeros(N, dtype=np.int16), caller_frame(-38)


def ducked_gain_db(frame_pcm: np.ndarray) -> np.ndarray:
    """Per-sample gain of the 0.5 DC test source, in dB."""
    return 20 * np.log10(frame_pcm.astype(np.float64) / (0.5 * 32768))


def make_mixer() -> Mixer:
    mixer = Mixer(G, ducking=CONFIG)
    mixer.add("music", np.full(G.sample_rate * 10, 0.5, dtype=np.float32), duck=True)
    return mixer


def step(mixer: Mixer, caller: np.ndarray) -> np.ndarray:
    mixer.feed_caller(caller)
    frame = mixer.mix()
    assert frame is not None
    return ducked_gain_db(frame.pcm)


def test_rms_dbfs():
    t = np.arange(8000) / 8000
    assert rms_dbfs(float_to_pcm16(0.999 * np.sin(2 * np.pi * 1000 * t))) == pytest.approx(-3.02, abs=0.02)
    assert rms_dbfs(np.zeros(10, dtype=np.int16)) == -np.inf and rms_dbfs(np.zeros(0, dtype=np.int16)) == -np.inf
    assert rms_dbfs(SPEECH) == pytest.approx(-20, abs=0.05)


def test_attack_hold_and_release_timing():
    mixer = make_mixer()
    assert step(mixer, SILENCE)[-1] == pytest.approx(0, abs=0.01) and not mixer.caller_speaking
    # Attack: linear in dB from 0 to -12 dB over 100 ms (5 frames).
    attack = np.concatenate([step(mixer, SPEECH) for _ in range(5)])
    assert mixer.caller_speaking
    assert attack[G.ms_to_samples(50) - 1] == pytest.approx(-6, abs=0.1)
    assert attack[-1] == pytest.approx(-12, abs=0.1)
    assert np.all(np.diff(attack) <= 1e-6)  # monotonic: no pumping
    for _ in range(20):
        assert step(mixer, SPEECH) == pytest.approx(-12, abs=0.1)
    # Hold: 200 ms (10 frames) of silence before speech is over; the music stays down meanwhile.
    for _ in range(9):
        assert step(mixer, SILENCE) == pytest.approx(-12, abs=0.1)
        assert mixer.caller_speaking
    first = step(mixer, SILENCE)
    assert not mixer.caller_speaking
    # Release: back to 0 dB over 300 ms (15 frames), linear in dB.
    release = np.concatenate([first] + [step(mixer, SILENCE) for _ in range(14)])
    assert release[G.ms_to_samples(100) - 1] == pytest.approx(-8, abs=0.1)
    assert release[G.ms_to_samples(200) - 1] == pytest.approx(-4, abs=0.1)
    assert release[-1] == pytest.approx(0, abs=0.01)
    assert np.all(np.diff(release) >= -1e-6)
    assert step(mixer, SILENCE) == pytest.approx(0, abs=0.01)


def test_hysteresis_between_thresholds_keeps_the_state():
    mixer = make_mixer()
    for _ in range(20):
        step(mixer, BETWEEN)  # -38 dBFS: below the -35 on-threshold, above the -41 off-threshold
    assert not mixer.caller_speaking
    step(mixer, SPEECH)
    for _ in range(50):
        step(mixer, BETWEEN)  # a second at -38: still speech (no hold countdown between thresholds)
    assert mixer.caller_speaking
    for _ in range(10):
        step(mixer, SILENCE)
    assert not mixer.caller_speaking


def test_sources_without_duck_are_untouched():
    mixer = Mixer(G, ducking=CONFIG)
    source = np.full(8000, 0.25, dtype=np.float32)
    mixer.add("voice-prompt", source)
    expected = float_to_pcm16(soften_edges(source, G.sample_rate))  # its start steps out of silence
    for k in range(20):
        mixer.feed_caller(SPEECH)
        frame = mixer.mix()
        assert frame is not None and np.array_equal(frame.pcm, expected[k * N:(k + 1) * N])
    assert mixer.caller_speaking


def test_depth_is_configurable_and_ducking_is_click_free():
    mixer = Mixer(G, ducking=DuckingConfig(depth_db=-20.0, attack_ms=20, release_ms=100))
    t = np.arange(G.sample_rate * 3) / G.sample_rate
    music = (0.8 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    mixer.add("music", music, duck=True)
    out = []
    for i in range(100):
        mixer.feed_caller(SPEECH if 20 <= i < 50 else SILENCE)
        frame = mixer.mix()
        assert frame is not None
        out.append(frame.pcm)
    pcm = np.concatenate(out).astype(np.int32)
    own = np.max(np.abs(np.diff(float_to_pcm16(music).astype(np.int32))))
    assert np.max(np.abs(np.diff(pcm))) <= 1.05 * own
    down = pcm[30 * N:45 * N] / (music[30 * N:45 * N] * 32768)
    assert 20 * np.log10(np.median(np.abs(down))) == pytest.approx(-20, abs=0.1)


def test_config_validation():
    with pytest.raises(ValueError):
        DuckingConfig(depth_db=3)
    with pytest.raises(ValueError):
        DuckingConfig(attack_ms=-1)


def test_row_levels_are_each_rows_rms_as_levels_dbfs_measures_it() -> None:
    rng = np.random.default_rng(7)
    block = (rng.uniform(-1, 1, (6, 160)) * rng.uniform(0, 32767, (6, 1))).astype(np.int16)
    block[3] = 0  # silence: -inf
    assert row_levels_dbfs(block) == pytest.approx(levels_dbfs(block.reshape(-1), [160] * 6), abs=1e-9)
    assert row_levels_dbfs(block)[3] == float("-inf")
    full = np.full((1, 160), 32767, dtype=np.int16)
    assert row_levels_dbfs(full)[0] == pytest.approx(rms_dbfs(full[0]))
