"""The middleware's metrics: prometheus-fastapi-instrumentator's names, every series at 0
from the start; answers counted as the turn of the event loop ends; the in-progress gauge,
the durations and the sizes written a moment later (WRITE_EVERY)."""

import asyncio
import math

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from starlette.types import Message, Receive, Scope, Send

from {{ cookiecutter.project_slug }}.serving.metrics import (
    STATUS_CLASSES,
    WRITE_EVERY,
    Durations,
    count_from_zero,
)
from {{ cookiecutter.project_slug }}.serving.middleware import RequestObserver

pytestmark = pytest.mark.anyio


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def written() -> None:
    """Until the metrics this loop's requests left have been written: the loop's timer for
    them, set when the first of them started, fires before this sleep ends."""
    await asyncio.sleep(WRITE_EVERY)


async def in_progress() -> float:
    await written()
    return sample("http_requests_inprogress", {"method": "GET"})


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

    labels = {"method": "GET", "handler": "none"}
    before = (await in_progress(), sample("http_requests_total", {**labels, "status": "5xx"}))
    transport = httpx.ASGITransport(app=RequestObserver(failing, max_in_flight=10))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        with pytest.raises(RuntimeError, match="boom"):
            await client.get("/fails")

    after = (await in_progress(), sample("http_requests_total", {**labels, "status": "5xx"}))
    assert (after[0] - before[0], after[1] - before[1]) == (0, 1)


async def test_answers_are_counted_as_the_turn_ends_and_their_durations_a_moment_later() -> None:
    labels = {"method": "GET", "handler": "none"}
    answers = ("http_requests_total", {**labels, "status": "2xx"})
    durations = ("http_request_duration_seconds_count", labels)

    async def hello(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"hi"})

    async def server_side(message: Message) -> None:
        pass

    async def no_body() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    before = sample(*answers), sample(*durations)
    scope: Scope = {"type": "http", "method": "GET", "path": "/hi", "headers": [], "client": None}
    for _ in range(3):  # three requests in one turn of the loop
        await RequestObserver(hello, max_in_flight=10)(scope, no_body, server_side)
    in_the_turn = sample(*answers) - before[0], sample(*durations) - before[1]
    await asyncio.sleep(0)  # the turn ends
    after_the_turn = sample(*answers) - before[0], sample(*durations) - before[1]
    await written()

    assert (in_the_turn, after_the_turn) == ((0, 0), (3, 0))
    assert sample(*durations) - before[1] == 3


async def test_sizes_and_the_fine_latency_are_written_a_moment_later() -> None:
    async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"11")]}
        )
        await send({"type": "http.response.body", "body": b"eleven byte"})

    names = [
        ("http_request_size_bytes_count", {"handler": "none"}),
        ("http_request_size_bytes_sum", {"handler": "none"}),
        ("http_response_size_bytes_sum", {"handler": "none"}),
        ("http_request_duration_highr_seconds_count", {}),
    ]
    before = [sample(*name) for name in names]
    transport = httpx.ASGITransport(app=RequestObserver(echo_length, max_in_flight=10))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        await client.post("/sized", content=b"12345")
        await written()

    assert [sample(*name) - was for name, was in zip(names, before, strict=True)] == [1, 5, 11, 1]


def test_every_handler_method_and_status_class_exists_at_zero_from_the_start() -> None:
    app = FastAPI()
    things = APIRouter(prefix="/zero-things")
    things.add_api_route("/{thing_id}", lambda thing_id: None, methods=["GET", "PUT"])
    app.include_router(things)
    app.add_api_route("/zero-ping", lambda: None, methods=["POST"])

    count_from_zero(app)

    routes = {("GET", "/zero-things/{thing_id}"), ("PUT", "/zero-things/{thing_id}")}
    routes |= {("POST", "/zero-ping")}
    unmatched = {(method, "none") for method in ("GET", "POST", "PUT")}  # other tests count these
    for method, handler in routes | unmatched:
        for status in STATUS_CLASSES:
            labels = {"method": method, "status": status, "handler": handler}
            counted = REGISTRY.get_sample_value("http_requests_total", labels)
            assert counted == 0 if (method, handler) in routes else counted is not None, labels
        timed = {"method": method, "handler": handler}
        assert REGISTRY.get_sample_value("http_request_duration_seconds_count", timed) is not None
    sized = {"handler": "/zero-ping"}
    assert REGISTRY.get_sample_value("http_request_size_bytes_count", sized) == 0


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
