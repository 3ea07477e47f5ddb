"""Fetching `audio_url` sources: http(s) only, bounded in time and size, no private addresses.

Each hop's host is resolved once, every address it resolves to is checked, and the connection
goes to one of those very addresses: the URL's host is replaced by the address, while the Host
header and the TLS server name (SNI, and the certificate's check) stay the URL's host. A DNS
answer that changes between the check and the connect (DNS rebinding) thus cannot move the
connection onto the server's own network. Redirects are followed by hand, each hop resolved,
checked and pinned the same way, each on a connection of its own (one kept from the previous hop
would carry a TLS session verified for another host).
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
    for _ in range(MAX_REDIRECTS + 1):
        target = _parse(url)
        try:
            addresses = _resolve(target, allow_private)
            remaining = max(0.001, deadline - time.monotonic())
            with httpx.Client(follow_redirects=False, timeout=remaining) as client:
                response = _send(client, target, addresses)
                try:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    return _body(response, max_bytes, deadline)
                finally:
                    response.close()
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


def pinned_request(client: httpx.Client, url: httpx.URL, address: str) -> httpx.Request:
    """GET `url` from `address`: the connection goes there, Host and TLS name stay `url`'s host."""
    return pinned(client, "GET", url, address, headers={"Accept": "audio/*"})


def pinned(client: httpx.Client, method: str, url: httpx.URL, address: str, *, headers: dict[str, str],
           content: bytes | None = None) -> httpx.Request:
    """`method` `url` sent to `address`: Host and the TLS name (SNI, certificate) stay `url`'s host."""
    return client.build_request(
        method, url.copy_with(host=address), headers={"Host": url.netloc.decode("ascii"), **headers},
        content=content,
        # httpcore's name for TLS: SNI and the certificate's hostname check use it, not the address.
        extensions={"sni_hostname": url.raw_host.decode("ascii")})


def _send(client: httpx.Client, url: httpx.URL, addresses: list[str]) -> httpx.Response:
    """The response (streamed) from the first of `addresses`, all checked, that accepts a connection."""
    for address in addresses[:-1]:
        try:
            return client.send(pinned_request(client, url, address), stream=True)
        except httpx.ConnectError:
            continue
    return client.send(pinned_request(client, url, addresses[-1]), stream=True)


def _body(response: httpx.Response, max_bytes: int, deadline: float) -> bytes:
    if response.status_code != 200:
        raise ApiError(502, "audio_url_failed", f"audio_url answered HTTP {response.status_code}.", "audio_url")
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


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(422, "audio_url_too_large",
                    f"audio_url is larger than the limit of {max_bytes} bytes.", "audio_url")


def _not_http_url() -> ApiError:
    return ApiError(422, "invalid_field", "audio_url must be an http or https URL.", "audio_url")


def parse_http_url(url: str) -> httpx.URL | None:
    """`url` if it is an http or https URL with a host, else None."""
    try:
        _ = urlsplit(url).port  # ValueError for a port out of range, which httpx.URL lets through
        target = httpx.URL(url)
    except (ValueError, httpx.InvalidURL):  # a bad port or bracket: not a URL at all
        return None
    if target.scheme not in ("http", "https") or not target.raw_host:
        return None
    return target


def resolve(url: httpx.URL) -> list[str]:
    """Every address `url`'s host resolves to, once, in the resolver's order; OSError if none."""
    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError as exc:
        raise OSError(str(exc)) from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise OSError("no address")
    return addresses


def non_public(addresses: list[str]) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The first of `addresses` that is not a public one (private, loopback, link-local ...)."""
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global:
            return ip
    return None


def _parse(url: str) -> httpx.URL:
    target = parse_http_url(url)
    if target is None:
        raise _not_http_url()
    return target


def _resolve(url: httpx.URL, allow_private: bool) -> list[str]:
    """Every address `url`'s host resolves to, once, in the resolver's order; each must be public
    unless `allow_private`."""
    try:
        addresses = resolve(url)
    except OSError as exc:
        raise ApiError(502, "audio_url_unreachable",
                       f"audio_url host {url.host!r} does not resolve: {exc}.", "audio_url") from None
    bad = None if allow_private else non_public(addresses)
    if bad is not None:
        raise ApiError(422, "audio_url_forbidden",
                       f"audio_url points at a non-public address ({bad}); "
                       "set AUDIO_URL_ALLOW_PRIVATE=true to allow it.", "audio_url")
    return addresses
