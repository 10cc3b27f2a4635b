"""Liveness answers while the process serves; readiness answers for its dependencies."""

import httpx
import pytest

pytestmark = pytest.mark.anyio


async def test_live_answers_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")

    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


async def test_ready_answers_200_when_every_dependency_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "failed": {}}
