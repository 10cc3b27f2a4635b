"""What the benchmarks share: a Gunicorn serving this project on a free port, and wrk."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
# The project's code and this folder's apps, quiet logs.
ENV = {**os.environ, "PYTHONPATH": f"{PROJECT / 'src'}:{PROJECT}", "LOG_LEVEL": "warning"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wrk_path() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("make bench needs wrk: apt-get install wrk (or your system's package)")
    return wrk


def split_cpus() -> tuple[str | None, str | None]:
    """CPUs for the server and for wrk (taskset lists): the last CPU serves, the others
    load. Sharing CPUs, wrk and the workers would fight for them, and the scheduler shares
    by process: more workers would just take CPU from wrk. With one CPU, nothing is pinned."""
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return None, None
    return str(usable[-1]), ",".join(map(str, usable[:-1]))


def pinned(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


@contextmanager
def gunicorn(*args: str, cpus: str | None = None, **env: str) -> Iterator[str]:
    """Serve under gunicorn.conf.py until the block ends, pinned to `cpus` if given
    (the worker count follows them); yields the base URL."""
    port = free_port()
    server = subprocess.Popen(
        [*pinned(cpus), sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", *args],
        cwd=PROJECT,
        env={**ENV, "PORT": str(port), "METRICS_PORT": str(free_port()), **env},
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{url}/health/live")
        yield url
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def wait_until_answering(url: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()  # noqa: S310 (a loopback URL)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wrk(
    url: str, seconds: int, connections: int, *options: str, cpus: str | None = None
) -> dict[str, float]:
    """Requests per second, the 99th percentile latency in milliseconds and the socket
    errors (timeouts included); `options` go to wrk as they are (e.g. "--script",
    "post.lua"); `cpus` pins wrk to those CPUs (taskset's list). Any answer but a 2xx is
    an error."""
    command = [wrk_path(), "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    output = subprocess.run(
        [*pinned(cpus), *command, "--latency", *options, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in output:
        raise RuntimeError(f"the service answered with errors:\n{output}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", output)
    if rate is None or p99 is None:
        raise RuntimeError(f"wrk printed no rate or latency:\n{output}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99[2]]
    # "Socket errors: connect 0, read 2, write 0, timeout 5", printed only when there were any.
    errors = re.search(r"Socket errors: (.*)", output)
    failed = sum(map(int, re.findall(r"\d+", errors[1]))) if errors else 0
    found = {"rate": float(rate[1]), "p99_ms": float(p99[1]) * scale, "errors": float(failed)}
    # Finer percentiles, in microseconds, where the script prints them (PERCENTILES_SCRIPT).
    if finer := re.search(r"^percentiles ([\d.]+) ([\d.]+) ([\d.]+)$", output, re.MULTILINE):
        for name, value in zip(("p50_ms", "p99_ms", "p999_ms"), finer.groups(), strict=True):
            found[name] = float(value) / 1000
    return found


# A wrk script (--script) after which wrk() also returns p50_ms and p999_ms (the 99.9th).
PERCENTILES_SCRIPT = """
done = function(summary, latency, requests)
  io.write(string.format("percentiles %d %d %d\\n", latency:percentile(50),
    latency:percentile(99), latency:percentile(99.9)))
end
"""
