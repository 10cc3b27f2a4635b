"""The middleware's metrics: answers counted as they start; the in-progress gauge and the
durations written as the event loop's turn ends."""

import asyncio
import math

import httpx
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from starlette.types import Message, Receive, Scope, Send

from {{ cookiecutter.project_slug }}.serving.metrics import Durations
from {{ cookiecutter.project_slug }}.serving.middleware import RequestObserver

pytestmark = pytest.mark.anyio


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def in_progress() -> float:
    await asyncio.sleep(0)  # the gauge is written as the turn ends
    return sample("http_requests_in_progress", {"method": "GET"})


async def test_a_request_is_in_progress_until_it_is_answered() -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        arrived.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    before = await in_progress()
    transport = httpx.ASGITransport(app=RequestObserver(slow, max_in_flight=10))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        answer = asyncio.create_task(client.get("/slow"))
        await arrived.wait()
        during = await in_progress()
        release.set()
        await answer

    assert (during - before, await in_progress() - before) == (1, 0)


async def test_a_request_that_fails_is_counted_once_as_a_500_and_no_longer_in_progress() -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    labels = {"method": "GET", "route": "unmatched"}
    before = (await in_progress(), sample("http_requests_total", {**labels, "status": "500"}))
    transport = httpx.ASGITransport(app=RequestObserver(failing, max_in_flight=10))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        with pytest.raises(RuntimeError, match="boom"):
            await client.get("/fails")

    after = (await in_progress(), sample("http_requests_total", {**labels, "status": "500"}))
    assert (after[0] - before[0], after[1] - before[1]) == (0, 1)


async def test_an_answer_is_counted_before_it_starts_and_its_duration_as_the_turn_ends() -> None:
    labels = {"method": "GET", "route": "unmatched"}
    answers = ("http_requests_total", {**labels, "status": "201"})
    durations = ("http_request_duration_seconds_count", labels)
    counted_when_sent = []

    async def hello(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"hi"})

    async def server_side(message: Message) -> None:
        if message["type"] == "http.response.start":
            counted_when_sent.append(sample(*answers))

    async def no_body() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    before = sample(*answers), sample(*durations)
    scope: Scope = {"type": "http", "method": "GET", "path": "/hi", "headers": [], "client": None}
    for _ in range(3):  # three requests in one turn of the loop
        await RequestObserver(hello, max_in_flight=10)(scope, no_body, server_side)
    durations_in_the_turn = sample(*durations) - before[1]
    await asyncio.sleep(0)

    assert [n - before[0] for n in counted_when_sent] == [1, 2, 3]
    assert (durations_in_the_turn, sample(*durations) - before[1]) == (0, 3)


def test_many_observations_at_once_are_the_same_as_one_by_one() -> None:
    buckets = (0.005, 0.01, 0.1, 1)
    seconds = [0.0, 0.001, 0.005, 0.0050001, 0.01, 0.5, 1, 7.5, 0.005]  # bounds are inclusive
    one_by_one, at_once = CollectorRegistry(), CollectorRegistry()
    histogram = Histogram("t", "", ["route"], buckets=buckets, registry=one_by_one).labels("/a")
    for amount in seconds:
        histogram.observe(amount)
    batched = Durations("t", "", ["route"], buckets=buckets, registry=at_once).labels("/a")
    batched.observe_all(seconds)

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for metric in registry.collect()
            for s in metric.samples
            if s.name != "t_created"
        }

    # The sum is the same up to rounding only: added at once, the amounts are rounded in
    # another order than one by one (and Python 3.12's sum() rounds less than 3.11's).
    assert samples(at_once) == pytest.approx(samples(one_by_one), rel=1e-12, abs=0)
    assert samples(at_once)["t_sum", ""] == pytest.approx(math.fsum(seconds), rel=1e-12)
    assert samples(at_once)["t_bucket", "0.005"] == 4.0
    assert samples(at_once)["t_count", ""] == len(seconds)
