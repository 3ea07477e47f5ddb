"""The clips that ship in media/: present, decodable as a clip, and reproducible by their script."""

import importlib.util
from pathlib import Path

import numpy as np
import soundfile as sf

from mixer.sources import load_clip

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_chime_is_what_its_script_writes(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_clips", ROOT / "media" / "make_clips.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    shipped, rate = sf.read(ROOT / "media" / "chime.wav", dtype="int16")
    made, _ = sf.read(tmp_path / "chime.wav", dtype="int16")
    assert rate == 16000 and np.array_equal(shipped, made)


def test_the_chime_loads_as_a_clip_at_the_call_rate() -> None:
    samples = load_clip(ROOT / "media", "chime", 8000, max_seconds=600)
    assert len(samples) == 9600 and 0.4 < np.max(np.abs(samples)) < 0.6  # 1.2 s, peak about -6 dBFS
