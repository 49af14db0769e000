"""Running `paystream up` from a test: start it on a fresh home, wait for it, stop it.

`UpProcess` owns one ``paystream up`` subprocess on one home directory (always with
``--auto-ports``, because other stacks run on the same machine). It can be stopped and
started again on the same home, which is how the restart tests check that state
survives. Its console output goes to ``<home>/up.out`` so a test can read what the
supervisor said (e.g. that it restarted a service).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import psutil

from paystream.stack.place import purge
from paystream.tools.client import StackInfo

START_TIMEOUT = 180.0
STOP_TIMEOUT = 90.0


class StackStartError(AssertionError):
    """`paystream up` exited, or wrote no stack.json before its deadline."""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class UpProcess:
    """One `paystream up` on ``home``; `start` and `stop` may be called more than once."""

    def __init__(
        self, home: Path, env: Mapping[str, str] | None = None, *, allow_local_webhooks: bool = True,
        tls: bool = False,
    ) -> None:
        self.tls = tls
        self.home = home
        # The tests' webhook receivers listen on 127.0.0.1.
        self.allow_local_webhooks = allow_local_webhooks
        self.output = home / "up.out"
        self._env = dict(env or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._pids: dict[str, int] = {}
        self.info: StackInfo | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _environment(self) -> dict[str, str]:
        # The stack passes its environment on to every service: start from a clean slate
        # of PAYSTREAM_* settings so only what the test asks for reaches them.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PAYSTREAM_")}
        # No scheduled base backups unless a test asks (tests/e2e/test_backups.py): the first would
        # run at once, on every test's stack.
        env.update({"COLUMNS": "240", "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "PAYSTREAM_BACKUP_EVERY": "off"})
        env.update(self._env)
        return env

    async def start(self, timeout: float = START_TIMEOUT) -> StackInfo:
        """Start `up` and wait (with a deadline) until it has written ``stack.json``."""
        assert not self.running, "this stack is already running"
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "stack.json").unlink(missing_ok=True)
        with open(self.output, "ab") as out:
            out.write(f"---- up started at {time.strftime('%H:%M:%S')}\n".encode())
            self._process = subprocess.Popen(
                [sys.executable, "-m", "paystream", "up", "--home", str(self.home), "--auto-ports",
                 *(["--allow-local-webhooks"] if self.allow_local_webhooks else []),
                 *(["--tls"] if self.tls else [])],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._environment(),
            )
        deadline = time.monotonic() + timeout
        stack_file = self.home / "stack.json"
        while not stack_file.exists():
            code = self._process.poll()
            if code is not None:
                raise StackStartError(
                    f"paystream up exited with code {code} before it was ready:\n{_tail(self.output)}"
                )
            if time.monotonic() > deadline:
                await self.stop()
                raise StackStartError(
                    f"paystream up wrote no stack.json within {timeout:.0f}s:\n{_tail(self.output)}"
                )
            await asyncio.sleep(0.2)
        # stack.json is written atomically (rename), so it is whole once it exists.
        self._pids = {k: int(v) for k, v in json.loads(stack_file.read_text())["pids"].items()}
        self.info = StackInfo.load(self.home)
        return self.info

    def pids(self) -> dict[str, int]:
        """Every process of the stack (servers and services) as stack.json names them."""
        return dict(self._pids)

    def service_pid(self, name: str) -> int:
        """The pid of a running service or server (stack.json says; psutil confirms)."""
        recorded = int(json.loads((self.home / "stack.json").read_text())["pids"][name])
        assert self._process is not None
        for child in psutil.Process(self._process.pid).children():
            with contextlib.suppress(psutil.Error):
                if child.pid == recorded or child.cmdline()[-2:] == ["serve", name]:
                    return child.pid
        raise AssertionError(f"no running process for {name} under the supervisor")

    def said(self, text: str) -> bool:
        """Whether the supervisor's console output contains ``text``."""
        try:
            return text in self.output.read_text(errors="replace")
        except OSError:
            return False

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM `up` and wait for it to drain and exit; SIGKILL everything if it does not."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        code = process.poll()
        if code is None:
            self._kill_everything()
            code = await asyncio.to_thread(process.wait)
        self._process = None
        return code

    def _kill_everything(self) -> None:
        """Last resort: the supervisor and every process it started."""
        assert self._process is not None
        victims: list[psutil.Process] = []
        with contextlib.suppress(psutil.Error):
            victims = psutil.Process(self._process.pid).children(recursive=True)
        for pid in self._pids.values():
            with contextlib.suppress(psutil.Error):
                victims.append(psutil.Process(pid))
        self._process.kill()
        for victim in victims:
            with contextlib.suppress(psutil.Error):
                victim.kill()


@contextlib.asynccontextmanager
async def running_stack(
    env: Mapping[str, str] | None = None, *, prefix: str = "paystream-e2e-",
    allow_local_webhooks: bool = True, tls: bool = False,
) -> AsyncIterator[UpProcess]:
    """A started `UpProcess` on a fresh temporary home; stopped and removed afterwards.

    ``PAYSTREAM_E2E_KEEP=1`` keeps the home (logs, data) for a post-mortem.
    """
    home = Path(tempfile.mkdtemp(prefix=prefix))
    stack = UpProcess(home, env, allow_local_webhooks=allow_local_webhooks, tls=tls)
    try:
        await stack.start()
        yield stack
    finally:
        await stack.stop()
        if os.environ.get("PAYSTREAM_E2E_KEEP") != "1":
            purge(home)
