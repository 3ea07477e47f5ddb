"""The mixer of one call: any number of sources summed into one frame at a time.

Threads: REST threads call add / set_gain / stop / stop_all, and one mixing thread (the media
clock) feeds the caller's levels (it measures them just before it mixes) and calls mix, or
mix_into (or mix_unscaled_into) and then the limiter, 50 times a second. One lock, `_lock`,
guards the track table, the finished-track bookkeeping and the duck envelope; it is held for one
frame's arithmetic only (microseconds). The limiter and the speech detector belong to the mixing
thread alone; other threads only read whether the caller is speaking.

Click-freedom: every gain change is a ramp (set_gain over GAIN_RAMP_MS, stop over the track's
fade-out or STOP_FADE_MS, ducking over attack/release), a looping source crossfades its end
into its start over LOOP_CROSSFADE_MS, and a track whose start (or, for a one-shot, end) would
click against the silence around it gets a short edge ramp (mixer.edges: only when that edge's
step from silence is above -60 dBFS and above the track's own sample-to-sample steps next to it,
and only over EDGE_RAMP_MS), so the output never jumps further than the sources do.

Bit-exactness: a track at 0 dB with no fade and no ducking is copied into the float32 frame as
is, but for those few edge samples when an edge would click; below the limiter's threshold the
limiter leaves it alone; the int16 conversion is float_to_pcm16's. So one such one-shot track
comes out exactly as float_to_pcm16(edges.soften_edges(samples, rate)), which is
float_to_pcm16(samples) whenever its edges do not click (silent, or no steeper than itself).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mixer.codecs import float_to_pcm16
from mixer.ducking import DuckEnvelope, DuckingConfig, SpeechDetector, rms_dbfs
from mixer.edges import edge_ramp, edges_that_click, head_gain, tail_gain
from mixer.geometry import FrameGeometry
from mixer.limiter import Limiter

__all__ = ["GAIN_MAX_DB", "GAIN_MIN_DB", "DuckingConfig", "MixedFrame", "Mixer"]

logger = logging.getLogger(__name__)

GAIN_MIN_DB = -60.0
GAIN_MAX_DB = 12.0
GAIN_RAMP_MS = 20          # set_gain glides over one frame's worth of time
STOP_FADE_MS = 10          # shortest fade of a stop: long enough to avoid a click, short enough to feel instant
LOOP_CROSSFADE_MS = 20     # a loop's end is blended into its start over this long
_FINISHED_MEMORY = 256     # how many ended tracks keep answering played_samples()
DEFAULT_DUCKING = DuckingConfig()

Gain = float | np.ndarray   # a constant, or one value per sample of the frame


def _db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def _check_gain_db(gain_db: float) -> float:
    if not GAIN_MIN_DB <= gain_db <= GAIN_MAX_DB:
        raise ValueError(f"gain_db must be within {GAIN_MIN_DB:g}..{GAIN_MAX_DB:g} dB, got {gain_db}")
    return float(gain_db)


def _times(a: Gain, b: Gain) -> Gain:
    if isinstance(a, float) and a == 1.0:
        return b
    if isinstance(b, float) and b == 1.0:
        return a
    return a * b


@dataclass(frozen=True)
class MixedFrame:
    """One frame of the mix. `finished` names the tracks whose last sample is in this frame."""

    pcm: np.ndarray                 # int16, samples_per_frame long
    finished: tuple[str, ...] = ()


class _Ramp:
    """A gain that moves linearly (in amplitude) to a target over a number of samples."""

    __slots__ = ("remaining", "step", "target", "value")

    def __init__(self, value: float) -> None:
        self.value = value
        self.target = value
        self.step = 0.0
        self.remaining = 0

    def glide(self, target: float, samples: int) -> None:
        self.target = target
        if samples <= 0:
            self.value, self.remaining, self.step = target, 0, 0.0
        else:
            self.remaining = samples
            self.step = (target - self.value) / samples

    def advance(self, n: int, steps: np.ndarray) -> Gain:
        """Gain for the next `n` samples; `steps` is 1..n as float64."""
        if self.remaining == 0:
            return self.value
        k = min(n, self.remaining)
        out = np.full(n, self.target, dtype=np.float32)
        out[:k] = self.value + self.step * steps[:k]
        self.remaining -= k
        self.value = self.target if self.remaining == 0 else self.value + self.step * k
        return out


class _Track:
    """One source being played. Touched only under the Mixer's lock."""

    __slots__ = ("body", "duck", "edge", "edge_in", "edge_out", "fade_in", "fade_out", "level", "loop",
                 "period", "pos", "samples", "stop")

    def __init__(self, samples: np.ndarray, *, gain: float, loop: bool, fade_in: int, fade_out: int,
                 duck: bool, crossfade: int, sample_rate: int) -> None:
        self.samples = samples
        self.loop = loop and len(samples) > 0
        self.level = _Ramp(gain)
        self.fade_in = fade_in
        self.fade_out = fade_out
        # Edge ramps (mixer.edges) where the track would click against silence: a fade asked for
        # is that edge already, and a loop's end is never an edge (its seam is crossfaded below).
        starts, ends = edges_that_click(samples, sample_rate)
        self.edge = edge_ramp(sample_rate, len(samples))
        self.edge_in = len(self.edge) if starts and not fade_in else 0
        self.edge_out = len(self.edge) if ends and not fade_out and not self.loop else 0
        self.duck = duck
        self.stop: _Ramp | None = None
        self.pos = 0  # samples played so far, counting every pass of a loop
        self.period = len(samples)
        self.body = samples
        if self.loop:
            # Later passes play `body`: the clip minus its last L samples, whose sound is blended
            # into the first L samples. The first pass plays the clip itself.
            n = len(samples)
            xf = min(crossfade, n // 2)
            self.period = n - xf
            if xf:
                w = ((np.arange(xf, dtype=np.float64) + 0.5) / xf).astype(np.float32)
                self.body = samples[:self.period].copy()
                self.body[:xf] = samples[:xf] * w + samples[self.period:] * (np.float32(1.0) - w)

    def read(self, n: int) -> np.ndarray:
        """The next (up to) `n` source samples, unscaled; shorter only at a one-shot's end."""
        pos = self.pos
        if not self.loop:
            return self.samples[pos:pos + n]
        period = self.period
        if pos + n <= period:
            return self.samples[pos:pos + n]
        if pos >= period:
            start = pos % period
            if start + n <= period:
                return self.body[start:start + n]
        # The frame crosses a seam (or the loop is shorter than a frame): gather with wrap-around.
        out = np.take(self.body, np.arange(pos, pos + n), mode="wrap")
        if pos < period:
            out[:period - pos] = self.samples[pos:period]
        return out

    def envelope(self, m: int, steps: np.ndarray, duck_gain: Gain) -> Gain:
        """The gain to apply to the next `m` samples (all ramps, fades and ducking)."""
        gain = self.level.advance(m, steps)
        pos = self.pos
        if pos < self.edge_in:
            gain = _times(gain, head_gain(self.edge, pos, m))
        if self.edge_out and pos + m > len(self.samples) - self.edge_out:
            gain = _times(gain, tail_gain(self.edge, pos, m, len(self.samples)))
        if pos < self.fade_in:
            ramp = np.minimum((pos + steps[:m] - 1.0) / self.fade_in, 1.0).astype(np.float32)
            gain = _times(gain, ramp)
        if not self.loop and self.fade_out and pos + m > len(self.samples) - self.fade_out:
            left = len(self.samples) - 1 - pos - (steps[:m] - 1.0)
            ramp = np.clip(left / self.fade_out, 0.0, 1.0).astype(np.float32)
            gain = _times(gain, ramp)
        if self.stop is not None:
            gain = _times(gain, self.stop.advance(m, steps))
        if self.duck:
            gain = _times(gain, duck_gain)
        return gain

    @property
    def ended(self) -> bool:
        if self.stop is not None and self.stop.remaining == 0:
            return True
        return not self.loop and self.pos >= len(self.samples)


class Mixer:
    """Thread-safe mixer of one call. See the module docstring for the threading contract."""

    def __init__(self, geometry: FrameGeometry, *, ducking: DuckingConfig = DEFAULT_DUCKING,
                 limiter_threshold_dbfs: float = -1.0, on_activity: Callable[[], None] | None = None) -> None:
        self.geometry = geometry
        n = geometry.samples_per_frame
        self._n = n
        self._on_activity = on_activity
        self._gain_ramp = geometry.ms_to_samples(GAIN_RAMP_MS)
        self._stop_fade = max(1, geometry.ms_to_samples(STOP_FADE_MS))
        self._crossfade = geometry.ms_to_samples(LOOP_CROSSFADE_MS)
        self._steps = np.arange(1, n + 1, dtype=np.float64)
        self._acc = np.zeros(n, dtype=np.float32)
        self._tmp = np.zeros(n, dtype=np.float32)
        # Guards the three below.
        self._lock = threading.Lock()
        self._tracks: dict[str, _Track] = {}
        self._finished_played: OrderedDict[str, int] = OrderedDict()
        self._duck = DuckEnvelope(ducking, geometry.sample_rate, n)
        self._detector = SpeechDetector(ducking, geometry.sample_rate)  # the mixing thread's
        self.limiter = Limiter(limiter_threshold_dbfs, geometry.sample_rate)  # the mixing thread's

    # -- control (any thread) -------------------------------------------------------------------

    def add(self, key: str, samples: np.ndarray, *, gain_db: float = 0.0, loop: bool = False,
            fade_in_ms: int = 0, fade_out_ms: int = 0, duck: bool = False, start_at: int = 0) -> None:
        """Start playing float32 mono `samples` (at the stream rate) under `key`, from the next frame.

        A start (or a one-shot's end) that would click gets a short edge ramp (mixer.edges).
        `start_at` > 0 resumes it that many samples in (every pass of a loop counts), rising from
        silence over GAIN_RAMP_MS rather than starting mid-wave with a click.
        Raises ValueError for a key already playing, a gain outside -60..+12 dB, negative fades or
        samples that are not 1-D.
        """
        gain = _db_to_gain(_check_gain_db(gain_db))
        if fade_in_ms < 0 or fade_out_ms < 0:
            raise ValueError("fade_in_ms and fade_out_ms must not be negative")
        arr = np.ascontiguousarray(samples, dtype=np.float32)
        if arr.ndim != 1:
            raise ValueError(f"samples must be 1-D (mono), got shape {arr.shape}")
        track = _Track(arr, gain=gain, loop=loop, fade_in=self.geometry.ms_to_samples(fade_in_ms),
                       fade_out=self.geometry.ms_to_samples(fade_out_ms), duck=duck, crossfade=self._crossfade,
                       sample_rate=self.geometry.sample_rate)
        if start_at > 0:
            track.pos = start_at
            track.level = _Ramp(0.0)
            track.level.glide(gain, self._gain_ramp)
        with self._lock:
            if key in self._tracks:
                raise ValueError(f"a track named {key!r} is already playing")
            self._finished_played.pop(key, None)
            self._tracks[key] = track
        if self._on_activity is not None:
            self._on_activity()

    def set_gain(self, key: str, gain_db: float) -> None:
        """Glide `key` to `gain_db` over GAIN_RAMP_MS. Unknown or ended keys are ignored."""
        gain = _db_to_gain(_check_gain_db(gain_db))
        with self._lock:
            track = self._tracks.get(key)
            if track is not None:
                track.level.glide(gain, self._gain_ramp)

    def stop(self, key: str, *, fade_ms: int | None = None) -> bool:
        """Fade `key` out and drop it; False if it is unknown or already ended.

        The fade lasts `fade_ms`, by default the track's own fade-out, at least STOP_FADE_MS.
        """
        with self._lock:
            track = self._tracks.get(key)
            if track is None:
                return False
            self._stop_locked(track, fade_ms)
            return True

    def stop_all(self) -> list[str]:
        """Fade every track out quickly (STOP_FADE_MS); the keys that were playing."""
        with self._lock:
            for track in self._tracks.values():
                self._stop_locked(track, STOP_FADE_MS)
            return list(self._tracks)

    def _stop_locked(self, track: _Track, fade_ms: int | None) -> None:
        if fade_ms is None:
            samples = max(track.fade_out, self._stop_fade)
        else:
            samples = max(self.geometry.ms_to_samples(fade_ms), self._stop_fade)
        if track.stop is not None and track.stop.remaining <= samples:
            return  # already fading out at least as fast
        if track.stop is None:
            track.stop = _Ramp(1.0)
        track.stop.glide(0.0, samples)

    # -- state (any thread) ---------------------------------------------------------------------

    def played_samples(self, key: str) -> int:
        """Samples of `key` mixed so far (every pass of a loop counts); kept a while after it ends."""
        with self._lock:
            track = self._tracks.get(key)
            if track is not None:
                return track.pos
            return self._finished_played.get(key, 0)

    def unplayed(self, key: str) -> np.ndarray | None:
        """The samples of `key` if not one of them has been mixed yet (a call moving to another
        node before its stream starts takes them along); else None."""
        with self._lock:
            track = self._tracks.get(key)
            return track.samples if track is not None and track.pos == 0 and track.stop is None else None

    def source(self, key: str) -> np.ndarray | None:
        """The samples `key` plays, while it plays."""
        with self._lock:
            track = self._tracks.get(key)
            return track.samples if track is not None else None

    def has_active(self) -> bool:
        with self._lock:
            return bool(self._tracks)

    @property
    def caller_speaking(self) -> bool:
        return self._detector.speaking  # a bool the mixing thread sets: read without the lock

    @property
    def active_keys(self) -> list[str]:
        with self._lock:
            return list(self._tracks)

    # -- the mixing thread (one thread only: the limiter and the speech detector are its own) -----

    def feed_caller(self, pcm: np.ndarray) -> None:
        """Inbound caller audio (int16 at the stream rate), for the ducking detector."""
        self.feed_level(rms_dbfs(pcm), len(pcm))

    def feed_level(self, level_dbfs: float, samples: int) -> None:
        """The RMS level of `samples` of inbound caller audio (see ducking.levels_dbfs)."""
        self._detector.feed_level(level_dbfs, samples)

    def mix(self) -> MixedFrame | None:
        """The next frame, or None when nothing plays (then no time passes for the sources)."""
        acc = self._acc
        finished = self.mix_into(acc)
        if finished is None:
            return None
        self.limiter.process(acc)
        return MixedFrame(float_to_pcm16(acc), finished)

    def mix_into(self, acc: np.ndarray) -> tuple[str, ...] | None:
        """Sum every track's next frame into float32 `acc` (overwritten), before the limiter.

        Returns the tracks that ended in this frame, or None when nothing plays (then `acc` is
        untouched and no time passes for the sources). Callers that mix many calls per tick
        finish the frames together (mixer.batch, via mix_unscaled_into); others call mix().
        """
        mixed = self._mix(acc, defer_gain=False)
        return None if mixed is None else mixed[0]

    def mix_unscaled_into(self, acc: np.ndarray) -> tuple[tuple[str, ...], float] | None:
        """mix_into, except that a lone track at a constant gain is left unscaled: `acc` holds
        its samples and the gain comes back, for the caller to multiply by in float32 (the
        media clock does it for every call of a tick at once). Otherwise the gain is 1.0."""
        return self._mix(acc, defer_gain=True)

    def _mix(self, acc: np.ndarray, *, defer_gain: bool) -> tuple[tuple[str, ...], float] | None:
        n = self._n
        tmp, steps = self._tmp, self._steps
        with self._lock:
            if not self._tracks:
                # Silence is a full release: the next sound starts without leftover gain reduction.
                self.limiter.reset()
                return None
            duck_gain = self._duck.advance(n, self._detector.speaking)
            finished: list[str] = []
            later = 1.0  # the gain left to the caller
            alone = defer_gain and len(self._tracks) == 1
            first = True  # the first track is written into acc, the others added to it
            for key, track in self._tracks.items():
                seg = track.read(n)
                m = len(seg)
                if first and m < n:
                    acc.fill(0.0)
                    first = False
                if m:
                    gain = track.envelope(m, steps, duck_gain if m == n or isinstance(duck_gain, float)
                                          else duck_gain[:m])
                    if first:
                        # acc = seg * gain equals 0 + seg * gain up to the sign of zero, which
                        # the int16 conversion erases: the output stays bit-exact.
                        if isinstance(gain, float) and (gain == 1.0 or alone):
                            acc[...] = seg  # np.copyto cost ~1 µs more on 160 samples (timed by hand)
                            later = gain
                        else:
                            np.multiply(seg, np.float32(gain) if isinstance(gain, float) else gain, out=acc)
                        first = False
                    elif isinstance(gain, float) and gain == 1.0:
                        np.add(acc[:m], seg, out=acc[:m])
                    else:
                        np.multiply(seg, np.float32(gain) if isinstance(gain, float) else gain, out=tmp[:m])
                        np.add(acc[:m], tmp[:m], out=acc[:m])
                    track.pos += m
                if track.ended or m < n:
                    finished.append(key)
            if not finished:
                return (), later
            for key in finished:
                self._finished_played[key] = self._tracks.pop(key).pos
            while len(self._finished_played) > _FINISHED_MEMORY:
                self._finished_played.popitem(last=False)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("tracks ended: %s", ", ".join(finished))
        return tuple(finished), later
