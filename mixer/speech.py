"""Text to speech, offline: espeak-ng from the `espeakng-loader` wheel, driven through ctypes.

The wheel ships the shared library and its data, so nothing is needed from the system. espeak-ng
keeps global state (one voice, one callback, one output buffer per process) and is not
thread-safe: `_ESPEAK_LOCK` serialises everything that touches it, from loading to synthesis.

It is C code fed with user text, so the server never runs it in its own process, where a crash
would end every live call: speak() hands the text to IsolatedEngine, one worker process (spawned
on first use, spawned again after it dies) running EspeakEngine. A crash or a hang there costs
that one request a SpeechUnavailable; the next request gets a fresh worker.

SpeechEngine is the seam for other engines: anything with `name`, `voices()` and `synthesize()`
can be passed to speak().
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mixer.errors import AudioError, AudioTooLong, EmptyAudio, SpeechUnavailable, UnknownVoice
from mixer.sources import resample

logger = logging.getLogger(__name__)

_AUDIO_OUTPUT_SYNCHRONOUS = 2   # espeak_AUDIO_OUTPUT: samples go to the callback, in the caller's thread
_INIT_DONT_EXIT = 0x8000        # espeakINITIALIZE_DONT_EXIT: report errors instead of exiting
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK = 0

# How long one request may keep the speech worker, its start included (about 1.3 s under
# `python app.py`: spawn imports the main module again; 0.2 s without it). espeak-ng speaks several
# hundred times faster than real time (600 s of speech in 0.8 s, measured), so even the longest
# speech an injection may have (MAX_INJECTION_SECONDS, 600 s by default) ends far within it; past
# it the worker is taken for hung and killed. A constant, not a setting: nothing a user would tune.
SYNTHESIS_TIMEOUT_S = 30.0

# Guards the espeak-ng library (process-global state) and the module's one engine instance.
_ESPEAK_LOCK = threading.RLock()  # re-entrant: default_engine() holds it while an engine starts
_default_engine: EspeakEngine | None = None
# Guards _isolated_engine (created on first use).
_ISOLATED_LOCK = threading.Lock()
_isolated_engine: IsolatedEngine | None = None


class SpeechEngine(Protocol):
    @property
    def name(self) -> str: ...

    def voices(self) -> list[str]:
        """Voice names this engine accepts."""
        ...

    def synthesize(self, text: str, voice: str | None, language: str, *,
                   max_seconds: float | None = None) -> tuple[np.ndarray, int]:
        """float32 mono samples in [-1, 1] and their sample rate. Raises UnknownVoice, SpeechUnavailable,
        and AudioTooLong when the speech would last more than `max_seconds`."""
        ...


class _Voice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_void_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _languages(voice: _Voice) -> list[str]:
    """espeak's `languages` field: repeated (priority byte, NUL-terminated name), ended by a 0 byte."""
    out: list[str] = []
    if not voice.languages:
        return out
    offset = 0
    while ctypes.string_at(voice.languages + offset, 1) != b"\x00":
        name = ctypes.string_at(voice.languages + offset + 1)
        out.append(name.decode("ascii", "replace"))
        offset += len(name) + 2
    return out


class EspeakEngine:
    """espeak-ng (the wheel's copy). Create it through default_engine(): the library is process-wide."""

    name = "espeak-ng"

    def __init__(self, library_path: str | None = None, data_path: str | None = None) -> None:
        try:
            if library_path is None or data_path is None:
                import espeakng_loader

                library_path = library_path or espeakng_loader.get_library_path()
                data_path = data_path or espeakng_loader.get_data_path()
            lib = ctypes.CDLL(library_path)
        except (ImportError, OSError, RuntimeError) as exc:
            raise SpeechUnavailable(f"text to speech is not available: espeak-ng could not be loaded ({exc}).") \
                from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        self._max_samples: int | None = None
        self._collected = 0
        self._overflow = False
        # ctypes must keep the callback object alive as long as espeak may call it.
        self._callback = _SynthCallback(self._on_samples)
        with _ESPEAK_LOCK:
            rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path).encode(), _INIT_DONT_EXIT)
            if rate <= 0:
                raise SpeechUnavailable(f"text to speech is not available: espeak-ng did not start "
                                        f"(data at {data_path}).")
            self._lookup, self._voices = self._list_voices()
        self.sample_rate = rate
        variants = Path(data_path) / "voices" / "!v"
        self._variants = {p.name.lower(): p.name for p in variants.iterdir()} if variants.is_dir() else {}

    def _list_voices(self) -> tuple[dict[str, str], list[str]]:
        """Every spelling a user may give -> espeak identifier; and the language codes.

        Exact spellings win over looser ones: "en" is the voice whose identifier ends in "en",
        not the first voice that lists "en" among its secondary languages.
        """
        table = self._lib.espeak_ListVoices(None)
        voices: list[tuple[str, str, list[str]]] = []
        i = 0
        while table[i]:
            voice = table[i].contents
            voices.append(((voice.identifier or b"").decode(), (voice.name or b"").decode(), _languages(voice)))
            i += 1
        lookup: dict[str, str] = {}
        passes = [lambda ident, name, langs: [ident, ident.rsplit("/", 1)[-1], name],
                  lambda ident, name, langs: langs[:1],
                  lambda ident, name, langs: langs[1:]]
        for spellings in passes:
            for identifier, name, langs in voices:
                for spelling in spellings(identifier, name, langs):
                    if spelling:
                        lookup.setdefault(spelling.lower(), identifier)
        codes = sorted({lang for _, _, langs in voices for lang in langs})
        return lookup, codes

    def _on_samples(self, wav: ctypes._Pointer, count: int, _events: int | None) -> int:
        if count > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
            self._collected += count
            if self._max_samples is not None and self._collected > self._max_samples:
                self._overflow = True
                return 1  # abort synthesis: it is already too long
        return 0

    def voices(self) -> list[str]:
        """The language codes espeak-ng speaks (each also works as a voice name)."""
        return list(self._voices)

    def resolve(self, voice: str | None, language: str) -> str:
        """The espeak voice for a user's `voice` (or, without one, `language`); UnknownVoice if none."""
        wanted = (voice if voice else language or "en").strip()
        base, _, variant = wanted.partition("+")
        identifier = self._lookup.get(base.lower())
        if identifier is None:
            what = "voice" if voice else "language"
            raise UnknownVoice(f"{what} {wanted!r} is not available; use one of the {len(self._voices)} "
                               "language codes espeak-ng knows, such as en, en-us, de or fr.")
        if variant:
            canonical = self._variants.get(variant.lower())
            if canonical is None:
                raise UnknownVoice(f"voice variant {variant!r} is not available; try f1..f5 or m1..m7.")
            return f"{identifier}+{canonical}"
        return identifier

    def synthesize(self, text: str, voice: str | None, language: str, *,
                   max_seconds: float | None = None) -> tuple[np.ndarray, int]:
        pcm, rate = self.synthesize_pcm(text, voice, language, max_seconds=max_seconds)
        return _to_float(pcm), rate

    def synthesize_pcm(self, text: str, voice: str | None, language: str, *,
                       max_seconds: float | None = None) -> tuple[np.ndarray, int]:
        """As synthesize(), but espeak-ng's own int16 samples (half the bytes to hand between processes)."""
        encoded = text.encode("utf-8")
        with _ESPEAK_LOCK:
            espeak_voice = self.resolve(voice, language)
            # The callback is process-wide too: claim it for this engine every time.
            self._lib.espeak_SetSynthCallback(self._callback)
            if self._lib.espeak_SetVoiceByName(espeak_voice.encode()) != _EE_OK:
                raise UnknownVoice(f"voice {espeak_voice!r} could not be loaded.")
            self._chunks, self._collected, self._overflow = [], 0, False
            self._max_samples = None if max_seconds is None else int(max_seconds * self.sample_rate)
            try:
                status = self._lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                                None, None)
                chunks, overflow = self._chunks, self._overflow
            finally:
                self._chunks, self._max_samples = [], None
        if overflow:
            raise AudioTooLong(f"the spoken text lasts more than the limit of {max_seconds:g} s; shorten it.")
        if status != _EE_OK:
            raise SpeechUnavailable(f"espeak-ng could not speak the text (error {status}).")
        pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
        return pcm, self.sample_rate


def _to_float(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float32) * np.float32(1.0 / 32768.0)


def default_engine() -> EspeakEngine:
    """This process's espeak-ng engine, started on first use: the speech worker's, or a test's.
    The server itself speaks through isolated_engine()."""
    global _default_engine
    with _ESPEAK_LOCK:
        if _default_engine is None:
            _default_engine = EspeakEngine()
        return _default_engine


def serve_speech(conn: Connection) -> None:
    """The speech worker: (operation, args) in, (True, result) or (False, AudioError) out, until
    the server's end of the pipe closes. espeak-ng starts on the first request."""
    # Ctrl-C in a terminal reaches the whole process group; the server decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            operation, args = conn.recv()
        except EOFError:
            return
        reply: tuple[bool, Any]
        try:
            engine = default_engine()
            if operation == "voices":
                reply = (True, engine.voices())
            else:
                text, voice, language, max_seconds = args
                reply = (True, engine.synthesize_pcm(text, voice, language, max_seconds=max_seconds))
        except AudioError as exc:
            reply = (False, exc)
        except Exception as exc:  # a bug here must reach the request as an error, not kill the worker
            logger.exception("speech worker: %s failed", operation)
            reply = (False, SpeechUnavailable(f"text to speech failed: {type(exc).__name__}: {exc}."))
        conn.send(reply)


class IsolatedEngine:
    """espeak-ng in a worker process of its own: a crash or a hang in the library costs one request
    a SpeechUnavailable, never the server, and the next request gets a new worker.

    One worker, spawned (never forked from a threaded server) on first use; one request at a time,
    as espeak-ng itself could do no more. `serve` is the worker's main function, importable by name
    (spawn pickles it by reference): serve_speech, or a test's wrapper around it.
    """

    name = "espeak-ng"

    def __init__(self, *, timeout_s: float = SYNTHESIS_TIMEOUT_S,
                 serve: Callable[[Connection], None] = serve_speech) -> None:
        self.timeout_s = timeout_s
        self._serve = serve
        # Guards _process and _conn: one request at a time on the pipe, and one worker start.
        self._lock = threading.Lock()
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        """The worker's process id, None before the first request or after a crash."""
        process = self._process
        return process.pid if process is not None else None

    def voices(self) -> list[str]:
        voices: list[str] = self._request("voices", ())
        return voices

    def synthesize(self, text: str, voice: str | None, language: str, *,
                   max_seconds: float | None = None) -> tuple[np.ndarray, int]:
        pcm, rate = self._request("synthesize", (text, voice, language, max_seconds))
        return _to_float(pcm), rate

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _request(self, operation: str, args: tuple[Any, ...]) -> Any:
        with self._lock:
            try:
                conn = self._connect()
            except OSError as exc:
                raise SpeechUnavailable(f"text to speech is not available: its worker process could not be "
                                        f"started ({exc}).") from None
            try:
                conn.send((operation, args))
                # Ready also when the worker dies: its end of the pipe closes and recv() says so.
                if not conn.poll(self.timeout_s):
                    gone = self._stop()
                    logger.error("speech worker %s took over %g s on %s; killed it",
                                 gone and gone.pid, self.timeout_s, operation)
                    raise SpeechUnavailable(f"text to speech took longer than {self.timeout_s:g} s and was "
                                            "stopped; try again, or with a shorter text.")
                ok, value = conn.recv()
            except (EOFError, OSError):
                gone = self._stop()
                logger.error("speech worker %s died (exit code %s) during %s; the next request starts another",
                             gone and gone.pid, gone and gone.exitcode, operation)
                raise SpeechUnavailable("text to speech failed: the speech engine crashed on this request; "
                                        "try again, or with another text.") from None
        if not ok:
            raise value
        return value

    def _connect(self) -> Connection:
        """The pipe to a live worker, spawning one if there is none. Caller holds _lock."""
        if self._process is not None and self._conn is not None and self._process.is_alive():
            return self._conn
        self._stop()
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(target=self._serve, args=(theirs,), name="speech-worker", daemon=True)
        process.start()
        theirs.close()  # the worker holds its own copy: ours then reads EOF as soon as it dies
        self._process, self._conn = process, ours
        return ours

    def _stop(self) -> BaseProcess | None:
        """Kill the worker, if any, wait for it and forget it; returns it (pid, exitcode). Caller holds _lock."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            conn.close()
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join(timeout=5)
        return process


def isolated_engine() -> IsolatedEngine:
    """The server's speech engine: espeak-ng in a worker process, started on first use."""
    global _isolated_engine
    with _ISOLATED_LOCK:
        if _isolated_engine is None:
            _isolated_engine = IsolatedEngine()
        return _isolated_engine


def speak(text: str, sample_rate: int, *, voice: str | None = None, language: str = "en",
          engine: SpeechEngine | None = None, max_seconds: float) -> np.ndarray:
    """`text` spoken by `engine` (espeak-ng in the speech worker by default) as float32 mono at `sample_rate`.

    Raises EmptyAudio for text with nothing to say, UnknownVoice, AudioTooLong, SpeechUnavailable
    (also when the speech worker crashed or hung on this text).
    """
    if not text.strip():
        raise EmptyAudio("the text is empty; give some words to speak.")
    speaker = engine if engine is not None else isolated_engine()
    samples, rate = speaker.synthesize(text, voice, language, max_seconds=max_seconds)
    if len(samples) == 0 or not np.any(samples):
        raise EmptyAudio("the text produced no speech; give some words to speak.")
    if len(samples) > max_seconds * rate:
        raise AudioTooLong(f"the spoken text lasts {len(samples) / rate:.1f} s, longer than the limit "
                           f"of {max_seconds:g} s; shorten it.")
    out = resample(np.asarray(samples, dtype=np.float32), rate, sample_rate)
    return np.clip(out, -1.0, 1.0)
