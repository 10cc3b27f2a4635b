"""Predictions per second and memory, by worker count and preload: `make bench`.

Serves the model under Gunicorn four ways (1 and N workers, preload on and off), drives
POST /predict with wrk (rounds alternate between the four, and each figure is the median,
so all four see the same machine noise), then adds up the proportional set size (PSS, from
/proc/<pid>/smaps_rollup) of the master and its workers. PSS splits each shared page
between the processes that map it, so the total is what the service really costs: with
preload, the workers share the master's model and libraries, and N workers should cost
little more than one. Needs wrk and Linux.

BENCH_WORKERS (default: the CPUs this process may use, at least 2), BENCH_ROUNDS,
BENCH_SECONDS, BENCH_CONNECTIONS and BENCH_BATCH (instances per request) tune it.
"""

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.harness import ENV, PROJECT, free_port, wait_until_answering, wrk, wrk_path
from {{ cookiecutter.project_slug }}.serving.cpu import effective_cpu_count

WORKERS = int(os.environ.get("BENCH_WORKERS", max(2, effective_cpu_count().count)))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
BATCH = int(os.environ.get("BENCH_BATCH", "10"))
INSTANCE = [5.1, 3.5, 1.4, 0.2]


@dataclass
class Run:
    predictions_per_second: float
    pss_mib: float  # master and workers together


def pss_mib(pid: int) -> float:
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    found = re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no Pss line in /proc/{pid}/smaps_rollup")
    return int(found[1]) / 1024


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@contextmanager
def serving(workers: int, preload: bool) -> Iterator[tuple[str, int]]:
    """Gunicorn with the model, until the block ends; yields its URL and the master's pid."""
    port = free_port()
    env = {**ENV, "PORT": str(port), "WEB_CONCURRENCY": str(workers)}
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"],
        cwd=PROJECT,
        env={**env, "PRELOAD": str(preload).lower()},
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{url}/health/ready", within=60)
        while len(children(server.pid)) < workers:
            time.sleep(0.1)
        yield url, server.pid
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def measure(workers: int, preload: bool, script: Path) -> Run:
    with serving(workers, preload) as (url, master):
        rate = wrk(f"{url}/predict", SECONDS, CONNECTIONS, "--script", str(script))["rate"]
        # Measured after the load: pages the workers wrote to meanwhile are their own now.
        memory = sum(pss_mib(pid) for pid in [master, *children(master)])
    return Run(rate * BATCH, memory)


def main() -> None:
    wrk_path()
    body = json.dumps({"instances": [INSTANCE] * BATCH})
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body)}\n"
        )
    runs: dict[tuple[int, bool], list[Run]] = {
        (workers, preload): [] for preload in (True, False) for workers in (1, WORKERS)
    }
    try:
        for round_number in range(1, ROUNDS + 1):
            for (workers, preload), done in runs.items():
                done.append(run := measure(workers, preload, Path(script.name)))
                print(
                    f"round {round_number}: {workers} worker(s), preload "
                    f"{'on ' if preload else 'off'}: {run.predictions_per_second:9.0f} "
                    f"predictions/s, PSS {run.pss_mib:6.1f} MiB (master + workers)",
                    flush=True,
                )
    finally:
        os.unlink(script.name)
    rate = {
        key: statistics.median(r.predictions_per_second for r in rs) for key, rs in runs.items()
    }
    pss = {key: statistics.median(r.pss_mib for r in rs) for key, rs in runs.items()}
    print(f"medians of {ROUNDS} rounds; batch {BATCH}, {CONNECTIONS} connections, {SECONDS} s each")
    for workers, preload in runs:
        print(
            f"{workers} worker(s), preload {'on ' if preload else 'off'}: "
            f"{rate[workers, preload]:9.0f} predictions/s, PSS {pss[workers, preload]:6.1f} MiB"
        )
    speedup = rate[WORKERS, True] / rate[1, True]
    shared = pss[WORKERS, True] / pss[1, True]
    unshared = pss[WORKERS, False] / pss[WORKERS, True]
    print(f"throughput with preload, {WORKERS} workers / 1: {speedup:.2f}")
    print(f"memory with preload, {WORKERS} workers / 1: {shared:.2f}")
    print(f"memory of {WORKERS} workers, preload off / on: {unshared:.2f}")


if __name__ == "__main__":
    main()
