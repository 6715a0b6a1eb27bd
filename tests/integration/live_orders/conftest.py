"""One live_orders stack (app and stand-in inventory) and one Redis client shared by every
test in this folder; each test uses its own session, SKU and buyer names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.common.redis_scripts import create_redis
from tests.conftest import Backends
from tests.integration.live_orders_stack import Stack, running_stack


@pytest.fixture(scope="package")
async def stack(backends: Backends) -> AsyncIterator[Stack]:
    async with running_stack(backends) as running:
        yield running


@pytest.fixture(scope="package")
async def redis(backends: Backends) -> AsyncIterator[Any]:
    client = create_redis(backends.redis_url)
    yield client
    await client.aclose()
