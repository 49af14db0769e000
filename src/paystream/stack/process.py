"""Supervising OS processes: start, wait until ready, restart on crash with backoff, stop.

With a ``run_dir``, each process's current pid is in ``<run_dir>/<name>.pid`` (rewritten on
every restart), and a file ``<run_dir>/<name>.hold`` keeps a process that died from being
restarted until the file is gone: how `paystream gameday` keeps a server down for a while.

Children get their own session (a Ctrl-C in the terminal reaches only the supervisor,
which then stops them in the right order) and a parent-death signal (if the
supervisor itself is killed, they do not linger as orphans).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessSpec:
    """How to run one process."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    user: str | None = None
    stop_signal: str = "SIGTERM"
    stop_timeout: float = 30.0
    ready: Callable[[], Awaitable[bool]] | None = None
    ready_timeout: float = 90.0
    prepare: Callable[[], None] | None = None
    restart: bool = True


class StartFailed(Exception):
    """A process exited or never became ready; the message carries the end of its log."""


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


@dataclass
class ManagedProcess:
    spec: ProcessSpec
    log_path: Path
    say: Callable[[str], None]
    run_dir: Path | None = None
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    stopping: bool = False
    _watcher: asyncio.Task[None] | None = None
    _log: IO[bytes] | None = None
    _started_at: float = field(default=0.0)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def _spawn(self) -> None:
        if self.spec.prepare:
            await asyncio.to_thread(self.spec.prepare)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Opened anew for every start: a service rotates its own log by size, and what a new
        # start prints before it has set up logging must land in the current file.
        if self._log is not None:
            self._log.close()
        self._log = open(self.log_path, "ab", buffering=0)
        kwargs: dict[str, Any] = {}
        if self.spec.user:
            kwargs["user"] = self.spec.user
            kwargs["group"] = self.spec.user
            kwargs["extra_groups"] = []
        self.process = await asyncio.create_subprocess_exec(
            *self.spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
            env=self.spec.env if self.spec.env is not None else os.environ.copy(),
            start_new_session=True,
            preexec_fn=_die_with_parent,
            cwd="/" if self.spec.user else None,
            **kwargs,
        )
        self._started_at = time.monotonic()
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / f"{self.spec.name}.pid").write_text(str(self.process.pid))

    def _held(self) -> bool:
        return self.run_dir is not None and (self.run_dir / f"{self.spec.name}.hold").exists()

    async def _await_ready(self) -> None:
        assert self.process is not None
        if self.spec.ready is None:
            return
        deadline = time.monotonic() + self.spec.ready_timeout
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise StartFailed(
                    f"{self.spec.name} exited with code {self.process.returncode} while starting; "
                    f"last lines of {self.log_path}:\n{_tail(self.log_path)}"
                )
            if await self.spec.ready():
                return
            await asyncio.sleep(0.2)
        raise StartFailed(
            f"{self.spec.name} was not ready after {self.spec.ready_timeout:.0f}s; "
            f"last lines of {self.log_path}:\n{_tail(self.log_path)}"
        )

    async def start(self) -> None:
        """Start and wait until ready; then keep it running until `stop`."""
        await self._spawn()
        try:
            await self._await_ready()
        except BaseException:
            await self._terminate()
            raise
        self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            assert self.process is not None
            code = await self.process.wait()
            if self.stopping or not self.spec.restart:
                return
            uptime = time.monotonic() - self._started_at
            if uptime > 60:
                self.restarts = 0
            self.restarts += 1
            delay = min(30.0, 0.5 * 2 ** (self.restarts - 1))
            self.say(
                f"[red]{self.spec.name} exited with code {code}[/red]; "
                f"restarting in {delay:.1f}s (restart {self.restarts})"
            )
            await asyncio.sleep(delay)
            if self._held():
                self.say(f"[yellow]{self.spec.name} is held down[/yellow] (remove {self.spec.name}.hold to restart it)")
                while self._held() and not self.stopping:  # noqa: ASYNC110 - a file another process removes
                    await asyncio.sleep(0.2)
            if self.stopping:
                return
            try:
                await self._spawn()
                await self._await_ready()
                self.say(f"[green]{self.spec.name} is back[/green] (pid {self.pid})")
            except StartFailed as exc:
                self.say(f"[red]{exc}[/red]")
            except Exception as exc:
                self.say(f"[red]{self.spec.name} could not restart: {exc!r}[/red]")

    async def _terminate(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        try:
            process.send_signal(getattr(signal, self.spec.stop_signal))
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(process.wait(), timeout=self.spec.stop_timeout)
        except TimeoutError:
            self.say(f"[yellow]{self.spec.name} did not stop in {self.spec.stop_timeout:.0f}s; killing it[/yellow]")
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await process.wait()

    async def stop(self) -> None:
        self.stopping = True
        await self._terminate()
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except (asyncio.CancelledError, Exception):  # noqa: S110 - the watcher only reports
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` without stopping supervision (a crash, as far as the watcher knows)."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)


class Supervisor:
    """Starts processes in order and stops them in the reverse order of start groups."""

    def __init__(self, log_dir: Path, say: Callable[[str], None], run_dir: Path | None = None) -> None:
        self.log_dir = log_dir
        self.say = say
        self.run_dir = run_dir
        self.processes: dict[str, ManagedProcess] = {}

    async def start(self, *specs: ProcessSpec) -> None:
        """Start ``specs`` side by side and wait until all are ready."""
        managed = [ManagedProcess(spec, self.log_dir / f"{spec.name}.log", self.say, self.run_dir)
                   for spec in specs]
        for process in managed:
            self.processes[process.spec.name] = process
        results = await asyncio.gather(*(p.start() for p in managed), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]

    async def stop(self, groups: list[list[str]]) -> None:
        """Stop each group in turn (members of a group side by side), then anything left."""
        named = {name for group in groups for name in group}
        rest = [name for name in self.processes if name not in named]
        for group in [*groups, rest]:
            await asyncio.gather(*(self.processes[n].stop() for n in group if n in self.processes))
