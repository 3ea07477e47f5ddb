"""A Server-Sent Events reader for tests: collects GET /events messages on a thread of its own."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx


class SseReader:
    def __init__(self, url: str, *, headers: dict[str, str] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.ids: list[int] = []
        self.retry: int | None = None
        self.status: int | None = None
        self.ended = threading.Event()
        self.opened = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(10, read=None))
        self._thread = threading.Thread(target=self._read, args=(url, headers or {}), name="sse-reader", daemon=True)
        self._thread.start()
        assert self.opened.wait(10), "the feed did not answer"

    def _read(self, url: str, headers: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                self.status = response.status_code
                self.content_type = response.headers.get("content-type", "")
                self.opened.set()
                for line in response.iter_lines():
                    if line.startswith("retry: "):
                        self.retry = int(line[7:])
                    elif line.startswith("id: "):
                        self.ids.append(int(line[4:]))
                    elif line.startswith("data: "):
                        self.events.append(json.loads(line[6:]))
        except httpx.HTTPError:
            pass
        finally:
            self.opened.set()
            self.ended.set()

    def names(self) -> list[str]:
        return [event["event"] for event in self.events]

    def close(self) -> None:
        self._client.close()
        self.ended.wait(5)
