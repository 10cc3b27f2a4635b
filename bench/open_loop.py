"""An open-loop load: requests launched on a fixed schedule, whatever the answers.

    python bench/open_loop.py URL PATH RATE SECONDS   # PATH may hold {n}: a random 1..1000

A closed-loop tool such as wrk sends a connection's next request only once the last one is
answered, so a slow server slows its own load and is never seen past its capacity. Here the
i-th request is due at i / RATE seconds: it goes out on an idle keep-alive connection, or a
new one, whether or not earlier ones were answered; and its latency counts from when it was
due, so a request that could not even be sent on time is seen as late.

The generator must keep its own schedule to measure anything: each connection is an asyncio
protocol (no task or stream per request), and it reports how late it sent each request
(`late_ms`), its own delay, which is in every latency it reports. Prints one JSON object:
the answers by status, the percentiles of the latencies of the 2xx and of the 503 answers
and of the lateness (milliseconds), the requests that failed (no answer within TIMEOUT, or
a connection error), the connections opened, and the seconds from the first request due
to the last 2xx answer.
"""

import asyncio
import json
import random
import sys
import time
from collections import Counter, deque
from urllib.parse import urlsplit

import uvloop

TIMEOUT = 10.0  # seconds after which a request counts as failed
MAX_CONNECTIONS = 4000  # past it a due request waits for a connection (and is late)
TICK = 0.0005  # seconds between two looks at the schedule


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, load: "Load") -> None:
        self.load = load
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.due = 0.0  # of the request in flight; 0 when idle
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes, due: float) -> None:
        assert self.transport is not None
        self.due, self.sent_at = due, time.monotonic()
        self.load.late.append(self.sent_at - due)
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or not self.due:
            return
        head = self.buffer[:end]
        length, keep = 0, True
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
        if len(self.buffer) < end + 4 + length:
            return
        self.buffer = self.buffer[end + 4 + length :]
        status = int(head.split(b" ", 2)[1])
        self.load.answered(self, status, keep)

    def connection_lost(self, exc: Exception | None) -> None:
        self.load.lost(self)


class Load:
    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port, self.path = host, port, path
        self.idle: list[Connection] = []
        self.busy: set[Connection] = set()
        self.opening = 0
        self.opened = 0
        self.waiting: deque[float] = deque()  # due times of requests without a connection
        self.statuses: Counter[int] = Counter()
        self.latencies: dict[str, list[float]] = {"2xx": [], "503": []}
        self.late: list[float] = []
        self.failed = 0
        self.last_served = 0.0  # when the last 2xx answer came

    def request(self) -> bytes:
        path = self.path.format(n=random.randint(1, 1000))
        return f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()

    def due(self, due: float) -> None:
        if self.idle:
            connection = self.idle.pop()
            self.busy.add(connection)
            connection.send(self.request(), due)
        elif len(self.busy) + self.opening < MAX_CONNECTIONS:
            self.opening += 1
            self.opened += 1
            asyncio.get_running_loop().create_task(self.open(due))
        else:
            self.waiting.append(due)

    async def open(self, due: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                lambda: Connection(self), self.host, self.port
            )
        except OSError:
            self.failed += 1
            return
        finally:
            self.opening -= 1
        self.busy.add(connection)
        connection.send(self.request(), due)

    def answered(self, connection: Connection, status: int, keep: bool) -> None:
        now = time.monotonic()
        latency = now - connection.due
        connection.due = 0.0
        self.statuses[status] += 1
        kind = "2xx" if 200 <= status < 300 else str(status)
        if kind == "2xx":
            self.last_served = now
        if kind in self.latencies:
            self.latencies[kind].append(latency)
        self.busy.discard(connection)
        if not keep:
            assert connection.transport is not None
            connection.transport.close()
        elif self.waiting:
            self.busy.add(connection)
            connection.send(self.request(), self.waiting.popleft())
        else:
            self.idle.append(connection)

    def lost(self, connection: Connection) -> None:
        if connection.due:  # closed with a request in flight
            self.failed += 1
            connection.due = 0.0
        self.busy.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)

    def time_out(self, now: float) -> None:
        for connection in [c for c in self.busy if c.due and now - c.due > TIMEOUT]:
            assert connection.transport is not None
            connection.transport.abort()  # connection_lost counts it failed


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {}
    at = {"p50": 0.5, "p99": 0.99, "p99.9": 0.999}
    found = {name: ordered[min(len(ordered) - 1, int(q * len(ordered)))] for name, q in at.items()}
    return {name: round(value * 1000, 3) for name, value in found.items()} | {
        "max": round(ordered[-1] * 1000, 3)
    }


async def run(url: str, path: str, rate: float, seconds: float) -> dict[str, object]:
    parts = urlsplit(url)
    load = Load(parts.hostname or "127.0.0.1", parts.port or 80, path)
    began = time.monotonic()
    total = int(rate * seconds)
    sent = 0
    checked = began
    while sent < total:
        now = time.monotonic()
        due_now = min(total, int((now - began) * rate) + 1)
        for number in range(sent, due_now):
            load.due(began + number / rate)
        sent = due_now
        if now - checked > 0.1:
            load.time_out(now)
            checked = now
        await asyncio.sleep(TICK)
    elapsed = time.monotonic() - began
    while (load.busy or load.opening or load.waiting) and time.monotonic() - began < (
        seconds + TIMEOUT + 1
    ):
        load.time_out(time.monotonic())
        await asyncio.sleep(0.01)
    load.failed += len(load.waiting) + len(load.busy)
    for connection in [*load.idle, *load.busy]:
        if connection.transport is not None:
            connection.transport.close()
    return {
        "rate": rate,
        "seconds": elapsed,
        # From the first request due to the last 2xx answer: answers may come long after
        # the schedule ends, and a rate of them is over the time they took.
        "serving_seconds": max(load.last_served - began, elapsed),
        "sent": sent,
        "statuses": {str(status): count for status, count in load.statuses.items()},
        "latencies_ms": {kind: percentiles(values) for kind, values in load.latencies.items()},
        "failed": load.failed,
        "connections": load.opened,
        "late_ms": percentiles(load.late),
    }


if __name__ == "__main__":
    url, path, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    print(json.dumps(uvloop.run(run(url, path, rate, seconds))))
