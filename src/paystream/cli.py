"""The `paystream` command: run the stack, serve one service, demo, bench, check invariants, verify the ledger."""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

# typer 0.29 carries its own click (pinned in constraints.txt); its errors are caught by class.
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from paystream.contracts.topology import SERVICES
from paystream.fraud.cli import fraud_app
from paystream.platform.home import NoStack
from paystream.stack.backup_commands import backup_app, restore

app = typer.Typer(
    help="paystream: wallets on a double-entry ledger, payments, fraud screening, signed webhooks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, highlight=False)
app.add_typer(fraud_app, name="fraud")  # simulate, train, export-labels: paystream/fraud/cli.py
app.add_typer(backup_app, name="backup")  # take one, list: paystream/stack/backup_commands.py
app.command()(restore)  # point-in-time recovery into a copy: paystream/stack/backup_commands.py

HomeOption = Annotated[
    Path,
    typer.Option("--home", envvar="PAYSTREAM_HOME", help="Where the stack keeps its state."),
]


def _parse_ports(values: list[str]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for value in values:
        name, sep, number = value.partition("=")
        if not sep or not number.isdigit() or not 0 < int(number) < 65536:
            raise typer.BadParameter(f"expected NAME=PORT (e.g. gateway=8800), got {value!r}")
        ports[name] = int(number)
    return ports


@app.command()
def up(
    home: HomeOption = Path(".paystream"),
    demo: Annotated[bool, typer.Option("--demo", help="Run `paystream demo` once the stack is up.")] = False,
    auto_ports: Annotated[bool, typer.Option("--auto-ports", help="Use any free ports.")] = False,
    port: Annotated[list[str], typer.Option("--port", help="NAME=PORT; a busy port is an error.")] = [],  # noqa: B006
    demo_payments: Annotated[int, typer.Option(help="Transfers the demo sends.")] = 3000,
    tls: Annotated[bool, typer.Option(
        "--tls", help="Serve the gateway over HTTPS with a certificate from a local CA it makes.",
    )] = False,
    allow_local_webhooks: Annotated[bool, typer.Option(
        "--allow-local-webhooks",
        help="Let webhooks reach loopback and private addresses (development; implied by --demo).",
    )] = False,
    scale: Annotated[str | None, typer.Option(
        "--scale", envvar="PAYSTREAM_SCALE",
        help="Copies per service, e.g. payments=3,fraud=2,gateway=2 (each one process; at most "
        "as many as there are partitions for a service that consumes events).",
    )] = None,
    nats_cluster: Annotated[int, typer.Option(
        "--nats-cluster", envvar="PAYSTREAM_NATS_CLUSTER",
        help="Run NATS as a cluster of this many nodes (3 or 5) with streams on 3 of them; 1: one server.",
    )] = 1,
) -> None:
    """Start PostgreSQL, NATS JetStream, Redis and every service; run until Ctrl-C."""
    from paystream.platform.config import load_settings
    from paystream.stack.pitr import parse_every
    from paystream.stack.scale import ScaleError, parse_scale
    from paystream.stack.up import UpError, UpOptions, run_up

    try:
        copies = parse_scale(scale, partitions=load_settings().partitions)
        parse_every(load_settings().backup_every)
    except (ScaleError, ValueError) as exc:
        err_console.print(f"[bold red]cannot start:[/bold red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    if nats_cluster not in (1, 3, 5):
        err_console.print(
            f"[bold red]cannot start:[/bold red] --nats-cluster takes 1, 3 or 5 nodes, not {nats_cluster}",
            soft_wrap=True,
        )
        raise typer.Exit(2)
    options = UpOptions(
        home=home, auto_ports=auto_ports, ports=_parse_ports(port), demo=demo,
        demo_args=["--payments", str(demo_payments)],
        allow_local_webhooks=allow_local_webhooks or demo,
        tls=tls, scale=copies, nats_nodes=nats_cluster,
    )
    try:
        code = asyncio.run(run_up(options, console))
    except UpError as exc:
        err_console.print(f"[bold red]cannot start:[/bold red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command()
def down(
    home: HomeOption = Path(".paystream"),
    purge: Annotated[bool, typer.Option(
        "--purge", help="Also delete the home and what the stack keeps outside it (its PostgreSQL "
        "place under the server root when run as root): every payment and key of this stack is lost.",
    )] = False,
) -> None:
    """Stop the stack running from HOME (it drains first)."""
    from paystream.stack.up import UpError, purge_home, stop_running

    if not purge:
        console.print(stop_running(home))
        return
    try:
        console.print(purge_home(home))
    except UpError as exc:
        err_console.print(f"[bold red]cannot purge:[/bold red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def serve(name: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICES)}")]) -> None:
    """Run one service in the foreground (what `paystream up` starts for each service)."""
    if name not in SERVICES:
        console.print(f"[red]unknown service {name!r}[/red]; choose one of: {', '.join(SERVICES)}")
        raise typer.Exit(2)
    from paystream.platform.runtime import run_service

    run_service(importlib.import_module(f"paystream.{name}.service"))


@app.command()
def migrate() -> None:
    """Migrate every service's schema and provision the streams (a deployment's step before its services).

    Reads PAYSTREAM_ADMIN_DATABASE_URL, PAYSTREAM_ROLE_PASSWORDS and PAYSTREAM_NATS_URL; `up` needs none of this.
    """
    from rich.markup import escape

    from paystream.platform.config import load_settings
    from paystream.platform.provision import ProvisionError, provision

    try:
        done = asyncio.run(provision(load_settings()))
    except ProvisionError as exc:
        console.print(f"[red]cannot migrate:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    for line in done:
        console.print(f"migrated {escape(line)}", soft_wrap=True)


def _no_stack(exc: NoStack) -> NoReturn:
    """A command that needs a running stack and found none: one line on stderr, exit 2."""
    err_console.print(f"[bold red]error:[/bold red] {exc}", soft_wrap=True)
    raise typer.Exit(2) from None


def _drive(work: Coroutine[Any, Any, bool], what: str) -> None:
    """Run a tool that drives the public API; no stack is exit 2, an API or network failure
    a message and exit 1."""
    import httpx

    from paystream.tools.client import ApiError

    try:
        ok = asyncio.run(work)
    except NoStack as exc:
        _no_stack(exc)
    except (ApiError, httpx.HTTPError) as exc:
        err_console.print(f"[bold red]{what} failed:[/bold red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    raise typer.Exit(0 if ok else 1)


@app.command()
def demo(
    home: HomeOption = Path(".paystream"),
    payments: Annotated[int, typer.Option(min=100, help="How many transfers to send.")] = 3000,
    concurrency: Annotated[int, typer.Option(min=1, max=256)] = 32,
) -> None:
    """Against a running stack: accounts, deposits, a mix of transfers, then a report."""
    from paystream.tools.demo import run_demo

    _drive(run_demo(home, payments=payments, concurrency=concurrency, console=console), "demo")


@app.command()
def bench(
    home: HomeOption = Path(".paystream"),
    payments: Annotated[int | None, typer.Option(min=1, help="Transfers to send (closed loop). (default 10000)",
                                                 show_default=False)] = None,
    concurrency: Annotated[int | None, typer.Option(
        min=1, max=1024, help="Transfers in flight (closed loop). (default 32)", show_default=False)] = None,
    accounts: Annotated[int | None, typer.Option(
        min=2, help="Funded accounts the payments spread over. (default 2000)", show_default=False)] = None,
    rate: Annotated[float | None, typer.Option(
        help="Open loop: send this many payments per second on a fixed schedule; latencies count "
        "from each payment's due time.", show_default=False)] = None,
    duration: Annotated[float | None, typer.Option(
        help="With --rate: seconds to send for. (default 30)", show_default=False)] = None,
    users: Annotated[int | None, typer.Option(
        help="With --rate: N signed-in wallet users send the payments, each from its own wallet on "
        "its own keep-alive connection.", show_default=False)] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Also write the figures to this JSON file.")
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Start a stack of its own (free ports, temporary home).")
    ] = False,
    floor: Annotated[bool, typer.Option(
        "--floor", help="First the same payments through the pipeline's floor (the same hops, none of our "
        "logic), then the pipeline; report the pipeline's share of the floor.")] = False,
) -> None:
    """Drive payments through the public API, closed loop (N at a concurrency) or open loop
    (--rate for --duration, optionally from --users); report rates and latencies."""
    from paystream.tools.bench import (
        BenchError,
        BenchOptions,
        check_bench_options,
        run_bench,
        run_bench_on_fresh_stack,
    )

    options = BenchOptions(payments=payments, concurrency=concurrency, accounts=accounts, rate=rate,
                           duration=duration, users=users, json_path=json_path, floor=floor)
    try:
        check_bench_options(options)
        _drive(run_bench_on_fresh_stack(options, console) if fresh else run_bench(home, options, console),
               "bench")
    except BenchError as exc:
        err_console.print(f"[bold red]bench:[/bold red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None


@app.command()
def gameday(
    scenario: Annotated[str, typer.Argument(
        help="fraud-slow, kill, nats-node, postgres-restart or redis-down.", show_default=False,
    )],
    home: HomeOption = Path(".paystream"),
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Start a stack of its own (free ports, temporary home).")
    ] = False,
    rate: Annotated[float, typer.Option(help="Payments per second, sent open loop.")] = 30.0,
    minutes: Annotated[float, typer.Option(help="How long the load lasts; the fault takes its middle third.")] = 3.0,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Where the HTML and JSON report go (default HOME/gameday, ./gameday with --fresh).",
    )] = None,
    kill_every: Annotated[float, typer.Option(help="kill: seconds between two SIGKILLs.")] = 5.0,
    scale: Annotated[str | None, typer.Option(
        help="With --fresh: copies per service, as for `up --scale`.")] = None,
    nats_cluster: Annotated[int | None, typer.Option(
        help="With --fresh: NATS nodes (nats-node needs 3; that is its default).")] = None,
    screening_deadline: Annotated[float | None, typer.Option(
        help="With --fresh: the screening deadline in seconds (0: off, to see what it saves).")] = None,
) -> None:
    """Chaos under steady load: inject SCENARIO's fault mid-run, record it, judge it, report it."""
    import httpx

    from paystream.tools.client import ApiError
    from paystream.tools.gameday import GamedayError, GamedayOptions, run_gameday

    options = GamedayOptions(
        scenario=scenario, rate=rate, minutes=minutes, home=home, fresh=fresh, report_dir=report,
        kill_every=kill_every, scale=scale, nats_nodes=nats_cluster, screening_deadline=screening_deadline,
    )
    try:
        code = asyncio.run(run_gameday(options, console))
    except GamedayError as exc:
        err_console.print(f"[bold red]gameday:[/bold red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    except (ApiError, httpx.HTTPError) as exc:
        err_console.print(f"[bold red]gameday failed:[/bold red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


keys_app = typer.Typer(help="Signing keys of the access tokens.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("rotate")
def keys_rotate(
    home: HomeOption = Path(".paystream"),
    signing: Annotated[bool, typer.Option(help="Rotate the access-token signing key.")] = True,
    encryption: Annotated[bool, typer.Option(
        help="Add a key-encryption key version and re-wrap the vault's data keys.")] = True,
) -> None:
    """Rotate keys without downtime: signing keys, and the vault's key-encryption key."""
    from paystream.gateway.identity.keys import rotate_signing_key
    from paystream.gateway.vault.store import rotate_encryption_key

    try:
        if signing:
            kid, retire_at = asyncio.run(rotate_signing_key(home))
            console.print(f"new signing key [bold]{kid}[/bold] signs from the gateway's next key refresh; "
                          f"earlier keys verify until {retire_at:%Y-%m-%d %H:%M:%S %Z}")
        if encryption:
            version, rewrapped = asyncio.run(rotate_encryption_key(home))
            console.print(f"new key-encryption key [bold]{version}[/bold] is active; "
                          f"{rewrapped} data keys re-wrapped under it")
    except NoStack as exc:
        _no_stack(exc)
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


clients_app = typer.Typer(help="API clients (client credentials).", no_args_is_help=True)
app.add_typer(clients_app, name="clients")


@clients_app.command("create")
def clients_create(
    name: Annotated[str, typer.Option(help="What the client is for.")],
    tenant: Annotated[str, typer.Option(help="The tenant the client acts in.")] = "default",
    scope: Annotated[list[str], typer.Option("--scope", help="A scope to grant (repeat).")] = [],  # noqa: B006
    home: HomeOption = Path(".paystream"),
    database_url: Annotated[str | None, typer.Option(
        "--database-url", help="The gateway's database (its own role will do) instead of HOME/stack.json: "
        "a deployment's first client, e.g. `kubectl exec` into a gateway pod with $PAYSTREAM_DATABASE_URL.",
    )] = None,
) -> None:
    """Create an API client; its secret is printed once and never stored in clear."""
    import json as json_module

    from pydantic import ValidationError

    from paystream.contracts.api import ClientCreate
    from paystream.gateway.identity.clients import create_client

    try:
        spec = ClientCreate.model_validate({"name": name, "tenant": tenant, "scopes": scope})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'client'}: {e['msg']}" for e in exc.errors())
        err_console.print(f"[bold red]invalid client:[/bold red] {problems}", soft_wrap=True)
        raise typer.Exit(2) from None
    try:
        created = asyncio.run(create_client(home, name=spec.name, tenant=spec.tenant, scopes=list(spec.scopes),
                                            url=database_url))
    except NoStack as exc:
        _no_stack(exc)
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    print(json_module.dumps(created, indent=2))


audit_app = typer.Typer(help="The audit log of state-changing requests.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(home: HomeOption = Path(".paystream")) -> None:
    """Recompute the audit log's hash chain from the database and name any broken link."""
    from paystream.gateway.audit import verify
    from paystream.gateway.store import gateway_pool

    async def run() -> object:
        pool = await gateway_pool(home)
        try:
            async with pool.acquire() as conn:
                return await verify(conn)
        finally:
            await pool.close()

    try:
        report = asyncio.run(run())
    except NoStack as exc:
        _no_stack(exc)
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    from paystream.gateway.audit import VerifyReport

    assert isinstance(report, VerifyReport)
    console.print(f"audit log: {report.records} records, {report.chained} chained")
    for problem in report.problems:
        console.print(f"[red]BROKEN[/red] {problem}")
    if report.ok:
        console.print("[green]the chain is intact[/green]")
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def check(
    home: HomeOption = Path(".paystream"),
    database_url: Annotated[str | None, typer.Option(
        "--database-url", help="A superuser URL of the database (instead of HOME/stack.json), e.g. a restored copy.",
    )] = None,
) -> None:
    """Check the money invariants against the running stack's database."""
    from paystream.tools.invariants import check_from_home, check_invariants

    try:
        report = asyncio.run(check_invariants(database_url) if database_url else check_from_home(home))
    except NoStack as exc:
        _no_stack(exc)
    console.print(report.table())
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def faults(
    home: HomeOption = Path(".paystream"),
    decision_delay_ms: Annotated[int | None, typer.Option(
        "--decision-delay-ms", min=0, max=600_000,
        help="Make every fraud screening decision wait this long (0: off).",
    )] = None,
) -> None:
    """Game days: show the fraud service's faults, or set them on the running stack."""
    import httpx

    from paystream.tools.client import ApiError, FraudFaults

    try:
        switch = FraudFaults.for_home(home)
    except (FileNotFoundError, KeyError) as exc:
        err_console.print(f"[bold red]no stack to set faults on:[/bold red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    if decision_delay_ms is None:
        work = switch.get()
    else:
        work = switch.set(decision_delay_ms=decision_delay_ms)
    try:
        console.print_json(data=asyncio.run(work))
    except (ApiError, httpx.HTTPError) as exc:
        err_console.print(f"[bold red]faults failed:[/bold red] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None


ledger_app = typer.Typer(help="Operator tools for the ledger.", no_args_is_help=True)
app.add_typer(ledger_app, name="ledger")


@ledger_app.command("verify")
def ledger_verify(
    home: HomeOption = Path(".paystream"),
    database_url: Annotated[str | None, typer.Option(
        "--database-url", help="A superuser URL of the database (instead of HOME/stack.json).",
    )] = None,
    schema: Annotated[str, typer.Option(help="The ledger's schema.")] = "ledger",
    key: Annotated[Path | None, typer.Option(
        "--key", help="Ed25519 PEM of the checkpoints (default HOME/ledger-checkpoint-key.pem; made if missing).",
    )] = None,
    sign: Annotated[bool, typer.Option(
        "--sign/--no-sign", help="Sign the checkpoints due when the ledger verifies (else read only).",
    )] = True,
) -> None:
    """Recompute the ledger's hash chain, balances and checkpoints from the database; exit 1 if anything is off."""
    from paystream.ledger.checkpoints import load_or_create_key
    from paystream.ledger.verify import database_url_of, verify_database

    key_path = key or home / "ledger-checkpoint-key.pem"
    try:
        url = database_url or database_url_of(home)
        private = load_or_create_key(key_path) if sign or key_path.exists() else None
    except (FileNotFoundError, ValueError) as exc:
        err_console.print(f"[bold red]cannot verify:[/bold red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    report = asyncio.run(verify_database(url, schema, key=private, sign=sign))
    console.print(report.table())
    raise typer.Exit(0 if report.ok else 1)


def main() -> None:
    """Run the command. A usage error (an unknown command or option, a value that does not parse
    or is out of range) is one line on stderr and exit 2, like every other bad input; `--help`
    and a bare `paystream` still print the help."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        code = typer.main.get_command(app).main(prog_name="paystream", standalone_mode=False)
    except NoArgsIsHelpError as exc:
        exc.show()
        raise SystemExit(2) from None
    except UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "paystream"
        message = " ".join(exc.format_message().split())
        err_console.print(f"{where}: {message} (see {where} --help)", markup=False, soft_wrap=True)
        raise SystemExit(2) from None
    except ClickException as exc:
        err_console.print(f"paystream: {' '.join(exc.format_message().split())}", markup=False, soft_wrap=True)
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        err_console.print("paystream: aborted", markup=False)
        raise SystemExit(1) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
