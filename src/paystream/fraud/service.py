"""Composition root of the fraud service."""

from __future__ import annotations

import redis.asyncio as redis
from fastapi import FastAPI

from paystream.fraud.api import install_routes
from paystream.fraud.domain import default_rules
from paystream.fraud.handlers import FraudHandlers
from paystream.fraud.rescreen import Rescreener, rescreen_counter
from paystream.fraud.store import FraudStore
from paystream.fraud.velocity import VelocityCounter
from paystream.platform.resilience import Guard, GuardPolicy
from paystream.platform.runtime import Needs, ServiceContext, ServiceParts

NAME = "fraud"
NEEDS = Needs(postgres=True, bus=True, outbox=True)


async def build(ctx: ServiceContext) -> ServiceParts:
    settings = ctx.settings
    client = redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        retry_on_timeout=False,
        health_check_interval=10,
    )
    store = FraudStore()
    budget = settings.fraud_check_budget_seconds
    velocity_guard = Guard(
        "redis-velocity",
        GuardPolicy(timeout=budget, slow_call_seconds=budget / 2, max_concurrent=8, max_wait=budget),
        metrics=ctx.metrics,
    )
    handlers = FraudHandlers(
        store=store,
        outbox=ctx.outbox,
        rules=default_rules(
            amount_limit=settings.fraud_amount_limit,
            review_threshold=settings.fraud_review_threshold,
            velocity_limit=settings.fraud_velocity_limit,
        ),
        velocity=VelocityCounter(client, window_seconds=settings.fraud_velocity_window_seconds),
        velocity_guard=velocity_guard,
        rescreen_after=settings.fraud_rescreen_backoff_seconds,
    )
    rescreener = Rescreener(
        ctx.db, store, handlers, ctx.outbox, velocity_guard, rescreen_counter(ctx.metrics),
        budget=settings.fraud_rescreen_budget_seconds,
        backoff=settings.fraud_rescreen_backoff_seconds,
        backoff_cap=settings.fraud_rescreen_backoff_cap_seconds,
        interval=settings.fraud_rescreen_interval_seconds,
    )
    auth = ctx.internal_auth()

    def install(app: FastAPI) -> None:
        install_routes(app, pool=ctx.db, store=store, handlers=handlers, auth=auth)

    async def close_redis() -> None:
        await client.aclose()

    return ServiceParts(
        install=install,
        handlers={"fraud": handlers.on_payments_initiated},
        workers=[rescreener.run],
        closers=[close_redis],
    )
