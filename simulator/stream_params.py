"""What a media stream is for: the call it belongs to and the parameters its command asked for.

Both are frozen: a stream's parameters never change once its streaming_start (or answer with
stream_url) is accepted; a new command makes a new stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simulator import wideband


@dataclass(frozen=True)
class StreamParams:
    """What a streaming_start (or answer with stream_url) asked for, with Telnyx's defaults."""

    url: str
    track: str = "inbound_track"
    codec: str = "default"
    mode: str = "mp3"
    bidirectional_codec: str = "PCMU"
    bidirectional_sampling_rate: int = 8000
    target_legs: str = "opposite"
    auth_token: str | None = None
    custom_parameters: dict[str, str] | None = None
    client_state: str | None = None
    l16_byteorder: str = "big"

    @classmethod
    def from_command(cls, body: dict[str, Any], *, l16_byteorder: str = "big") -> StreamParams:
        custom = body.get("custom_parameters")
        return cls(
            url=body["stream_url"],
            track=body.get("stream_track") or "inbound_track",
            codec=body.get("stream_codec") or "default",
            mode=body.get("stream_bidirectional_mode") or "mp3",
            bidirectional_codec=body.get("stream_bidirectional_codec") or "PCMU",
            bidirectional_sampling_rate=body.get("stream_bidirectional_sampling_rate") or 8000,
            target_legs=body.get("stream_bidirectional_target_legs") or "opposite",
            auth_token=body.get("stream_auth_token"),
            custom_parameters={p["name"]: p.get("value", "") for p in custom} if custom else None,
            client_state=body.get("client_state"),
            l16_byteorder=l16_byteorder,
        )

    @property
    def playout_encoding(self) -> str:
        return self.bidirectional_codec

    @property
    def playout_rate(self) -> int:
        """The rate of the PCM the caller hears. G.711 is 8 kHz by definition and G.722 16 kHz
        (whatever rate is named, RFC 3551 4.5.2); L16 and OPUS follow the requested rate."""
        if self.bidirectional_codec in ("PCMU", "PCMA"):
            return 8000
        return wideband.audio_rate(self.bidirectional_codec, self.bidirectional_sampling_rate)

    @property
    def media_encoding(self) -> str:
        """Encoding of the frames Telnyx sends (start.media_format.encoding)."""
        return self.codec if self.codec != "default" else self.bidirectional_codec

    @property
    def media_rate(self) -> int:
        if self.media_encoding in ("PCMU", "PCMA"):
            return 8000
        if self.media_encoding == self.bidirectional_codec:
            return self.bidirectional_sampling_rate
        return 16000 if self.media_encoding == "L16" else 8000

    @property
    def media_audio_rate(self) -> int:
        """The rate of the caller's PCM behind the frames Telnyx sends (media_rate but for G.722)."""
        return wideband.audio_rate(self.media_encoding, self.media_rate)

    @property
    def caller_hears(self) -> bool:
        return self.target_legs in ("self", "both")


@dataclass(frozen=True)
class CallIdentity:
    user_id: str
    call_control_id: str
    call_session_id: str
    from_: str
    to: str
    tags: tuple[str, ...] = ()
