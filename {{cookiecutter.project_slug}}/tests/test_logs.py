"""Every log line of a request carries its request id, the access log line included."""

import io
import json
import logging
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from {{ cookiecutter.project_slug }}.logs import JsonFormatter

pytestmark = pytest.mark.anyio


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    """What the service logs during the test, as its JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    previous_level = root.level
    root.setLevel(logging.INFO)  # setLevel, not .level =: it clears the loggers' caches
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous_level)


async def test_request_id_is_echoed_and_on_every_line_of_the_request(
    app: FastAPI, client: httpx.AsyncClient, log_lines: io.StringIO
) -> None:
    @app.get("/chatty")
    async def chatty() -> None:
        logging.getLogger("{{ cookiecutter.project_slug }}.chatty").info("working on it")

    response = await client.get("/chatty", headers={"X-Request-ID": "req-42"})

    logged = [json.loads(line) for line in log_lines.getvalue().splitlines()]
    lines = [line for line in logged if line["logger"] != "httpx"]  # the test's own client
    assert response.headers["x-request-id"] == "req-42"
    assert {line["logger"] for line in lines} == {"{{ cookiecutter.project_slug }}.chatty", "access"}
    assert all(line["request_id"] == "req-42" for line in lines)
    access = next(line for line in lines if line["logger"] == "access")
    assert (access["method"], access["route"], access["status"]) == ("GET", "/chatty", 200)


@pytest.mark.parametrize("sent", [None, "has spaces", "x" * 200, "new\nline"])
async def test_a_missing_or_unsafe_request_id_is_replaced(
    client: httpx.AsyncClient, sent: str | None
) -> None:
    headers = {} if sent is None else {"X-Request-ID": sent}

    response = await client.get("/health/live", headers=headers)

    assert response.headers["x-request-id"] != sent
    assert len(response.headers["x-request-id"]) == 32
