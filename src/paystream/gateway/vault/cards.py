"""``POST /v1/cards``: a card number checked, sealed in the vault, answered as a `Card`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from paystream.contracts.api import CardCreate
from paystream.gateway.forward import validation_problem_from
from paystream.gateway.vault.numbers import CardRejected, check_cvc, check_expiry, parse_number
from paystream.gateway.vault.store import CardVault, card_body
from paystream.platform.http import JSONResponse, problem

if TYPE_CHECKING:
    from paystream.gateway.pipeline import Pipeline


class CreateCard:
    """The write (cards:write); 503 when the gateway runs without a keyring (``vault`` None)."""

    def __init__(self, *, pipeline: Pipeline, pool: asyncpg.Pool, vault: CardVault | None) -> None:
        self.pipeline = pipeline
        self.pool = pool
        self.vault = vault

    async def __call__(self, request: Request) -> Response:
        checked = await self.pipeline.local_write(request, "cards:write", CardCreate)
        if isinstance(checked, Response):
            return checked
        principal, spec = checked
        if self.vault is None:
            return problem(503, "vault_unavailable", "Service unavailable", "the card vault has no keyring")
        today = datetime.now(UTC)
        try:
            card = parse_number(spec.number)
            check_cvc(card, spec.cvc)
            check_expiry(spec.exp_month, spec.exp_year, today_year=today.year, today_month=today.month)
        except CardRejected as exc:
            return validation_problem_from([{"type": "card", "loc": ("body", exc.field), "msg": str(exc)}])
        owner = principal.user_id or spec.owner_user_id
        vault = self.vault

        async def store() -> Response:
            async with self.pool.acquire() as conn:
                row = await vault.store(conn, tenant_id=principal.tenant_id, owner_user_id=owner, card=card,
                                        exp_month=spec.exp_month, exp_year=spec.exp_year)
            request.state.object_id = row["id"]
            return JSONResponse(card_body(row), status_code=201)

        # "The same request" without the number or the CVC in clear: their keyed blind indexes.
        def blind(purpose: str, value: str) -> str:
            return vault.keyring.blind_index(f"{purpose}:{principal.tenant_id}", value).hex()

        same = {"number": blind("idempotency-card", card.digits), "cvc": blind("idempotency-cvc", spec.cvc),
                "exp_month": spec.exp_month, "exp_year": spec.exp_year, "owner_user_id": owner}
        return await self.pipeline.once(request, principal, same, store)
