"""End-to-end fixtures: the whole stack started as processes by `paystream up`.

``stack`` is one running stack shared by the end-to-end tests of a session (starting
one takes a few seconds, and the tests here do not change its configuration); a test
that needs its own configuration or kills things starts its own with `running_stack`.
``client`` is an admin API client of the shared stack.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from paystream.tools.client import PaystreamClient

from .stack import UpProcess, running_stack


@pytest.fixture(scope="session")
async def stack() -> AsyncIterator[UpProcess]:
    async with running_stack(prefix="paystream-e2e-shared-") as up:
        yield up


@pytest.fixture
async def client(stack: UpProcess) -> AsyncIterator[PaystreamClient]:
    assert stack.info is not None
    async with PaystreamClient.for_stack(stack.info, max_connections=48) as api:
        yield api
