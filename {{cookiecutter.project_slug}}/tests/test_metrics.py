"""A request counts as in progress from its arrival until its answer is done."""

import asyncio

import httpx
import pytest
from prometheus_client import REGISTRY
from starlette.types import Receive, Scope, Send

from {{ cookiecutter.project_slug }}.middleware import RequestObserver

pytestmark = pytest.mark.anyio


def in_progress() -> float:
    return REGISTRY.get_sample_value("http_requests_in_progress", {"method": "GET"}) or 0.0


async def test_a_request_is_in_progress_until_it_is_answered() -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        arrived.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    before = in_progress()
    transport = httpx.ASGITransport(app=RequestObserver(slow))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        answer = asyncio.create_task(client.get("/slow"))
        await arrived.wait()
        during = in_progress()
        release.set()
        await answer

    assert (during - before, in_progress() - before) == (1, 0)


async def test_a_request_that_fails_is_no_longer_in_progress() -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    before = in_progress()
    transport = httpx.ASGITransport(app=RequestObserver(failing))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        with pytest.raises(RuntimeError, match="boom"):
            await client.get("/fails")

    assert in_progress() == before
