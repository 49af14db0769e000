"""Composition root of the fraud service."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as redis
from fastapi import FastAPI
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge

from paystream.fraud.api import install_routes
from paystream.fraud.domain import default_rules
from paystream.fraud.features import OnlineFeatures
from paystream.fraud.handlers import FraudHandlers
from paystream.fraud.model import LoadedModel, ModelSource, default_model_path
from paystream.fraud.rebuild import FeatureRebuilder
from paystream.fraud.rescreen import Rescreener, rescreen_counter
from paystream.fraud.store import FraudStore
from paystream.fraud.velocity import VelocityCounter
from paystream.platform.observability import Metrics
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
    features_guard = Guard(
        "redis-features",
        GuardPolicy(timeout=budget, slow_call_seconds=budget / 2, max_concurrent=8, max_wait=budget),
        metrics=ctx.metrics,
    )
    features = OnlineFeatures(client)
    models = model_source(settings.fraud_model_path or default_model_path(), ctx.metrics,
                          interval=settings.fraud_model_reload_seconds)
    fallbacks = PromCounter(
        "paystream_fraud_model_fallbacks_total",
        "Payments the rules screened alone because the model could not score them", ["reason"],
        registry=ctx.metrics.registry,
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
        features=features,
        features_guard=features_guard,
        models=models,
        mode=settings.fraud_model_mode,
        fallbacks=fallbacks,
    )
    rebuilder = FeatureRebuilder(ctx.db, store, features, client)
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
        workers=[rescreener.run, *([models.run, rebuilder.run] if settings.fraud_model_mode != "off" else [])],
        closers=[close_redis],
    )


def model_source(path: Path, metrics: Metrics, *, interval: float) -> ModelSource:
    """The model file, watched; its loads and refusals are metrics."""
    refused = PromCounter("paystream_fraud_model_refused_total",
                          "Model artefacts refused at load (missing, corrupt, feature list mismatch)",
                          registry=metrics.registry)
    info = Gauge("paystream_fraud_model_info", "The model version serving (1)", ["version"],
                 registry=metrics.registry)

    def loaded(model: LoadedModel) -> None:
        info.clear()
        info.labels(model.version).set(1)

    source = ModelSource(path, interval=interval, on_refused=lambda _: refused.inc(), on_loaded=loaded)
    source.refresh()  # the first model is there before the first payment is screened
    return source
