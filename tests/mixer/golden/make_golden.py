"""Regenerate g711.json: G.711 golden values, computed by the reference oracle (audioop).

Run from the repository root:  .venv/bin/python tests/mixer/golden/make_golden.py
The inputs are fixed (segment edges, extremes and a seeded random sample), so the file only
changes if the oracle does.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

OUT = Path(__file__).with_name("g711.json")


def inputs() -> list[int]:
    edges = [0, 1, -1, 2, -2, 3, -3, 4, -4, 7, -7, 8, -8, 32767, -32768, 32766, -32767]
    for e in (31, 32, 63, 64, 95, 96, 127, 128, 255, 256, 511, 512, 1023, 1024, 2047, 2048,
              4095, 4096, 8191, 8192, 16383, 16384, 32635, 32636):
        edges += [e, -e]
    rng = np.random.default_rng(711)
    edges += [int(v) for v in rng.integers(-32768, 32768, size=24)]
    return edges


def main() -> None:
    pcm = inputs()
    raw = np.array(pcm, dtype=np.int16).tobytes()
    codes = bytes(range(256))
    golden = {
        "pcm": pcm,
        "ulaw": list(audioop.lin2ulaw(raw, 2)),
        "alaw": list(audioop.lin2alaw(raw, 2)),
        "ulaw_decoded": np.frombuffer(audioop.ulaw2lin(codes, 2), dtype=np.int16).tolist(),
        "alaw_decoded": np.frombuffer(audioop.alaw2lin(codes, 2), dtype=np.int16).tolist(),
    }
    OUT.write_text(json.dumps(golden, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
