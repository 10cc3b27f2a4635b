"""An open-loop load: requests launched on a fixed schedule, whatever the answers.

    python bench/open_loop.py URL PATH RATE SECONDS   # PATH may hold {n}: a random 1..1000

A closed-loop tool such as wrk sends a connection's next request only once the last one is
answered, so a slow server slows its own load and is never seen past its capacity. Here the
i-th request is due at i / RATE seconds: it goes out on an idle keep-alive connection, or a
new one, whether or not earlier ones were answered; and its latency counts from when it was
due, so a request that could not even be sent on time is seen as late. Prints one JSON
object: the answers by status, the latencies in milliseconds of the 2xx and of the 503
answers, the requests that failed (no answer within TIMEOUT, or a connection error) and the
connections opened.
"""

import asyncio
import json
import random
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

import uvloop

TIMEOUT = 10.0  # seconds after which a request counts as failed
MAX_CONNECTIONS = 4000  # past it a due request waits for a connection (and is late)


class Load:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0
        self.opened = 0
        self.statuses: Counter[int] = Counter()
        self.latencies: dict[str, list[float]] = {"2xx": [], "503": []}
        self.failed = 0
        self.free = asyncio.Event()

    async def connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while not self.idle and self.open >= MAX_CONNECTIONS:
            self.free.clear()
            await self.free.wait()
        if self.idle:
            return self.idle.pop()
        self.open += 1
        self.opened += 1
        try:
            return await asyncio.open_connection(self.host, self.port)
        except OSError:
            self.open -= 1
            raise

    async def one(self, path: str, due: float) -> None:
        request = f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        connection = None
        try:
            async with asyncio.timeout(TIMEOUT):
                connection = reader, writer = await self.connection()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length, keep = 0, True
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        keep = False
                await reader.readexactly(length)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            self.failed += 1
            if connection is not None:
                connection[1].close()
                self.open -= 1
                self.free.set()
            return
        latency = (time.monotonic() - due) * 1000
        self.statuses[status] += 1
        kind = "2xx" if 200 <= status < 300 else str(status)
        if kind in self.latencies:
            self.latencies[kind].append(latency)
        if keep:
            self.idle.append(connection)
        else:
            writer.close()
            self.open -= 1
        self.free.set()


async def run(url: str, path: str, rate: float, seconds: float) -> dict[str, object]:
    parts = urlsplit(url)
    load = Load(parts.hostname or "127.0.0.1", parts.port or 80)
    tasks: set[asyncio.Task[None]] = set()
    began = time.monotonic()
    total = int(rate * seconds)
    sent = 0
    while sent < total:
        now = time.monotonic()
        due_now = min(total, int((now - began) * rate) + 1)
        for number in range(sent, due_now):
            due = began + number / rate
            task = asyncio.create_task(load.one(path.format(n=random.randint(1, 1000)), due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent = due_now
        await asyncio.sleep(0.001)
    elapsed = time.monotonic() - began
    if tasks:
        await asyncio.wait(tasks)
    for _, writer in load.idle:
        writer.close()
    return {
        "rate": rate,
        "seconds": elapsed,
        "sent": sent,
        "statuses": {str(status): count for status, count in load.statuses.items()},
        "latencies_ms": load.latencies,
        "failed": load.failed,
        "connections": load.opened,
    }


if __name__ == "__main__":
    url, path, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    print(json.dumps(uvloop.run(run(url, path, rate, seconds))))
