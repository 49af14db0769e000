"""Composition root of the payments service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI

from paystream.payments.api import install_routes
from paystream.payments.deadline import ScreeningDeadline, deadline_counter
from paystream.payments.directory import AccountDirectory
from paystream.payments.handlers import PaymentHandlers
from paystream.payments.store import PaymentsStore
from paystream.platform.internal import InternalClient
from paystream.platform.resilience import Guard, GuardPolicy
from paystream.platform.runtime import Needs, ServiceContext, ServiceParts, Worker

NAME = "payments"
NEEDS = Needs(postgres=True, bus=True, outbox=True)


async def build(ctx: ServiceContext) -> ServiceParts:
    settings = ctx.settings
    store = PaymentsStore()
    ledger = InternalClient(
        settings.service_urls["ledger"],
        token=settings.internal_token.get_secret_value(),
        timeout=settings.http_timeout,
    )
    guard = Guard("ledger", GuardPolicy(timeout=2.0, max_concurrent=32, max_wait=1.0),
                  metrics=ctx.metrics)
    directory = AccountDirectory(ctx.db, store, ledger, guard)
    handlers = PaymentHandlers(store, ctx.outbox, pool=ctx.db, directory=directory)
    auth = ctx.internal_auth()
    workers: list[Worker] = []
    closers: list[Callable[[], Awaitable[None]]] = [ledger.close]
    if settings.screening_deadline_seconds > 0:
        fraud = InternalClient(
            settings.service_urls["fraud"],
            token=settings.internal_token.get_secret_value(),
            timeout=min(settings.http_timeout, 5.0),
        )
        deadline = ScreeningDeadline(
            ctx.db, store, ctx.outbox, fraud, deadline_counter(ctx.metrics),
            deadline=settings.screening_deadline_seconds,
            interval=settings.screening_deadline_sweep_seconds,
        )
        workers += [deadline.run, deadline.run_handoff]
        closers.append(fraud.close)

    def install(app: FastAPI) -> None:
        install_routes(app, pool=ctx.db, store=store, handlers=handlers, auth=auth)

    return ServiceParts(
        install=install,
        handlers={
            "payments-fraud": handlers.on_outcomes,
            "payments-ledger": handlers.on_outcomes,
        },
        workers=workers,
        closers=closers,
    )
