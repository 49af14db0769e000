"""``/readyz`` leaves its answer in the ``paystream_ready`` gauge: 1 when every check
passed, 0 when one failed, so alerts can see readiness flap."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from paystream.platform.http import install_operations_routes
from paystream.platform.observability import Metrics


class Switch:
    """A readiness check whose answer the test sets."""

    def __init__(self) -> None:
        self.reason: str | None = None

    async def __call__(self) -> str | None:
        return self.reason


async def readyz(metrics: Metrics, check: Switch) -> int:
    app = FastAPI()
    install_operations_routes(app, metrics, [check])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        response = await client.get("/readyz")
    return response.status_code


def ready(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("paystream_ready")


async def test_the_ready_gauge_is_1_after_a_passing_readiness_check() -> None:
    metrics = Metrics("test")
    assert await readyz(metrics, Switch()) == 200
    assert ready(metrics) == 1


async def test_the_ready_gauge_is_0_after_a_failing_readiness_check() -> None:
    metrics = Metrics("test")
    check = Switch()
    assert await readyz(metrics, check) == 200
    check.reason = "database unreachable"
    assert await readyz(metrics, check) == 503
    assert ready(metrics) == 0
