"""Typed configuration: defaults, environment, overrides; bad values name their key."""

from pathlib import Path

import pytest

from config import ConfigError, load_config


def test_defaults():
    cfg = load_config(environ={}, dotenv=None)
    assert (cfg.STREAM_CODEC, cfg.STREAM_SAMPLE_RATE, cfg.STREAM_TARGET_LEGS) == ("PCMU", 8000, "self")
    assert cfg.MAX_UPLOAD_BYTES == 20 * 1024 * 1024 and cfg.MAX_ACTIVE_INJECTIONS == 16
    assert (cfg.OUTBOUND_CHUNK_MS, cfg.OUTBOUND_LEAD_MS) == (20, 60)
    assert cfg.WEBHOOK_VERIFY is True


def test_environment_then_overrides_win(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("# comment\nPORT=7000\nSTREAM_CODEC='PCMA'\nHOST=0.0.0.0\n")
    cfg = load_config({"HOST": "127.0.0.2"}, environ={"PORT": "8000"}, dotenv=dotenv)
    assert (cfg.PORT, cfg.STREAM_CODEC, cfg.HOST) == (8000, "PCMA", "127.0.0.2")
    assert isinstance(load_config({"DATABASE_PATH": "x/y.db"}, environ={}).DATABASE_PATH, Path)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": 0}, "PORT"),
        ({"STREAM_CODEC": "G729"}, "STREAM_CODEC"),
        ({"STREAM_CODEC": "PCMU", "STREAM_SAMPLE_RATE": 16000}, "STREAM_SAMPLE_RATE"),
        ({"STREAM_CODEC": "OPUS", "STREAM_SAMPLE_RATE": 22050}, "STREAM_SAMPLE_RATE"),
        ({"STREAM_CODEC": "G722", "STREAM_SAMPLE_RATE": 48000}, "STREAM_SAMPLE_RATE"),
        ({"STREAM_CODEC": "L16", "STREAM_SAMPLE_RATE": 32000}, "STREAM_SAMPLE_RATE"),
        ({"STREAM_CODEC": "AMR-WB", "STREAM_SAMPLE_RATE": 16000}, "STREAM_CODEC"),
        ({"STREAM_CODEC": "opus"}, "STREAM_CODEC"),  # Telnyx's names are case sensitive
        ({"STREAM_TARGET_LEGS": "everyone"}, "STREAM_TARGET_LEGS"),
        ({"WEBHOOK_VERIFY": "maybe"}, "WEBHOOK_VERIFY"),
        ({"STREAM_WEBSOCKET_URL": "https://example.com/stream"}, "STREAM_WEBSOCKET_URL"),
        ({"OUTBOUND_CHUNK_MS": 10}, "OUTBOUND_CHUNK_MS"),
        ({"MAX_INJECTION_SECONDS": "-1"}, "MAX_INJECTION_SECONDS"),
        ({"NOT_A_KEY": 1}, "NOT_A_KEY"),
        ({"RECORDING": "sometimes"}, "RECORDING"),
        ({"RECORDING_RETENTION_DAYS": -1}, "RECORDING_RETENTION_DAYS"),
        ({"RECORDING_RETENTION_DAYS": "nan"}, "RECORDING_RETENTION_DAYS"),
        ({"RECORDING_RETENTION_DAYS": "a week"}, "RECORDING_RETENTION_DAYS"),
        ({"RECORDING_BUFFER_S": 0}, "RECORDING_BUFFER_S"),
    ],
)
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"^{key}:"):
        load_config(overrides, environ={}, dotenv=None)


def test_malformed_dotenv_names_the_line(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("PORT=1\nthis line is wrong\n")
    with pytest.raises(ConfigError, match=r"\.env:2"):
        load_config(environ={}, dotenv=dotenv)


def test_env_example_lists_every_key():
    from dataclasses import fields

    from config import Config

    text = (Path(__file__).resolve().parents[1] / ".env.example").read_text()
    listed = {line.split("=")[0] for line in text.splitlines() if "=" in line and not line.startswith("#")}
    assert listed == {f.name for f in fields(Config)}


def test_recordings_default_to_off_beside_the_database():
    cfg = load_config({"DATABASE_PATH": "/srv/mixer/db.sqlite3"}, environ={}, dotenv=None)
    assert cfg.RECORDING is False and cfg.RECORDING_RETENTION_DAYS == 30
    assert cfg.recording_dir == Path("/srv/mixer/recordings")
    on = load_config({"RECORDING": "on", "RECORDING_DIR": "/tmp/rec"}, environ={}, dotenv=None)
    assert on.RECORDING is True and on.recording_dir == Path("/tmp/rec")


def test_a_recording_dir_that_cannot_be_made_stops_start_up(tmp_path):
    from app import create_app

    (tmp_path / "taken").write_text("a file, not a directory")
    with pytest.raises(ConfigError, match=r"^RECORDING_DIR: cannot create"):
        create_app({"DATABASE_PATH": tmp_path / "db.sqlite3", "RECORDING": True,
                    "RECORDING_DIR": str(tmp_path / "taken" / "recordings")})
@pytest.mark.parametrize(("codec", "rate"), [
    ("PCMU", 8000), ("PCMA", 8000), ("G722", 8000), ("G722", 16000), ("OPUS", 8000), ("OPUS", 16000),
    ("L16", 8000), ("L16", 16000), ("L16", 22050), ("L16", 24000), ("L16", 48000)])
def test_every_supported_codec_and_rate_is_accepted(codec, rate):
    cfg = load_config({"STREAM_CODEC": codec, "STREAM_SAMPLE_RATE": rate}, environ={}, dotenv=None)
    assert codec == cfg.STREAM_CODEC
    assert rate == cfg.STREAM_SAMPLE_RATE


def test_amr_wb_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match=r"^STREAM_CODEC: AMR-WB is not supported: no maintained library"):
        load_config({"STREAM_CODEC": "AMR-WB"}, environ={}, dotenv=None)
