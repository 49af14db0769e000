"""`paystream up --tls`: the gateway speaks TLS 1.2+ only, with a certificate from a local CA."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from cryptography import x509

from paystream.tools.client import PaystreamClient

from .stack import UpProcess, running_stack


@pytest.fixture(scope="module")
async def tls_stack() -> AsyncIterator[UpProcess]:
    async with running_stack(prefix="paystream-e2e-tls-", tls=True) as up:
        yield up


def _host_port(up: UpProcess) -> tuple[str, int]:
    assert up.info is not None
    url = httpx.URL(up.info.gateway_url)
    assert url.scheme == "https"
    assert url.host is not None and url.port is not None
    return url.host, url.port


async def _handshake(up: UpProcess, context: ssl.SSLContext) -> str | None:
    host, port = _host_port(up)
    _, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname="localhost")
    try:
        return writer.get_extra_info("ssl_object").version()  # type: ignore[no-any-return]
    finally:
        writer.close()


async def test_the_api_works_over_https_trusting_the_local_ca(tls_stack: UpProcess) -> None:
    assert tls_stack.info is not None and tls_stack.info.ca_file is not None
    async with PaystreamClient.for_stack(tls_stack.info, max_connections=4) as client:
        account = await client.create_account("USD")
        deposit = await client.request(
            "POST", "/v1/deposits", idempotency_key=uuid.uuid4().hex,
            json_body={"account_id": account["id"], "amount": 1_000, "currency": "USD"},
        )
    assert deposit.status_code == 202


async def test_tls_1_3_is_negotiated_by_a_modern_client(tls_stack: UpProcess) -> None:
    assert tls_stack.info is not None
    context = ssl.create_default_context(cafile=tls_stack.info.ca_file)
    assert await _handshake(tls_stack, context) == "TLSv1.3"


async def test_tls_1_2_is_still_accepted(tls_stack: UpProcess) -> None:
    assert tls_stack.info is not None
    context = ssl.create_default_context(cafile=tls_stack.info.ca_file)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await _handshake(tls_stack, context) == "TLSv1.2"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")  # old on purpose
async def test_tls_1_1_is_refused(tls_stack: UpProcess) -> None:
    assert tls_stack.info is not None
    context = ssl.create_default_context(cafile=tls_stack.info.ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _handshake(tls_stack, context)


async def test_a_client_that_does_not_trust_the_local_ca_refuses_the_certificate(
    tls_stack: UpProcess,
) -> None:
    assert tls_stack.info is not None
    async with httpx.AsyncClient(timeout=5) as http:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await http.get(f"{tls_stack.info.gateway_url}/healthz")


async def test_plain_http_gets_no_api(tls_stack: UpProcess) -> None:
    host, port = _host_port(tls_stack)
    async with httpx.AsyncClient(timeout=5) as http:
        with pytest.raises(httpx.HTTPError):
            response = await http.get(f"http://{host}:{port}/healthz")
            response.raise_for_status()


def test_the_certificate_names_localhost_and_is_signed_by_the_local_ca(tls_stack: UpProcess) -> None:
    tls = tls_stack.home / "tls"
    cert = x509.load_pem_x509_certificate((tls / "gateway.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((tls / "ca.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    assert oct((tls / "gateway-key.pem").stat().st_mode & 0o777) == "0o600"
    assert oct((tls / "ca-key.pem").stat().st_mode & 0o777) == "0o600"
