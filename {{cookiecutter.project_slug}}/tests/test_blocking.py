"""Blocking calls run in threads: the event loop keeps answering while they are in flight."""

import asyncio
import time

import httpx
import pytest
from fastapi import FastAPI

from {{ cookiecutter.project_slug }}.blocking import call_blocking

pytestmark = pytest.mark.anyio


async def test_live_answers_promptly_while_slow_blocking_calls_are_in_flight(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    @app.get("/slow")
    async def slow() -> None:
        await call_blocking(time.sleep, 1.0)

    slow_calls = [asyncio.create_task(client.get("/slow")) for _ in range(8)]
    await asyncio.sleep(0.2)  # all eight are now sleeping in threads
    started = time.monotonic()
    live = await client.get("/health/live")
    waited = time.monotonic() - started
    answers = await asyncio.gather(*slow_calls)

    assert live.status_code == 200
    assert waited < 0.5, f"/health/live waited {waited:.2f} s behind blocking calls"
    assert [answer.status_code for answer in answers] == [200] * 8
