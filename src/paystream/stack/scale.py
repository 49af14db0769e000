"""How many copies of each service `paystream up --scale` (or ``PAYSTREAM_SCALE``) runs.

``payments=3,fraud=2`` → three payments processes and two fraud processes; every other
service runs once. A service that consumes events cannot usefully run more copies than
there are partitions (each partition has one owner at a time), so that is refused.
"""

from __future__ import annotations

from paystream.contracts.topology import CONSUMERS, SERVICES

CONSUMING: frozenset[str] = frozenset(spec.service for spec in CONSUMERS)
MAX_GATEWAYS = 32


class ScaleError(ValueError):
    """A ``--scale`` value that cannot be run, worded for the person who typed it."""


def parse_scale(text: str | None, *, partitions: int) -> dict[str, int]:
    """Copies per service (every service present, 1 unless named)."""
    copies = dict.fromkeys(SERVICES, 1)
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, count = item.partition("=")
        name = name.strip()
        if not sep:
            raise ScaleError(f"--scale takes SERVICE=COPIES[,…] (e.g. payments=3,fraud=2), not {item!r}")
        if name not in copies:
            raise ScaleError(f"--scale: unknown service {name!r}; choose from {', '.join(SERVICES)}")
        try:
            n = int(count)
        except ValueError:
            raise ScaleError(f"--scale: {name}={count.strip()!r} is not a whole number") from None
        if n < 1:
            raise ScaleError(f"--scale: {name} needs at least 1 copy, not {n}")
        if name in CONSUMING and n > partitions:
            raise ScaleError(
                f"--scale: {name}={n} is more copies than the {partitions} partitions "
                "(each partition has one owner at a time; raise PAYSTREAM_PARTITIONS on a new stack)"
            )
        if name not in CONSUMING and n > MAX_GATEWAYS:
            raise ScaleError(f"--scale: {name}={n} is more than {MAX_GATEWAYS} copies")
        copies[name] = n
    return copies


def copy_names(service: str, copies: int) -> list[str]:
    """Process names: the first copy keeps the service's name, the others are ``name-2`` …"""
    return [service if k == 1 else f"{service}-{k}" for k in range(1, copies + 1)]
