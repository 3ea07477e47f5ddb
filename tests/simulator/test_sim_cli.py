"""The CLI's offline parts: environment for a server, demo music, the plot."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from simulator import FakeTelnyx
from simulator.cli import API_KEY, load_seed, main
from simulator.story import Step, chord_music, demo_steps, plot_mix


def test_env_prints_what_a_server_needs_with_a_stable_key(tmp_path, capsys):
    key_file = tmp_path / "key"
    assert main(["env", "--port", "8799", "--key-file", str(key_file)]) == 0
    first = capsys.readouterr().out.splitlines()
    assert main(["env", "--port", "8799", "--key-file", str(key_file)]) == 0
    assert capsys.readouterr().out.splitlines() == first
    public_key = FakeTelnyx(signing_seed=load_seed(key_file)).public_key
    assert first == [f"TELNYX_API_KEY={API_KEY}", "TELNYX_BASE_URL=http://127.0.0.1:8799/v2",
                     f"TELNYX_PUBLIC_KEY={public_key}"]


def test_demo_music_is_a_loopable_wav_of_chords():
    data, rate = sf.read(io.BytesIO(chord_music(16000)), dtype="float32")
    assert rate == 16000 and len(data) == 4 * 16000
    assert 0.3 < np.abs(data).max() < 0.4  # -9 dBFS peak
    steps = demo_steps()
    assert all(isinstance(s, Step) for s in steps)
    assert [s.kind for s in steps].count("inject") == 4 and steps[-1].kind == "clear"


def test_plot_writes_a_png(tmp_path):
    rng = np.random.default_rng(1)
    pcm = (rng.standard_normal(8000) * 3000).astype(np.int16)
    path = plot_mix(pcm, pcm, 8000, tmp_path / "mix.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
