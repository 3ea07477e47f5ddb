"""The media side of the simulator under its former single-module name, for code that imports it so.

It lived here in one module; it is now four, one concept each:
- simulator.stream_params: StreamParams and CallIdentity, what a stream is for;
- simulator.recorder: Recorder, what the caller heard on a sample-exact playout timeline;
- simulator.stream: MediaStream and its per-call StreamState, Telnyx's side of the protocol;
- simulator.engine: MediaEngine, the loop thread and 20 ms ticker shared by every stream.
New code imports from those.
"""

from simulator.engine import MAX_WRITE_BUFFER, PHASES, MediaEngine, new_event_loop
from simulator.recorder import Recorder
from simulator.stream import (
    CLOSE_TIMEOUT_S,
    ERROR_TITLES,
    FRAME_MS,
    FRAME_S,
    LOOPBACK_HOSTS,
    MAX_CHUNK_S,
    MAX_MESSAGE_BYTES,
    MIN_CHUNK_MS,
    MP3_MIN_INTERVAL_S,
    MediaStream,
    StreamState,
    StreamStats,
    encoded_caller_audio,
    is_loopback_url,
    probe_socket,
)
from simulator.stream_params import CallIdentity, StreamParams

__all__ = ["CLOSE_TIMEOUT_S", "ERROR_TITLES", "FRAME_MS", "FRAME_S", "LOOPBACK_HOSTS", "MAX_CHUNK_S",
           "MAX_MESSAGE_BYTES", "MAX_WRITE_BUFFER", "MIN_CHUNK_MS", "MP3_MIN_INTERVAL_S", "PHASES", "CallIdentity",
           "MediaEngine", "MediaStream", "Recorder", "StreamParams", "StreamState", "StreamStats",
           "encoded_caller_audio", "is_loopback_url", "new_event_loop", "probe_socket"]
