"""Sources: everything that can be injected, decoded once into float32 mono at the stream's rate.

Every function returns a new float32 1-D array with values in [-1, 1] at `sample_rate`, or
raises a domain error (mixer.errors) whose message tells the user what to fix.
"""

from __future__ import annotations

import functools
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from mixer.errors import AudioTooLong, EmptyAudio, UndecodableAudio, UnknownClip

logger = logging.getLogger(__name__)

CLIP_EXTENSIONS = (".wav", ".mp3", ".flac", ".ogg")
# A clip name is one plain file name: no separators, no leading dot, so never a way out of media_dir.
_CLIP_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

DTMF_ROWS = {"1": 697, "2": 697, "3": 697, "A": 697,
             "4": 770, "5": 770, "6": 770, "B": 770,
             "7": 852, "8": 852, "9": 852, "C": 852,
             "*": 941, "0": 941, "#": 941, "D": 941}
DTMF_COLS = {"1": 1209, "4": 1209, "7": 1209, "*": 1209,
             "2": 1336, "5": 1336, "8": 1336, "0": 1336,
             "3": 1477, "6": 1477, "9": 1477, "#": 1477,
             "A": 1633, "B": 1633, "C": 1633, "D": 1633}


def db_to_gain(db: float) -> float:
    return float(10.0 ** (db / 20.0))


def _check_rate(sample_rate: int) -> None:
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")


def _samples(ms: float, sample_rate: int) -> int:
    return max(0, round(ms * sample_rate / 1000))


def _too_long(seconds: float, max_seconds: float) -> AudioTooLong:
    return AudioTooLong(f"the audio lasts {seconds:.1f} s, longer than the limit of {max_seconds:g} s; "
                        "trim it or raise the limit.")


def to_mono(frames: np.ndarray) -> np.ndarray:
    """(n, channels) or (n,) float -> (n,) float32, channels averaged (so a full-scale mono signal
    copied into every channel stays full scale)."""
    arr = np.asarray(frames, dtype=np.float32)
    if arr.ndim == 1:
        return arr
    return arr.mean(axis=1, dtype=np.float32)


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """float32 mono at `from_rate` -> float32 mono at `to_rate`, band-limited (soxr, high quality)."""
    _check_rate(from_rate)
    _check_rate(to_rate)
    if from_rate == to_rate or len(x) == 0:
        return np.asarray(x, dtype=np.float32)
    return np.asarray(soxr.resample(x, from_rate, to_rate, quality="HQ"), dtype=np.float32)


def _finish(x: np.ndarray) -> np.ndarray:
    """Contiguous float32 in [-1, 1]; non-finite samples (a broken float file) become silence."""
    out = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    np.clip(out, -1.0, 1.0, out=out)
    return np.ascontiguousarray(out)


# The formats we promise (DESIGN §5), with the codecs inside OGG named: libsndfile 1.2 reads
# Vorbis and Opus there. It also reads AIFF, CAF, AU and more, which work but are not promised.
_PROMISED = (("WAV", ()), ("FLAC", ()), ("MP3", ()), ("OGG", (("VORBIS", "Vorbis"), ("OPUS", "Opus"))))


@functools.cache
def accepted_formats() -> str:
    """The promised formats this machine's libsndfile decodes, as a phrase for error messages,
    e.g. "WAV, FLAC, MP3 or OGG (Vorbis or Opus)". Asked of libsndfile, so an older build
    without MP3 (before 1.1) or Opus is not promised what it cannot do."""
    formats = sf.available_formats()
    names = []
    for name, codecs in _PROMISED:
        if name not in formats:
            continue
        inside = [label for subtype, label in codecs if subtype in sf.available_subtypes(name)]
        names.append(f"{name} ({' or '.join(inside)})" if inside else name)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _send_instead() -> str:
    return f"send {accepted_formats()} audio."


# Formats people send that libsndfile does not read, told apart by their first bytes, so the
# message can say what the file is rather than only that it was not recognised.
_MP4_BOX = re.compile(rb"^....ftyp", re.DOTALL)


def _looks_like(data: bytes) -> str | None:
    if _MP4_BOX.match(data):
        return "M4A/MP4 (AAC or ALAC)"
    if len(data) > 1 and data[0] == 0xFF and (data[1] & 0xF6) == 0xF0:  # ADTS sync, layer 0 (MP3 has 1-3)
        return "raw AAC (ADTS)"
    if data.startswith(b"\x1aE\xdf\xa3"):
        return "WebM/Matroska"
    if data.startswith(b"#!AMR"):
        return "AMR"
    if data.startswith(b"0&\xb2u\x8ef\xcf\x11"):
        return "WMA (ASF)"
    return None


# soundfile puts repr(file) in its messages ("Error opening <_io.BytesIO object at 0x7f...>"):
# never show that to a user.
_REPR = re.compile(r"<[^<>]*\bat 0x[0-9A-Fa-f]+>")


def _reason(exc: Exception) -> str:
    """The decoder's own words for `exc`, without Python object reprs or a trailing period."""
    # For libsndfile's errors, its own sentence without soundfile's "Error opening <repr>: " prefix.
    text = exc.error_string if isinstance(exc, sf.LibsndfileError) else _REPR.sub("the audio", str(exc))
    return text.strip().rstrip(".") or type(exc).__name__


def _undecodable(data: bytes, exc: Exception) -> UndecodableAudio:
    kind = _looks_like(data)
    if kind is not None:
        return UndecodableAudio(f"the audio could not be decoded ({_reason(exc)}): it looks like {kind}, "
                                f"which is not supported; {_send_instead()}")
    return UndecodableAudio(f"the audio could not be decoded ({_reason(exc)}); {_send_instead()}")


def decode_audio(data: bytes, sample_rate: int, *, max_seconds: float) -> np.ndarray:
    """WAV/FLAC/MP3/OGG bytes (any rate, any channel count) -> float32 mono at `sample_rate`.

    Raises EmptyAudio for no bytes or no samples, UndecodableAudio with the decoder's reason and
    the accepted formats, AudioTooLong when the audio lasts more than `max_seconds`. The samples
    are returned as decoded; their edges are the Mixer's to soften (mixer.edges).
    """
    _check_rate(sample_rate)
    if not data:
        raise EmptyAudio(f"the audio is empty (0 bytes); {_send_instead()}")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, frames = f.samplerate, f.frames
            # Refuse before decoding a long file, when the header tells the length.
            if frames > 0 and rate > 0 and frames / rate > max_seconds:
                raise _too_long(frames / rate, max_seconds)
            limit = int(max_seconds * rate) + 1
            decoded = f.read(frames=limit, dtype="float32", always_2d=True)
    except AudioTooLong:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _undecodable(data, exc) from None
    if len(decoded) == 0:
        raise EmptyAudio("the audio is empty (the file holds no samples); send a file with sound in it.")
    if len(decoded) > max_seconds * rate:
        raise _too_long(len(decoded) / rate, max_seconds)
    return _finish(resample(to_mono(decoded), rate, sample_rate))


def find_clip(media_dir: Path, name: str) -> Path:
    """The file for clip `name` (`name` itself or `name.<ext>`) inside media_dir; UnknownClip if
    there is none, UndecodableAudio if there is only one in a format we do not decode."""
    if not _CLIP_NAME.match(name) or ".." in name:
        raise UnknownClip(f"clip {name!r} is not a valid clip name; use a file name from the media "
                          "library (letters, digits, '-', '_', '.').")
    root = Path(media_dir).resolve()
    candidates = [root / name] if name.lower().endswith(CLIP_EXTENSIONS) else []
    candidates += [root / f"{name}{ext}" for ext in CLIP_EXTENSIONS]
    for path in candidates:
        resolved = path.resolve()
        # A symlink inside the library could still point elsewhere: stay inside media_dir.
        if resolved.is_file() and resolved.is_relative_to(root):
            return resolved
    # Not there in a format we decode; there in another one (hold.m4a) deserves its own answer.
    others = [root / name] if not name.lower().endswith(CLIP_EXTENSIONS) else []
    others += sorted(root.glob(f"{name}.*"))  # _CLIP_NAME leaves no glob metacharacters in name
    for path in others:
        resolved = path.resolve()
        if resolved.is_file() and resolved.is_relative_to(root):
            raise UndecodableAudio(f"clip {name!r} is {path.name}, a format this server does not decode; "
                                   f"convert it to {accepted_formats()} audio (.wav, .flac, .mp3 or .ogg).")
    raise UnknownClip(f"clip {name!r} is not in the media library; add {name}.wav (or .mp3, .flac, .ogg) "
                      "to the media directory or pick an existing clip.")


MAX_LIBRARY_LISTED = 1000


@dataclass(frozen=True)
class ClipFile:
    name: str  # what a user sends as `clip`
    filename: str
    bytes: int
    duration_ms: int | None  # None when the header does not tell


def library(media_dir: Path) -> list[ClipFile]:
    """The clips of the media library, by name, sorted by file name.

    Only files find_clip would serve (a valid name, a decoded format, inside media_dir), at most
    MAX_LIBRARY_LISTED of them. A name is the file name without its extension, unless two files
    share it (hold.wav and hold.mp3): then each is listed by its full file name.
    """
    root = Path(media_dir).resolve()
    if not root.is_dir():
        return []
    files: list[Path] = []
    for path in sorted(root.iterdir()):
        if len(files) >= MAX_LIBRARY_LISTED:
            break
        resolved = path.resolve()
        if (path.suffix.lower() in CLIP_EXTENSIONS and _CLIP_NAME.match(path.name) and ".." not in path.name
                and resolved.is_file() and resolved.is_relative_to(root)):
            files.append(path)
    stems = [path.stem for path in files]
    listed = []
    for path in files:
        # find_clip looks for name + a lower-case extension: anything else goes by its file name.
        name = path.stem if stems.count(path.stem) == 1 and path.suffix in CLIP_EXTENSIONS else path.name
        try:
            size = path.stat().st_size
        except OSError:  # removed meanwhile
            continue
        try:
            info = sf.info(str(path))
            duration_ms: int | None = int(info.frames * 1000 // info.samplerate) if info.frames > 0 else None
        except (sf.LibsndfileError, RuntimeError, ValueError):  # listed all the same; injecting it says why
            duration_ms = None
        listed.append(ClipFile(name, path.name, size, duration_ms))
    return listed


def load_clip(media_dir: Path, name: str, sample_rate: int, *, max_seconds: float) -> np.ndarray:
    """A clip from the media library, decoded like decode_audio."""
    path = find_clip(media_dir, name)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnknownClip(f"clip {name!r} could not be read ({exc.strerror}).") from None
    return decode_audio(data, sample_rate, max_seconds=max_seconds)


def silence(duration_ms: int, sample_rate: int) -> np.ndarray:
    """`duration_ms` of zeros at `sample_rate` (float32)."""
    _check_rate(sample_rate)
    return np.zeros(_samples(duration_ms, sample_rate), dtype=np.float32)


EDGE_TAPER_MS = 2  # synthetic bursts start and stop on a short raised cosine instead of a click


def _taper(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """Raised-cosine fade over the first and last EDGE_TAPER_MS of `x` (in place; returns it)."""
    k = min(_samples(EDGE_TAPER_MS, sample_rate), len(x) // 2)
    if k:
        ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(k) / k)
        x[:k] *= ramp
        x[len(x) - k:] *= ramp[::-1]
    return x


def _sine(frequency_hz: float, n: int, sample_rate: int) -> np.ndarray:
    t = np.arange(n, dtype=np.float64) / sample_rate
    return np.sin(2.0 * np.pi * frequency_hz * t)


def tone(frequency_hz: float, duration_ms: int, sample_rate: int, level_dbfs: float = -10.0) -> np.ndarray:
    """A sine of `frequency_hz` lasting `duration_ms`, peak level `level_dbfs` (0 dBFS = full scale).

    Starts at phase 0, and both ends are tapered over EDGE_TAPER_MS so the tone never clicks.
    """
    _check_rate(sample_rate)
    if not 0 < frequency_hz < sample_rate / 2:
        raise ValueError(f"frequency {frequency_hz} Hz must be between 0 and {sample_rate / 2:g} Hz")
    if level_dbfs > 0:
        raise ValueError(f"level {level_dbfs} dBFS is above full scale")
    n = _samples(duration_ms, sample_rate)
    return _finish(_taper(db_to_gain(level_dbfs) * _sine(frequency_hz, n, sample_rate), sample_rate))


def dtmf(digits: str, sample_rate: int, *, tone_ms: int = 100, gap_ms: int = 60,
         level_dbfs: float = -10.0) -> np.ndarray:
    """DTMF digits (0-9 * # A-D), each a twin tone of `tone_ms` followed by `gap_ms` of silence.

    `level_dbfs` is the peak of the summed pair; each tone gets half of it. Each burst is tapered
    like a tone. The last gap is kept so digits sent back to back stay separable.
    """
    _check_rate(sample_rate)
    keys = digits.upper()
    bad = sorted({d for d in keys if d not in DTMF_ROWS})
    if not keys or bad:
        raise ValueError(f"DTMF digits must be 0-9, *, #, A-D; got {digits!r}")
    n_tone, n_gap = _samples(tone_ms, sample_rate), _samples(gap_ms, sample_rate)
    if n_tone == 0:
        raise ValueError("tone_ms must be at least one sample long")
    amplitude = db_to_gain(level_dbfs) / 2
    out = np.zeros(len(keys) * (n_tone + n_gap), dtype=np.float64)
    for i, key in enumerate(keys):
        start = i * (n_tone + n_gap)
        burst = amplitude * (_sine(DTMF_ROWS[key], n_tone, sample_rate) + _sine(DTMF_COLS[key], n_tone, sample_rate))
        out[start:start + n_tone] = _taper(burst, sample_rate)
    return _finish(out)
