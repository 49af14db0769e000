"""The one reader of a stack's home: what `paystream up` wrote there for the tools.

``stack.json`` (where the servers and services answer; written once the stack is up,
removed when it stops), ``admin-client.json`` (the admin API client) and ``secrets.json``
(passwords and the internal token, 0600). Every command that needs a running stack reads
it through `read_stack`, so each says the same one line when there is none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class NoStack(FileNotFoundError):
    """No running stack at the home (or one of its files is unreadable); one line for the CLI."""


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise NoStack(f"no running stack at {path.parent} (no {path.name}); start one with "
                      f"`paystream up --home {path.parent}`") from None
    except (OSError, ValueError) as exc:
        raise NoStack(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise NoStack(f"{path} is not a paystream {what}")
    return data


def read_stack(home: Path) -> dict[str, Any]:
    """``stack.json`` of the stack running from ``home``."""
    return _read(home.resolve() / "stack.json", "stack file")


def read_admin_client(home: Path) -> dict[str, Any]:
    """The admin API client (``client_id``, ``client_secret``) of ``home``."""
    return _read(home.resolve() / "admin-client.json", "admin client file")


def read_secrets(home: Path) -> dict[str, Any]:
    """The stack's secrets (role passwords, the internal token)."""
    return _read(home.resolve() / "secrets.json", "secrets file")


def database_url(home: Path) -> str:
    """The superuser URL of the stack's PostgreSQL cluster."""
    url = read_stack(home).get("postgres_url")
    if not isinstance(url, str):
        raise NoStack(f"{home.resolve() / 'stack.json'} names no postgres_url")
    return url
