"""Choosing TCP ports: the preferred one when free, another free one otherwise, or a clear error."""

from __future__ import annotations

import socket


class PortBusy(Exception):
    """A port that was asked for explicitly is taken."""


def is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def choose_port(
    name: str, preferred: int | None, *, explicit: bool, taken: set[int] | None = None
) -> int:
    """``preferred`` if free; if it was asked for explicitly and is busy, `PortBusy`;
    otherwise any free port. ``taken`` are ports already handed out in this run."""
    taken = taken if taken is not None else set()
    if preferred:
        if preferred not in taken and is_free(preferred):
            taken.add(preferred)
            return preferred
        if explicit:
            raise PortBusy(f"port {preferred} for {name} is already in use; free it or choose another")
    while True:
        port = free_port()
        if port not in taken:
            taken.add(port)
            return port
