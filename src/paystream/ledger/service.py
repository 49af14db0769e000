"""Composition root of the ledger service."""

from __future__ import annotations

from fastapi import FastAPI

from paystream.ledger.api import install_routes
from paystream.ledger.handlers import LedgerHandlers
from paystream.ledger.store import LedgerStore
from paystream.platform.runtime import Needs, ServiceContext, ServiceParts

NAME = "ledger"
NEEDS = Needs(postgres=True, bus=True, outbox=True)


async def build(ctx: ServiceContext) -> ServiceParts:
    store = LedgerStore()
    handlers = LedgerHandlers(store, ctx.outbox)
    auth = ctx.internal_auth()

    def install(app: FastAPI) -> None:
        install_routes(app, ctx.db, store, auth)

    return ServiceParts(install=install, handlers={"ledger": handlers.on_fraud_events})
