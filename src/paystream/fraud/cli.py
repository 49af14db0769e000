"""`paystream fraud …`: simulate traffic, train the model, export real labels (docs/fraud-model.md).

Bad input is one line on stderr and exit 2; heavy imports wait until a command runs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

console = Console()
HomeOption = Annotated[
    Path,
    typer.Option("--home", envvar="PAYSTREAM_HOME", help="Where the stack keeps its state."),
]

fraud_app = typer.Typer(help="The fraud model: simulated traffic, training, real labels.", no_args_is_help=True)
err_console = Console(stderr=True, highlight=False)


def _refuse(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit 2."""
    err_console.print(f"[bold red]error:[/bold red] {message}", soft_wrap=True)
    raise typer.Exit(2)


@fraud_app.command("simulate")
def fraud_simulate(
    seed: Annotated[int, typer.Option(help="Seed: the same seed, days and users give the same files.")] = 1,
    days: Annotated[int, typer.Option(help="Days of traffic.")] = 30,
    users: Annotated[int, typer.Option(help="Honest wallets (at least 10).")] = 400,
    out: Annotated[Path, typer.Option("--out", help="Directory to write payments.csv and meta.json into.")] = Path(
        "fraud-data"),
) -> None:
    """Write seeded, labelled wallet traffic (honest users and fraud patterns) for `fraud train`."""
    from paystream.fraud.simulate import simulate, write

    if days < 1 or days > 3650:
        _refuse(f"--days takes 1 to 3650, not {days}")
    if users < 10 or users > 1_000_000:
        _refuse(f"--users takes 10 to 1000000, not {users}")
    if out.exists() and not out.is_dir():
        _refuse(f"--out {out} exists and is not a directory")
    try:
        meta = write(simulate(seed=seed, days=days, users=users), out, seed=seed, days=days, users=users)
    except OSError as exc:
        _refuse(f"cannot write {out}: {exc.strerror or exc}")
    console.print(f"{meta['payments']} payments ({meta['fraud']} fraud) written to {out}")


@fraud_app.command("train")
def fraud_train(
    data: Annotated[Path, typer.Option("--data", help="Where `fraud simulate` wrote its files.")] = Path("fraud-data"),
    out: Annotated[Path | None, typer.Option(
        "--out", help="The model artefact to write (default DATA/model.json)."
    )] = None,
    seed: Annotated[int, typer.Option(help="The training seed (recorded in the artefact).")] = 7,
) -> None:
    """Train the fraud model on simulated traffic; print rules against model on the later held-out slice."""
    import json as json_module

    from rich.table import Table

    from paystream.fraud.simulate import read
    from paystream.fraud.train import train, write_artefact

    try:
        payments = read(data)
        meta = json_module.loads((data / "meta.json").read_text())
    except FileNotFoundError:
        _refuse(f"no simulated traffic in {data} (run `paystream fraud simulate --out {data}` first)")
    except (ValueError, KeyError) as exc:
        _refuse(f"{data} does not hold simulator output: {exc}")
    if sum(p.label for p in payments) < 20:
        _refuse(f"{data} has too little fraud to train on; simulate more days or users")
    artefact = train(payments, seed=seed, data_meta=meta)
    target = out or data / "model.json"
    try:
        write_artefact(artefact, target)
    except OSError as exc:
        _refuse(f"cannot write {target}: {exc.strerror or exc}")
    metrics = artefact["metrics"]
    held = metrics["held_out"]
    table = Table(title=f"held-out later slice: {held['payments']} payments, {held['fraud']} fraud")
    for column in ("", "review precision", "review recall", "decline precision", "decline recall", "PR-AUC"):
        table.add_column(column, justify="right")
    for name in ("rules", "model", "combined"):
        m = metrics[name]
        table.add_row(name, *("—" if m[k] is None else f"{m[k]:.3f}" for k in (
            "review_precision", "review_recall", "decline_precision", "decline_recall", "pr_auc")))
    console.print(table)
    thresholds = artefact["thresholds"]
    console.print(f"model {artefact['version']} (review at {thresholds['review']:.4f}, decline at "
                  f"{thresholds['decline']:.4f}) written to {target}")


@fraud_app.command("export-labels")
def fraud_export_labels(
    home: HomeOption = Path(".paystream"),
    database_url: Annotated[str | None, typer.Option(
        "--database-url", help="A URL of the database that can read the fraud schema (instead of HOME/stack.json).",
    )] = None,
    out: Annotated[Path, typer.Option("--out", help="Directory to write payments.csv and meta.json into.")] = Path(
        "fraud-labels"),
) -> None:
    """Write screened payments with reviewers' decisions and fraud reports as labels, for `fraud train --data`."""
    import asyncpg

    from paystream.fraud.export import export_labelled
    from paystream.tools.client import StackInfo

    if out.exists() and not out.is_dir():
        _refuse(f"--out {out} exists and is not a directory")
    try:
        url = database_url or StackInfo.load(home).postgres_url
    except FileNotFoundError as exc:
        _refuse(str(exc))

    async def run() -> dict[str, object]:
        conn = await asyncpg.connect(url)
        try:
            return await export_labelled(conn, out)
        finally:
            await conn.close()

    try:
        meta = asyncio.run(run())
    except (OSError, asyncpg.PostgresError) as exc:
        _refuse(f"cannot export labels: {exc}")
    console.print(f"{meta['payments']} payments ({meta['fraud']} labelled fraud) written to {out}")
