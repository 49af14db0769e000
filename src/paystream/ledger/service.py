"""Composition root of the ledger service."""

from __future__ import annotations

from fastapi import FastAPI

from paystream.ledger.api import install_routes
from paystream.ledger.handlers import LedgerHandlers
from paystream.ledger.store import LedgerStore
from paystream.ledger.workers import DeltaFolder, HoldSweeper
from paystream.platform.runtime import Needs, ServiceContext, ServiceParts

NAME = "ledger"
NEEDS = Needs(postgres=True, bus=True, outbox=True)


async def build(ctx: ServiceContext) -> ServiceParts:
    store = LedgerStore()
    handlers = LedgerHandlers(
        store, ctx.outbox, review_hold_seconds=ctx.settings.ledger_review_hold_seconds
    )
    sweeper = HoldSweeper(ctx.db, store, ctx.outbox, interval=ctx.settings.ledger_hold_sweep_seconds)
    auth = ctx.internal_auth()

    def install(app: FastAPI) -> None:
        install_routes(app, ctx.db, store, auth)

    return ServiceParts(
        install=install,
        handlers={"ledger": handlers.on_fraud_events},
        workers=[sweeper.run, DeltaFolder(ctx.db, store).run],
    )
