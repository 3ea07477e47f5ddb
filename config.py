"""Typed configuration, read once in create_app: defaults, then the environment, then overrides.

Every key is listed in .env.example. A bad value stops start-up with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mixer.codecs import AMR_WB_REFUSAL, SUPPORTED_RATES


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names the key."""


CODECS = tuple(SUPPORTED_RATES)  # PCMU, PCMA, G722, OPUS, L16
TARGET_LEGS = ("self", "opposite", "both")
TRACKS = ("inbound_track", "outbound_track", "both_tracks")


@dataclass(frozen=True)
class Config:
    TELNYX_API_KEY: str = ""
    TELNYX_PUBLIC_KEY: str = ""
    TELNYX_BASE_URL: str = ""
    WEBHOOK_VERIFY: bool = True
    WEBHOOK_TOLERANCE_S: int = 300
    STREAM_WEBSOCKET_URL: str = ""
    STREAM_CODEC: str = "PCMU"
    STREAM_SAMPLE_RATE: int = 8000
    STREAM_TARGET_LEGS: str = "self"
    STREAM_TRACK: str = "inbound_track"
    STREAM_AUTH_TOKEN: str = ""
    STREAM_AUTH_SECRET: str = ""
    L16_BYTE_ORDER: str = "big"
    API_TOKEN: str = ""
    HOST: str = "127.0.0.1"
    PORT: int = 5000
    SERVER_THREADS: int = 32
    DATABASE_PATH: Path = Path("data/mixer.sqlite3")
    MEDIA_DIR: Path = Path("media")
    MAX_UPLOAD_BYTES: int = 20 * 1024 * 1024
    MAX_INJECTION_SECONDS: float = 600.0
    MAX_ACTIVE_INJECTIONS: int = 16
    AUDIO_URL_TIMEOUT_S: float = 10.0
    AUDIO_URL_ALLOW_PRIVATE: bool = False
    OUTBOUND_CHUNK_MS: int = 20
    OUTBOUND_LEAD_MS: int = 60
    DUCK_DEPTH_DB: float = -12.0
    TELNYX_TIMEOUT_S: float = 5.0
    TELNYX_MAX_RETRIES: int = 2
    WS_IDLE_TIMEOUT_S: float = 30.0
    WS_MAX_BUFFERED_BYTES: int = 1 << 20
    WS_SEND_BUFFER_BYTES: int = 0
    HTTP_HEAD_TIMEOUT_S: float = 10.0
    HTTP_BODY_MIN_RATE: int = 64 * 1024
    LOG_LEVEL: str = "INFO"
    EVENT_FEEDS_MAX: int = 64
    CALLBACK_URL: str = ""
    CALLBACK_SIGNING_KEY: str = ""
    CALLBACK_ALLOW_PRIVATE: bool = False
    EVENT_FEED_MAX_S: float = 600.0
    # Scaled mode (cluster/): every process with the same REDIS_URL and DATABASE_URL is a node.
    DATABASE_URL: str = ""
    REDIS_URL: str = ""
    CLUSTER_SECRET: str = ""
    NODE_ID: str = ""
    CLUSTER_HOST: str = ""
    CLUSTER_PORT: int = 0
    CLUSTER_ADVERTISE_URL: str = ""
    NODE_LEASE_MS: int = 3000
    DRAIN_TIMEOUT_S: float = 30.0
    RESUME_WINDOW_S: float = 14400.0
    WORKERS: int = 1
    # Recordings (streams/recording.py): every call's audio, caller and what we sent, as stereo WAV.
    RECORDING: bool = False
    RECORDING_DIR: str = ""  # empty: "recordings" beside DATABASE_PATH
    RECORDING_RETENTION_DAYS: float = 30.0
    RECORDING_BUFFER_S: float = 10.0

    @property
    def scaled(self) -> bool:
        return bool(self.REDIS_URL)

    @property
    def recording_dir(self) -> Path:
        return Path(self.RECORDING_DIR) if self.RECORDING_DIR else self.DATABASE_PATH.parent / "recordings"

    def validate(self) -> Config:
        def need(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"{key}: {why} (got {getattr(self, key)!r})")

        need(self.STREAM_CODEC != "AMR-WB", "STREAM_CODEC", AMR_WB_REFUSAL)
        need(self.STREAM_CODEC in CODECS, "STREAM_CODEC", f"must be one of {', '.join(CODECS)}")
        rates = SUPPORTED_RATES[self.STREAM_CODEC]
        need(self.STREAM_SAMPLE_RATE in rates, "STREAM_SAMPLE_RATE",
             f"must be one of {', '.join(map(str, rates))} with {self.STREAM_CODEC}")
        need(self.STREAM_TARGET_LEGS in TARGET_LEGS, "STREAM_TARGET_LEGS",
             f"must be one of {', '.join(TARGET_LEGS)}")
        need(self.STREAM_TRACK in TRACKS, "STREAM_TRACK", f"must be one of {', '.join(TRACKS)}")
        need(self.L16_BYTE_ORDER in ("big", "little"), "L16_BYTE_ORDER", "must be big or little")
        need(
            not self.STREAM_WEBSOCKET_URL or self.STREAM_WEBSOCKET_URL.startswith(("ws://", "wss://")),
            "STREAM_WEBSOCKET_URL", "must start with wss:// (or ws:// for local testing)",
        )
        need(len(self.STREAM_AUTH_TOKEN) <= 4000, "STREAM_AUTH_TOKEN", "is limited to 4000 characters")
        need(0 < self.PORT < 65536, "PORT", "must be a TCP port")
        need(self.SERVER_THREADS >= 4, "SERVER_THREADS", "must be at least 4")
        need(self.MAX_UPLOAD_BYTES > 0, "MAX_UPLOAD_BYTES", "must be positive")
        need(self.MAX_INJECTION_SECONDS > 0, "MAX_INJECTION_SECONDS", "must be positive")
        need(self.MAX_ACTIVE_INJECTIONS > 0, "MAX_ACTIVE_INJECTIONS", "must be positive")
        need(self.AUDIO_URL_TIMEOUT_S > 0, "AUDIO_URL_TIMEOUT_S", "must be positive")
        need(self.OUTBOUND_CHUNK_MS in (20, 40, 60, 80, 100), "OUTBOUND_CHUNK_MS",
             "must be 20, 40, 60, 80 or 100 (Telnyx takes 20 ms to 30 s per chunk)")
        need(0 <= self.OUTBOUND_LEAD_MS <= 1000, "OUTBOUND_LEAD_MS", "must be within 0..1000")
        need(-60.0 <= self.DUCK_DEPTH_DB <= 0.0, "DUCK_DEPTH_DB", "must be within -60..0")
        need(self.TELNYX_TIMEOUT_S > 0, "TELNYX_TIMEOUT_S", "must be positive")
        need(0 <= self.TELNYX_MAX_RETRIES <= 10, "TELNYX_MAX_RETRIES", "must be within 0..10")
        need(self.WS_IDLE_TIMEOUT_S > 0, "WS_IDLE_TIMEOUT_S", "must be positive")
        need(self.WS_MAX_BUFFERED_BYTES >= 4096, "WS_MAX_BUFFERED_BYTES", "must be at least 4096")
        need(self.WS_SEND_BUFFER_BYTES >= 0, "WS_SEND_BUFFER_BYTES", "must be 0 (the kernel's) or positive")
        need(self.HTTP_HEAD_TIMEOUT_S > 0, "HTTP_HEAD_TIMEOUT_S", "must be positive")
        need(self.HTTP_BODY_MIN_RATE >= 1024, "HTTP_BODY_MIN_RATE", "must be at least 1024 bytes/s")
        need(len(self.STREAM_AUTH_SECRET) in (0, *range(16, 4097)), "STREAM_AUTH_SECRET",
             "must be 16 to 4096 characters, or empty for one made at start-up")
        need(self.WEBHOOK_TOLERANCE_S > 0, "WEBHOOK_TOLERANCE_S", "must be positive")
        need(not self.CALLBACK_URL or self.CALLBACK_URL.startswith(("http://", "https://")), "CALLBACK_URL",
             "must be an http:// or https:// URL")
        need(1 <= self.EVENT_FEEDS_MAX <= 10_000, "EVENT_FEEDS_MAX", "must be within 1..10000")
        need(self.EVENT_FEED_MAX_S > 0, "EVENT_FEED_MAX_S", "must be positive")
        need(not self.DATABASE_URL or self.DATABASE_URL.startswith(("postgresql://", "postgres://")),
             "DATABASE_URL", "must be a postgresql:// URL")
        need(not self.REDIS_URL or self.REDIS_URL.startswith(("redis://", "rediss://", "unix://")),
             "REDIS_URL", "must be a redis://, rediss:// or unix:// URL")
        need(not self.REDIS_URL or bool(self.DATABASE_URL), "DATABASE_URL",
             "must be set with REDIS_URL: the nodes share their event log in PostgreSQL")
        need(not self.REDIS_URL or 16 <= len(self.CLUSTER_SECRET) <= 4096, "CLUSTER_SECRET",
             "must be 16 to 4096 characters with REDIS_URL, the same on every node (it signs their requests "
             "to each other and the media sockets' tokens)")
        need(0 <= self.CLUSTER_PORT < 65536, "CLUSTER_PORT", "must be a TCP port, or 0 for any free one")
        need(not self.CLUSTER_ADVERTISE_URL or self.CLUSTER_ADVERTISE_URL.startswith(("http://", "https://")),
             "CLUSTER_ADVERTISE_URL", "must be an http:// URL other nodes can reach")
        need(self.NODE_LEASE_MS >= 1000, "NODE_LEASE_MS", "must be at least 1000")
        need(0 <= self.DRAIN_TIMEOUT_S <= 3600, "DRAIN_TIMEOUT_S", "must be within 0..3600")
        need(0 <= self.RESUME_WINDOW_S <= 86400, "RESUME_WINDOW_S", "must be within 0..86400")
        need(1 <= self.WORKERS <= 256, "WORKERS", "must be within 1..256")
        need(0 <= self.RECORDING_RETENTION_DAYS <= 36500, "RECORDING_RETENTION_DAYS",
             "must be within 0..36500 (0 keeps recordings for ever)")
        need(0.1 <= self.RECORDING_BUFFER_S <= 600, "RECORDING_BUFFER_S", "must be within 0.1..600 seconds")
        need("\0" not in self.RECORDING_DIR, "RECORDING_DIR", "must be a directory path")
        need(self.WORKERS == 1 or bool(self.REDIS_URL), "WORKERS",
             "more than 1 needs REDIS_URL, DATABASE_URL and CLUSTER_SECRET: the worker processes are nodes "
             "that share their calls through Redis; set them, or WORKERS=1")
        return self


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(key: str, kind: Any, raw: Any) -> Any:
    if kind is bool or kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ConfigError(f"{key}: must be true or false (got {raw!r})")
    if kind is int or kind == "int":
        if isinstance(raw, bool):
            raise ConfigError(f"{key}: must be an integer (got {raw!r})")
        try:
            return int(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{key}: must be an integer (got {raw!r})") from None
    if kind is float or kind == "float":
        try:
            return float(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{key}: must be a number (got {raw!r})") from None
    if kind is Path or kind == "Path":
        return Path(str(raw))
    return str(raw).strip()


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; '#' comments; optional quotes. The real environment wins over the file."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_config(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    dotenv: Path | None = Path(".env"),
) -> Config:
    """Defaults, then .env, then the environment, then `overrides` (tests)."""
    source: dict[str, Any] = dict(read_dotenv(dotenv)) if dotenv else {}
    source.update(os.environ if environ is None else environ)
    known = {f.name: f for f in fields(Config)}
    values: dict[str, Any] = {}
    for name, spec in known.items():
        if name in source and source[name] != "":
            values[name] = _coerce(name, spec.type, source[name])
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ConfigError(f"{key}: unknown configuration key")
        values[key] = _coerce(key, known[key].type, value)
    return dataclasses.replace(Config(), **values).validate()
