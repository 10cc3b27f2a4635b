"""Worker count for async Uvicorn workers: `cpu` against `cpu + 1` and `2 * cpu + 1`.

    python3 bench/workers.py            (after `python3 dev.py test` made .venv and .cache)

Bakes the default scenario, serves /health/live and /items under Gunicorn with each
worker count in turn, alternating rounds so each count sees the same machine noise, and
prints requests per second and p99 latency from wrk. Loopback only; needs wrk and taskset.

The server is pinned to the last CPU and wrk to the others. Unpinned, the load generator
and the workers share the CPUs by process count, so more workers simply win more CPU from
wrk, and the comparison measures that fight instead of the worker count.
"""

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent
VENV = TEMPLATE / ".cache" / "baked-venv"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
_ALL = sorted(os.sched_getaffinity(0))
SERVER_CPU = str(_ALL[-1])
LOAD_CPUS = ",".join(map(str, _ALL[:-1] or _ALL))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def bake(into: Path) -> Path:
    subprocess.run(
        [TEMPLATE / ".venv" / "bin" / "cookiecutter", TEMPLATE, "--no-input", "-o", into],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    project = into / "my_service"
    subprocess.run(
        ["make", "migrate", f"VENV={VENV}"], cwd=project, check=True, stdout=subprocess.DEVNULL
    )
    return project


def measure(project: Path, workers: int, path: str, wrk: str) -> tuple[float, float]:
    """Requests per second and p99 latency in milliseconds."""
    port = free_port()
    server = subprocess.Popen(
        ["taskset", "-c", SERVER_CPU, VENV / "bin" / "gunicorn", "--config", "gunicorn.conf.py"],
        cwd=project,
        env={
            **os.environ,
            "PYTHONPATH": str(project / "src"),
            "PORT": str(port),
            "WEB_CONCURRENCY": str(workers),
            "LOG_LEVEL": "warning",
        },
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}{path}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        output = subprocess.run(
            [
                "taskset",
                "-c",
                LOAD_CPUS,
                wrk,
                "-t2",
                f"-c{CONNECTIONS}",
                f"-d{SECONDS}s",
                "--latency",
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
        value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
        p99_ms = float(value) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
        return rate, p99_ms
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def main() -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("bench/workers.py needs wrk: apt-get install wrk")
    cpus = 1  # the server's share: one pinned CPU
    counts = {"cpu": cpus, "cpu+1": cpus + 1, "2*cpu+1": 2 * cpus + 1}
    with tempfile.TemporaryDirectory() as scratch:
        project = bake(Path(scratch))
        for path in ("/health/live", "/items"):
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in counts}
            for _ in range(ROUNDS):
                for name, workers in counts.items():
                    results[name].append(measure(project, workers, path, wrk))
            print(
                f"\n{path}, server pinned to {cpus} CPU, {CONNECTIONS} connections, "
                f"median of {ROUNDS} x {SECONDS} s:"
            )
            base = statistics.median(rate for rate, _ in results["cpu"])
            for name, runs in results.items():
                rate = statistics.median(r for r, _ in runs)
                p99 = statistics.median(p for _, p in runs)
                print(
                    f"  {name:8} {counts[name]:3} workers  {rate:8.0f} req/s "
                    f"({rate / base:4.2f} of cpu)  p99 {p99:7.1f} ms"
                )


if __name__ == "__main__":
    main()
