"""End-to-end fixtures: the whole stack started as processes by `paystream up`.

``stack`` is one running stack shared by the end-to-end tests of a session (starting
one takes a few seconds, and the tests here do not change its configuration); a test
that needs its own configuration or kills things starts its own with `running_stack`.
``client`` is an admin API client of the shared stack.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from paystream.tools.client import PaystreamClient

from .stack import UpProcess, running_stack

# Every test client signs in from 127.0.0.1: the shared stack's sign-in limit is raised so
# that a whole session of tests is not one client's burst (test_rate_limits.py checks limits).
# The stacks of these tests check exact outcomes. On a machine loaded enough to hold a
# screening past the default 2 s deadline, a payment would go to review by the deadline (an
# over-limit one then fails its hold for want of funds instead of being declined); that
# path is tests/e2e/test_screening_deadline.py's, so here the deadline is out of the way.
SHARED_ENV = {
    "PAYSTREAM_RATE_LIMITS": json.dumps({"auth": "10000/60s", "money": "2000/1s", "write": "500/1s",
                                         "read": "2000/1s"}),
    "PAYSTREAM_SCREENING_DEADLINE_SECONDS": "30",
}


@pytest.fixture(scope="session")
async def stack() -> AsyncIterator[UpProcess]:
    async with running_stack(SHARED_ENV, prefix="paystream-e2e-shared-") as up:
        yield up


@pytest.fixture
async def client(stack: UpProcess) -> AsyncIterator[PaystreamClient]:
    assert stack.info is not None
    async with PaystreamClient.for_stack(stack.info, max_connections=48) as api:
        yield api
