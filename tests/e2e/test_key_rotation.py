"""`paystream keys rotate` on a running stack: new tokens carry the new key, tokens signed
before keep working, and the JWKS publishes both keys meanwhile."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import asyncpg
import httpx
import jwt

from paystream.tools.client import PaystreamClient

from .stack import running_stack


async def test_rotation_signs_with_the_new_key_and_old_tokens_keep_working() -> None:
    env = {"PAYSTREAM_SIGNING_KEYS_REFRESH_SECONDS": "0.5"}
    async with running_stack(env, prefix="paystream-e2e-keys-") as stack:
        assert stack.info is not None
        async with PaystreamClient.for_stack(stack.info, max_connections=4) as before:
            old_token = await before.token()
            old_kid = jwt.get_unverified_header(old_token)["kid"]
            account = await before.create_account("USD")
            card = await before.request("POST", "/v1/cards", json_body={
                "number": "4242424242424242", "exp_month": 12, "exp_year": 2031, "cvc": "123"})
            assert card.status_code == 201

            rotated = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "paystream", "keys", "rotate", "--home", str(stack.home)],
                capture_output=True, text=True, timeout=60,
            )
            assert rotated.returncode == 0, rotated.stdout + rotated.stderr
            assert "new signing key" in rotated.stdout
            assert "new key-encryption key v2 is active; 1 data keys re-wrapped" in rotated.stdout

            deadline = time.monotonic() + 20
            while True:
                async with PaystreamClient.for_stack(stack.info, max_connections=2) as after:
                    new_token = await after.token()
                new_kid = jwt.get_unverified_header(new_token)["kid"]
                if new_kid != old_kid:
                    break
                assert time.monotonic() < deadline, "the gateway never signed with the new key"
                await asyncio.sleep(0.25)

            # The token signed before the rotation is still good.
            answer = await before.request("GET", f"/v1/accounts/{account['id']}")
            assert answer.status_code == 200
        async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=5) as http:
            kids = {key["kid"] for key in (await http.get("/.well-known/jwks.json")).json()["keys"]}
        assert {old_kid, new_kid} <= kids
        conn = await asyncpg.connect(stack.info.postgres_url)
        try:
            audited = {r["action"] for r in await conn.fetch(
                "SELECT action FROM gateway.audit_log WHERE actor = 'cli'")}
        finally:
            await conn.close()
        assert {"keys rotate signing", "keys rotate encryption"} <= audited  # admin actions are audited
