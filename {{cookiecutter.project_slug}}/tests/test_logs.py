"""Every log line of a request carries its request id, the access log line included."""

import asyncio
import io
import json
import logging
import select
import sys
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from {{ cookiecutter.project_slug }}.serving.logs import AccessLog, JsonFormatter

pytestmark = pytest.mark.anyio


Logged = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def logged(capsys: pytest.CaptureFixture[str]) -> Iterator[Logged]:
    """What the service logged so far, its JSON lines parsed: the lines through `logging`,
    then the access log's, which it writes to stdout itself."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    previous_level = root.level
    root.setLevel(logging.INFO)  # setLevel, not .level =: it clears the loggers' caches
    yield lambda: [
        json.loads(line) for line in (stream.getvalue() + capsys.readouterr().out).splitlines()
    ]
    root.removeHandler(handler)
    root.setLevel(previous_level)


async def test_request_id_is_echoed_and_on_every_line_of_the_request(
    app: FastAPI, client: httpx.AsyncClient, logged: Logged
) -> None:
    @app.get("/chatty")
    async def chatty() -> None:
        logging.getLogger("{{ cookiecutter.project_slug }}.chatty").info("working on it")

    response = await client.get("/chatty", headers={"X-Request-ID": "req-42"})
    await asyncio.sleep(0)  # the access log writes as this turn of the event loop ends

    lines = [line for line in logged() if line["logger"] != "httpx"]  # the test's own client
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


async def test_the_access_log_line_is_json_whatever_the_path(
    client: httpx.AsyncClient, logged: Logged
) -> None:
    # Percent-decoded by the server: a quote, a newline and a non-ASCII letter in the path.
    await client.get("/nope/%22%0A%E2%9C%93")
    await asyncio.sleep(0)

    (access,) = [line for line in logged() if line["logger"] == "access"]
    assert access["path"] == '/nope/"\n✓'
    assert (access["route"], access["status"], access["message"]) == (
        "unmatched",
        404,
        'GET /nope/"\n✓ 404',
    )


async def test_a_turns_access_lines_go_out_whole_at_most_pipe_buf_bytes_a_write(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Such writes to a pipe are atomic: another worker's line never lands inside one.
    caplog.set_level(logging.INFO, logger="access")
    writes: list[str] = []
    monkeypatch.setattr(sys, "stdout", SimpleNamespace(write=writes.append, flush=lambda: None))
    access_log = AccessLog()
    for n in range(100):
        access_log.write("GET", "/" + "x" * n * 10, "unmatched", 404, 0.001, None)

    await asyncio.sleep(0)  # the end of this turn of the event loop

    assert len(writes) > 1
    assert all(len(text) <= select.PIPE_BUF and text.endswith("\n") for text in writes)
    paths = [json.loads(line)["path"] for line in "".join(writes).splitlines()]
    assert paths == ["/" + "x" * n * 10 for n in range(100)]


def test_times_are_utc_to_the_millisecond_from_one_line_to_the_next() -> None:
    # Formatted times are reused within a millisecond and a second: none may go stale.
    created = [1764300000.1234, 1764300000.1239, 1764300000.9999, 1764300001.0, 1764300061.5]
    created.append(1764300000.5)  # a clock set back
    formatted = [
        json.loads(JsonFormatter().format(logging.makeLogRecord({"created": at})))["time"]
        for at in created
    ]

    assert formatted == [
        "2025-11-28T03:20:00.123+00:00",
        "2025-11-28T03:20:00.123+00:00",
        "2025-11-28T03:20:00.999+00:00",
        "2025-11-28T03:20:01.000+00:00",
        "2025-11-28T03:21:01.500+00:00",
        "2025-11-28T03:20:00.500+00:00",
    ]
