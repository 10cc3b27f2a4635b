"""Fan-out to 1,000 WebSocket clients across 2 workers: `make bench` (websocket projects).

Serves the project under Gunicorn with 2 workers and Redis (REDIS_URL, default
redis://127.0.0.1:6379/0), connects BENCH_CLIENTS (1,000) clients to one room from
BENCH_CLIENT_PROCESSES (2) processes, then publishes over HTTP at each rate of BENCH_RATES
(messages per second) for BENCH_SECONDS. Each message carries the time it was published;
each client notes when it arrived. Per rate: messages delivered per second (deliveries to
clients, all clients together), p50 and p99 delivery latency (publish to client), and any
client dropped for falling behind. Clients, Redis and the server share this machine's CPUs:
the figures are for the whole system on one box.
"""

import asyncio
import json
import multiprocessing
import os
import statistics
import time
import uuid
from dataclasses import dataclass
from multiprocessing.connection import Connection

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.harness import gunicorn

CLIENTS = int(os.environ.get("BENCH_CLIENTS", "1000"))
CLIENT_PROCESSES = int(os.environ.get("BENCH_CLIENT_PROCESSES", "2"))
RATES = [int(rate) for rate in os.environ.get("BENCH_RATES", "10,20,40,80,160").split(",")]
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# Seconds after the last publish for late messages to arrive before the figures are taken.
SETTLE = 5.0


@dataclass
class Report:
    latencies: list[float]  # seconds, one per delivery
    last_arrival: float  # time.time() of the last delivery
    dropped: int  # clients the server closed


class Clients:
    """One process's share of the clients, all in the same room."""

    def __init__(self, count: int) -> None:
        self.latencies: list[float] = []
        self.last_arrival = 0.0
        self.connected = 0
        self.dropped = 0
        self.workers: set[int] = set()
        self.count = count
        self.all_connected = asyncio.Event()

    async def listen(self, url: str, handshakes: asyncio.Semaphore) -> None:
        try:
            async with handshakes:  # connect in waves: the listen backlog is finite
                ws = await connect(url, compression=None, ping_interval=None, open_timeout=60)
                self.workers.add(json.loads(await ws.recv())["worker"])
            self.connected += 1
            if self.connected == self.count:
                self.all_connected.set()
            async with ws:
                async for frame in ws:
                    arrived = time.time()
                    self.latencies.append(arrived - float(json.loads(frame)["text"]))
                    self.last_arrival = arrived
        except ConnectionClosed:
            self.dropped += 1

    def report(self) -> Report:
        report = Report(self.latencies, self.last_arrival, self.dropped)
        self.latencies, self.dropped = [], 0
        return report


def run_clients(url: str, count: int, commands: Connection) -> None:
    asyncio.run(_run_clients(url, count, commands))


async def _run_clients(url: str, count: int, commands: Connection) -> None:
    clients = Clients(count)
    handshakes = asyncio.Semaphore(50)
    tasks = [asyncio.create_task(clients.listen(url, handshakes)) for _ in range(count)]
    async with asyncio.timeout(120):
        await clients.all_connected.wait()
    commands.send(sorted(clients.workers))
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, commands.recv) == "report":
        commands.send(clients.report())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def publish_at(url: str, room: str, rate: int, seconds: float) -> int:
    """POST a message every 1/rate s for `seconds`, each on time whether or not the earlier
    ones were answered (an open loop: a slow server does not slow the offered load)."""
    loop = asyncio.get_running_loop()
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        posts = []
        started = loop.time()
        while loop.time() - started < seconds:
            body = {"text": repr(time.time())}
            posts.append(asyncio.create_task(http.post(f"/rooms/{room}/messages", json=body)))
            await asyncio.sleep(max(0.0, len(posts) / rate - (loop.time() - started)))
        for answer in await asyncio.gather(*posts):
            answer.raise_for_status()
    return len(posts)


def percentile(values: list[float], fraction: float) -> float:
    return statistics.quantiles(values, n=1000)[int(fraction * 1000) - 1] if values else 0.0


def main() -> None:
    room = f"bench-{uuid.uuid4().hex[:8]}"
    env = {"WEB_CONCURRENCY": "2", "REDIS_URL": REDIS_URL}
    with gunicorn(**env) as url:
        ws_url = f"{url.replace('http://', 'ws://')}/ws/{room}"
        pipes, processes = [], []
        share = CLIENTS // CLIENT_PROCESSES
        for index in range(CLIENT_PROCESSES):
            count = share + (CLIENTS % CLIENT_PROCESSES if index == 0 else 0)
            ours, theirs = multiprocessing.Pipe()
            process = multiprocessing.Process(target=run_clients, args=(ws_url, count, theirs))
            process.start()
            pipes.append(ours)
            processes.append(process)
        workers = set().union(*(pipe.recv() for pipe in pipes))
        print(f"{CLIENTS} clients in one room, held by {len(workers)} workers", flush=True)
        print(f"{'offered':>10} {'delivered/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'dropped':>8}")
        alive = CLIENTS
        for rate in RATES:
            started = time.time()
            published = asyncio.run(publish_at(url, room, rate, SECONDS))
            time.sleep(SETTLE)
            for pipe in pipes:
                pipe.send("report")
            reports: list[Report] = [pipe.recv() for pipe in pipes]
            latencies = [value for report in reports for value in report.latencies]
            dropped = sum(report.dropped for report in reports)
            span = max(report.last_arrival for report in reports) - started
            delivered = len(latencies) / span if latencies else 0.0
            print(
                f"{rate:>8}/s {delivered:>12,.0f} {percentile(latencies, 0.5) * 1000:>8.1f} "
                f"{percentile(latencies, 0.99) * 1000:>8.1f} {dropped:>8}"
                + ("" if len(latencies) == published * alive else "  (messages lost)"),
                flush=True,
            )
            alive -= dropped
            if dropped or alive == 0:
                break
        for pipe in pipes:
            pipe.send("stop")
        for process in processes:
            process.join(timeout=30)


if __name__ == "__main__":
    main()
