"""streams.levels: a call's meters read RMS dBFS over its last frames, and the floor once they are old."""

from __future__ import annotations

import numpy as np
import pytest

from mixer.codecs import get_codec
from streams.levels import FLOOR_DBFS, FRAMES, WINDOW_S, CallerMeter, SentMeter


def test_the_caller_meter_reads_the_rms_of_its_last_frames() -> None:
    codec = get_codec("L16", 8000)
    meter = CallerMeter()
    assert meter.dbfs(0.0) == FLOOR_DBFS
    for i in range(5):  # full scale, long ago
        meter.add(i * 0.02, codec, codec.encode(np.full(160, 32767, dtype=np.int16)))
    for i in range(FRAMES - 2):  # about -20 dBFS, within the window
        meter.add(10 + i * 0.02, codec, codec.encode(np.full(160, 3277, dtype=np.int16)))
    now = 10 + (FRAMES - 3) * 0.02
    assert meter.dbfs(now) == pytest.approx(-20.0, abs=0.1)
    assert meter.dbfs(now + WINDOW_S + 0.01) == FLOOR_DBFS  # nothing recent: silence


def test_the_caller_meter_decodes_each_frame_with_its_codec() -> None:
    ulaw, l16 = get_codec("PCMU", 8000), get_codec("L16", 8000)
    meter = CallerMeter()
    tone = (3277 * np.sin(np.arange(160) * 0.3)).astype(np.int16)
    meter.add(0.0, ulaw, ulaw.encode(tone))
    meter.add(0.02, l16, l16.encode(tone))
    expected = 20 * np.log10(np.sqrt(np.mean(tone.astype(float) ** 2)) / 32768)
    assert meter.dbfs(0.02) == pytest.approx(expected, abs=0.2)


def test_the_sent_meter_averages_power_and_counts_silent_frames() -> None:
    meter = SentMeter()
    meter.add(0.0, -20.0)
    meter.add(0.02, float("-inf"))  # a silent frame halves the power: -3 dB
    assert meter.dbfs(0.02) == pytest.approx(-23.0, abs=0.05)
    meter.add(0.04, 0.0)
    assert meter.dbfs(1.0) == FLOOR_DBFS
