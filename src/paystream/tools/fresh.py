"""A stack of its own for a tool run (`paystream bench --fresh`, `paystream gameday --fresh`):
`paystream up` on free ports in a temporary home, stopped and purged afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from rich.console import Console

from paystream.stack.place import purge

START_TIMEOUT = 180.0


class FreshStackFailed(Exception):
    """The stack did not start; the message says where its logs are."""


@contextlib.asynccontextmanager
async def fresh_stack(
    console: Console, *, prefix: str, env: Mapping[str, str] | None = None,
) -> AsyncIterator[Path]:
    """Yield the home of a new stack once its ``stack.json`` is written. A stack that does not
    start keeps its home (the logs are in it) and raises `FreshStackFailed`."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    keep = False
    log = open(home / "up.out", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "paystream", "up", "--home", str(home), "--auto-ports",
         "--allow-local-webhooks"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (home / "stack.json").exists():
            if process.poll() is not None or time.monotonic() > deadline:
                keep = True  # the log it points to stays, with the servers' logs beside it
                log.flush()
                tail = (home / "up.out").read_text(errors="replace").splitlines()[-15:]
                console.print("\n".join(tail), markup=False, highlight=False)
                raise FreshStackFailed(
                    f"the stack did not start; see {home / 'up.out'} and {home / 'logs'}; "
                    f"`paystream down --purge --home {home}` removes them"
                )
            await asyncio.sleep(0.2)
        yield home
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 120)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()
        if not keep:
            purge(home)
