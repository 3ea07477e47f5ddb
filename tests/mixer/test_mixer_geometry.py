"""Frame geometry: samples per frame and conversions for every rate Telnyx offers."""

from __future__ import annotations

import pytest

from mixer.geometry import FRAME_MS, FrameGeometry


@pytest.mark.parametrize(("rate", "samples"), [(8000, 160), (16000, 320), (22050, 441), (24000, 480),
                                               (48000, 960)])
def test_samples_per_frame(rate, samples):
    g = FrameGeometry(rate)
    assert g.frame_ms == FRAME_MS == 20
    assert g.samples_per_frame == samples
    assert g.frame_seconds == 0.02


def test_ms_to_samples():
    g = FrameGeometry(8000)
    assert (g.ms_to_samples(0), g.ms_to_samples(10), g.ms_to_samples(1000), g.ms_to_samples(-5)) == (0, 80, 8000, 0)
    assert FrameGeometry(16000, 30).samples_per_frame == 480


@pytest.mark.parametrize(("rate", "frame_ms"), [(0, 20), (8000, 0), (11025, 20)])
def test_invalid_geometry(rate, frame_ms):
    with pytest.raises(ValueError):
        FrameGeometry(rate, frame_ms)
