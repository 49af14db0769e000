"""`paystream backup`, `backup list` and `restore` (docs/backups.md).

Bad input is one line on stderr and exit 2, with nothing written; a failure of the tools
themselves is one line and exit 1. Heavy imports wait until a command runs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True, highlight=False)
HomeOption = Annotated[
    Path,
    typer.Option("--home", envvar="PAYSTREAM_HOME", help="Where the stack keeps its state."),
]

backup_app = typer.Typer(
    help="Base backups of the stack's PostgreSQL (its WAL is archived continuously by `up`).",
    invoke_without_command=True,
)


def _refuse(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[bold red]error:[/bold red] {message}", soft_wrap=True)
    raise typer.Exit(code)


@backup_app.callback()
def backup(ctx: typer.Context, home: HomeOption = Path(".paystream")) -> None:
    """Take a base backup of the running stack now, and check it with pg_verifybackup."""
    if ctx.invoked_subcommand is not None:
        return
    from paystream.platform.config import load_settings
    from paystream.stack.backup import BackupError, take_base_backup

    try:
        take_base_backup(home, keep=load_settings().backup_keep, say=console.print)
    except BackupError as exc:
        _refuse(str(exc), exc.code)


@backup_app.command("list")
def backup_list(home: HomeOption = Path(".paystream")) -> None:
    """Each base backup (time, size, verified) and the window of times you can restore to."""
    from rich.table import Table

    from paystream.stack.backup import archived_segments, backup_place, catalogue, current_window
    home = home.resolve()
    if not (home / "secrets.json").is_file():
        _refuse(f"no paystream home at {home} (no secrets.json); pass --home or set PAYSTREAM_HOME")
    place = backup_place(home)
    backups = catalogue(place)
    table = Table(title=f"base backups in {place.root / 'base'}")
    for column in ("backup (its start)", "ended (UTC)", "size", "verified"):
        table.add_column(column, justify="right" if column == "size" else "left", no_wrap=True)
    for b in backups:
        table.add_row(b.name, f"{b.ended:%Y-%m-%d %H:%M:%S}", f"{b.size / 1e6:.1f} MB",
                      "yes" if b.verified else "[red]NO[/red]")
    console.print(table)
    segments, size = archived_segments(place)
    console.print(f"WAL archive: {len(segments)} segments ({len(segments) * size / 1e6:.0f} MB) in {place.wal}")
    console.print(f"restorable: {current_window(place).describe()}", soft_wrap=True)
    if (home / "stack.json").is_file():
        console.print("the stack is running: `paystream restore` closes its current WAL segment first, "
                      "so it can also restore to any time up to the moment it runs", soft_wrap=True)


def restore(
    to: Annotated[str, typer.Option("--to", help="The instant to restore to: ISO 8601 with a zone, "
                                    "e.g. 2026-12-01T10:00:00Z.", show_default=False)],
    into: Annotated[Path, typer.Option("--into", help="A new or empty directory for the restored copy.",
                                       show_default=False)],
    home: HomeOption = Path(".paystream"),
    recovery_timeout: Annotated[float, typer.Option(help="Seconds replaying the WAL archive may take.")] = 1800.0,
) -> None:
    """Bring up a copy of the stack's database as it was at --to, on a free port; runs until Ctrl-C
    or `paystream down --home INTO`."""
    from datetime import datetime

    from paystream.stack.backup import BackupError
    from paystream.stack.pitr import BadTarget, parse_target
    from paystream.stack.restore import RestoreOptions, run_restore

    try:
        target = parse_target(to)
    except BadTarget as exc:
        _refuse(str(exc))

    def say(message: str) -> None:
        console.print(f"[dim]{datetime.now():%H:%M:%S}[/dim] {message}", soft_wrap=True)

    try:
        code = asyncio.run(run_restore(
            RestoreOptions(home=home, target=target, into=into, recovery_timeout=recovery_timeout), say))
    except BackupError as exc:
        _refuse(str(exc), exc.code)
    raise typer.Exit(code)
