"""The Mixer: bit-exactness, levels, ramps without clicks, loops, stops, limiter, completion."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mixer.codecs import float_to_pcm16, get_codec
from mixer.edges import EDGE_RAMP_MS
from mixer.geometry import FrameGeometry
from mixer.mixer import LOOP_CROSSFADE_MS, STOP_FADE_MS, MixedFrame, Mixer
from mixer.sources import tone

G8 = FrameGeometry(8000)
N = G8.samples_per_frame


def run(mixer: Mixer, frames: int | None = None) -> tuple[np.ndarray, list[MixedFrame]]:
    """Mix until idle (or `frames` frames); the concatenated pcm and the frames."""
    out: list[MixedFrame] = []
    while frames is None or len(out) < frames:
        frame = mixer.mix()
        if frame is None:
            break
        assert frame.pcm.dtype == np.int16 and frame.pcm.shape == (mixer.geometry.samples_per_frame,)
        out.append(frame)
    pcm = np.concatenate([f.pcm for f in out]) if out else np.zeros(0, dtype=np.int16)
    return pcm, out


def max_jump(pcm: np.ndarray) -> int:
    return int(np.max(np.abs(np.diff(pcm.astype(np.int32)))))


def click_free(pcm: np.ndarray, source: np.ndarray) -> bool:
    """No step larger than the source's own largest step (plus 5 %).

    A ramp or crossfade of length L over a signal of peak A adds at most A/L (2A/L for a
    crossfade) to the slope; the 5 % allows that, while a click is a step several times larger.
    """
    return max_jump(pcm) <= 1.05 * max_jump(float_to_pcm16(source)) + 2


def distortion_db(pcm: np.ndarray, freq: float, rate: int) -> float:
    """Energy outside `freq` ± 20 Hz relative to the energy at it (a sine's THD+N)."""
    x = pcm.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    main = spectrum[np.abs(freqs - freq) < 20].sum()
    return float(10 * np.log10((spectrum.sum() - main) / main))


def level_db(pcm: np.ndarray) -> float:
    x = pcm.astype(np.float64) / 32768
    return float(20 * np.log10(np.sqrt(np.mean(x * x)) * np.sqrt(2)))


def noise(seconds: float, rate: int, level: float = 0.3, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (level * rng.uniform(-1, 1, round(seconds * rate))).astype(np.float32)


# -- bit-exactness and completion --------------------------------------------------------------

@pytest.mark.parametrize(("codec_name", "rate"), [("PCMU", 8000), ("PCMA", 8000), ("L16", 16000)])
def test_single_track_at_0_db_is_bit_exact_through_the_codec(codec_name, rate):
    g = FrameGeometry(rate)
    codec = get_codec(codec_name, rate)
    source = noise(1.013, rate, level=0.85)  # peak under the -1 dBFS threshold, last frame partial
    mixer = Mixer(g)
    mixer.add("a", source)
    _, frames = run(mixer)
    n = g.samples_per_frame
    expected = np.zeros(len(frames) * n, dtype=np.int16)
    expected[:len(source)] = float_to_pcm16(source)
    assert len(frames) == -(-len(source) // n)
    for k, frame in enumerate(frames):
        want = expected[k * n:(k + 1) * n]
        assert np.array_equal(frame.pcm, want)
        assert np.array_equal(codec.decode(codec.encode(frame.pcm)), codec.decode(codec.encode(want)))
    assert [f.finished for f in frames] == [()] * (len(frames) - 1) + [("a",)]
    assert mixer.mix() is None and not mixer.has_active()
    assert mixer.played_samples("a") == len(source)


def test_exact_frame_multiple_finishes_on_its_last_frame():
    mixer = Mixer(G8)
    mixer.add("a", noise(0.1, 8000))
    _, frames = run(mixer)
    assert len(frames) == 5 and frames[-1].finished == ("a",)


def test_empty_source_finishes_at_once():
    mixer = Mixer(G8)
    mixer.add("e", np.zeros(0, dtype=np.float32))
    frame = mixer.mix()
    assert frame is not None and frame.finished == ("e",) and not frame.pcm.any()
    assert mixer.mix() is None


def test_idle_mixer_returns_none_and_add_wakes():
    woken = []
    mixer = Mixer(G8, on_activity=lambda: woken.append(1))
    assert mixer.mix() is None and not mixer.has_active()
    mixer.add("a", noise(0.1, 8000))
    assert woken == [1] and mixer.has_active() and mixer.active_keys == ["a"]


def test_two_sources_sum():
    a, b = tone(440, 400, 8000, -12), tone(1000, 400, 8000, -12)
    mixer = Mixer(G8)
    mixer.add("a", a)
    mixer.add("b", b)
    pcm, frames = run(mixer)
    assert np.array_equal(pcm, float_to_pcm16(a + b))
    assert frames[-1].finished == ("a", "b")


def test_staggered_end_reports_each_key_in_its_own_last_frame():
    mixer = Mixer(G8)
    mixer.add("short", noise(0.05, 8000))   # 2.5 frames
    mixer.add("long", noise(0.1, 8000))     # 5 frames
    _, frames = run(mixer)
    assert [f.finished for f in frames] == [(), (), ("short",), (), ("long",)]


# -- levels and ramps -------------------------------------------------------------------------

@pytest.mark.parametrize("gain_db", [-6.0, -20.0, 6.0])
def test_gain_db_sets_the_level(gain_db):
    source = tone(1000, 1000, 8000, -12)
    mixer = Mixer(G8)
    mixer.add("a", source, gain_db=gain_db)
    pcm, _ = run(mixer)
    assert abs(level_db(pcm) - (-12 + gain_db)) < 0.1


def test_gain_limits():
    mixer = Mixer(G8)
    for bad in (-60.5, 12.5):
        with pytest.raises(ValueError, match=r"gain_db must be within -60\.\.12 dB"):
            mixer.add("a", noise(0.1, 8000), gain_db=bad)
    mixer.add("a", noise(0.1, 8000))
    with pytest.raises(ValueError, match=r"-60\.\.12"):
        mixer.set_gain("a", 13)
    with pytest.raises(ValueError, match="already playing"):
        mixer.add("a", noise(0.1, 8000))
    with pytest.raises(ValueError, match="1-D"):
        mixer.add("b", np.zeros((10, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="negative"):
        mixer.add("b", noise(0.1, 8000), fade_in_ms=-1)


def test_set_gain_is_ramped_and_click_free():
    source = tone(200, 1000, 8000, -1.5)     # a big low tone: a gain step would show as a jump
    mixer = Mixer(G8)
    mixer.add("a", source, gain_db=-40)
    before, _ = run(mixer, 10)
    mixer.set_gain("a", 0)
    after, _ = run(mixer)
    pcm = np.concatenate([before, after])
    assert click_free(pcm, source)
    assert abs(level_db(after[2 * N:]) - -1.5) < 0.1   # settled after the ramp
    assert abs(level_db(before) - -41.5) < 0.2


def test_set_gain_mid_ramp_and_unknown_key():
    mixer = Mixer(G8)
    source = np.full(8000, 0.5, dtype=np.float32)
    mixer.add("dc", source)
    mixer.mix()
    mixer.set_gain("dc", -6.0206)  # half
    mixer.mix()
    mixer.set_gain("dc", 0.0)
    mixer.set_gain("nobody", 0.0)   # ignored
    pcm, _ = run(mixer)
    glide = pcm[:-G8.ms_to_samples(EDGE_RAMP_MS)]  # then the DC's stop edge (test_mixer_edges.py)
    steps = np.diff(glide.astype(np.int32))
    assert np.max(np.abs(steps)) <= 16384 // 160 + 1   # a smooth glide, no step
    assert glide[-1] == 16384


def test_fade_in_and_fade_out():
    source = tone(300, 1000, 8000, -1.5)
    mixer = Mixer(G8)
    mixer.add("a", source, fade_in_ms=200, fade_out_ms=300)
    pcm, _ = run(mixer)
    assert click_free(pcm, source)
    assert np.max(np.abs(pcm[:80].astype(np.int32))) < 0.05 * 32768 * 0.85
    assert np.max(np.abs(pcm[7920:8000].astype(np.int32))) < 0.05 * 32768 * 0.85
    assert abs(level_db(pcm[2000:5600]) - -1.5) < 0.1
    env = np.abs(pcm[:1600].astype(np.float64))
    assert env[1500:1600].max() > 4 * env[100:200].max()  # rising


# -- stop ---------------------------------------------------------------------------------------

def test_stop_fades_quickly_without_a_click_and_reports_finished():
    source = tone(230, 5000, 8000, -1.5)
    mixer = Mixer(G8)
    mixer.add("a", source, loop=True)
    before, _ = run(mixer, 7)
    assert mixer.stop("a") is True
    pcm, frames = run(mixer)
    assert len(frames) == 1 and frames[0].finished == ("a",)  # 10 ms fade fits in the frame
    fade = G8.ms_to_samples(STOP_FADE_MS)
    assert np.all(pcm[fade:] == 0)
    assert abs(int(pcm[0])) > 1000
    assert click_free(np.concatenate([before, pcm]), source)
    assert max_jump(np.concatenate([before, float_to_pcm16(np.zeros(N))])) > 3 * max_jump(before)  # a cut clicks
    assert mixer.stop("a") is False and mixer.stop("never") is False
    assert mixer.played_samples("a") == 8 * N


def test_stop_uses_the_tracks_fade_out_and_a_given_fade():
    mixer = Mixer(G8)
    mixer.add("a", np.full(80000, 0.5, dtype=np.float32), fade_out_ms=100)
    mixer.add("b", np.full(80000, 0.25, dtype=np.float32))
    mixer.mix()
    mixer.stop("a")
    mixer.stop("b", fade_ms=60)
    _, frames = run(mixer)
    assert [f.finished for f in frames] == [(), (), ("b",), (), ("a",)]


def test_stop_all():
    mixer = Mixer(G8)
    mixer.add("a", noise(1, 8000), fade_out_ms=500)
    mixer.add("b", noise(1, 8000), loop=True)
    mixer.mix()
    assert mixer.stop_all() == ["a", "b"]
    _, frames = run(mixer)
    assert len(frames) == 1 and frames[0].finished == ("a", "b")


# -- loops --------------------------------------------------------------------------------------

def test_loop_seam_is_click_free_and_loops_forever():
    # 37 ms of 210 Hz, cut like a file (no taper): not a whole number of periods, so a plain
    # wrap would jump.
    t = np.arange(G8.ms_to_samples(37)) / G8.sample_rate
    source = (10 ** (-1.5 / 20) * np.sin(2 * np.pi * 210 * t)).astype(np.float32)
    wrapped = np.tile(float_to_pcm16(source), 3)
    assert not click_free(wrapped, source)  # the naive loop clicks
    mixer = Mixer(G8)
    mixer.add("a", source, loop=True)
    pcm, frames = run(mixer, 100)
    assert len(frames) == 100 and all(f.finished == () for f in frames)
    assert click_free(pcm, source)
    assert mixer.played_samples("a") == 100 * N
    assert np.array_equal(pcm[:100], float_to_pcm16(source)[:100])  # first pass is the clip itself


def test_loop_of_a_clip_longer_than_frames_repeats_with_its_period():
    source = noise(0.5, 8000)
    mixer = Mixer(G8)
    mixer.add("a", source, loop=True)
    pcm, _ = run(mixer, 60)
    period = len(source) - G8.ms_to_samples(LOOP_CROSSFADE_MS)
    assert np.array_equal(pcm[period + 200:period + 1000], pcm[2 * period + 200:2 * period + 1000])
    assert np.array_equal(pcm[period + 200:period + 1000], float_to_pcm16(source[200:1000]))
    assert np.array_equal(pcm[period - 100:period], float_to_pcm16(source[period - 100:period]))


def test_tiny_loop_shorter_than_a_frame():
    mixer = Mixer(G8)
    mixer.add("a", np.array([0.1, 0.2, 0.3], dtype=np.float32), loop=True)
    pcm, _ = run(mixer, 3)
    assert len(pcm) == 3 * N and pcm.min() > 0


# -- limiter ------------------------------------------------------------------------------------

def test_limiter_on_overload_no_wrap_no_hard_clip():
    loud = tone(300, 1000, 8000, 0.0)
    mixer = Mixer(G8)
    for key in "abcd":
        mixer.add(key, loud, gain_db=6)   # +18 dB over full scale in sum
    pcm, _ = run(mixer)
    threshold = 10 ** (-1 / 20) * 32768
    assert np.max(np.abs(pcm.astype(np.int32))) <= threshold + 1
    assert np.count_nonzero(np.abs(pcm.astype(np.int32)) >= 32767) == 0  # never at the rails
    # No wrap: the output has the sign of the summed input wherever the input is not tiny.
    wanted = np.tile(loud, 1)[:len(pcm)]
    big = np.abs(wanted) > 0.05
    assert np.all(np.sign(pcm[big]) == np.sign(wanted[big]))
    # Not a hard clip: the limited wave stays a sine (a hard clip of this sum measures about -8 dB).
    assert distortion_db(pcm[800:], 300, 8000) < -40
    clipped = float_to_pcm16(np.clip(4 * 10 ** (6 / 20) * loud, -1, 1))
    assert distortion_db(clipped[800:], 300, 8000) > -15
    assert abs(level_db(pcm[1600:]) - -1) < 1.0


def test_limiter_passes_everything_under_threshold_untouched():
    source = noise(1, 8000, level=0.89)  # peak just under -1 dBFS (0.891)
    mixer = Mixer(G8)
    mixer.add("a", source)
    pcm, _ = run(mixer)
    assert np.array_equal(pcm, float_to_pcm16(source))


def test_limiter_recovers_after_an_overload():
    mixer = Mixer(G8)
    mixer.add("burst", tone(300, 100, 8000, 0.0), gain_db=12)
    mixer.add("bed", tone(500, 3000, 8000, -20))
    pcm, _ = run(mixer)
    tail = pcm[16000:]  # 2 s later: back to unity gain, bit-exact
    assert np.array_equal(tail, float_to_pcm16(tone(500, 3000, 8000, -20))[16000:])


# -- threads ------------------------------------------------------------------------------------

def test_control_from_other_threads_while_mixing():
    mixer = Mixer(G8)
    stop = threading.Event()
    errors: list[BaseException] = []

    def control() -> None:
        try:
            for i in range(200):
                key = f"k{i}"
                mixer.add(key, noise(0.05, 8000, seed=i), loop=i % 2 == 0)
                mixer.set_gain(key, -6)
                if i % 3 == 0:
                    mixer.stop(key)
                mixer.played_samples(key)
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    worker = threading.Thread(target=control, name="control")
    worker.start()
    frames = 0
    while not stop.is_set() or mixer.has_active():
        if mixer.mix() is not None:
            frames += 1
        if stop.is_set():
            mixer.stop_all()
    worker.join()
    assert errors == [] and frames > 0


def test_limiter_starts_fresh_after_the_mixer_went_idle():
    mixer = Mixer(G8)
    mixer.add("burst", tone(300, 40, 8000, 0.0), gain_db=12)
    run(mixer)
    quiet = tone(500, 100, 8000, -20)
    mixer.add("quiet", quiet)
    pcm, _ = run(mixer)
    assert np.array_equal(pcm[:len(quiet)], float_to_pcm16(quiet))
