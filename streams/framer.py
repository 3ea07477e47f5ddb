"""One tick of the media clock for many calls: caller levels in, mixed and encoded frames out.

Per call, the work of a tick is a few numpy operations on 160 samples, where numpy's fixed
cost per operation dominates. So the framer batches across calls (see mixer.batch):
- inbound: the caller audio each call received since the last tick is decoded and measured in
  one pass per codec, then fed to each call's ducking detector;
- outbound: each call mixes into one row of a block; the block is scaled (a lone source's
  gain), limited, converted, encoded and wrapped in media messages together, and each call
  sends its own. G.722 and OPUS calls are encoded row by row, each by its own encoder.
Only the mixing itself, and the send, stay per call.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple, Protocol

import numpy as np

from mixer.batch import FrameBlock, finish_frames
from mixer.codecs import Codec
from mixer.ducking import levels_dbfs, row_levels_dbfs
from mixer.mixer import Mixer
from streams.connection import Sender
from streams.levels import SENT_EVERY_TICKS, SentMeter
from streams.protocol import media_frame, media_messages

logger = logging.getLogger(__name__)


class OutFrame(NamedTuple):
    """A call's mixed frame on its way out: where it goes and what finishes and encodes it."""

    conn: Sender
    mixer: Mixer
    codec: Codec
    finished: tuple[str, ...]
    gain: float  # still to apply to the mixed row (Mixer.mix_unscaled_into)


class Framed(Protocol):
    """A call as the framer sees it (streams.session.CallSession)."""

    call_control_id: str
    sent_meter: SentMeter

    @property
    def frame_samples(self) -> int: ...

    def take_caller_audio(self) -> tuple[Mixer, list[tuple[Codec, bytes]]] | None:
        """Inbound audio since the last tick, each chunk with the codec it arrived in (whole
        samples, never empty), and the mixer whose ducking it drives."""

    def begin_frame(self, out: np.ndarray) -> OutFrame | None:
        """Mix the next frame into `out`, but for the OutFrame's gain; None when the call has
        nothing to send."""

    def end_frame(self, frame: OutFrame, message: bytes, payload: bytes | np.ndarray | None = None) -> bool:
        """Send the frame's media message (protocol.media_frame of its encoded bytes, as UTF-8);
        False when it could not be sent. `payload`: those encoded bytes (or a uint8 row of them)."""


class Framer:
    """Used by the media clock's thread only."""

    def __init__(self) -> None:
        self._blocks: dict[int, FrameBlock] = {}
        self._ticks = 0  # produce() calls, for the meters' sampling

    def feed_levels(self, calls: Sequence[Framed]) -> None:
        """Measure the caller audio every call received since the last tick, for ducking."""
        # By codec instance (one per format, see get_codec): L16 byte orders must not mix. G.722
        # and OPUS arrive here already decoded (CallSession.on_caller_audio), as little-endian L16.
        groups: dict[int, tuple[Codec, list[bytes], list[tuple[Mixer, int]]]] = {}
        for call in calls:
            try:
                taken = call.take_caller_audio()
            except Exception:
                logger.exception("[%s] reading caller audio failed", call.call_control_id)
                continue
            if taken is None:
                continue
            mixer, chunks = taken
            for codec, chunk in chunks:
                group = groups.get(id(codec))
                if group is None:
                    group = groups[id(codec)] = (codec, [], [])
                group[1].append(chunk)
                group[2].append((mixer, len(chunk) // codec.bytes_per_sample))
        for codec, audio, owners in groups.values():
            try:
                pcm = codec.decode(b"".join(audio))
                levels = levels_dbfs(pcm, [samples for _, samples in owners])
            except Exception:  # the calls of this codec lose one tick of ducking input, no more
                logger.exception("measuring %s caller audio failed", codec.name)
                continue
            for (mixer, samples), level in zip(owners, levels, strict=True):
                mixer.feed_level(level, samples)

    def produce(self, calls: Sequence[Framed]) -> list[Framed]:
        """One frame for each call that has something to send; returns the calls that sent one."""
        self._ticks += 1
        metered = self._ticks % SENT_EVERY_TICKS == 0
        by_size: dict[int, list[Framed]] = defaultdict(list)
        for call in calls:
            by_size[call.frame_samples].append(call)
        sent: list[Framed] = []
        for samples, group in by_size.items():
            block = self._blocks.get(samples)
            if block is None:
                block = self._blocks[samples] = FrameBlock(samples)
            rows = block.rows(len(group))
            mixed: list[tuple[Framed, OutFrame]] = []
            for call in group:
                try:
                    frame = call.begin_frame(rows[len(mixed)])
                except Exception:  # one broken call must not silence the others
                    logger.exception("[%s] mixing failed", call.call_control_id)
                    continue
                if frame is not None:
                    mixed.append((call, frame))
            if not mixed:
                continue
            try:
                self._send(rows[:len(mixed)], mixed, sent, metered)
            except Exception:  # only this group's frame is lost; the clock keeps going
                logger.exception("finishing %d frames of %d samples failed", len(mixed), samples)
        return sent

    @staticmethod
    def _send(rows: np.ndarray, mixed: list[tuple[Framed, OutFrame]], sent: list[Framed], metered: bool) -> None:
        pcm = finish_frames(rows, [frame.mixer for _, frame in mixed], [frame.gain for _, frame in mixed])
        codec = mixed[0][1].codec
        payloads: Sequence[bytes | np.ndarray]  # each call's encoded audio, for its recording
        if not codec.stateful and all(frame.codec is codec for _, frame in mixed):
            encoded = np.frombuffer(codec.encode(pcm), dtype=np.uint8).reshape(len(mixed), -1)
            messages = media_messages(encoded)
            payloads = list(encoded)
        else:  # G.722/OPUS (each call's own encoder state), or mixed formats: row by row
            each = [frame.codec.encode(row) for (_, frame), row in zip(mixed, pcm, strict=True)]
            messages = [media_frame(payload).encode() for payload in each]
            payloads = each
        if metered:  # every row's level in one pass, for the calls' meters (GET /streams/<id>)
            now = time.monotonic()
            for (call, _), level in zip(mixed, row_levels_dbfs(pcm), strict=True):
                call.sent_meter.add(now, level)
        for (call, frame), message, payload in zip(mixed, messages, payloads, strict=True):
            try:
                if call.end_frame(frame, message, payload):
                    sent.append(call)
            except Exception:
                logger.exception("[%s] sending a frame failed", call.call_control_id)
