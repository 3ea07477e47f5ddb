"""What recording a call costs, printed as a plain-text table.

    .venv/bin/python bench/bench_recording.py [--dir PATH]

- On the media loop: one caller frame and one sent frame handed to a recording
  (Recording.caller / Recording.sent: a lock, a tuple, a deque append), per frame.
- On the writer thread: a call-second of both channels drained, decoded, placed on the timeline
  and appended to the WAV in --dir (default: a temporary directory), per codec and rate.

Each figure is the best of several timed runs (time.perf_counter). The writer's figure includes
the file writes (page cache, not a sync to the disk).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eventlog import EventLog
from metrics import Metrics
from mixer.codecs import get_codec
from mixer.geometry import FRAME_MS, FrameGeometry
from streams.recording import Recordings

RUNS = 5
SECONDS = 10  # of call audio per writer run


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def loop_cost(recordings: Recordings, clock: Clock) -> float:
    """Seconds per frame handed over (caller and sent alternately), the buffer drained between runs."""
    codec = get_codec("PCMU", 8000)
    payload = codec.encode(np.zeros(FrameGeometry(8000).samples_per_frame, np.int16))
    rec = recordings.open("bench-loop", 8000)
    reps = 2000  # within the buffer: no drops
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        for k in range(reps // 2):
            rec.caller(codec, payload, k, clock.now)
            rec.sent(codec, payload, clock.now)
        best = min(best, (time.perf_counter() - start) / reps)
        rec._buffer.clear()
    rec.close()
    recordings.run_once()
    return best


def writer_cost(recordings: Recordings, clock: Clock, encoding: str, rate: int) -> float:
    """Writer seconds per call-second of both channels."""
    codec = get_codec(encoding, rate)
    samples = FrameGeometry(rate).samples_per_frame
    rng = np.random.default_rng(1)
    payload = codec.encode((rng.standard_normal(samples) * 3000).astype(np.int16))
    frames = SECONDS * 1000 // FRAME_MS
    best = float("inf")
    for run in range(RUNS):
        rec = recordings.open(f"bench-{encoding}-{rate}-{run}", rate)
        origin = rec.origin
        elapsed = 0.0
        for k in range(frames):
            at = origin + k * FRAME_MS / 1000
            rec.caller(codec, payload, k + 1, at)
            rec.sent(codec, payload, at)
            if k % 5 == 4:  # the writer's 100 ms round
                clock.now = at
                start = time.perf_counter()
                recordings.run_once()
                elapsed += time.perf_counter() - start
        rec.close()
        start = time.perf_counter()
        recordings.run_once()
        elapsed += time.perf_counter() - start
        best = min(best, elapsed / SECONDS)
        rec.path.unlink()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None, help="where the WAV files go (default: a temp directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.dir or Path(tmp)
        log = EventLog(Path(tmp) / "events.sqlite3")
        clock = Clock()
        recordings = Recordings(directory, buffer_s=60, retention_days=0, log=log, metrics=Metrics(), clock=clock)
        try:
            per_frame = loop_cost(recordings, clock)
            print("Recording, on the media loop (per frame handed over)")
            print(f"  {per_frame * 1e9:8.0f} ns")
            print()
            print(f"Recording, on the writer thread (per call-second of both channels, {directory})")
            print(f"  {'codec':<12}{'rate':>7}{'writer':>12}{'calls/core':>12}")
            for encoding, rate in (("PCMU", 8000), ("PCMA", 8000), ("L16", 8000), ("L16", 16000)):
                cost = writer_cost(recordings, clock, encoding, rate)
                print(f"  {encoding:<12}{rate:>7}{cost * 1e3:>9.2f} ms{1 / cost:>12.0f}")
        finally:
            log.close()


if __name__ == "__main__":
    main()
