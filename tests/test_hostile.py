"""What a hostile or broken client can send gets a quick 4xx or a closed connection, never a
worker taken down: real Gunicorn, two real workers, raw sockets on loopback.

The limits are the profile's (request line and headers under Gunicorn's own setting names);
the timeouts are shortened through the environment so that the tests wait seconds, not the
profile's tens of seconds.
"""

import contextlib
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from .baked import Project, Server
from .test_faults import Faults
from .waiting import wait_until

pytestmark = pytest.mark.parametrize("project", ["public_api"], indirect=True)

ERROR_BODY_LIMIT = 64 * 1024


def connect(server: Server) -> socket.socket:
    address = urlsplit(server.url)
    return socket.create_connection((address.hostname, address.port), timeout=60)


def answer_to(server: Server, request: bytes) -> bytes:
    """Send `request` whole, and read until the server closes the connection."""
    with connect(server) as client:
        # The server may refuse and stop reading before the whole request was sent.
        with contextlib.suppress(OSError):
            client.sendall(request)
        return read_to_end(client)


def read_to_end(client: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := client.recv(65536):
            received += chunk
    except ConnectionResetError:  # closed with unread request bytes: no FIN, a reset
        pass
    return received


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer else 0


def refused_counts(server: Server) -> dict[str, float]:
    metrics = httpx.get(server.metrics_url).text
    found = re.findall(r'http_requests_refused_total\{reason="(\w+)"\} (\S+)', metrics)
    return {reason: float(count) for reason, count in found}


@pytest.fixture(scope="module")
def server(project: Project) -> Iterator[Server]:
    with project.serve(
        workers=2, HEADER_TIMEOUT="2", BODY_TIMEOUT="2", **project.database(None)
    ) as server:
        yield server


def test_an_oversized_request_line_or_head_gets_414_or_431_and_the_workers_go_on(
    server: Server, summary: Callable[[str], None]
) -> None:
    workers = server.workers()
    get = f"GET / HTTP/1.1\r\nHost: {urlsplit(server.url).netloc}\r\n".encode()
    requests = {
        "a request line of 1 MB": get.replace(b"/", b"/" + b"a" * 1_000_000, 1) + b"\r\n",
        "10,000 headers": get + b"x-a: b\r\n" * 10_000 + b"\r\n",
        "one header of 1 MB": get + b"x-a: " + b"b" * 1_000_000 + b"\r\n\r\n",
        "a header of 20 MB": get + b"x-a: " + b"b" * 20_000_000 + b"\r\n\r\n",
    }

    statuses = {}
    for name, request in requests.items():
        started = time.perf_counter()
        statuses[name] = status_of(answer_to(server, request))
        summary(f"{name}: {statuses[name]} in {time.perf_counter() - started:.2f} s")

    assert statuses == {
        "a request line of 1 MB": 414,
        "10,000 headers": 431,
        "one header of 1 MB": 431,
        "a header of 20 MB": 431,
    }
    assert httpx.get(f"{server.url}/health/live").status_code == 200
    assert server.workers() == workers, "a worker was replaced"
    counts = refused_counts(server)
    assert counts.get("line_too_long", 0) >= 1, counts
    assert counts.get("too_many_headers", 0) + counts.get("head_too_large", 0) >= 3, counts


def test_a_head_or_body_sent_too_slowly_is_cut_off(server: Server) -> None:
    head = f"GET /health/live HTTP/1.1\r\nHost: {urlsplit(server.url).netloc}\r\n".encode()
    stalled_body = (
        f"POST /items HTTP/1.1\r\nHost: {urlsplit(server.url).netloc}\r\n"
        'content-type: application/json\r\ncontent-length: 100\r\n\r\n{"name":'
    ).encode()
    with ExitStack() as stack:
        half_heads = [stack.enter_context(connect(server)) for _ in range(20)]
        for client in half_heads:
            client.sendall(head[:20])
        silent = stack.enter_context(connect(server))
        stalled = stack.enter_context(connect(server))
        stalled.sendall(stalled_body)

        with ThreadPoolExecutor(len(half_heads) + 2) as pool:
            answers = list(pool.map(read_to_end, [*half_heads, silent, stalled]))

    # Each read returns only once the server closed its connection: not one stays open.
    assert [status_of(answer) for answer in answers[:20]] == [408] * 20
    assert answers[20] == b"", "a connection that sent nothing is closed without an answer"
    assert status_of(answers[21]) in (0, 408), answers[21][:200]
    assert httpx.get(f"{server.url}/health/live").status_code == 200
    counts = refused_counts(server)
    assert counts.get("header_timeout", 0) >= 20, counts
    assert counts.get("body_timeout", 0) >= 1, counts


def large_object(keys: int) -> bytes:
    """A JSON object under the 1 MB body limit with every key unknown to the schema."""
    return json.dumps({f"k{n}": n for n in range(keys)}, separators=(",", ":")).encode()


@pytest.mark.parametrize("path", ["/items", "/items/1"])
def test_an_invalid_body_of_any_size_gets_a_small_422_and_takes_no_worker_down(
    server: Server, path: str, summary: Callable[[str], None]
) -> None:
    body = large_object(70_000)
    assert len(body) < 1024 * 1024
    workers = server.workers()
    method = "POST" if path == "/items" else "PUT"

    def invalid_request() -> httpx.Response:
        return httpx.request(
            method,
            f"{server.url}{path}",
            content=body,
            headers={"content-type": "application/json"},
            timeout=120,
        )

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        invalid = [pool.submit(invalid_request) for _ in range(8)]
        live_started = time.perf_counter()
        live = httpx.get(f"{server.url}/health/live", timeout=120)
        live_took = time.perf_counter() - live_started
        answers = [answer.result() for answer in invalid]
    summary(
        f"8 x {len(body)} B invalid body to {method} {path}: {time.perf_counter() - started:.2f} s"
        f" for the 8, /health/live meanwhile {live_took:.2f} s"
    )

    assert {answer.status_code for answer in answers} == {422}
    assert live.status_code == 200
    assert max(len(answer.content) for answer in answers) < ERROR_BODY_LIMIT
    assert "70000 unknown fields" in answers[0].json()["detail"][0]["msg"]
    assert server.workers() == workers, "a worker was replaced"


def test_every_method_a_path_answers_is_in_a_405s_allow(server: Server) -> None:
    answer = httpx.post(f"{server.url}/items/1")

    assert answer.status_code == 405
    assert answer.headers["allow"] == "DELETE, GET, PUT"


@contextmanager
def held_requests(server: Server, faults: Faults, count: int) -> Iterator[None]:
    """`count` requests held in flight across the workers until the block ends."""
    with ThreadPoolExecutor(count) as pool:
        held = [
            pool.submit(httpx.get, f"{server.url}/test/held", timeout=120) for _ in range(count)
        ]
        try:
            wait_until(lambda: len(faults.in_flight()) == count, f"{count} requests in flight")
            yield
        finally:
            faults.release()
            for answer in held:
                assert answer.result().status_code == 200


def test_past_its_limit_of_concurrent_requests_a_worker_sheds_load_with_a_fast_503(
    project: Project, tmp_path: Path
) -> None:
    faults = Faults(tmp_path)
    database = project.database(None)
    with faults.serve(project, workers=1, MAX_CONCURRENT_REQUESTS="3", **database) as server:
        with held_requests(server, faults, 3):
            shed = [httpx.get(f"{server.url}/test/worker") for _ in range(4)]
            live = httpx.get(f"{server.url}/health/live")
            metrics = httpx.get(server.metrics_url)
        after = httpx.get(f"{server.url}/test/worker")
        counts = refused_counts(server)
        logged = [e["status"] for e in server.log_entries() if e["path"] == "/test/worker"]
        shed_lines = server.log_entries("my_service.serving.middleware")

    assert [answer.status_code for answer in shed] == [503] * 4
    assert all(answer.headers["retry-after"] == "1" for answer in shed)
    assert (live.status_code, metrics.status_code, after.status_code) == (200, 200, 200)
    assert counts.get("overloaded") == 4, counts
    # Shed requests have no access line each: one warning line stands for them.
    assert logged == [200]
    assert len(shed_lines) == 1, shed_lines
