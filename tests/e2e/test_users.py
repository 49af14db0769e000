"""Wallet users through the public API: password sign-in, their own accounts only, and
refresh tokens that rotate and betray a replay."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from paystream.tools.client import PaystreamClient

from .stack import UpProcess

PASSWORD = "a long enough passphrase"


async def _sign_in(stack: UpProcess, http: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    assert stack.info is not None
    return await http.post("/oauth/token", data={
        "grant_type": "password", "client_id": stack.info.client_id, "username": email, "password": password})


async def _refresh(stack: UpProcess, http: httpx.AsyncClient, token: str) -> httpx.Response:
    assert stack.info is not None
    return await http.post("/oauth/token", data={
        "grant_type": "refresh_token", "client_id": stack.info.client_id, "refresh_token": token})


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _new_user(client: PaystreamClient) -> dict[str, Any]:
    email = f"user-{uuid.uuid4().hex[:8]}@example.com"
    response = await client.request("POST", "/v1/users",
                                    json_body={"email": email, "password": PASSWORD, "name": "Grace"})
    assert response.status_code == 201, response.text
    user: dict[str, Any] = response.json()
    assert set(user) == {"id", "email", "name", "created_at"}  # never the password or its hash
    return user


async def test_a_user_signs_in_and_sees_only_their_own_accounts(stack: UpProcess, client: PaystreamClient) -> None:
    assert stack.info is not None
    user = await _new_user(client)
    someone_elses = await client.create_account("USD")
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=10) as http:
        signed_in = await _sign_in(stack, http, user["email"].upper(), PASSWORD)
        assert signed_in.status_code == 200, signed_in.text
        tokens = signed_in.json()
        assert tokens["refresh_token"].startswith("rt_")
        assert set(tokens["scope"].split()) <= {"accounts:read", "accounts:write", "payments:read",
                                                "payments:write"}
        own = await http.post("/v1/accounts", json={"currency": "USD"}, headers=_bearer(tokens["access_token"]))
        assert own.status_code == 201
        mine = await http.get(f"/v1/accounts/{own.json()['id']}", headers=_bearer(tokens["access_token"]))
        theirs = await http.get(f"/v1/accounts/{someone_elses['id']}", headers=_bearer(tokens["access_token"]))
        users = await http.post("/v1/users", json={"email": "x@example.com", "password": PASSWORD, "name": "x"},
                                headers=_bearer(tokens["access_token"]))
    assert mine.status_code == 200
    assert theirs.status_code == 404  # not 403: ids do not leak
    assert users.status_code == 403


async def test_wrong_password_and_unknown_user_get_the_same_answer(stack: UpProcess, client: PaystreamClient) -> None:
    assert stack.info is not None
    user = await _new_user(client)
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=10) as http:
        wrong = await _sign_in(stack, http, user["email"], "not the passphrase")
        unknown = await _sign_in(stack, http, "nobody@example.com", PASSWORD)
    assert wrong.status_code == unknown.status_code == 400
    assert wrong.json() == unknown.json()
    assert wrong.json()["code"] == "invalid_grant"


async def test_refresh_tokens_rotate_and_a_replay_revokes_the_family(
    stack: UpProcess, client: PaystreamClient
) -> None:
    assert stack.info is not None
    user = await _new_user(client)
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=10) as http:
        first = (await _sign_in(stack, http, user["email"], PASSWORD)).json()
        second = await _refresh(stack, http, first["refresh_token"])
        assert second.status_code == 200, second.text
        assert second.json()["refresh_token"] != first["refresh_token"]
        works = await http.get("/v1/payments", headers=_bearer(second.json()["access_token"]))
        replay = await _refresh(stack, http, first["refresh_token"])
        after_replay = await _refresh(stack, http, second.json()["refresh_token"])
        as_access = await http.get("/v1/payments", headers=_bearer(first["refresh_token"]))
    assert works.status_code == 200
    assert replay.status_code == 400 and replay.json()["code"] == "invalid_grant"
    assert after_replay.status_code == 400  # the whole family went with the replay
    assert as_access.status_code == 401  # a refresh token is not an access token


async def test_a_short_password_is_refused(stack: UpProcess, client: PaystreamClient) -> None:
    response = await client.request("POST", "/v1/users",
                                    json_body={"email": "short@example.com", "password": "short", "name": "S"})
    assert response.status_code == 422
    assert any(e["field"] == "password" for e in response.json()["errors"])


async def test_a_client_created_from_the_command_line_can_sign_in(stack: UpProcess) -> None:
    import asyncio
    import json
    import subprocess
    import sys

    assert stack.info is not None
    made = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "paystream", "clients", "create", "--home", str(stack.home),
        "--name", "wallet app", "--scope", "accounts:read", "--scope", "payments:read"],
        capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stdout + made.stderr
    created = json.loads(made.stdout)
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=10) as http:
        token = await http.post("/oauth/token", data={
            "grant_type": "client_credentials", "client_id": created["client_id"],
            "client_secret": created["client_secret"]})
        assert token.status_code == 200
        assert token.json()["scope"] == "accounts:read payments:read"
        write = await http.post("/v1/accounts", json={"currency": "USD"},
                                headers=_bearer(token.json()["access_token"]))
    assert write.status_code == 403
    refused = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "paystream", "clients", "create", "--home", str(stack.home),
        "--name", "x", "--scope", "superpowers"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "Traceback" not in refused.stdout + refused.stderr


async def test_a_deployments_first_client_is_made_from_the_database_url_alone(stack: UpProcess, tmp_path: Any) -> None:
    """No home (a Kubernetes pod): `clients create --database-url` with the gateway's own role."""
    import asyncio
    import json
    import subprocess
    import sys

    from paystream.platform.home import read_secrets

    assert stack.info is not None
    password = read_secrets(stack.home)["role_passwords"]["gateway"]
    host_port = stack.info.postgres_url.rsplit("@", 1)[1]  # host:port/database
    gateway_role = f"postgresql://paystream_gateway:{password}@{host_port}"
    made = await asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "paystream", "clients", "create", "--home", str(tmp_path),
        "--database-url", gateway_role, "--name", "first", "--scope", "admin"],
        capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stdout + made.stderr
    created = json.loads(made.stdout)
    async with httpx.AsyncClient(base_url=stack.info.gateway_url, timeout=10) as http:
        token = await http.post("/oauth/token", data={
            "grant_type": "client_credentials", "client_id": created["client_id"],
            "client_secret": created["client_secret"]})
    assert token.status_code == 200 and token.json()["scope"] == "admin"
