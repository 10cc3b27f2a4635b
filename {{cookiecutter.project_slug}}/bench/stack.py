"""How much throughput the middleware stack costs: `make bench`.

Serves /health/live from the full app and from the bare one (the same service with its
middleware taken off) under the same Gunicorn configuration, in alternating runs (each app
first in every other round) so that both see the same machine noise, and prints the
median requests per second and p99 of each as a Markdown table, then their ratio. The full
app logs every request at `info`, as in production (to /dev/null here); neither recycles
its workers during the run. With two CPUs or more, Gunicorn is pinned to the last one and
wrk to the others (`harness.split_cpus`). Needs wrk (`apt-get install wrk`).
"""

import os
import statistics

from bench.harness import gunicorn, split_cpus, wrk, wrk_path

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
SERVER_CPUS, LOAD_CPUS = split_cpus()


def measure(app: str) -> dict[str, float]:
    # Without worker recycling: at bench rates a worker reaches max_requests within seconds,
    # and the pause until its successor has booted would swamp what the middleware costs.
    with gunicorn(app, "--max-requests", "0", cpus=SERVER_CPUS, LOG_LEVEL="info") as url:
        return wrk(f"{url}/health/live", SECONDS, CONNECTIONS, cpus=LOAD_CPUS)


def main() -> None:
    wrk_path()
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "full": []}
    for round_number in range(1, ROUNDS + 1):
        # Each app goes first in every other round: whatever favours the first (or second)
        # run of a round then falls on both alike.
        order = list(runs) if round_number % 2 else list(reversed(runs))
        for name in order:
            runs[name].append(run := measure(f"bench.apps:{name}"))
            print(
                f"round {round_number}: {name:4} {run['rate']:9.0f} req/s, "
                f"p99 {run['p99_ms']:6.2f} ms",
                flush=True,
            )
    rate = {name: statistics.median(run["rate"] for run in done) for name, done in runs.items()}
    p99 = {name: statistics.median(run["p99_ms"] for run in done) for name, done in runs.items()}
    where = f"server on CPU {SERVER_CPUS}, wrk on {LOAD_CPUS}" if SERVER_CPUS else "unpinned"
    print(
        f"\nGET /health/live, {CONNECTIONS} connections, median of {ROUNDS} rounds of "
        f"{SECONDS} s ({where}; load average {os.getloadavg()[0]:.2f}):\n"
    )
    print("| app | req/s | p99 ms |\n|---|---:|---:|")
    for name, label in (("bare", "bare FastAPI"), ("full", "full stack")):
        print(f"| {label} | {rate[name]:.0f} | {p99[name]:.2f} |")
    print(f"\nstack / bare: {rate['full'] / rate['bare']:.2f}")


if __name__ == "__main__":
    main()
