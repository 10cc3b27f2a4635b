"""A small, bounded HTTP/1.1 load generator on loopback, faithful to keep-alive.

Like wrk, each connection sends its next request as soon as the last answer arrived, on the
same connection, without checking first whether the server closed it: exactly the case
that loses requests when a worker stops. It never retries. It runs in a thread of its own;
whatever that thread raises is raised again where the load stops, and fails the test.
"""

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# Seconds: the load stops by itself even if a test forgets to stop it. Longer than any wait
# a test does under load (tests/waiting.py), which would otherwise outlast the load.
HARD_LIMIT = 600
# Seconds an answer may take before its request counts as lost.
ANSWER_WITHIN = 30


@dataclass
class LoadResult:
    answered: Counter[int] = field(default_factory=Counter)  # status -> count
    lost: int = 0  # sent, and the connection failed before the whole answer came back
    refused: int = 0  # no connection could be opened
    errors: Counter[str] = field(default_factory=Counter)
    longest_silence: float = 0.0  # seconds, the longest time without any answer
    opened: int = 0  # connections opened: more than asked for means the server closed some
    retry_after: Counter[int] = field(default_factory=Counter)  # status -> with Retry-After

    @property
    def ok(self) -> int:
        # A copy: the load's thread may add a status while this one reads.
        return sum(n for status, n in list(self.answered.items()) if status < 500)


@contextmanager
def constant_load(
    url: str, path: str, connections: int = 16, keep_alive: bool = True
) -> Iterator[LoadResult]:
    """Keep `connections` connections busy on `url + path` until the block ends: keep-alive
    connections, or with `keep_alive=False` a new connection for every request."""
    parts = urlsplit(url)
    result = LoadResult()
    stop = threading.Event()
    close = "" if keep_alive else "Connection: close\r\n"
    request = f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{close}\r\n".encode()
    last_answer = time.monotonic()

    async def one_connection() -> None:
        nonlocal last_answer
        deadline = time.monotonic() + HARD_LIMIT
        reader = writer = None
        while not stop.is_set() and time.monotonic() < deadline:
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
                    result.opened += 1
                except OSError as error:
                    result.refused += 1
                    result.errors[type(error).__name__] += 1
                    await asyncio.sleep(0.05)
                    continue
            assert reader is not None
            try:
                writer.write(request)
                status, headers = await asyncio.wait_for(
                    _read_response(reader), timeout=ANSWER_WITHIN
                )
                result.answered[status] += 1
                result.retry_after[status] += "retry-after" in headers
                open_after = headers.get("connection", "").lower() != "close"
                now = time.monotonic()
                result.longest_silence = max(result.longest_silence, now - last_answer)
                last_answer = now
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as error:
                result.lost += 1
                result.errors[type(error).__name__] += 1
                open_after = False
            if not open_after:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    async def run() -> None:
        await asyncio.gather(*(one_connection() for _ in range(connections)))

    with ThreadPoolExecutor(1, thread_name_prefix="load") as runner:
        running = runner.submit(asyncio.run, run())
        try:
            yield result
        finally:
            stop.set()
            # Each connection stops after its request in flight: answered, or lost.
            running.result(timeout=ANSWER_WITHIN + 30)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split()[1])
    headers = dict(
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in header_lines if line)
    )
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers
