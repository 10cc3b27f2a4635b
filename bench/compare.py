"""The generated service side by side with what people would otherwise run.

    python3 bench/compare.py                  # every section; results in .cache/bench-results/
    python3 bench/compare.py --only cgroup    # one section (see SECTIONS)
    python3 bench/compare.py --docs           # also write the tables and plots into docs/
    python3 bench/compare.py --report-only    # the last run's results.json as Markdown again

Bakes a `microservice` into .cache/bench/, installs it with the alternatives (the naive setup's
deprecated `uvicorn.workers`, granian, prometheus-fastapi-instrumentator) and matplotlib
into a separate environment, .cache/bench-venv/, never into the project's dependencies,
and runs itself there. Needs wrk and taskset; `cgroup` needs root and a cgroup hierarchy
with the cpu controller; `database` needs PostgreSQL's server programs (initdb, pg_ctl) and
its pg_stat_statements module: it starts a server of its own on a free port, and removes it
after.

Sections, each on one endpoint, with the server on the same CPUs for every configuration:

servers   GET /health/live, the server pinned to one CPU and wrk to the others:
          (a) the generated service against a naive setup (bench/naive_app.py);
          (b) against `uvicorn --workers`, Gunicorn's `-k asgi` and granian serving the same app;
          (c) bare FastAPI (the service without its middleware) and a bare ASGI app, the ceiling;
          (d) the generated service with 1, 2 and 3 workers (1 to 2 x CPU + 1).
cgroup    (e) inside a cgroup with a quota of one CPU, on a host taken to have 16 CPUs:
          the naive setup's formula (2 x 16 + 1 = 33 workers) against the generated configuration,
          which reads the quota; requests/s, p99, the PSS of master and workers together,
          and the time until every worker has booted.
database  (f) GET /items/{id} on PostgreSQL: the generated service (SQLAlchemy) with 1 to 3
          workers, the same FastAPI service on raw asyncpg with 1 and 3, the read as it was
          before (bench/orm_items.py), and a bare ASGI app on asyncpg; with the statements
          and transactions PostgreSQL counted per request.
instructions  (g) CPU instructions per GET /health/live in-process (no server), counted by
          valgrind's callgrind: the full stack, the same without its access log, and bare
          FastAPI. Counts are repeatable whatever else the machine does: the noise-free
          view of what the middleware costs. Needs valgrind.

tail      (h) GET /health/live, one worker: p50, p99 and p99.9 next to granian serving the same
          app and bare FastAPI, and the worker's garbage-collection pauses with and without
          freezing its heap after startup (bench/probes.py).
recycling (i) GET /health/live, two workers: recycling as shipped (its lifetime lowered so
          every worker recycles within the window) against none.
overload  (j) GET /items/{id} on PostgreSQL, one worker, under an open-loop load
          (bench/open_loop.py) at 0.25 to 4 times its measured capacity, shedding off and on.

Every round runs each configuration once, in a rotating order, so all of them see the same
machine noise; the tables give medians over the rounds, and ratios. The machines we run on
are shared: read the ratios, not the absolute figures.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).resolve().parent.parent
HERE = TEMPLATE / "bench"
CACHE = TEMPLATE / ".cache"
VENV = CACHE / "bench-venv"
PROJECT = CACHE / "bench" / "my_service"
RESULTS = CACHE / "bench-results"
DOCS = TEMPLATE / "docs"
ALTERNATIVES = ["granian", "prometheus-fastapi-instrumentator", "matplotlib"]
HOST_CPUS_PRETENDED = 16
SECTIONS = ("servers", "cgroup", "database", "instructions", "tail", "recycling", "overload")
LOADS: list[float] = []  # the 1-minute load average at the start of every round


def prepare() -> None:
    """Bake, install, and run this script again inside the bench environment."""
    sys.path.insert(0, str(TEMPLATE))
    import dev  # the template's own tools: uv and cookiecutter

    tools = dev.tools()
    shutil.rmtree(PROJECT.parent, ignore_errors=True)
    subprocess.run(
        [
            tools / "cookiecutter",
            TEMPLATE,
            "--no-input",
            "-o",
            PROJECT.parent,
            "scenario=microservice",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    if not (VENV / "bin" / "python").exists():
        subprocess.run(
            [tools / "uv", "venv", "--quiet", "--python", sys.executable, VENV], check=True
        )
    install = [tools / "uv", "pip", "install", "--quiet", "--python", VENV / "bin" / "python"]
    subprocess.run([*install, PROJECT, *ALTERNATIVES], check=True)
    python = str(VENV / "bin" / "python")
    os.execv(python, [python, __file__, *sys.argv[1:]])


# --- measuring -----------------------------------------------------------------------


@dataclass
class Server:
    """A command that serves on {port}; `env` is added to the environment."""

    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 1
    # The project's folder, where Gunicorn finds gunicorn.conf.py; the naive setup runs from here,
    # where there is none.
    cwd: Path = PROJECT


@dataclass
class Run:
    rate: float
    p99_ms: float
    errors: float
    pss_mib: float
    ready_s: float


def descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(OSError):
            for child in map(int, (task / "children").read_text().split()):
                found += [child, *descendants(child)]
    return found


def pss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with suppress(OSError):
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            total += int(re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE)[1])  # type: ignore[index]
    return total / 1024


def cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        with suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_until_booted(master: int, workers: int, within: float = 180) -> None:
    """Until the master has its workers and the whole tree is idle: all have imported
    the app, so no configuration is measured while some of its workers still boot."""
    deadline = time.monotonic() + within
    before = -1.0
    while time.monotonic() < deadline:
        tree = [master, *descendants(master)]
        used = cpu_seconds(tree)
        if len(tree) > workers - (workers == 1) and used - before < 0.05:
            return
        before = used
        time.sleep(0.5)
    raise RuntimeError(f"the server did not settle within {within} s")


def answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).close()
        return True
    except OSError:
        return False


@contextmanager
def serving(
    server: Server, path: str, prefix: list[str], log: Path
) -> Iterator[tuple[str, int, float]]:
    """The server, until the block ends: yields its URL, pid, and the seconds it took
    until every worker had booted."""
    port = free_port()
    started = time.monotonic()
    with log.open("a") as output:
        process = subprocess.Popen(
            [*prefix, *(part.format(port=port) for part in server.command)],
            cwd=server.cwd,
            # A metrics port of its own too: another server may hold the default one.
            env={**ENV, "PORT": str(port), "METRICS_PORT": str(free_port()), **server.env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not answers(f"{url}{path}"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{server.command} did not serve; see {log}")
            time.sleep(0.1)
        wait_until_booted(process.pid, server.workers)
        yield url, process.pid, time.monotonic() - started
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure(
    server: Server,
    path: str,
    args: argparse.Namespace,
    prefix: list[str],
    load_cpus: str | None,
    *options: str,
) -> Run:
    log = RESULTS / "logs" / "server.log"
    with serving(server, path, prefix, log) as (url, pid, ready_s):
        wrk(f"{url}{path}", 1, args.connections, *options, cpus=load_cpus)  # warm up
        result = wrk(f"{url}{path}", args.seconds, args.connections, *options, cpus=load_cpus)
        memory = pss_mib([pid, *descendants(pid)])
    return Run(result["rate"], result["p99_ms"], result["errors"], memory, ready_s)


def rounds(
    servers: dict[str, Server],
    path: str,
    args: argparse.Namespace,
    prefix: list[str],
    load_cpus: str | None,
    *options: str,
    count: int,
    around: Callable[[str], AbstractContextManager[object]] | None = None,
) -> dict[str, list[Run]]:
    """`around(name)`, if given, is entered around each measurement of `name`."""
    runs: dict[str, list[Run]] = {name: [] for name in servers}
    names = list(servers)
    for number in range(count):
        LOADS.append(os.getloadavg()[0])
        order = names[number % len(names) :] + names[: number % len(names)]
        for name in order:
            with around(name) if around else nullcontext():
                run = measure(servers[name], path, args, prefix, load_cpus, *options)
            runs[name].append(run)
            print(
                f"  round {number + 1}/{count} {name:34} {run.rate:8.0f} req/s  p99 "
                f"{run.p99_ms:8.2f} ms  PSS {run.pss_mib:6.1f} MiB  errors {run.errors:.0f}",
                flush=True,
            )
    return runs


@dataclass
class Row:
    name: str
    workers: int
    rate: float
    p99_ms: float
    pss_mib: float
    ready_s: float
    errors: float

    @classmethod
    def of(cls, name: str, workers: int, runs: list[Run]) -> "Row":
        def median(values: Iterator[float]) -> float:
            return statistics.median(values)

        return cls(
            name,
            workers,
            median(r.rate for r in runs),
            median(r.p99_ms for r in runs),
            median(r.pss_mib for r in runs),
            median(r.ready_s for r in runs),
            sum(r.errors for r in runs),
        )


def rows(servers: dict[str, Server], runs: dict[str, list[Run]]) -> list[Row]:
    return [Row.of(name, servers[name].workers, runs[name]) for name in servers]


# --- sections ------------------------------------------------------------------------


def naive_setup(workers: int) -> Server:
    """The naive setup's command line, run where Gunicorn finds no gunicorn.conf.py."""
    command = ["-w", str(workers), "-k", "uvicorn.workers.UvicornWorker"]
    return Server(
        [sys.executable, "-m", "gunicorn", *command, "--bind", "127.0.0.1:{port}", "naive_app:app"],
        workers=workers,
        cwd=HERE,
    )


def log_config_file() -> Path:
    """The service's logging set-up as a file, for servers other than Gunicorn (which
    gets it from gunicorn.conf.py): every server logs each request alike."""
    from my_service.serving.logs import logging_config

    config = logging_config("info")
    config["formatters"]["json"]["()"] = "my_service.serving.logs.JsonFormatter"
    path = RESULTS / "logging.json"
    path.write_text(json.dumps(config))
    return path


def servers_section(args: argparse.Namespace) -> dict[str, object]:
    server_cpus, load_cpus = split_cpus()
    cpus = len(server_cpus.split(",")) if server_cpus else os.cpu_count() or 1
    python = sys.executable
    # Worker recycling off (the command line overrides gunicorn.conf.py): at these rates a
    # single worker reaches max_requests every few seconds, and until its successor has booted
    # no worker serves (gunicorn.conf.py now turns recycling off for a single worker, and
    # workers take turns). One row measures the service as shipped, gunicorn.conf.py as is.
    gunicorn = [python, "-m", "gunicorn", "--config", "gunicorn.conf.py", "--max-requests", "0"]
    # On tmpfs where there is one, as gunicorn.conf.py puts it for the Gunicorn rows.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    metrics_dir = {"PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="bench-metrics-", dir=shm)}
    logs = str(log_config_file())
    factory = "my_service.main:create_app"
    naive_workers = 2 * cpus + 1
    servers = {
        "generated service": Server(gunicorn, workers=cpus),
        "generated service, LOG_LEVEL=warning (no access log)": Server(
            gunicorn, {"LOG_LEVEL": "warning"}, workers=cpus
        ),
        "generated service as shipped": Server(gunicorn[:-2], workers=cpus),
        f"naive setup: -w {naive_workers} uvicorn.workers": naive_setup(naive_workers),
        "uvicorn --workers": Server(
            [
                python,
                "-m",
                "uvicorn",
                "--factory",
                factory,
                "--workers",
                str(cpus),
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-config",
                logs,
            ],
            metrics_dir,
            workers=cpus,
        ),
        "gunicorn -k asgi": Server(gunicorn, {"WORKER_CLASS": "asgi"}, workers=cpus),
        "granian": granian_server(cpus, metrics_dir),
        "bare FastAPI (no middleware)": Server([*gunicorn, "bench.apps:bare"], workers=cpus),
        "bare ASGI app (ceiling)": Server([*gunicorn, "ceiling:app"], workers=cpus),
    }
    for workers in range(cpus + 1, 2 * cpus + 2):
        servers[f"generated service, {workers} workers"] = Server(
            gunicorn, {"WEB_CONCURRENCY": str(workers)}, workers=workers
        )
    print(f"servers: GET /health/live, server on CPU {server_cpus}, wrk on {load_cpus}")
    runs = rounds(servers, "/health/live", args, pinned(server_cpus), load_cpus, count=args.rounds)
    shutil.rmtree(metrics_dir["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    return {
        "cpus": cpus,
        "server_cpus": server_cpus,
        "load_cpus": load_cpus,
        "rows": [vars(row) for row in rows(servers, runs)],
    }


@dataclass
class TailRun:
    rate: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    errors: float
    worker_pss_mib: float
    probe: dict[str, object] | None  # what bench/probes.py saw inside the worker


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def tail_section(args: argparse.Namespace) -> dict[str, object]:
    """(h) The tail of the latency: p50, p99 and p99.9 next to granian serving the same app,
    and how long the worker's garbage collections paused it with and without freezing the
    heap once the worker has started (bench/probes.py times each one)."""
    server_cpus, load_cpus = split_cpus()
    python = sys.executable
    gunicorn = [python, "-m", "gunicorn", "--config", "gunicorn.conf.py"]
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    metrics_dir = {"PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="bench-metrics-", dir=shm)}
    # One worker: the server has one CPU. Recycling is then off as shipped.
    one = {"WEB_CONCURRENCY": "1"}
    servers = {
        "generated service": Server([*gunicorn, "probes:frozen()"], one),
        "generated service, heap not frozen": Server([*gunicorn, "probes:unfrozen()"], one),
        "granian": granian_server(1, metrics_dir),
        "bare FastAPI (no middleware)": Server([*gunicorn, "bench.apps:bare"], one),
    }
    script = RESULTS / "percentiles.lua"
    script.write_text(PERCENTILES_SCRIPT)
    runs: dict[str, list[TailRun]] = {name: [] for name in servers}
    names = list(servers)
    log = RESULTS / "logs" / "server.log"
    print(f"tail: GET /health/live, server on CPU {server_cpus}, wrk on {load_cpus}")
    for number in range(args.rounds):
        LOADS.append(os.getloadavg()[0])
        for name in names[number % len(names) :] + names[: number % len(names)]:
            with serving(servers[name], "/health/live", pinned(server_cpus), log) as (url, pid, _):
                probed = "probes:" in " ".join(servers[name].command)
                wrk(f"{url}/health/live", 1, args.connections, cpus=load_cpus)  # warm up
                if probed:
                    read_probe(url, reset=True)
                result = wrk(
                    f"{url}/health/live",
                    args.seconds,
                    args.connections,
                    "--script",
                    str(script),
                    cpus=load_cpus,
                )
                probe = read_probe(url) if probed else None
                workers = descendants(pid)
                run = TailRun(
                    result["rate"],
                    result["p50_ms"],
                    result["p99_ms"],
                    result["p999_ms"],
                    result["errors"],
                    pss_mib(workers) / max(1, len(workers)),
                    probe,
                )
            runs[name].append(run)
            print(
                f"  round {number + 1}/{args.rounds} {name:36} {run.rate:8.0f} req/s  p50 "
                f"{run.p50_ms:6.2f}  p99 {run.p99_ms:6.2f}  p99.9 {run.p999_ms:6.2f} ms  "
                f"worker PSS {run.worker_pss_mib:5.1f} MiB",
                flush=True,
            )
    shutil.rmtree(metrics_dir["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    rows_ = []
    for name, done in runs.items():
        row: dict[str, object] = {"name": name}
        for key in ("rate", "p50_ms", "p99_ms", "p999_ms", "worker_pss_mib"):
            row[key] = spread([getattr(run, key) for run in done])
        row["errors"] = sum(run.errors for run in done)
        if done[0].probe is not None:
            row["gc"] = gc_pauses([run.probe for run in done if run.probe])
        rows_.append(row)
    return {"server_cpus": server_cpus, "load_cpus": load_cpus, "rows": rows_}


RECYCLE_WINDOW = 30  # seconds measured in the recycling section
RECYCLE_LIFETIME = 8  # and the workers' lifetime there, plus up to 4 s of jitter


def recycling_section(args: argparse.Namespace) -> dict[str, object]:
    """(i) Recycling as shipped against none, two workers on the server's CPU, at the
    highest rate (GET /health/live), over a window in which every worker recycles."""
    server_cpus, load_cpus = split_cpus()
    python = sys.executable
    gunicorn = [python, "-m", "gunicorn", "--config", "gunicorn.conf.py"]
    # Logs written as they come (for both: the same cost), so the master's is read in time.
    two = {"WEB_CONCURRENCY": "2", "PYTHONUNBUFFERED": "1"}
    servers = {
        f"recycling as shipped, lifetime {RECYCLE_LIFETIME} s": Server(
            gunicorn,
            {
                **two,
                "GUNICORN_MAX_WORKER_LIFETIME": str(RECYCLE_LIFETIME),
                "GUNICORN_MAX_WORKER_LIFETIME_JITTER": "4",
            },
            workers=2,
        ),
        "recycling off": Server(
            [*gunicorn, "--max-requests", "0"],
            {**two, "GUNICORN_MAX_WORKER_LIFETIME": "0"},
            workers=2,
        ),
    }
    script = RESULTS / "percentiles.lua"
    script.write_text(PERCENTILES_SCRIPT)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    names = list(servers)
    print(f"recycling: GET /health/live, 2 workers on CPU {server_cpus}, wrk on {load_cpus}")
    for number in range(args.rounds):
        LOADS.append(os.getloadavg()[0])
        for name in names[number % len(names) :] + names[: number % len(names)]:
            log = RESULTS / "logs" / "recycling.log"
            log.unlink(missing_ok=True)
            with serving(servers[name], "/health/live", pinned(server_cpus), log) as (url, _, _):
                # Warmed up past the first recycle, after which the master holds the
                # libraries (it logs how many it imported): what a service that has run for
                # a while has.
                warm_up = RECYCLE_LIFETIME + 6
                wrk(f"{url}/health/live", warm_up, args.connections, cpus=load_cpus)
                for _ in range(30):
                    if "libraries for the workers to come" in log.read_text():
                        break
                    wrk(f"{url}/health/live", 2, args.connections, cpus=load_cpus)
                began = log.read_text().count("recycling after")
                result = wrk(
                    f"{url}/health/live",
                    RECYCLE_WINDOW,
                    args.connections,
                    "--script",
                    str(script),
                    cpus=load_cpus,
                )
                result["recycled"] = log.read_text().count("recycling after") - began
            runs[name].append(result)
            print(
                f"  round {number + 1}/{args.rounds} {name:36} {result['rate']:8.0f} req/s  "
                f"p99 {result['p99_ms']:6.2f} ms  recycled {result['recycled']:.0f}  "
                f"errors {result['errors']:.0f}",
                flush=True,
            )
    return {
        "server_cpus": server_cpus,
        "load_cpus": load_cpus,
        "window": RECYCLE_WINDOW,
        "rows": [
            {
                "name": name,
                **{key: spread([run[key] for run in done]) for key in ("rate", "p99_ms")},
                "recycled": [run["recycled"] for run in done],
                "errors": sum(run["errors"] for run in done),
            }
            for name, done in runs.items()
        ],
    }


@contextmanager
def items_table(rows: int = 1000) -> Iterator[dict[str, str]]:
    """A PostgreSQL of the benchmark's own (`own_postgres`), migrated, with `rows` items,
    until the block ends; yields the service's environment for it."""
    with own_postgres() as url:
        database = {"DATABASE_URL": url}
        subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=PROJECT,
            env={**ENV, **database},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        sql(
            url,
            "INSERT INTO items (name, description, price_cents, created_at, updated_at) "
            "SELECT 'item ' || n, 'a bench item', n, now(), now() "
            f"FROM generate_series(1, {rows}) AS n",
        )
        yield database


OVERLOAD_SECONDS = 10
NO_SHEDDING = {"MAX_REQUEST_WAIT": "0", "MAX_CONCURRENT_REQUESTS": "1000000"}
OVERLOADS = (0.25, 1, 2, 4)  # times the measured capacity; 0.25 is "unloaded"


def open_loop(url: str, rate: float, cpus: str | None) -> dict[str, Any]:
    output = subprocess.run(
        [
            *pinned(cpus),
            sys.executable,
            str(HERE / "open_loop.py"),
            url,
            "/items/{n}",
            str(rate),
            str(OVERLOAD_SECONDS),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(output)
    return result


def overload_section(args: argparse.Namespace) -> dict[str, object]:
    """(j) GET /items/{id} on PostgreSQL, one worker on one CPU, under an open-loop load
    (bench/open_loop.py) at multiples of its measured capacity, shedding off and on."""
    server_cpus, load_cpus = split_cpus()
    python = sys.executable
    # One worker, without recycling: the load is on the same worker throughout.
    gunicorn = [python, "-m", "gunicorn", "--config", "gunicorn.conf.py", "probes:frozen()"]
    one = {"WEB_CONCURRENCY": "1"}
    shipped_wait = subprocess.run(
        [python, "gunicorn.conf.py"], cwd=PROJECT, env=ENV, capture_output=True, check=True
    ).stdout
    max_wait = json.loads(shipped_wait)["settings"]["max_request_wait"]
    runs: list[dict[str, Any]] = []
    capacities = []
    log = RESULTS / "logs" / "overload.log"
    with items_table() as database:
        servers = {
            # No limit in flight and no wait limit: nothing is shed.
            "shedding off": Server(gunicorn, {**database, **one, **NO_SHEDDING}),
            f"shedding as shipped (max_request_wait {max_wait} s)": Server(
                gunicorn, {**database, **one}
            ),
        }
        script = RESULTS / "random_item.lua"
        script.write_text(
            "request = function()\n"
            '  return wrk.format(nil, "/items/" .. math.random(1, 1000))\n'
            "end\n"
        )
        print(f"overload: GET /items/<random 1..1000>, 1 worker on CPU {server_cpus}")
        for number in range(args.rounds):
            LOADS.append(os.getloadavg()[0])
            names = list(servers)
            for name in names[number % 2 :] + names[: number % 2]:
                # The capacity, measured again just before each configuration's loads: the
                # machine's speed drifts.
                capacity = items_capacity(
                    servers["shedding off"], script, args, (server_cpus, load_cpus), log
                )
                capacities.append(capacity)
                print(
                    f"  round {number + 1}/{args.rounds} capacity {capacity:,.0f} req/s",
                    flush=True,
                )
                with serving(servers[name], "/health/live", pinned(server_cpus), log) as (
                    url,
                    master,
                    _,
                ):
                    tree = [master, *descendants(master)]
                    for times in OVERLOADS:
                        read_probe(url, reset=True)
                        cpu_before = cpu_seconds(tree)
                        result = open_loop(url, times * capacity, load_cpus)
                        cpu = cpu_seconds(tree) - cpu_before
                        probe = read_probe(url)
                        served = sum(
                            count
                            for status, count in result["statuses"].items()
                            if status[0] == "2"
                        )
                        shed = result["statuses"].get("503", 0)
                        run = {
                            "name": name,
                            "times": times,
                            "round": number,
                            "capacity": capacity,
                            "sent": result["sent"],
                            "served": served,
                            "shed": shed,
                            "failed": result["failed"],
                            "goodput": served / result["serving_seconds"],
                            "p50_ms": result["latencies_ms"]["2xx"].get("p50", 0.0),
                            "p99_ms": result["latencies_ms"]["2xx"].get("p99", 0.0),
                            "shed_p99_ms": result["latencies_ms"]["503"].get("p99", 0.0),
                            "late_p99_ms": result["late_ms"].get("p99", 0.0),
                            # The worker's CPU over the run, shed requests' included.
                            "cpu_ms_per_served": cpu * 1000 / max(served, 1),
                            "statements": probe["statements"],
                        }
                        runs.append(run)
                        print(
                            f"    {name:44} {times:4}x {times * capacity:7,.0f}/s: served "
                            f"{served:6} p50 {run['p50_ms']:7.1f} p99 {run['p99_ms']:7.1f} ms, "
                            f"503 {shed:6}, failed {run['failed']:5}, SQL statements "
                            f"{run['statements']}, sent late by p99 {run['late_p99_ms']} ms",
                            flush=True,
                        )
                        time.sleep(2)  # what is still queued drains
    return {
        "server_cpus": server_cpus,
        "load_cpus": load_cpus,
        "window": OVERLOAD_SECONDS,
        "capacities": capacities,
        "names": list(servers),
        "runs": runs,
    }


def items_capacity(
    server: Server,
    script: Path,
    args: argparse.Namespace,
    cpus: tuple[str | None, str | None],
    log: Path,
) -> float:
    """GET /items/<random> per second, closed-loop (wrk, as many connections as the other
    sections), the server on the first CPUs and wrk on the second."""
    server_cpus, load_cpus = cpus
    with serving(server, "/health/live", pinned(server_cpus), log) as (url, _, _):
        wrk(f"{url}/items/1", 1, args.connections, "--script", str(script), cpus=load_cpus)
        found = wrk(
            f"{url}/items/1",
            args.seconds,
            args.connections,
            "--script",
            str(script),
            cpus=load_cpus,
        )
    return float(found["rate"])


def read_probe(url: str, reset: bool = False) -> dict[str, Any]:
    """What bench/probes.py saw in the worker. A worker that has just been loaded past
    capacity may shed the first try (503): that is what it is for."""
    for _ in range(50):
        try:
            with urllib.request.urlopen(f"{url}/bench/probe{'?reset=1' * reset}") as answer:
                found: dict[str, Any] = json.load(answer)
                return found
        except urllib.error.HTTPError as error:
            if error.code != 503:
                raise
            time.sleep(0.2)
    raise RuntimeError(f"{url}/bench/probe answered 503 fifty times")


def gc_pauses(probes: list[dict[str, object]]) -> dict[str, object]:
    """The rounds' collections summed: a histogram of pauses per generation, the longest."""
    bounds = probes[0]["bounds_ms"]
    counts = {
        generation: [
            sum(p["pauses"][generation][i] for p in probes) for i in range(len(bounds) + 1)
        ]  # type: ignore[index]
        for generation in ("0", "1", "2")
    }
    longest = [max(p["longest_ms"][g] for p in probes) for g in range(3)]  # type: ignore[index]
    return {
        "bounds_ms": bounds,
        "counts": counts,
        "longest_ms": longest,
        "frozen_objects": probes[0]["frozen_objects"],
        "thresholds": probes[0]["thresholds"],
    }


def granian_server(workers: int, env: dict[str, str]) -> Server:
    """granian serving the service's app factory, logging as the service does."""
    python = sys.executable
    return Server(
        [
            str(Path(python).parent / "granian"),
            "--interface",
            "asgi",
            "--factory",
            "--workers",
            str(workers),
            "--loop",
            "uvloop",
            "--host",
            "127.0.0.1",
            "--port",
            "{port}",
            "--log-config",
            str(log_config_file()),
            "my_service.main:create_app",
        ],
        env,
        workers=workers,
    )


@contextmanager
def cpu_quota_cgroup(cpus: float) -> Iterator[Path]:
    root = Path("/sys/fs/cgroup/cpu")
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    group = (root if root.exists() else v2.parent) / f"fastapi-prod-bench-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        if root.exists():
            (group / "cpu.cfs_period_us").write_text("100000")
            (group / "cpu.cfs_quota_us").write_text(str(int(cpus * 100000)))
        else:
            (group / "cpu.max").write_text(f"{int(cpus * 100000)} 100000")
        yield group
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:  # processes still leaving it
                time.sleep(0.1)


def cgroup_section(args: argparse.Namespace) -> dict[str, object]:
    python = sys.executable
    naive_workers = 2 * HOST_CPUS_PRETENDED + 1
    servers = {
        f"naive setup: -w {naive_workers} uvicorn.workers": naive_setup(naive_workers),
        f"generated app, WEB_CONCURRENCY={naive_workers}": Server(
            [python, "-m", "gunicorn", "--config", "gunicorn.conf.py"],
            # One database connection per worker at least, or the service refuses to start.
            {"WEB_CONCURRENCY": str(naive_workers), "DB_MAX_CONNECTIONS": str(naive_workers)},
            workers=naive_workers,
        ),
        "generated service (reads the quota)": Server(
            [python, "-m", "gunicorn", "--config", "gunicorn.conf.py", "--max-requests", "0"],
            workers=1,
        ),
        "generated service as shipped": Server(
            [python, "-m", "gunicorn", "--config", "gunicorn.conf.py"], workers=1
        ),
    }
    with cpu_quota_cgroup(1) as group:
        prefix = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(group)]
        config = subprocess.run(
            [*prefix, python, "gunicorn.conf.py"],
            cwd=PROJECT,
            env=ENV,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        print(f"cgroup: GET /health/live inside {group} (1 CPU); the generated config there:")
        resolved = json.loads(config)
        print(f"  workers {resolved['workers']} from {resolved['cpus_from']}")
        runs = rounds(servers, "/health/live", args, prefix, None, count=args.cgroup_rounds)
    return {
        "quota_cpus": 1,
        "pretended_cpus": HOST_CPUS_PRETENDED,
        "generated_workers": resolved["workers"],
        "cpus_from": resolved["cpus_from"],
        "rows": [vars(row) for row in rows(servers, runs)],
    }


def sql(url: str, query: str) -> object:
    """The first value `query` returns, on a connection of its own."""
    import asyncio

    import asyncpg

    async def fetch() -> object:
        connection = await asyncpg.connect(url.replace("+asyncpg", ""), timeout=10)
        try:
            return await connection.fetchval(query)
        finally:
            await connection.close()

    return asyncio.run(fetch())


@contextmanager
def own_postgres() -> Iterator[str]:
    """A PostgreSQL server of the section's own on a free port, with pg_stat_statements, so
    that nothing else runs statements in its `bench` database; yields that database's URL."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) or [
        Path(shutil.which("pg_ctl") or sys.exit("the database section needs pg_ctl and initdb"))
    ]
    binaries, data, port = found[-1].parent, Path(tempfile.mkdtemp(prefix="bench-pg-")), free_port()
    # PostgreSQL refuses to run as root; its own system user runs it then.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(data, "postgres")

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, stdout=subprocess.DEVNULL)

    pg_ctl = [str(binaries / "pg_ctl"), "--pgdata", str(data / "db")]
    run(str(binaries / "initdb"), "--pgdata", str(data / "db"), "--auth", "trust",
        "--username", "postgres", "--no-sync")  # fmt: skip
    options = (
        f"-p {port} -c listen_addresses=127.0.0.1 -k {data} -c max_connections=200 "
        "-c shared_preload_libraries=pg_stat_statements"
    )
    run(*pg_ctl, "start", "--wait", "--log", str(data / "log"), "-o", options)
    admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        sql(admin, "CREATE DATABASE bench")
        sql(admin, "CREATE EXTENSION pg_stat_statements")
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/bench"
    finally:
        run(*pg_ctl, "stop", "--wait", "--mode", "fast")
        shutil.rmtree(data)


# Statements (pg_stat_statements: BEGIN and ROLLBACK too) and transactions (pg_stat_database)
# in the bench database, and the reads of an item by id among those statements: one a request.
COUNTERS = (
    "SELECT json_build_array("
    "(SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE dbid = d.datid), "
    "(SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE dbid = d.datid "
    "AND query ~ 'FROM\\s+items\\s+WHERE\\s+(items\\.)?id = \\$1'), "
    "d.xact_commit + d.xact_rollback)::text FROM pg_stat_database d WHERE d.datname = 'bench'"
)


@dataclass
class Counted:
    statements: float = 0
    reads: float = 0
    transactions: float = 0


@contextmanager
def counting(url: str, into: Counted) -> Iterator[None]:
    """Adds to `into` what PostgreSQL counted while the block ran a server. A connection
    sends its transaction counts when it closes at the latest: they are read once every
    connection to the database has closed."""
    admin = url.replace("+asyncpg", "").removesuffix("/bench") + "/postgres"
    connected = "SELECT count(*) FROM pg_stat_activity WHERE datname = 'bench'"

    def counters() -> list[float]:
        deadline = time.monotonic() + 60
        while sql(admin, connected) and time.monotonic() < deadline:
            time.sleep(0.1)
        return json.loads(str(sql(admin, COUNTERS)))

    before = counters()
    yield
    after = counters()
    into.statements += after[0] - before[0]
    into.reads += after[1] - before[1]
    into.transactions += after[2] - before[2]


def database_section(args: argparse.Namespace) -> dict[str, object]:
    server_cpus, load_cpus = split_cpus()
    cpus = len(server_cpus.split(",")) if server_cpus else os.cpu_count() or 1
    with items_table() as database:
        url = database["DATABASE_URL"]
        # Shedding off: wrk's closed loop keeps every configuration at saturation, where the
        # shipped max_request_wait would answer some requests 503 (section (j) measures it).
        database = {**database, "MAX_REQUEST_WAIT": "0"}
        script = RESULTS / "random_item.lua"
        script.write_text(
            "request = function()\n"
            '  return wrk.format(nil, "/items/" .. math.random(1, 1000))\n'
            "end\n"
        )
        # Recycling off: a worker replaced mid-run would prepare its statements again.
        gunicorn = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"]
        gunicorn += ["--max-requests", "0"]
        servers: dict[str, Server] = {}
        for w in range(cpus, 2 * cpus + 2):
            workers = {**database, "WEB_CONCURRENCY": str(w)}
            servers[f"generated service, {w} worker{'s' * (w > 1)}"] = Server(
                gunicorn, workers, workers=w
            )
            if w in (cpus, 2 * cpus + 1):
                servers[f"same FastAPI service on raw asyncpg, {w} worker{'s' * (w > 1)}"] = Server(
                    [*gunicorn, "raw_items:fastapi_app"], workers, workers=w
                )
        servers["before: ORM session.get, pool_pre_ping, in a transaction"] = Server(
            [*gunicorn, "orm_items:app"], database, workers=cpus
        )
        servers["bare FastAPI (no middleware), SQLAlchemy"] = Server(
            [*gunicorn, "bench.apps:bare"], database, workers=cpus
        )
        servers["bare ASGI app on raw asyncpg"] = Server(
            [*gunicorn, "raw_items:asgi_app"], database, workers=cpus
        )
        counted = {name: Counted() for name in servers}
        print(f"database: GET /items/<random 1..1000> on PostgreSQL, server on CPU {server_cpus}")
        runs = rounds(
            servers,
            "/items/1",
            args,
            pinned(server_cpus),
            load_cpus,
            "--script",
            str(script),
            count=args.rounds,
            around=lambda name: counting(url, counted[name]),
        )
    return {
        "cpus": cpus,
        "rows": [vars(row) for row in rows(servers, runs)],
        "rates": {name: [run.rate for run in runs[name]] for name in servers},
        "p99s": {name: [run.p99_ms for run in runs[name]] for name in servers},
        "per_request": {
            name: {
                "statements": count.statements / count.reads,
                "transactions": count.transactions / count.reads,
            }
            for name, count in counted.items()
        },
    }


# --- report --------------------------------------------------------------------------


def versions() -> dict[str, str]:
    packages = [
        "fastapi",
        "starlette",
        "gunicorn",
        "uvicorn",
        "uvicorn-worker",
        "granian",
        "prometheus-fastapi-instrumentator",
        "sqlalchemy",
        "asyncpg",
    ]
    found = {name: metadata.version(name) for name in packages}
    wrk_version = subprocess.run([wrk_path(), "-v"], capture_output=True, text=True).stdout
    found["wrk"] = wrk_version.split()[1] if wrk_version else "?"
    found["python"] = platform.python_version()
    return found


def instructions_section(args: argparse.Namespace) -> dict[str, object]:
    """Instructions per request: a run of `many` requests minus a run of `few`, so that
    start-up and import cost cancel out."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        sys.exit("the instructions section needs valgrind (apt-get install valgrind)")
    few, many = 100, 600
    rows = []
    for name, variant in (
        ("generated service, full stack", "full"),
        ("generated service without its access log", "full-without-access-log"),
        ("bare FastAPI (the service without its middleware)", "bare"),
    ):
        counts = []
        for requests in (few, many):
            LOADS.append(os.getloadavg()[0])
            run = subprocess.run(
                [
                    valgrind,
                    "--tool=callgrind",
                    "--callgrind-out-file=/dev/null",
                    sys.executable,
                    str(HERE / "in_process.py"),
                    variant,
                    str(requests),
                ],
                cwd=PROJECT,
                env=ENV,
                capture_output=True,
                text=True,
                check=True,
            )
            collected = re.search(r"Collected : (\d+)", run.stderr)
            if collected is None:
                raise RuntimeError(f"callgrind printed no count:\n{run.stderr}")
            counts.append(int(collected[1]))
        per_request = (counts[1] - counts[0]) / (many - few)
        rows.append({"name": name, "instructions": per_request})
        print(f"{name}: {per_request:,.0f} instructions a request", flush=True)
    return {"rows": rows, "requests": [few, many]}


def table(rows_: list[dict[str, float]], base: str, extra: tuple[str, ...] = ()) -> str:
    reference = next(row for row in rows_ if row["name"] == base)
    head = "| configuration | workers | req/s | vs generated | p99 ms | PSS MiB |"
    rule = "|---|---:|---:|---:|---:|---:|"
    if "ready_s" in extra:
        head += " ready after s |"
        rule += "---:|"
    lines = [head, rule]
    for row in rows_:
        name = f"**{row['name']}**" if row["name"] == base else row["name"]
        ratio = row["rate"] / reference["rate"]
        line = (
            f"| {name} | {row['workers']} | {row['rate']:,.0f} | {ratio:.2f} | "
            f"{row['p99_ms']:.1f} | {row['pss_mib']:.0f} |"
        )
        if "ready_s" in extra:
            line += f" {row['ready_s']:.1f} |"
        if row["errors"]:
            line += f" ({row['errors']:.0f} socket errors)"
        lines.append(line)
    return "\n".join(lines)


def row_of(section: dict[str, object], prefix: str) -> dict[str, float]:
    return next(r for r in section["rows"] if r["name"].startswith(prefix))  # type: ignore[attr-defined]


def block(
    heading: str, section: dict[str, object], body: str, points: list[str], image: str
) -> list[str]:
    return [
        f"### {heading}",
        "",
        f"Measured {section['when']}.",
        "",
        body,
        "",
        *(f"- {line}" for line in points),
        "",
        image,
        "",
    ]


def database_block(database: dict[str, Any]) -> list[str]:
    """Section (f): the table, what PostgreSQL counted per request, and the ratios of each
    round (all configurations ran in every round, so a round's ratio shares its noise)."""
    rates, p99s = database["rates"], database["p99s"]
    names = [row["name"] for row in database["rows"]]
    generated = [n for n in names if n.startswith("generated service, ")]
    one, many = generated[0], generated[-1]
    raw_one, raw_many = [n for n in names if n.startswith("same FastAPI")]
    before = next(n for n in names if n.startswith("before:"))
    bare = next(n for n in names if n.startswith("bare FastAPI"))
    asgi = next(n for n in names if n.startswith("bare ASGI"))

    def per_round(a: str, b: str, of: dict[str, list[float]] = rates) -> str:
        ratios = [x / y for x, y in zip(of[a], of[b], strict=True)]
        return (
            f"**{statistics.median(ratios):.2f}** (rounds {min(ratios):.2f} to {max(ratios):.2f})"
        )

    counts = [
        "| configuration | statements | transactions | req/s, rounds' range | p99 ms, range |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {name} | {database['per_request'][name]['statements']:.2f} | "
            f"{database['per_request'][name]['transactions']:.2f} | "
            f"{min(rates[name]):,.0f} to {max(rates[name]):,.0f} | "
            f"{min(p99s[name]):.1f} to {max(p99s[name]):.1f} |"
            for name in names
        ),
    ]
    return block(
        f"(f) GET /items/<random id of 1,000> on PostgreSQL, server pinned to one CPU, "
        f"{database['connections']} connections, median of {database['rounds']} rounds of "
        f"{database['seconds']} s",
        database,
        table(database["rows"], one)
        + "\n\nPer request, as PostgreSQL counted them (pg_stat_statements, BEGIN and "
        "ROLLBACK included; pg_stat_database), over every request of every round:\n\n"
        + "\n".join(counts),
        [
            f"generated / the same FastAPI service on raw asyncpg, 1 worker: "
            f"{per_round(one, raw_one)} (target ≥ 0.5); {many.split(', ')[1]}: "
            f"{per_round(many, raw_many)}",
            f"p99, generated / raw asyncpg, 1 worker: {per_round(one, raw_one, p99s)} "
            f"(target ≤ 1.5)",
            f"full stack / bare FastAPI on this endpoint: {per_round(one, bare)} (target ≥ 0.85)",
            f"after / before (the ORM's session.get with pool_pre_ping): {per_round(one, before)}",
            f"generated / bare ASGI on raw asyncpg: {per_round(one, asgi)}",
        ],
        "![GET /items/{id}](performance/database.png)",
    )


def report(results: dict[str, object]) -> dict[str, str]:
    """The results as Markdown, one block for the run (machine, load, versions) and one per
    section measured: what `results.md` holds, and what `--docs` writes between the
    `<!-- results NAME: begin -->` and `<!-- results NAME: end -->` markers of
    docs/performance.md."""
    out: dict[str, list[str]] = {
        "run": [
            f"Run {results['date']}, {results['machine']}; load average (1, 5, 15 min) "
            f"{results['load_before']} before, {results['load_after']} after. Versions: "
            + ", ".join(f"{k} {v}" for k, v in results["versions"].items())  # type: ignore[attr-defined]
            + ".",
        ]
    }
    if servers := results.get("servers"):
        generated = row_of(servers, "generated service")
        quiet = row_of(servers, "generated service, LOG_LEVEL")
        recycling = row_of(servers, "generated service as shipped")
        bare = row_of(servers, "bare FastAPI")
        ceiling = row_of(servers, "bare ASGI")
        naive = row_of(servers, "naive setup")
        alternatives = [row_of(servers, n) for n in ("uvicorn", "gunicorn -k asgi", "granian")]
        best = max(alternatives, key=lambda row: row["rate"])
        out["servers"] = block(
            f"(a) to (d) GET /health/live, server pinned to CPU {servers['server_cpus']}, "
            f"wrk on CPU {servers['load_cpus']}, {servers['connections']} connections, "
            f"median of {servers['rounds']} rounds of {servers['seconds']} s",
            servers,
            table(servers["rows"], generated["name"]),
            [
                f"full stack / bare FastAPI: **{generated['rate'] / bare['rate']:.2f}** "
                f"(target ≥ 0.85); without the access log (LOG_LEVEL=warning): "
                f"**{quiet['rate'] / bare['rate']:.2f}**",
                f"generated / naive setup: **{generated['rate'] / naive['rate']:.2f}** "
                f"in throughput; p99 {generated['p99_ms']:.1f} ms against {naive['p99_ms']:.1f} ms",
                f"generated / best alternative server ({best['name']}): "
                f"**{generated['rate'] / best['rate']:.2f}**",
                f"as shipped / with `--max-requests 0`: "
                f"{recycling['rate'] / generated['rate']:.2f} in throughput; p99 "
                f"{recycling['p99_ms']:.0f} ms against {generated['p99_ms']:.1f} ms",
                f"bare ASGI app / bare FastAPI: {ceiling['rate'] / bare['rate']:.2f} "
                f"(what the framework itself costs)",
            ],
            "![GET /health/live](performance/servers.png)",
        )
    if cgroup := results.get("cgroup"):
        naive = row_of(cgroup, "naive setup")
        generated = row_of(cgroup, "generated service (reads")
        recycling = row_of(cgroup, "generated service as shipped")
        out["cgroup"] = block(
            f"(e) inside a 1-CPU cgroup quota, host taken to have {cgroup['pretended_cpus']} "
            f"CPUs; GET /health/live, {cgroup['connections']} connections, wrk outside the "
            f"cgroup, median of {cgroup['rounds']} rounds of {cgroup['seconds']} s",
            cgroup,
            f"The generated configuration resolved {cgroup['generated_workers']} worker(s) from "
            f"`{cgroup['cpus_from']}`.\n\n"
            + table(cgroup["rows"], generated["name"], ("ready_s",)),
            [
                f"memory, naive formula / generated: "
                f"**{naive['pss_mib'] / generated['pss_mib']:.1f}x** (target ≥ 2x)",
                f"p99, naive formula / generated: **{naive['p99_ms'] / generated['p99_ms']:.1f}x** "
                f"(target > 1)",
                f"throughput, generated / naive formula: {generated['rate'] / naive['rate']:.2f}",
                f"as shipped: p99 {recycling['p99_ms']:.0f} ms against "
                f"the naive formula's {naive['p99_ms']:.0f} ms",
            ],
            "![1-CPU cgroup](performance/cgroup.png)",
        )
    if database := results.get("database"):
        out["database"] = database_block(database)
    if instructions := results.get("instructions"):
        full, quiet, bare = (row["instructions"] for row in instructions["rows"])
        few, many = instructions["requests"]
        out["instructions"] = [
            "### (g) CPU instructions per GET /health/live, in-process, counted by callgrind",
            "",
            f"Measured {instructions['when']}; each figure is (run of {many:,} requests - run "
            f"of {few:,}) / {many - few:,}, so imports and start-up cancel out. No server: "
            "the app is called with ASGI messages directly, one request a turn of the event "
            "loop, so each request pays in full for what the stack writes once a turn (the "
            "access lines, the answer counts); under load a turn finishes "
            "dozens of requests, which share those writes.",
            "",
            "| configuration | instructions a request | vs bare FastAPI |",
            "|---|---:|---:|",
            *(
                f"| {row['name']} | {row['instructions']:,.0f} | {row['instructions'] / bare:.2f} |"
                for row in instructions["rows"]
            ),
            "",
            f"- bare FastAPI / full stack, in-process: **{bare / full:.2f}** (the servers' own "
            "work, the same for both, is not in these counts, so over a real server the ratio "
            "is higher)",
            f"- the access log line: {full - quiet:,.0f} instructions, "
            f"{(full - quiet) / (full - bare):.0%} of what the stack adds",
            "",
        ]
    if tail := results.get("tail"):
        out["tail"] = tail_report(tail)
    if recycling := results.get("recycling"):
        out["recycling"] = recycling_report(recycling)
    if overload := results.get("overload"):
        out["overload"] = overload_report(overload)
    return {name: "\n".join(lines).strip() for name, lines in out.items()}


def tail_report(tail: dict[str, object]) -> list[str]:
    rows_ = {row["name"]: row for row in tail["rows"]}  # type: ignore[attr-defined]
    frozen, unfrozen = rows_["generated service"], rows_["generated service, heap not frozen"]
    granian, bare = rows_["granian"], rows_["bare FastAPI (no middleware)"]

    def cell(row: dict[str, Any], key: str, digits: int = 1) -> str:
        value = row[key]
        return (
            f"{value['median']:,.{digits}f} ({value['min']:,.{digits}f}-{value['max']:,.{digits}f})"
        )

    lines = [
        f"### (h) The tail: GET /health/live, one worker on CPU {tail['server_cpus']}, wrk on "
        f"CPU {tail['load_cpus']}, {tail['connections']} connections, median (min-max) of "
        f"{tail['rounds']} interleaved rounds of {tail['seconds']} s",
        "",
        f"Measured {tail['when']}.",
        "",
        "| configuration | req/s | p50 ms | p99 ms | p99.9 ms | PSS per worker MiB |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {row['name']} | {cell(row, 'rate', 0)} | {cell(row, 'p50_ms', 2)} | "
            f"{cell(row, 'p99_ms')} | {cell(row, 'p999_ms')} | {cell(row, 'worker_pss_mib')} |"
            + (f" ({row['errors']:.0f} socket errors)" if row["errors"] else "")
            for row in rows_.values()
        ),
        "",
        f"- p99, generated / granian: "
        f"**{frozen['p99_ms']['median'] / granian['p99_ms']['median']:.2f}** "
        f"(target ≤ 2); without freezing the heap: "
        f"{unfrozen['p99_ms']['median'] / granian['p99_ms']['median']:.2f}",
        f"- throughput, generated / granian: "
        f"**{frozen['rate']['median'] / granian['rate']['median']:.2f}** (target ≥ 0.95)",
        f"- throughput, generated / bare FastAPI: "
        f"**{frozen['rate']['median'] / bare['rate']['median']:.2f}** (target ≥ 0.85)",
        f"- PSS per worker, frozen / not frozen: "
        f"**{frozen['worker_pss_mib']['median'] / unfrozen['worker_pss_mib']['median']:.2f}** "
        f"(target ≤ 1.10)",
        "",
        "Garbage collections during the measured seconds of all rounds, by how long each "
        "paused the worker (timed by `gc.callbacks`, bench/probes.py):",
        "",
    ]
    bounds = frozen["gc"]["bounds_ms"]
    labels = [f"≤ {b:g}" for b in bounds] + [f"> {bounds[-1]:g}"]
    lines += [
        "| heap | generation | "
        + " | ".join(f"{label} ms" for label in labels)
        + " | longest ms |",
        "|---|---:|" + "---:|" * (len(labels) + 1),
    ]
    for label, row in (("frozen at startup", frozen), ("not frozen", unfrozen)):
        gc_ = row["gc"]
        for generation in ("0", "1", "2"):
            counts = " | ".join(f"{count:,}" for count in gc_["counts"][generation])
            lines.append(
                f"| {label} | {generation} | {counts} | {gc_['longest_ms'][int(generation)]:.1f} |"
            )
    lines += [
        "",
        f"Frozen objects in the worker: {frozen['gc']['frozen_objects']:,}; collection "
        f"thresholds {tuple(frozen['gc']['thresholds'])}.",
        "",
    ]
    return lines


def recycling_report(section: dict[str, object]) -> list[str]:
    shipped, off = section["rows"]  # type: ignore[misc]
    return [
        f"### (i) Recycling: GET /health/live, 2 workers on CPU {section['server_cpus']}, "
        f"wrk on CPU {section['load_cpus']}, {section['connections']} connections, median "
        f"(min-max) of {section['rounds']} interleaved rounds of {section['window']} s",
        "",
        f"Measured {section['when']}. The lifetime is lowered to {RECYCLE_LIFETIME} s (plus up "
        f"to 4 s of jitter) so that every worker recycles within each window; the profiles ship "
        f"an hour.",
        "",
        "| configuration | req/s | p99 ms | workers recycled in each window |",
        "|---|---:|---:|---|",
        *(
            f"| {row['name']} | {row['rate']['median']:,.0f} ({row['rate']['min']:,.0f}-"
            f"{row['rate']['max']:,.0f}) | {row['p99_ms']['median']:.1f} "
            f"({row['p99_ms']['min']:.1f}-{row['p99_ms']['max']:.1f}) | "
            f"{', '.join(f'{n:.0f}' for n in row['recycled'])} |"
            + (f" ({row['errors']:.0f} socket errors)" if row["errors"] else "")
            for row in (shipped, off)
        ),
        "",
        f"- throughput, recycling / off: "
        f"**{shipped['rate']['median'] / off['rate']['median']:.2f}** "
        f"(target ≥ 0.95); p99 {shipped['p99_ms']['median']:.1f} ms against "
        f"{off['p99_ms']['median']:.1f} ms",
        "",
    ]


def overload_report(section: dict[str, Any]) -> list[str]:
    capacity = statistics.median(section["capacities"])
    runs = section["runs"]

    def median(name: str, times: float, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["name"] == name and r["times"] == times)

    lines = [
        f"### (j) Overload: GET /items/<random id of 1,000> on PostgreSQL, one worker on CPU "
        f"{section['server_cpus']}, open-loop load (bench/open_loop.py) on CPU "
        f"{section['load_cpus']}, median of {section['rounds']} rounds of {section['window']} s",
        "",
        f"Measured {section['when']}. Capacity, closed-loop with wrk and "
        f"{section['connections']} connections, shedding off: {capacity:,.0f} req/s (each: "
        + ", ".join(f"{c:,.0f}" for c in section["capacities"])
        + "). It is measured again just before each configuration's loads, which are "
        "multiples of that figure. Latencies count from when each request was due, not when "
        "it could be sent; goodput is the 2xx answers over the time from the first request "
        "due to the last 2xx answer.",
        "",
        "| shedding | load | served p50 ms | served p99 ms | goodput / capacity | 503 share "
        "| 503 p99 ms "
        "| failed (no answer in 10 s) | SQL statements not for a served request "
        "| worker CPU ms per served request | load generator late, p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in section["names"]:
        for times in OVERLOADS:
            chosen = [r for r in runs if r["name"] == name and r["times"] == times]
            sent = sum(r["sent"] for r in chosen)
            shed = sum(r["shed"] for r in chosen)
            unserved = sum(r["statements"] - r["served"] for r in chosen)
            goodput = statistics.median(r["goodput"] / r["capacity"] for r in chosen)
            lines.append(
                f"| {name} | {times:g}x | {median(name, times, 'p50_ms'):,.1f} | "
                f"{median(name, times, 'p99_ms'):,.1f} | {goodput:.2f} | {shed / sent:.0%} | "
                f"{median(name, times, 'shed_p99_ms'):,.1f} | "
                f"{sum(r['failed'] for r in chosen):,} | {unserved:,} | "
                f"{median(name, times, 'cpu_ms_per_served'):.2f} | "
                f"{median(name, times, 'late_p99_ms'):,.1f} |"
            )
    on = section["names"][1]
    unloaded = median(on, OVERLOADS[0], "p99_ms")
    at_two = median(on, 2, "p99_ms")
    clean = [r for r in runs if r["shed"] and not r["failed"]]
    goodput_at_two = statistics.median(
        r["goodput"] / r["capacity"] for r in runs if r["name"] == on and r["times"] == 2
    )
    lines += [
        "",
        f"- at 2x, shedding on: served p99 {at_two:,.1f} ms = **{at_two / unloaded:.1f}x** the "
        f"unloaded p99 ({unloaded:.1f} ms at {OVERLOADS[0]:g}x; target ≤ 3x); goodput "
        f"**{goodput_at_two:.2f}** "
        "of capacity (target ≥ 0.90)",
        "- Each served request runs one SQL statement (bench/probes.py counts every statement "
        "the worker's engine runs). In the "
        f"{len(clean)} runs where requests were shed and no client gave up, "
        f"{sum(r['shed'] for r in clean):,} requests shed in all, the statements beyond one "
        f"per served request came to {sum(r['statements'] - r['served'] for r in clean):,}: "
        "a shed request does no work. Where clients gave up (failed), the worker still ran "
        "most of their statements, after they had left: the work shedding saves.",
        "",
    ]
    return lines


def plot(results: dict[str, object], into: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for key, title in (
        ("servers", "GET /health/live, server on 1 CPU"),
        ("cgroup", "1-CPU cgroup quota, host taken to have 16 CPUs"),
        ("database", "GET /items/{id} on PostgreSQL, server on 1 CPU"),
    ):
        section = results.get(key)
        if not section:
            continue
        data = section["rows"]  # type: ignore[index]
        names = [row["name"] for row in data]
        panels = [("req/s (median)", "rate"), ("p99 latency, ms (median)", "p99_ms")]
        if key == "cgroup":
            panels.append(("PSS of master + workers, MiB", "pss_mib"))
        figure, axes = plt.subplots(
            1, len(panels), figsize=(5.2 * len(panels), 0.55 * len(names) + 2.2), sharey=True
        )
        for axis, (label, field_) in zip(axes, panels, strict=True):
            values = [row[field_] for row in data]
            colours = ["#2b6cb0" if name.startswith("generated") else "#a0aec0" for name in names]
            bars = axis.barh(range(len(names)), values, color=colours)
            axis.bar_label(
                bars,
                labels=[f"{v:,.0f}" if v >= 10 else f"{v:.1f}" for v in values],
                padding=3,
                fontsize=8,
            )
            axis.set_xlabel(label)
            axis.set_xlim(0, max(values) * 1.25)
        axes[0].invert_yaxis()  # shared by every panel: the first configuration on top
        axes[0].set_yticks(range(len(names)), names, fontsize=8)
        figure.suptitle(title, fontsize=10)
        figure.tight_layout()
        path = into / f"{key}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def write_docs(parts: dict[str, str], pngs: list[Path]) -> None:
    """Each block between its markers in docs/performance.md; the page's other text, and the
    blocks of sections not in these results, stay as they are."""
    target = DOCS / "performance"
    target.mkdir(exist_ok=True)
    for png in pngs:
        shutil.copy(png, target / png.name)
    page = DOCS / "performance.md"
    text = page.read_text()
    for name, markdown in parts.items():
        begin, end = f"<!-- results {name}: begin -->", f"<!-- results {name}: end -->"
        before, found, rest = text.partition(begin)
        if not found:
            continue
        _, _, after = rest.partition(end)
        text = f"{before}{begin}\n{markdown}\n{end}{after}"
    page.write_text(text)


def main() -> None:
    # Stopped by a signal, still stop the servers and remove the cgroup (the finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=SECTIONS, action="append")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cgroup-rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--docs", action="store_true", help="write tables and plots into docs/")
    parser.add_argument("--report-only", action="store_true", help="report the last results.json")
    args = parser.parse_args()
    if args.report_only:
        results = json.loads((RESULTS / "results.json").read_text())
        report_and_plot(results, args.docs)
        return
    wrk_path()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "logs").mkdir(exist_ok=True)
    earlier = RESULTS / "results.json"
    # A run of some sections keeps the others' last results, each dated in its table.
    kept = json.loads(earlier.read_text()) if args.only and earlier.exists() else {}
    results: dict[str, object] = {
        **{name: kept[name] for name in SECTIONS if name in kept},
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})",
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "versions": versions(),
    }
    for name in args.only or SECTIONS:
        LOADS.clear()
        started = datetime.datetime.now(datetime.UTC).strftime("%H:%M")
        results[name] = globals()[f"{name}_section"](args)
        finished = datetime.datetime.now(datetime.UTC).strftime("%H:%M")
        results[name] |= {  # type: ignore[operator]
            "when": f"{results['date'][:10]}, {started} to {finished} UTC, load average "  # type: ignore[index]
            f"{min(LOADS):.2f} to {max(LOADS):.2f} at the start of its rounds",
            "rounds": args.cgroup_rounds if name == "cgroup" else args.rounds,
            "seconds": args.seconds,
            "connections": args.connections,
        }
    results["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    (RESULTS / "results.json").write_text(json.dumps(results, indent=2))
    report_and_plot(results, args.docs)


def report_and_plot(results: dict[str, object], docs: bool) -> None:
    parts = report(results)
    markdown = "\n\n".join(parts.values()) + "\n"
    (RESULTS / "results.md").write_text(markdown)
    pngs = plot(results, RESULTS)
    print("\n" + markdown)
    print(f"written: {RESULTS / 'results.md'}, " + ", ".join(map(str, pngs)))
    if docs:
        write_docs(parts, pngs)
        print(f"and into {DOCS / 'performance.md'}")


if Path(sys.prefix).resolve() != VENV.resolve():
    prepare()
sys.path[:0] = [str(HERE), str(PROJECT / "src"), str(PROJECT)]
from bench.harness import (  # noqa: E402
    PERCENTILES_SCRIPT,
    free_port,
    pinned,
    split_cpus,
    wrk,
    wrk_path,
)

# The template's bench apps (naive_app, ceiling, raw_items), then the project and its apps.
ENV = {**os.environ, "PYTHONPATH": ":".join(sys.path[:3]), "LOG_LEVEL": "info"}

if __name__ == "__main__":
    main()
