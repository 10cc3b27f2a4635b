"""Jobs per second with one Celery worker process and with one per CPU, and what a busy
worker does to the API's latency: `make bench` (Celery projects).

Uses the settings in the environment (DATABASE_URL, CELERY_BROKER_URL, ...), or a
throwaway SQLite database and broker when DATABASE_URL is unset. Needs wrk.
"""

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from bench.harness import ENV, PROJECT, gunicorn, wrk, wrk_path
from {{ cookiecutter.project_slug }}.serving.cpu import effective_cpu_count

JOBS = int(os.environ.get("BENCH_JOBS", "16"))
ROWS = int(os.environ.get("BENCH_ROWS", "200000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
# Few connections: this measures how long a request waits, not how many fit.
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "4"))


def sample_csv(rows: int) -> bytes:
    rng = random.Random(0)  # noqa: S311 (bench data, not secrets)
    lines = ["group,value", *(f"g{rng.randrange(20)},{rng.random():.6f}" for _ in range(rows))]
    return ("\n".join(lines) + "\n").encode()


def submit(url: str, data: bytes) -> str:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="b.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n"
    )
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(  # noqa: S310 (a loopback URL)
        f"{url}/jobs", body, {"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    with urllib.request.urlopen(request) as answer:  # noqa: S310
        status_url: str = json.load(answer)["status_url"]
        return status_url


def wait_until_finished(status_urls: list[str]) -> None:
    for status_url in status_urls:
        while True:
            with urllib.request.urlopen(status_url) as answer:  # noqa: S310
                status = json.load(answer)["status"]
            if status == "failed":
                raise RuntimeError(f"a bench job failed: {status_url}")
            if status == "succeeded":
                break
            time.sleep(0.05)


@contextmanager
def celery_worker(processes: int, env: dict[str, str]) -> Iterator[None]:
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "--app", "{{ cookiecutter.project_slug }}.jobs.celery_app"),
            *("worker", "--loglevel", "WARNING", "--hostname", f"bench-{uuid.uuid4().hex[:6]}@%h"),
        ],
        cwd=PROJECT,
        env={**ENV, **env, "CELERY_CONCURRENCY": str(processes)},
        stdout=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)


def jobs_per_second(url: str, processes: int, data: bytes, env: dict[str, str]) -> float:
    with celery_worker(processes, env):
        wait_until_finished([submit(url, data)])  # the worker is up and warm
        started = time.perf_counter()
        wait_until_finished([submit(url, data) for _ in range(JOBS)])
        return JOBS / (time.perf_counter() - started)


def p99_while(url: str, busy_processes: int, data: bytes, env: dict[str, str]) -> float:
    """/health/live's p99 in ms; with `busy_processes` > 0, while that many are at work."""
    if not busy_processes:
        return wrk(f"{url}/health/live", SECONDS, CONNECTIONS)["p99_ms"]
    with celery_worker(busy_processes, env):
        wait_until_finished([submit(url, data)])
        backlog = [submit(url, data) for _ in range(4 * busy_processes)]
        p99 = wrk(f"{url}/health/live", SECONDS, CONNECTIONS)["p99_ms"]
        wait_until_finished(backlog)
        return p99


def settings_env(scratch: str) -> dict[str, str]:
    if os.environ.get("DATABASE_URL"):
        return {}
    return {
        "DATABASE_URL": f"sqlite+aiosqlite:///{scratch}/bench.db",
        "CELERY_BROKER_URL": f"sqla+sqlite:///{scratch}/broker.db",
    }


def main() -> None:
    wrk_path()
    cpus = effective_cpu_count().count
    data = sample_csv(ROWS)
    with tempfile.TemporaryDirectory() as scratch:
        env = settings_env(scratch)
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=PROJECT,
            env={**ENV, **env},
            check=True,
        )
        rates: dict[int, list[float]] = {1: [], cpus: []}
        p99s: dict[str, list[float]] = {"idle": [], "busy": []}
        # No worker recycling: a recycle's restart would be measured, not the Celery workers.
        with gunicorn("--max-requests", "0", **env) as url:
            for round_number in range(1, ROUNDS + 1):
                for processes in rates:
                    rates[processes].append(jobs_per_second(url, processes, data, env))
                    print(
                        f"round {round_number}: {processes} worker process(es) "
                        f"{rates[processes][-1]:6.2f} jobs/s",
                        flush=True,
                    )
                for state, busy_processes in (("idle", 0), ("busy", cpus)):
                    p99s[state].append(p99_while(url, busy_processes, data, env))
                    p99 = p99s[state][-1]
                    print(f"round {round_number}: /health/live p99 {state} {p99:.1f} ms")
    one, many = (statistics.median(rates[processes]) for processes in (1, cpus))
    idle, busy = (statistics.median(p99s[state]) for state in ("idle", "busy"))
    print(
        f"median: {one:.2f} jobs/s with 1 process, {many:.2f} with {cpus} "
        f"(scaling efficiency {many / (cpus * one):.2f}); /health/live p99 {idle:.1f} ms idle, "
        f"{busy:.1f} ms with {cpus} busy worker processes ({busy / idle:.1f}x)"
    )
    print(f"{ROWS} rows a job, {JOBS} jobs a run, {ROUNDS} rounds; {cpus} usable CPUs")


if __name__ == "__main__":
    main()
