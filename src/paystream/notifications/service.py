"""Composition root of the notifications service."""

from __future__ import annotations

from fastapi import FastAPI

from paystream.notifications.api import install_routes
from paystream.notifications.handlers import NotificationHandlers
from paystream.notifications.store import NotificationsStore
from paystream.notifications.workers import DeliveryWorker
from paystream.platform.runtime import Needs, ServiceContext, ServiceParts

NAME = "notifications"
NEEDS = Needs(postgres=True, bus=True)


async def build(ctx: ServiceContext) -> ServiceParts:
    store = NotificationsStore()
    handlers = NotificationHandlers(store, allow_private=ctx.settings.webhook_allow_private)
    worker = DeliveryWorker(ctx.db, store, ctx.settings, ctx.metrics)
    auth = ctx.internal_auth()

    def install(app: FastAPI) -> None:
        install_routes(app, pool=ctx.db, store=store, handlers=handlers, auth=auth)

    return ServiceParts(
        install=install,
        handlers={"notifications": handlers.on_payment_events},
        workers=[worker.run],
        closers=[worker.close],
    )
