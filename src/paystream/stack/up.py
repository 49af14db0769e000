"""`paystream up`: start the whole stack on this machine and keep it running until told to stop.

Order: PostgreSQL, NATS and Redis (side by side) → migrations, streams and durable
consumers, the admin client → the five services → ``stack.json``. Stop (Ctrl-C,
SIGTERM or `paystream down`) goes the other way: the gateway stops taking requests,
the services drain, then the servers shut down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import ssl
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from rich.console import Console
from rich.markup import escape

from paystream.contracts.topology import SERVICES, STREAMS, partitioned_consumers
from paystream.gateway.domain import SCOPES
from paystream.gateway.identity.clients import ClientStore
from paystream.platform.config import load_settings
from paystream.platform.crypto import FileKeyring
from paystream.platform.limits import raise_open_files
from paystream.platform.migrations import migrate, role_name
from paystream.platform.nats_bus import NatsBus
from paystream.platform.observability import configure_logging
from paystream.stack.backup import backup_place, run_schedule
from paystream.stack.pitr import parse_every
from paystream.stack.place import PlaceError, purge
from paystream.stack.ports import choose_port
from paystream.stack.process import ProcessSpec, StartFailed, Supervisor
from paystream.stack.scale import copy_names
from paystream.stack.servers import LocalServersMissing, Nats, Postgres, Redis, nats_cluster
from paystream.stack.tls import TlsFiles, ensure_local_tls

DEFAULT_PORTS: dict[str, int] = {
    "gateway": 8700, "ledger": 8701, "payments": 8702, "fraud": 8703, "notifications": 8704,
    "postgres": 15432, "nats": 14222, "redis": 16379,
}
STOP_ORDER = [["gateway"], ["payments", "fraud", "ledger", "notifications"], ["redis", "nats"], ["postgres"]]
ADMIN_TENANT = "default"


class UpError(Exception):
    """A reason the stack cannot start, worded for the person who ran the command."""


class ModeMismatch(UpError):
    """The home was made for another NATS mode (one server, or a cluster)."""


def _check_nats_mode(home: Path, nodes: int) -> None:
    """A home keeps its streams where it made them: one server, or a cluster of ``nodes``."""
    path = home / "nats-mode.json"
    if path.exists():
        was = int(json.loads(path.read_text()).get("nodes", 1))
        if was != nodes:
            def what(n: int) -> str:
                return "one NATS server" if n == 1 else f"a {n}-node NATS cluster"
            raise ModeMismatch(
                f"{home} keeps its streams on {what(was)}, not {what(nodes)}; "
                f"start it as it was made ({'--nats-cluster ' + str(was) if was > 1 else 'without --nats-cluster'}) "
                "or use a new PAYSTREAM_HOME"
            )
    elif (home / "nats" / "jetstream").exists() and nodes != 1:
        raise ModeMismatch(
            f"{home} keeps its streams on one NATS server, not a {nodes}-node NATS cluster; "
            "start it without --nats-cluster or use a new PAYSTREAM_HOME"
        )
    else:
        path.write_text(json.dumps({"nodes": nodes}) + "\n")


@dataclass
class UpOptions:
    home: Path
    auto_ports: bool = False
    ports: dict[str, int] = field(default_factory=dict)  # explicit ports: busy means an error
    demo: bool = False
    demo_args: list[str] = field(default_factory=list)
    allow_local_webhooks: bool = False
    tls: bool = False  # the gateway serves HTTPS with a certificate from a local CA
    scale: dict[str, int] = field(default_factory=dict)  # copies per service (1 when absent)
    nats_nodes: int = 1  # 3 (or 5): a JetStream cluster with streams replicated on 3 nodes


def _write_private(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def load_secrets(home: Path) -> dict[str, Any]:
    """Passwords and tokens of this stack, made once and kept in ``secrets.json`` (0600)."""
    path = home / "secrets.json"
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
    else:
        data = {}
    changed = False
    if "postgres_password" not in data:
        data["postgres_password"] = secrets.token_urlsafe(24)
        changed = True
    if "internal_token" not in data:
        data["internal_token"] = secrets.token_urlsafe(32)
        changed = True
    roles = data.setdefault("role_passwords", {})
    for service in SERVICES:
        if service not in roles:
            roles[service] = secrets.token_urlsafe(24)
            changed = True
    if changed:
        _write_private(path, data)
    return data


def _check_not_running(home: Path) -> None:
    pidfile = home / "up.pid"
    if not pidfile.exists():
        return
    try:
        pid = int(pidfile.read_text().strip())
    except ValueError:
        return
    if pid != os.getpid() and psutil.pid_exists(pid):
        try:
            cmdline = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            cmdline = ""
        if "paystream" in cmdline:
            raise UpError(
                f"a paystream stack is already running from {home} (pid {pid}); "
                "stop it with `paystream down` or use another PAYSTREAM_HOME"
            )


async def ensure_admin_client(conn: asyncpg.Connection, path: Path) -> str:
    """The admin client of ``admin-client.json``, created if the file or the client is missing."""
    await conn.execute("SET search_path TO gateway")
    if path.exists():
        data = json.loads(path.read_text())
        if await conn.fetchval("SELECT 1 FROM clients WHERE id = $1", data.get("client_id")):
            return str(data["client_id"])
    row, secret = await ClientStore().create_client(conn, tenant_id=ADMIN_TENANT, name="admin", scopes=SCOPES)
    _write_private(path, {"client_id": row["id"], "client_secret": secret, "tenant": ADMIN_TENANT,
                          "scopes": list(SCOPES)})
    return str(row["id"])


@dataclass(frozen=True, slots=True)
class Copy:
    """One process of a service: ``index`` of ``copies``; ``own_port`` is where it alone answers
    (its readiness and metrics) when copies share the service's port. The gateway's copies have
    an ``operations_port`` instead: its public port carries no readiness or metrics."""

    service: str
    process: str
    index: int
    copies: int
    own_port: int | None
    operations_port: int | None = None

    @property
    def answers_alone(self) -> int | None:
        """Where this process alone answers /readyz and /metrics (None: the service's port)."""
        return self.operations_port or self.own_port


def _service_spec(
    copy: Copy, *, home: Path, port: int, database_url: str, nats_url: str, redis_url: str, replicas: int,
    internal_token: str, service_urls: dict[str, str], allow_local_webhooks: bool,
    tls: TlsFiles | None = None, keyring: Path | None = None,
) -> ProcessSpec:
    name = copy.service
    env = os.environ.copy()
    env.update({
        "PAYSTREAM_WEBHOOK_ALLOW_PRIVATE": "true" if allow_local_webhooks else "false",
        "PAYSTREAM_HOME": str(home),
        "PAYSTREAM_DATABASE_URL": database_url,
        "PAYSTREAM_NATS_URL": nats_url,
        "PAYSTREAM_STREAM_REPLICAS": str(replicas),
        "PAYSTREAM_REDIS_URL": redis_url,
        "PAYSTREAM_HTTP_HOST": "127.0.0.1",
        "PAYSTREAM_HTTP_PORT": str(port),
        "PAYSTREAM_INTERNAL_TOKEN": internal_token,
        "PAYSTREAM_SERVICE_URLS": json.dumps(service_urls),
        "PAYSTREAM_COPY_INDEX": str(copy.index),
        "PAYSTREAM_COPIES": str(copy.copies),
        # The service writes (and rotates by size) the log the supervisor names for it.
        "PAYSTREAM_LOG_FILE": str(home / "logs" / f"{copy.process}.log"),
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("PAYSTREAM_OWN_PORT", None)
    env.pop("PAYSTREAM_OPERATIONS_PORT", None)
    if copy.own_port is not None:
        env["PAYSTREAM_OWN_PORT"] = str(copy.own_port)
    if copy.operations_port is not None:
        env["PAYSTREAM_OPERATIONS_PORT"] = str(copy.operations_port)
    if keyring is not None:
        env["PAYSTREAM_KEYRING_FILE"] = str(keyring)
    if tls is not None:
        env["PAYSTREAM_TLS_CERTFILE"] = str(tls.server_cert)
        env["PAYSTREAM_TLS_KEYFILE"] = str(tls.server_key)
    scheme = "https" if tls is not None else "http"
    ready_port = copy.answers_alone or port

    async def ready() -> bool:
        import httpx

        try:
            verify: Any = ssl.create_default_context(cafile=str(tls.ca_cert)) if tls is not None else True
            async with httpx.AsyncClient(timeout=1.0, verify=verify) as client:
                response = await client.get(f"{scheme}://127.0.0.1:{ready_port}/readyz")
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    return ProcessSpec(
        name=copy.process, argv=[sys.executable, "-m", "paystream", "serve", name], env=env,
        ready=ready, stop_timeout=45.0,
    )


class Stack:
    """One running stack: its supervisor and what `stack.json` says about it."""

    def __init__(self, options: UpOptions, console: Console) -> None:
        self.options = options
        self.home = options.home.resolve()
        self.console = console
        self.supervisor = Supervisor(self.home / "logs", self.say, run_dir=self.home / "run")
        self.info: dict[str, Any] = {}
        self.copies: dict[str, list[Copy]] = {}
        self._nats_names: list[str] = ["nats"]

    def say(self, message: str) -> None:
        stamp = datetime.now().strftime("%H:%M:%S")
        self.console.print(f"[dim]{stamp}[/dim] {message}")

    def _ports(self) -> dict[str, int]:
        taken: set[int] = set()
        ports = {}
        for name, default in DEFAULT_PORTS.items():
            explicit = name in self.options.ports
            preferred = self.options.ports.get(name) or (None if self.options.auto_ports else default)
            port = choose_port(name, preferred, explicit=explicit, taken=taken)
            if preferred and port != preferred:
                self.say(f"port {preferred} for {name} is busy; using {port}")
            ports[name] = port
        return ports

    async def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        for hold in (self.home / "run").glob("*.hold"):  # left by a game day that was stopped
            hold.unlink()
        configure_logging("up", "info", stream=open(self.home / "logs" / "up.log", "a"))
        _check_not_running(self.home)
        (self.home / "up.pid").write_text(str(os.getpid()))
        secrets_ = load_secrets(self.home)
        ports = self._ports()
        backups = backup_place(self.home)
        pg = Postgres(self.home, ports["postgres"], secrets_["postgres_password"],
                      settings=backups.archive_settings())
        _check_nats_mode(self.home, self.options.nats_nodes)
        if self.options.nats_nodes > 1:
            taken = set(ports.values())
            node_ports = [ports["nats"]] + [
                choose_port("nats", None, explicit=False, taken=taken) for _ in range(self.options.nats_nodes - 1)
            ]
            route_ports = [choose_port("nats", None, explicit=False, taken=taken) for _ in node_ports]
            nodes = nats_cluster(self.home, node_ports, route_ports)
        else:
            nodes = [Nats(self.home / "nats", ports["nats"])]
        self._nats_names = [node.name for node in nodes]
        nats = nodes[0]
        nats_urls = ",".join(node.url for node in nodes)
        replicas = min(3, len(nodes))
        redis = Redis(self.home / "redis", ports["redis"])
        await asyncio.to_thread(pg.place.prepare)  # a place PostgreSQL cannot use fails here, alone
        await asyncio.to_thread(backups.prepare)  # the WAL archive, written by the server's user
        self.say("starting PostgreSQL, NATS JetStream and Redis …")
        await self.supervisor.start(pg.spec, *(node.spec for node in nodes), redis.spec)
        nats_ports = ",".join(str(node.port) for node in nodes)
        self.say(f"servers ready: postgres :{ports['postgres']}, nats :{nats_ports}"
                 f"{f' (a {len(nodes)}-node cluster, streams on {replicas})' if len(nodes) > 1 else ''}, "
                 f"redis :{ports['redis']}")

        conn = await asyncpg.connect(pg.admin_url(), timeout=10)
        try:
            for service in SERVICES:
                applied = await migrate(conn, service=service, password=secrets_["role_passwords"][service])
                if applied:
                    self.say(f"migrated {service}: {', '.join(applied)}")
            await ensure_admin_client(conn, self.home / "admin-client.json")
        finally:
            await conn.close()
        bus = await NatsBus.connect(nats_urls, replicas=replicas)
        durables = partitioned_consumers(load_settings().partitions)
        try:
            await bus.ensure_topology(STREAMS, durables)
        finally:
            await bus.close()
        self.say(f"streams and durable consumers provisioned ({len(STREAMS)} streams, {len(durables)} durables)")

        tls = ensure_local_tls(self.home) if self.options.tls else None
        keyring = self.home / "keyring.json"  # KEKs of the card vault, mode 0600
        FileKeyring.create(keyring)
        urls = {name: f"http://127.0.0.1:{ports[name]}" for name in SERVICES}
        if tls is not None:
            urls["gateway"] = f"https://127.0.0.1:{ports['gateway']}"
        self.copies = self._copies(ports)
        specs = [
            _service_spec(
                copy, home=self.home, port=ports[name],
                database_url=pg.role_url(role_name(name), secrets_["role_passwords"][name]),
                nats_url=nats_urls, redis_url=redis.url, replicas=replicas,
                internal_token=secrets_["internal_token"],
                service_urls={k: v for k, v in urls.items() if k != name},
                allow_local_webhooks=self.options.allow_local_webhooks,
                tls=tls if name == "gateway" else None,
                keyring=keyring if name == "gateway" else None,
            )
            for name in SERVICES
            for copy in self.copies[name]
        ]
        if self.options.allow_local_webhooks:
            self.say("[yellow]webhooks may reach local and private addresses (development only)[/yellow]")
        self.say("starting services: " + ", ".join(
            name if len(self.copies[name]) == 1 else f"{name} x{len(self.copies[name])}" for name in SERVICES
        ))
        await self.supervisor.start(*specs)
        self.info = {
            "gateway_url": urls["gateway"],
            "postgres_url": pg.admin_url(),
            "nats_url": nats.url,
            "nats_urls": [node.url for node in nodes],
            "redis_url": redis.url,
            # Where each service answers /healthz, /readyz and /metrics: the gateway's first
            # copy's operations port, the service's own port elsewhere.
            "operations_urls": {**urls, "gateway": self._alone_url(urls, self.copies["gateway"][0], ports)},
            # Each process of a service, and where it alone answers (copies share `urls`).
            "copies": {
                name: [
                    {"process": c.process, "pid": self.supervisor.processes[c.process].pid,
                     "url": self._alone_url(urls, c, ports)}
                    for c in copies
                ]
                for name, copies in self.copies.items()
            },
            "pids": {name: p.pid for name, p in self.supervisor.processes.items()},
            "supervisor_pid": os.getpid(),
            "home": str(self.home),
            "started_at": datetime.now(UTC).isoformat(),
            "ca_file": str(tls.ca_cert) if tls is not None else None,
            # What the servers need outside the home (see stack/place.py); `down --purge` removes it.
            "outside_home": [pg.place.record()] if pg.place.outside is not None else [],
            "backups": str(backups.root),
        }
        _write_private(self.home / "stack.json", self.info)
        self.say(f"[bold green]paystream is up[/bold green]: {urls['gateway']}  "
                 f"(state in {self.home}, logs in {self.home / 'logs'})")
        if tls is not None:
            self.say(f"TLS 1.2+ from a local CA; trust it with `curl --cacert {tls.ca_cert}`, "
                     f"SSL_CERT_FILE={tls.ca_cert} for Python, or your OS trust store")

    @staticmethod
    def _alone_url(urls: dict[str, str], copy: Copy, ports: dict[str, int]) -> str:
        return f"{urls[copy.service].rsplit(':', 1)[0]}:{copy.answers_alone or ports[copy.service]}"

    def _copies(self, ports: dict[str, int]) -> dict[str, list[Copy]]:
        """The processes of each service; copies of one share its port and get one each of their own."""
        taken = set(ports.values())
        out: dict[str, list[Copy]] = {}
        for name in SERVICES:
            n = self.options.scale.get(name, 1)
            if name == "gateway":  # public: readiness and metrics on a port of their own
                out[name] = [
                    Copy(name, process, k, n, None,
                         operations_port=choose_port(f"{process} operations", None, explicit=False, taken=taken))
                    for k, process in enumerate(copy_names(name, n), start=1)
                ]
                continue
            out[name] = [
                Copy(name, process, k, n, choose_port(process, None, explicit=False, taken=taken) if n > 1 else None)
                for k, process in enumerate(copy_names(name, n), start=1)
            ]
        return out

    def _stop_order(self) -> list[list[str]]:
        """`STOP_ORDER` with each service standing for all of its copies, and NATS for its nodes."""
        processes = {name: [c.process for c in copies] for name, copies in self.copies.items()}
        processes["nats"] = self._nats_names
        return [[p for name in group for p in processes.get(name, [name])] for group in STOP_ORDER]

    async def stop(self) -> None:
        self.say("stopping: gateway first, then services drain, then servers …")
        (self.home / "stack.json").unlink(missing_ok=True)
        await self.supervisor.stop(self._stop_order())
        pidfile = self.home / "up.pid"
        if pidfile.exists() and pidfile.read_text().strip() == str(os.getpid()):
            pidfile.unlink()
        self.say("stopped; state kept in " + str(self.home))


async def _run_demo(stack: Stack, args: list[str]) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "paystream", "demo", "--home", str(stack.home), *args,
    )
    code = await process.wait()
    if code == 0:
        stack.say("demo finished; the stack stays up until Ctrl-C")
    else:
        stack.say(f"[red]demo exited with code {code}[/red]; the stack stays up until Ctrl-C")


async def run_up(options: UpOptions, console: Console) -> int:
    """Run the stack in the foreground; returns the process exit code."""
    raise_open_files()  # before any server starts: they inherit it (PostgreSQL, NATS, Redis too)
    stack = Stack(options, console)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(stack.start())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    demo: asyncio.Task[None] | None = None
    schedule: asyncio.Task[None] | None = None
    if starting.done():
        error = starting.exception()
        if error is not None:
            # escaped: a message may hold brackets, e.g. "paystream[local]", that rich would take for markup
            stack.say(f"[bold red]cannot start:[/bold red] {escape(str(error))}")
            code = 2 if isinstance(error, (PlaceError, ModeMismatch, LocalServersMissing)) else 1
        else:
            if options.demo:
                demo = asyncio.create_task(_run_demo(stack, options.demo_args))
            every = parse_every(load_settings().backup_every)
            if every is not None:
                schedule = asyncio.create_task(run_schedule(stack.home, every, stack.say))
            await stopper
    else:
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, StartFailed, Exception):
            await starting
    if demo is not None and not demo.done():
        demo.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await demo
    if schedule is not None:
        schedule.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await schedule
    stopper.cancel()
    await stack.stop()
    return code


def stop_running(home: Path, timeout: float = 120.0) -> str:
    """`paystream down`: ask the supervisor of ``home`` to stop, and wait until it has."""
    pidfile = home.resolve() / "up.pid"
    if not pidfile.exists():
        return f"no stack is running from {home}"
    pid = int(pidfile.read_text().strip())
    if not psutil.pid_exists(pid):
        pidfile.unlink(missing_ok=True)
        return f"no stack is running from {home} (removed a stale pid file)"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    try:
        process = psutil.Process(pid)
        # Polled rather than `wait()`ed: a process that has exited but whose parent has not yet
        # reaped it (a test's Popen) is a zombie, and waiting for it to vanish would wait for that.
        while process.status() != psutil.STATUS_ZOMBIE:
            if time.monotonic() > deadline:
                return f"the stack (pid {pid}) is still stopping after {timeout:.0f}s"
            time.sleep(0.1)
    except psutil.NoSuchProcess:
        pass
    return f"stopped the stack from {home}"


def purge_home(home: Path) -> str:
    """`paystream down --purge`: stop the stack, then remove its home and what it made outside it."""
    home = home.resolve()
    if not home.exists():
        return f"nothing to purge: {home} does not exist"
    if not (home / "secrets.json").exists() and not (home / "restore.json").exists():
        raise UpError(f"{home} is not a paystream home (it has no secrets.json) nor a restored copy "
                      "(no restore.json); nothing was removed")
    said = stop_running(home)
    _check_not_running(home)  # still stopping after the timeout: remove nothing
    removed = purge(home)
    return f"{said}; removed " + ", ".join(str(path) for path in removed)
