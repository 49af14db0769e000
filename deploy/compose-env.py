#!/usr/bin/env python3
"""Write deploy/.env: the secrets deploy/compose.yaml reads, made once with the standard library.

    python3 deploy/compose-env.py            # writes deploy/.env (0600) unless it exists
    python3 deploy/compose-env.py OUT        # writes OUT instead

Compose reads `.env` beside the compose file by itself. Every value is URL-safe, so the
passwords can stand inside the PostgreSQL URLs compose builds from them.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
from pathlib import Path

SERVICES = ("gateway", "payments", "fraud", "ledger", "notifications")


def values() -> dict[str, str]:
    keyring = {
        "active": "v1",
        "keks": {"v1": base64.b64encode(secrets.token_bytes(32)).decode()},
        "index_key": base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    out = {
        "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
        "PAYSTREAM_INTERNAL_TOKEN": secrets.token_urlsafe(32),
        "PAYSTREAM_KEYRING": json.dumps(keyring, separators=(",", ":")),
    }
    for service in SERVICES:
        out[f"{service.upper()}_DB_PASSWORD"] = secrets.token_urlsafe(24)
    return out


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name(".env")
    if path.exists():
        print(f"{path} exists; remove it first to make new secrets (the database keeps the old ones)")
        return 1
    lines = [f"{key}='{value}'" for key, value in values().items()]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("# made by deploy/compose-env.py; keep it secret\n" + "\n".join(lines) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
