"""How much throughput the middleware stack costs: `make bench`.

Serves /health/live from the full app and from the bare one, each under the same Gunicorn
configuration, alternating rounds so that both see the same machine noise, and prints
requests per second for each and their ratio. Needs wrk (`apt-get install wrk`).
"""

import os
import statistics

from bench.harness import gunicorn, wrk, wrk_path

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))


def requests_per_second(app: str) -> float:
    with gunicorn(app) as url:
        return wrk(f"{url}/health/live", SECONDS, CONNECTIONS)["rate"]


def main() -> None:
    wrk_path()
    rates: dict[str, list[float]] = {"bare": [], "full": []}
    for round_number in range(1, ROUNDS + 1):
        for name in rates:
            rates[name].append(requests_per_second(f"bench.apps:{name}"))
            print(f"round {round_number}: {name:4} {rates[name][-1]:9.0f} req/s", flush=True)
    bare, full = (statistics.median(rates[name]) for name in ("bare", "full"))
    print(f"median: bare {bare:.0f} req/s, full stack {full:.0f} req/s, ratio {full / bare:.2f}")


if __name__ == "__main__":
    main()
