"""A benchmark's server in a subprocess, pinned to a core and asked for its own CPU time.

The child prints its port, then answers each "cpu" line on stdin with its user and system CPU
seconds (all threads) until stdin closes: see answer_cpu_requests.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path


class ServerProcess:
    def __init__(self, argv: list[str], cpu: int | None, cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1, cwd=cwd)
        if cpu is not None:
            os.sched_setaffinity(self.proc.pid, {cpu})
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def cpu(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the server process so far, all threads."""
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.proc.stdin.write("cpu\n")
        user, system = self.proc.stdout.readline().split()
        return float(user), float(system)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def answer_cpu_requests(port: int) -> None:
    """The child's side: announce `port`, then report CPU time on request until stdin closes."""
    print(port, flush=True)
    for line in sys.stdin:
        if line.strip() == "cpu":
            times = os.times()
            print(times.user, times.system, flush=True)
