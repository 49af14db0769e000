"""Composition root of the gateway."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi import FastAPI

from paystream.contracts.topology import SERVICES
from paystream.gateway.api import Endpoints, install_routes
from paystream.gateway.audit import Audit, run_chainer
from paystream.gateway.authenticate import Authenticate
from paystream.gateway.forward import Forward
from paystream.gateway.idempotency import Idempotency
from paystream.gateway.identity.clients import ClientStore, CreateClient
from paystream.gateway.identity.grants import Grants, TokenEndpoint
from paystream.gateway.identity.keys import load_signing_keys
from paystream.gateway.identity.tokens import TokenService
from paystream.gateway.identity.users import CreateUser, UserStore
from paystream.gateway.openapi import build_openapi
from paystream.gateway.pipeline import Pipeline
from paystream.gateway.rate_limit import Limit, RateLimit, RateLimiter, redis_client
from paystream.gateway.store import IdempotencyStore
from paystream.gateway.vault.cards import CreateCard
from paystream.gateway.vault.store import CardVault
from paystream.platform.crypto import FileKeyring
from paystream.platform.internal import InternalClient
from paystream.platform.observability import get_logger
from paystream.platform.runtime import Needs, ServiceContext, ServiceParts, repeat

log = get_logger(__name__)

NAME = "gateway"
NEEDS = Needs(postgres=True)
ROUTED_SERVICES = tuple(name for name in SERVICES if name != "gateway")  # the services it forwards to


async def build(ctx: ServiceContext) -> ServiceParts:
    settings = ctx.settings
    tokens = TokenService(
        issuer=settings.token_issuer, audience=settings.token_audience,
        ttl_seconds=settings.token_ttl_seconds,
    )
    await load_signing_keys(ctx.db, tokens, create=True)
    internal_token = settings.internal_token.get_secret_value()
    services = {
        name: InternalClient(
            settings.service_urls[name], token=internal_token, timeout=settings.http_timeout,
            max_connections=128,
        )
        for name in ROUTED_SERVICES
    }
    limiter_redis = redis_client(settings.redis_url, timeout=settings.redis_timeout)
    limiter = RateLimiter(
        limiter_redis, {name: Limit.parse(text) for name, text in settings.rate_limits.items()},
        fail_closed=frozenset({"auth"}), copies=settings.copies,
    )
    keyring_path = Path(settings.keyring_file) if settings.keyring_file else None
    vault = CardVault(FileKeyring.load(keyring_path)) if keyring_path or os.environ.get("PAYSTREAM_KEYRING") else None
    users = UserStore(vault.keyring) if vault is not None else None
    clients = ClientStore()
    rate_limit = RateLimit(limiter)
    pipeline = Pipeline(
        authenticate=Authenticate(tokens), rate_limit=rate_limit, idempotency=Idempotency(ctx.db),
        forward=Forward(services), audit=Audit(ctx.db),
    )
    grants = Grants(pool=ctx.db, clients=clients, users=users, tokens=tokens)
    endpoints = Endpoints(
        pipeline=pipeline, tokens=tokens,
        token=TokenEndpoint(grants=grants, rate_limit=rate_limit),
        create_client=CreateClient(pipeline=pipeline, pool=ctx.db, clients=clients),
        create_user=CreateUser(pipeline=pipeline, pool=ctx.db, users=users),
        create_card=CreateCard(pipeline=pipeline, pool=ctx.db, vault=vault),
    )
    spec = build_openapi()

    def install(app: FastAPI) -> None:
        install_routes(app, endpoints)
        app.openapi = lambda: spec  # type: ignore[method-assign]

    async def refresh_keys(stopping: asyncio.Event) -> None:
        """Pick up keys added by `paystream keys rotate` (or retired) while running."""
        while not stopping.is_set():
            try:
                await asyncio.wait_for(stopping.wait(), timeout=settings.signing_keys_refresh_seconds)
            except TimeoutError:
                pass
            try:
                await load_signing_keys(ctx.db, tokens, create=False)
                if vault is not None:  # a KEK version added by `paystream keys rotate`
                    vault.keyring = FileKeyring.load(keyring_path)
                    if users is not None:
                        users.keyring = vault.keyring
            except Exception as exc:
                log.warning("signing_keys_refresh_failed", error=repr(exc))

    async def purge_idempotency_keys(stopping: asyncio.Event) -> None:
        store = IdempotencyStore()

        async def purge() -> int:
            cutoff = datetime.now(UTC) - timedelta(hours=settings.idempotency_ttl_hours)
            async with ctx.db.acquire() as conn:
                purged = await store.purge(conn, cutoff)
            if purged:
                log.info("idempotency_keys_purged", count=purged)
            return 0  # one purge removes everything due: the next is a pause away

        await repeat(stopping, purge, interval=600.0, failed="idempotency_purge_failed")

    async def chain_audit(stopping: asyncio.Event) -> None:
        await run_chainer(ctx.db, stopping)

    async def keys_loaded() -> str | None:
        return None if tokens.has_keys else "no signing keys"

    async def close_clients() -> None:
        for client in services.values():
            await client.close()
        await limiter_redis.aclose()

    return ServiceParts(
        install=install,
        public=True,
        workers=[refresh_keys, purge_idempotency_keys, chain_audit],
        readiness=[keys_loaded],
        closers=[close_clients],
    )
