"""Liveness answers while the process serves; readiness answers for its dependencies."""
{% if cookiecutter.database != "none" %}
import time
{% endif %}
import httpx
import pytest
{%- if cookiecutter.database != "none" %}
from fastapi import FastAPI

from {{ cookiecutter.project_slug }}.main import create_app
from {{ cookiecutter.project_slug }}.settings import Settings
{%- endif %}

pytestmark = pytest.mark.anyio


async def test_live_answers_200(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")

    assert response.status_code == 200
    assert response.json() == {"status": "alive"}

{%- if cookiecutter.database != "none" %}


async def test_ready_answers_200_when_the_database_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/ready")

    assert response.status_code == 200
    assert response.json() == {"status": "ready", "failed": {}}


async def test_unreachable_database_makes_ready_503_naming_it_but_live_stays_200(
    settings: Settings,
) -> None:
    # Nothing listens on port 1: every connection attempt is refused at once.
    unreachable = {"database_url": "postgresql+asyncpg://app@127.0.0.1:1/app"}
    app: FastAPI = create_app(settings.model_copy(update=unreachable))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            started = time.monotonic()
            ready = await client.get("/health/ready")
            elapsed = time.monotonic() - started
            live = await client.get("/health/live")

    assert ready.status_code == 503
    assert list(ready.json()["failed"]) == ["database"]
    assert elapsed < 5, "readiness must answer fast, never hang"
    assert live.status_code == 200
{%- endif %}
