"""Fetching `audio_url` sources: http(s) only, bounded in time and size, no private addresses.

Every hop of a redirect is checked, so a public URL cannot bounce the server onto its own
network. (A DNS answer that changes between the check and the connect is not covered.)
"""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urljoin, urlsplit

import httpx

from errors import ApiError

MAX_REDIRECTS = 3


def fetch_audio(url: str, *, timeout_s: float, max_bytes: int, allow_private: bool) -> bytes:
    deadline = time.monotonic() + timeout_s
    with httpx.Client(follow_redirects=False, timeout=timeout_s) as client:
        for _ in range(MAX_REDIRECTS + 1):
            _check_url(url, allow_private)
            try:
                with client.stream("GET", url, headers={"Accept": "audio/*"}) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise ApiError(502, "audio_url_failed",
                                       f"audio_url answered HTTP {response.status_code}.", "audio_url")
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > max_bytes:
                        raise _too_large(max_bytes)
                    body = bytearray()
                    for chunk in response.iter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            raise _too_large(max_bytes)
                        if time.monotonic() > deadline:
                            raise httpx.ReadTimeout("download too slow")
                    return bytes(body)
            except httpx.TimeoutException:
                raise ApiError(502, "audio_url_timeout",
                               f"audio_url did not deliver within {timeout_s:g} s.", "audio_url") from None
            except httpx.InvalidURL:
                raise _not_http_url() from None
            except httpx.HTTPError as exc:
                raise ApiError(502, "audio_url_unreachable",
                               f"audio_url could not be fetched: {exc}.", "audio_url") from None
    raise ApiError(502, "audio_url_failed", f"audio_url redirected more than {MAX_REDIRECTS} times.",
                   "audio_url")


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(422, "audio_url_too_large",
                    f"audio_url is larger than the limit of {max_bytes} bytes.", "audio_url")


def _not_http_url() -> ApiError:
    return ApiError(422, "invalid_field", "audio_url must be an http or https URL.", "audio_url")


def _check_url(url: str, allow_private: bool) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a bad port or bracket: not a URL at all
        raise _not_http_url() from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _not_http_url()
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, port or 443, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise ApiError(502, "audio_url_unreachable",
                       f"audio_url host {parts.hostname!r} does not resolve: {exc}.", "audio_url") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global:
            raise ApiError(422, "audio_url_forbidden",
                           f"audio_url points at a non-public address ({address}); "
                           "set AUDIO_URL_ALLOW_PRIVATE=true to allow it.", "audio_url")
