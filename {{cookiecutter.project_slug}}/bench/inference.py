"""Predictions per second and memory, by worker count and preload: `make bench`.

Serves the model under Gunicorn four ways (1 and N workers, preload on and off), drives
POST /predict with wrk, then adds up the proportional set size (PSS, from
/proc/<pid>/smaps_rollup) of the master and its workers. PSS splits each shared page
between the processes that map it, so the total is what the service really costs: with
preload, the workers share the master's model and libraries, and N workers should cost
little more than one. Needs wrk (`apt-get install wrk`) and Linux.

BENCH_WORKERS (default: the CPUs this process may use, at least 2), BENCH_SECONDS,
BENCH_CONNECTIONS and BENCH_BATCH (instances per request) tune it.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from {{ cookiecutter.project_slug }}.cpu import effective_cpu_count

PROJECT = Path(__file__).resolve().parent.parent
WORKERS = int(os.environ.get("BENCH_WORKERS", max(2, effective_cpu_count().count)))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
BATCH = int(os.environ.get("BENCH_BATCH", "10"))
INSTANCE = [5.1, 3.5, 1.4, 0.2]


@dataclass
class Run:
    workers: int
    preload: bool
    predictions_per_second: float
    pss_mib: float  # master and workers together


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def pss_mib(pid: int) -> float:
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    found = re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no Pss line in /proc/{pid}/smaps_rollup")
    return int(found[1]) / 1024


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def wait_until_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/health/ready", timeout=1).close()  # noqa: S310
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the service did not become ready") from None
            time.sleep(0.1)


def measure(workers: int, preload: bool, wrk: str, script: Path) -> Run:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT / "src"),
        "PORT": str(port),
        "WEB_CONCURRENCY": str(workers),
        "PRELOAD": str(preload).lower(),
        "LOG_LEVEL": "warning",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, server)
        while len(children(server.pid)) < workers:
            time.sleep(0.1)
        output = subprocess.run(
            [wrk, "-t2", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "-s", str(script), f"{url}/predict"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found = re.search(r"Requests/sec:\s+([\d.]+)", output)
        if found is None or "Non-2xx" in output:
            raise RuntimeError(f"wrk saw errors or printed no rate:\n{output}")
        # Measured after the load: pages the workers wrote to meanwhile are their own now.
        memory = sum(pss_mib(pid) for pid in [server.pid, *children(server.pid)])
        return Run(workers, preload, float(found[1]) * BATCH, memory)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def main() -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("make bench needs wrk: apt-get install wrk (or your system's package)")
    body = json.dumps({"instances": [INSTANCE] * BATCH})
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(body)}\n"
        )
    runs: dict[tuple[int, bool], Run] = {}
    try:
        for preload in (True, False):
            for workers in (1, WORKERS):
                run = measure(workers, preload, wrk, Path(script.name))
                runs[workers, preload] = run
                print(
                    f"{workers} worker(s), preload {'on ' if preload else 'off'}: "
                    f"{run.predictions_per_second:9.0f} predictions/s, "
                    f"PSS {run.pss_mib:6.1f} MiB (master + workers)",
                    flush=True,
                )
    finally:
        os.unlink(script.name)
    one, many, many_unshared = runs[1, True], runs[WORKERS, True], runs[WORKERS, False]
    print(f"batch {BATCH}, {CONNECTIONS} connections, {SECONDS} s per run")
    print(
        f"throughput, {WORKERS} workers / 1: "
        f"{many.predictions_per_second / one.predictions_per_second:.2f}"
    )
    print(f"memory with preload, {WORKERS} workers / 1: {many.pss_mib / one.pss_mib:.2f}")
    unshared = many_unshared.pss_mib / many.pss_mib
    print(f"memory of {WORKERS} workers, preload off / on: {unshared:.2f}")


if __name__ == "__main__":
    main()
