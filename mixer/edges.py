"""Click-free edges: where a source starts out of silence and where it stops into silence.

A file cut mid-waveform jumps from silence to its first sample (0 -> 0.47, say) and back from its
last: a click. The Mixer gives every track a short ramp at such an edge, by this rule:

- An edge clicks when its step from silence, |x[0]| (or |x[-1]|), is above SILENT_EDGE and above
  every sample-to-sample step of the source itself within EDGE_LOOK_MS of that edge. A step that
  stands out from the signal's own motion is heard as a click; one no larger is not (noise, or a
  recording cut in a busy passage, already moves that much from one sample to the next).
- Only an edge that clicks is ramped, and only its EDGE_RAMP_MS of samples (at most half the
  source): they are scaled by a raised cosine strictly between 0 and 1. Every other sample is
  left alone.

So a source whose edges are silent, or no steeper than the source itself, is untouched, and at
0 dB with no fades comes out bit-exact; a source that would click differs in those few edge
samples only. Fades, when asked for, are the edge; a loop's seam is the Mixer's crossfade.

All functions are pure: float32 mono in, new arrays out, inputs never mutated.
"""

from __future__ import annotations

import numpy as np

EDGE_RAMP_MS = 2      # like a tone's taper: short enough to keep the attack, long enough not to click
EDGE_LOOK_MS = 10     # how much of the source next to an edge sets "the signal's own steps"
SILENT_EDGE = 2.0 ** -10  # about -60 dBFS (32 in int16): a step this small is inaudible on a call


def _samples(ms: float, sample_rate: int) -> int:
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    return max(0, round(ms * sample_rate / 1000))


def _clicks(edge: float, near: np.ndarray) -> bool:
    own = float(np.max(np.abs(np.diff(near.astype(np.float64))))) if len(near) > 1 else 0.0
    # Written so that a NaN anywhere answers False: nothing to ramp that we could measure.
    return edge > SILENT_EDGE and edge > own


def edges_that_click(x: np.ndarray, sample_rate: int) -> tuple[bool, bool]:
    """(start, end): whether starting float32 mono `x` (at `sample_rate`) out of silence, and
    stopping it into silence, would click, by the rule of the module docstring."""
    if len(x) == 0:
        return False, False
    look = max(2, _samples(EDGE_LOOK_MS, sample_rate))
    with np.errstate(invalid="ignore", over="ignore"):
        return _clicks(abs(float(x[0])), x[:look]), _clicks(abs(float(x[-1])), x[-look:])


def edge_ramp(sample_rate: int, length: int) -> np.ndarray:
    """The rising gain of a start edge for a source `length` samples long at `sample_rate`:
    float32, EDGE_RAMP_MS of samples (at most length // 2), a raised cosine strictly between 0
    and 1. A stop edge uses it reversed."""
    k = min(_samples(EDGE_RAMP_MS, sample_rate), max(0, length) // 2)
    i = np.arange(1, k + 1, dtype=np.float64)
    return (0.5 - 0.5 * np.cos(np.pi * i / (k + 1))).astype(np.float32)


def head_gain(ramp: np.ndarray, pos: int, m: int) -> np.ndarray:
    """float32 gains for samples pos .. pos+m-1 of a source whose start edge is `ramp` (1 after it)."""
    out = np.ones(m, dtype=np.float32)
    if pos < len(ramp):
        j = min(len(ramp) - pos, m)
        out[:j] = ramp[pos:pos + j]
    return out


def tail_gain(ramp: np.ndarray, pos: int, m: int, length: int) -> np.ndarray:
    """float32 gains for samples pos .. pos+m-1 of a source `length` samples long whose last
    len(ramp) samples fall along `ramp` reversed (1 before them)."""
    out = np.ones(m, dtype=np.float32)
    lo, hi = max(pos, length - len(ramp)), min(pos + m, length)
    if lo < hi:
        out[lo - pos:hi - pos] = ramp[length - hi:length - lo][::-1]
    return out


def soften_edges(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """float32 mono `x` at `sample_rate` with the edges that click ramped (a new array, same
    length): what the Mixer plays of a one-shot source at 0 dB without fades. Equal to `x`
    when neither edge clicks."""
    out = np.array(x, dtype=np.float32)
    start, end = edges_that_click(out, sample_rate)
    ramp = edge_ramp(sample_rate, len(out))
    k = len(ramp)
    if start and k:
        out[:k] *= ramp
    if end and k:
        out[len(out) - k:] *= ramp[::-1]
    return out
