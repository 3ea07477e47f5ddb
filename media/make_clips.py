"""Writes the clips that ship in the media library (MEDIA_DIR), so `{"clip": "chime"}` works
from a fresh clone. Run from the repository root: `.venv/bin/python media/make_clips.py`.

chime.wav: two bell-like notes (E5 then C5, each a decaying partial series), 1.2 s, 16 kHz mono
16-bit; generated here, so it is free of any licence but the project's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16000


def bell(freq_hz: float, seconds: float) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    partials = ((1.0, 1.0, 3.0), (2.76, 0.4, 5.0), (5.4, 0.2, 8.0))  # ratio, level, decay per s
    tone = sum(level * np.exp(-decay * t) * np.sin(2 * np.pi * freq_hz * ratio * t)
               for ratio, level, decay in partials)
    attack = np.minimum(t / 0.005, 1.0)  # 5 ms: no click at the onset
    return np.asarray(tone * attack, dtype=np.float64)


def chime() -> np.ndarray:
    sound = np.concatenate([bell(659.25, 0.5), bell(523.25, 0.7)])
    sound *= 10 ** (-6 / 20) / np.max(np.abs(sound))  # peak at -6 dBFS
    sound[-80:] *= np.linspace(1.0, 0.0, 80)  # a 5 ms tail to silence
    return sound


def main(out_dir: Path = Path(__file__).parent) -> None:
    sf.write(out_dir / "chime.wav", chime(), RATE, subtype="PCM_16")


if __name__ == "__main__":
    main()
