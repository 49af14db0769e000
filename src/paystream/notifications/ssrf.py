"""Where a webhook may be sent: public addresses only, checked at registration AND at send time.

A webhook URL is chosen by an API client, and the notifications service sends to it from
inside the platform's network: without these checks it could be made to call loopback
services, the cloud metadata endpoint, or anything on a private network (SSRF).

Two layers:

* `url_problem` (registration): the URL's shape, and any host that is an IP address in
  any spelling the resolver would accept (``2130706433``, ``0x7f.1``, ``017700000001``,
  ``[::ffff:127.0.0.1]``) or a name that always means this machine or the metadata
  service. Pure, no DNS.
* `PublicOnlyResolver` (send time): every DNS answer is checked, and the connection is
  made to the checked address, so a name that resolves (or later re-resolves, DNS
  rebinding) to a forbidden address is refused.

``allow_private=True`` (setting ``webhook_allow_private``) lifts both, for receivers on
the developer's own machine and in tests; it is off unless someone turns it on.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names that are never public, whatever DNS says about them.
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa")
_METADATA_NAMES = ("metadata", "metadata.google.internal", "instance-data", "instance-data.ec2.internal")


def forbidden_address(ip: IPAddress) -> bool:
    """True for anything that is not a plain public unicast address.

    Covers loopback, private (RFC 1918, ULA), link-local (incl. 169.254.169.254), shared
    (100.64/10), multicast, reserved, unspecified, documentation ranges, and IPv6
    addresses that embed an IPv4 one (mapped, 6to4, Teredo, NAT64), judged by what they embed.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return forbidden_address(embedded)
    return not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in ipaddress.IPv6Network("64:ff9b::/96"):  # NAT64 well-known prefix
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in ipaddress.IPv6Network("::/96") and int(ip) > 1:  # deprecated IPv4-compatible
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` denotes if it is an IP literal in any form inet_aton accepts."""
    host = host.strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    # Legacy IPv4 forms: one to four parts, each decimal, octal (0...) or hex (0x...).
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(parts):
        return None
    try:
        numbers = [int(p, 0) if not _plain_octal(p) else int(p, 8) for p in parts]
    except ValueError:
        return None
    *head, last = numbers
    if any(n < 0 or n > 255 for n in head) or last < 0 or last >= 256 ** (5 - len(numbers)):
        return None
    value = 0
    for n in head:
        value = value * 256 + n
    value = value * 256 ** (5 - len(numbers)) + last
    return ipaddress.IPv4Address(value)


def _plain_octal(part: str) -> bool:
    return len(part) > 1 and part.startswith("0") and part[1:].isdigit()


def url_problem(url: str, *, allow_private: bool) -> str | None:
    """Why ``url`` may not be a webhook endpoint, or None when it may."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "the URL is not valid"
    if parts.scheme not in ("http", "https"):
        return "the URL must be http or https"
    if parts.username is not None or parts.password is not None:
        return "the URL must not carry credentials"
    host = (parts.hostname or "").lower()
    if not host:
        return "the URL has no host"
    if port == 0:
        return "the URL's port is not valid"
    if allow_private:
        return None
    ip = parse_ip_literal(host)
    if ip is not None:
        return "the URL points to a private, loopback or reserved address" if forbidden_address(ip) else None
    name = host.rstrip(".")
    if name in _LOCAL_NAMES or name.endswith(_LOCAL_SUFFIXES) or "." not in name:
        return "the URL's host is not a public name"
    if name in _METADATA_NAMES:
        return "the URL's host is a metadata service"
    return None


class ForbiddenDestination(aiohttp.ClientConnectionError):
    """DNS answered only addresses a webhook may not be sent to."""


class PublicOnlyResolver(AbstractResolver):
    """Resolves with the system resolver and keeps only public answers (none: refused)."""

    def __init__(self, *, allow_private: bool) -> None:
        self._allow_private = allow_private
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        if self._allow_private:
            return answers
        public = [a for a in answers if not forbidden_address(ipaddress.ip_address(a["host"]))]
        if not public:
            raise ForbiddenDestination(f"{host} resolves only to addresses webhooks may not reach")
        return public

    async def close(self) -> None:
        await self._inner.close()


def connector(*, allow_private: bool, limit: int, **kwargs: Any) -> aiohttp.TCPConnector:
    """A connector that can only reach what `PublicOnlyResolver` allows (no DNS cache)."""
    return aiohttp.TCPConnector(
        resolver=PublicOnlyResolver(allow_private=allow_private), limit=limit, use_dns_cache=False,
        **kwargs,
    )
