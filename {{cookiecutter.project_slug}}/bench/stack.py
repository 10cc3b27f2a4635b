"""How much throughput the middleware stack costs: `make bench`.

Serves /health/live from the full app and from the bare one, each under the same Gunicorn
configuration, alternating rounds so that both see the same machine noise, and prints
requests per second for each and their ratio. Needs wrk (`apt-get install wrk`).
"""

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def requests_per_second(app: str, wrk: str) -> float:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{PROJECT / 'src'}:{PROJECT}",
        "PORT": str(port),
        "LOG_LEVEL": "warning",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", app],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/health/live"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        output = subprocess.run(
            [wrk, "-t2", f"-c{CONNECTIONS}", f"-d{SECONDS}s", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        found = re.search(r"Requests/sec:\s+([\d.]+)", output)
        if found is None:
            raise RuntimeError(f"wrk printed no rate:\n{output}")
        return float(found[1])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def main() -> None:
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit("make bench needs wrk: apt-get install wrk (or your system's package)")
    rates: dict[str, list[float]] = {"bare": [], "full": []}
    for round_number in range(1, ROUNDS + 1):
        for name in rates:
            rates[name].append(requests_per_second(f"bench.apps:{name}", wrk))
            print(f"round {round_number}: {name:4} {rates[name][-1]:9.0f} req/s", flush=True)
    bare, full = (statistics.median(rates[name]) for name in ("bare", "full"))
    print(f"median: bare {bare:.0f} req/s, full stack {full:.0f} req/s, ratio {full / bare:.2f}")


if __name__ == "__main__":
    main()
