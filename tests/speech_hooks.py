"""A speech worker that fails on cue, for the tests of mixer.speech.IsolatedEngine.

The worker is spawned, so its main function must be importable by name in the new process: it
lives here (tests/ is on sys.path) rather than in a test module. It runs the real serve_speech,
but looks at each request first: one of the texts below makes it die or hang instead.
"""

from __future__ import annotations

import ctypes
import os
import time
from typing import Any

from mixer import speech

EXIT = "worker, exit now"          # os._exit: the process ends without a word
SEGFAULT = "worker, segfault now"  # a NULL read in C, as a bug in libespeak would crash it
HANG = "worker, hang now"          # never answers


class _Faulty:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def recv(self) -> Any:
        request = self._conn.recv()
        operation, args = request
        text = args[0] if operation == "synthesize" else None
        if text == EXIT:
            os._exit(70)
        if text == SEGFAULT:
            ctypes.string_at(0)
        if text == HANG:
            time.sleep(3600)
        return request

    def send(self, reply: Any) -> None:
        self._conn.send(reply)


def faulty_serve(conn: Any) -> None:
    speech.serve_speech(_Faulty(conn))  # type: ignore[arg-type]
