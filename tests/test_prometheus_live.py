"""A real Prometheus (Debian's server binary, scraping every second on loopback) reads each
scenario's baked service under Gunicorn with two workers, and a real Celery worker beside
the batch one: every dashboard panel and every alert expression evaluates and returns data
on the healthy service, and increase() over the traffic's window counts exactly the answers
the clients received (first requests of each series included, a worker SIGKILLed between
two halves of the traffic); for batch, the tasks the worker ran, the jobs' outcomes, and
the queue length of jobs waiting with no worker up."""

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from . import services
from .baked import Project, Server, free_port
from .conftest import require_tool
from .tcp_proxy import TcpProxy
from .waiting import wait_for, wait_until

THRESHOLD = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.]+\s*$")
SERVICE = "my-service"  # the job name the baked alerts expect
# Grafana's $__rate_interval for a 1 s scrape interval: four scrapes.
RATE_INTERVAL = "4s"


@dataclass
class Prometheus:
    url: str
    targets: Path  # a folder of file_sd files, one per job: Prometheus reads them as they change

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr} | ({"time": f"{at:.3f}"} if at is not None else {})
        answer = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=30).json()
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, expr: str, at: float | None = None) -> float | None:
        result = self.query(expr, at)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def scrape(self, job: str, *metrics_urls: str) -> None:
        targets = [urlsplit(url).netloc for url in metrics_urls]
        (self.targets / f"{job}.json").write_text(
            json.dumps([{"targets": targets, "labels": {"job": job}}])
        )

    def last_scrape(self, instance: str) -> float | None:
        return self.value(f'timestamp(up{{instance="{instance}"}})')

    def scraped(self, instance: str) -> float:
        """Waits for a successful scrape of the instance that starts from now on; its time
        (every sample of that scrape has it)."""
        now = time.time()

        def scraped_since() -> float | None:
            last = self.last_scrape(instance)
            up = self.value(f'up{{instance="{instance}"}}')
            return last if last is not None and last > now and up == 1 else None

        return wait_for(scraped_since, bool, f"Prometheus to scrape {instance}", every=0.2) or 0.0


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = require_tool("prometheus")
    folder = tmp_path_factory.mktemp("prometheus")
    (folder / "targets").mkdir()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "baked",  # each target file names its own job
                "file_sd_configs": [{"files": [str(folder / "targets" / "*.json")]}],
            }
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (folder / "prometheus.log").open("w") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, (folder / "prometheus.log").read_text()
        try:
            return httpx.get(f"{url}/-/ready", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, "Prometheus to be ready", every=0.1)
        yield Prometheus(url, folder / "targets")
    finally:
        process.terminate()
        process.wait(timeout=30)


@dataclass
class Clients:
    """Every answer a client of the test received, by handler, method and status class."""

    url: str
    received: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def send(self, method: str, path: str, handler: str = "", **kwargs: Any) -> httpx.Response:
        """`handler`: the route template, if not the path itself."""
        # A connection of its own per request: a killed worker's pooled one would be reset.
        answer = httpx.request(method, f"{self.url}{path}", timeout=30, **kwargs)
        self.received[handler or path, method, f"{answer.status_code // 100}xx"] += 1
        return answer


def common_traffic(clients: Clients) -> None:
    for _ in range(3):
        assert clients.send("GET", "/health/live").status_code == 200
    # Whatever it answers (a dependency slow to answer on a busy machine is a 503): counted.
    clients.send("GET", "/health/ready")
    assert clients.send("GET", "/no/such/path", "none").status_code == 404


def answered_and_timed(server: Server) -> tuple[float, float]:
    """The answers the service counted and the durations it wrote, /metrics's own aside."""
    metrics = httpx.get(server.metrics_url, timeout=30).text
    totals = []
    for metric in ("http_requests_total", "http_request_duration_seconds_count"):
        found = re.findall(rf"^{metric}\{{([^}}]*)\}} (\S+)$", metrics, re.MULTILINE)
        totals.append(sum(float(n) for labels, n in found if 'handler="/metrics"' not in labels))
    return totals[0], totals[1]


def flushed(server: Server) -> bool:
    """Whether every answer and its duration are in the metrics. A worker counts an answer
    as the turn that sent it ends, and writes its duration up to WRITE_EVERY (0.1 s) later: a
    client can hold an answer neither counts yet, and equal totals can be equally behind. So
    the totals must also stay the same over twice that interval."""
    first = answered_and_timed(server)
    time.sleep(0.2)
    return first[0] == first[1] and answered_and_timed(server) == first


def kill_a_worker(server: Server) -> None:
    wait_until(lambda: flushed(server), "every answer and its duration counted")
    victim = min(server.workers())
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: (
            len(server.workers()) == 2
            and victim not in server.workers()
            and server.workers() <= server.started_workers()
        ),
        "the killed worker's replacement to serve",
    )


def proxied(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    return parts._replace(netloc=f"{credentials}@127.0.0.1:{proxy.port}".removeprefix("@")).geturl()


@contextmanager
def proxy_to(url: str) -> Iterator[TcpProxy]:
    parts = urlsplit(url)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 0))
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.cut()


def outage(clients: Clients, proxy: TcpProxy, *failing: tuple[str, str, dict[str, Any]]) -> None:
    """Cut the dependency behind `proxy`: each of `failing` answers 503; then restore it."""
    proxy.cut()
    for method, path, kwargs in failing:
        answer = clients.send(method, path, **kwargs)
        assert answer.status_code == 503, answer.text
    proxy.start()
    wait_for(
        lambda: clients.send("GET", "/health/ready").status_code,
        lambda status: status == 200,
        "readiness to recover",
    )


ITEM = "/items/{item_id}"
ROOM = "/rooms/{room}/messages"
JOB = "/jobs/{job_id}"


def items_traffic(clients: Clients) -> None:
    created = clients.send(
        "POST", "/items", json={"name": f"n{uuid.uuid4().hex}", "price_cents": 1}
    )
    assert created.status_code == 201, created.text
    assert clients.send("GET", f"/items/{created.json()['id']}", ITEM).status_code == 200
    assert clients.send("POST", "/items", json={"name": ""}).status_code == 422
    assert clients.send("GET", "/items/999999999", ITEM).status_code == 404
    assert clients.send("GET", "/items").status_code == 200


def inference_traffic(clients: Clients) -> None:
    model = clients.send("GET", "/model").json()
    instance = [0.5] * model["n_features"]
    assert clients.send("POST", "/predict", json={"instances": [instance]}).status_code == 200
    assert clients.send("POST", "/predict", json={"instances": [[1.0]]}).status_code == 422


def rooms_traffic(clients: Clients) -> None:
    for body, status in (({"text": "hi"}, 202), ({}, 422)):
        answer = clients.send("POST", "/rooms/lobby/messages", ROOM, json=body)
        assert answer.status_code == status, answer.text


def span(window: tuple[float, float]) -> str:
    """The window as a PromQL range, to the millisecond Prometheus stamps samples with."""
    start, end = window
    return f"{round(end * 1000) - round(start * 1000)}ms"


def counted(
    prometheus: Prometheus, metric: str, labels: str, by: str, window: tuple[float, float]
) -> dict[tuple[str, ...], float]:
    """increase() of `metric` over exactly the window's two scrapes: the range starts on the
    first and is evaluated at the second, so Prometheus extrapolates nothing."""
    result = prometheus.query(
        f"sum by ({by}) (increase({metric}{{{labels}}}[{span(window)}]))", at=window[1]
    )
    keys = [key.strip() for key in by.split(",")]
    return {
        tuple(series["metric"].get(key, "") for key in keys): float(series["value"][1])
        for series in result
    }


def nonzero(counts: dict[tuple[str, ...], float]) -> dict[tuple[str, ...], float]:
    return {key: value for key, value in counts.items() if value}


def check_answers_counted(
    prometheus: Prometheus, instance: str, clients: Clients, window: tuple[float, float]
) -> None:
    labels = f'instance="{instance}", handler!="/metrics"'  # the scrapes count themselves
    answers = counted(prometheus, "http_requests_total", labels, "handler, method, status", window)
    timed = counted(
        prometheus, "http_request_duration_seconds_count", labels, "handler, method", window
    )
    per_handler: Counter[tuple[str, str]] = Counter()
    for (handler, method, _), n in clients.received.items():
        per_handler[handler, method] += n

    resets = prometheus.value(
        f"sum(resets(http_requests_total{{{labels}}}[{span(window)}]))", at=window[1]
    )

    # Every series existed at 0 before the window: the first answers are counted too.
    assert resets == 0  # the killed worker's counts stayed in
    assert all(value == int(value) for value in answers.values()), answers
    assert nonzero(answers) == dict(clients.received)
    assert nonzero(timed) == dict(per_handler)


def check_dashboard_and_alerts(prometheus: Prometheus, project: Project, job: str) -> None:
    dashboard = json.loads((project.path / "deploy/grafana/dashboard.json").read_text())
    panels = {
        f"{panel['title']} [{target['refId']}]": target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    }
    alerts = yaml.safe_load((project.path / "deploy/prometheus/alerts.yml").read_text())
    # An alert's expression ends in its threshold: what precedes it is what it watches.
    signals = {
        rule["alert"]: THRESHOLD.sub("", rule["expr"])
        for group in alerts["groups"]
        for rule in group["rules"]
    }
    queries = {
        **{
            name: expr.replace("$job", job).replace("$__rate_interval", RATE_INTERVAL)
            for name, expr in panels.items()
        },
        **{
            alert: expr.replace(f'job="{SERVICE}"', f'job="{job}"')
            for alert, expr in signals.items()
        },
    }
    for group in alerts["groups"]:
        for rule in group["rules"]:
            prometheus.query(rule["expr"].replace(f'job="{SERVICE}"', f'job="{job}"'))

    empty = [name for name, expr in queries.items() if not prometheus.query(expr)]

    assert [expr for expr in queries.values() if "$" in expr] == []
    assert empty == []


def jobs_traffic(clients: Clients, project: Project) -> list[str]:
    """Jobs that succeed, one whose rows are bad (accepted, then failed by the worker) and
    one that is refused at once; the ids of the accepted ones."""
    good = (project.path / "examples" / "orders.csv").read_bytes()
    accepted = []
    for upload, status in ((good, 202), (good, 202), (BAD_ROWS, 202), (b"", 422)):
        answer = clients.send("POST", "/jobs", files={"file": ("x.csv", upload)})
        assert answer.status_code == status, answer.text
        if status == 202:
            accepted.append(answer.json()["id"])
    return accepted


BAD_ROWS = b"group,value\na,not-a-number\n"
FINISHED = ("succeeded", "failed")


def finished(clients: Clients, jobs: list[str]) -> dict[str, str]:
    def statuses() -> dict[str, str]:
        return {job: clients.send("GET", f"/jobs/{job}", JOB).json()["status"] for job in jobs}

    return wait_for(statuses, lambda now: set(now.values()) <= set(FINISHED), "the jobs to finish")


def instance(metrics_url: str) -> str:
    return urlsplit(metrics_url).netloc


def test_prometheus_reads_every_panel_and_alert_and_counts_every_answer(
    project: Project, prometheus: Prometheus, request: pytest.FixtureRequest
) -> None:
    job, features = project.scenario, project.features
    prefix = f"{services.redis_prefix()}prometheus-{job}:"
    env: dict[str, str] = {"REDIS_KEY_PREFIX": prefix}
    with ExitStack() as stack:
        # The dependency a 5xx is provoked with: cut behind a proxy, then restored.
        proxy = None
        if "items" in features:
            postgres_url = request.getfixturevalue("postgres_url")
            proxy = stack.enter_context(proxy_to(postgres_url))
            env |= project.database(postgres_url)
            env["DATABASE_URL"] = proxied(env["DATABASE_URL"], proxy)
        if "jobs" in features:
            redis_url = request.getfixturevalue("redis_url")
            proxy = stack.enter_context(proxy_to(redis_url))
            env |= project.database(None)
            worker_env = {**env, "CELERY_BROKER_URL": redis_url, "CELERY_CONCURRENCY": "2"}
            env["CELERY_BROKER_URL"] = proxied(redis_url, proxy)
        if "rooms" in features:
            env["REDIS_URL"] = request.getfixturevalue("redis_url")
        stack.callback(services.Redis().delete_under, prefix)
        server = stack.enter_context(project.serve(workers=2, **env))
        metrics_urls = [server.metrics_url]
        if "jobs" in features:
            worker_port = free_port()
            worker = stack.enter_context(
                project.celery_worker(**worker_env, CELERY_METRICS_PORT=str(worker_port))
            )
            metrics_urls.append(f"http://127.0.0.1:{worker_port}/metrics")
        prometheus.scrape(job, *metrics_urls)
        stack.callback((prometheus.targets / f"{job}.json").unlink)
        api, *workers = (instance(url) for url in metrics_urls)
        start = {target: prometheus.scraped(target) for target in (api, *workers)}

        clients = Clients(server.url)
        accepted: list[str] = []
        for half in range(2):
            common_traffic(clients)
            if "items" in features:
                items_traffic(clients)
            if "inference" in features:
                inference_traffic(clients)
            if "rooms" in features:
                rooms_traffic(clients)
            if "jobs" in features:
                accepted += jobs_traffic(clients, project)
            if half == 0:
                kill_a_worker(server)
        if "items" in features and proxy is not None:
            outage(
                clients,
                proxy,
                ("GET", "/health/ready", {}),
                ("POST", "/items", {"json": {"name": "x", "price_cents": 1}}),
            )
        if "jobs" in features and proxy is not None:
            outage(
                clients,
                proxy,
                ("GET", "/health/ready", {}),
                ("POST", "/jobs", {"files": {"file": ("x.csv", BAD_ROWS)}}),
            )
            outcomes = Counter(finished(clients, accepted).values())
            assert clients.send("GET", f"/jobs/{uuid.uuid4()}", JOB).status_code == 404
        wait_until(lambda: flushed(server), "every answer and its duration counted")
        if workers:
            # A job's task is counted after its outcome is stored; its runtime last of all.
            runtimes = f'sum(celery_task_runtime_count{{instance="{workers[0]}"}})'
            wait_until(lambda: prometheus.value(runtimes) == len(accepted), "every task counted")
        end = {target: prometheus.scraped(target) for target in (api, *workers)}

        check_answers_counted(prometheus, api, clients, (start[api], end[api]))
        if "jobs" in features:
            (celery,) = workers
            window = (start[celery], end[celery])
            tasks = {("jobs.aggregate_csv",): float(len(accepted))}
            on_worker = f'instance="{celery}"'
            for event in ("received", "started", "succeeded"):
                assert (
                    counted(prometheus, f"celery_task_{event}_total", on_worker, "name", window)
                    == tasks
                ), event
            for event in ("failed", "retried", "rejected"):
                assert (
                    nonzero(
                        counted(prometheus, f"celery_task_{event}_total", on_worker, "name", window)
                    )
                    == {}
                ), event
            assert (
                counted(prometheus, "celery_task_runtime_count", on_worker, "name", window) == tasks
            )
            assert nonzero(
                counted(prometheus, "jobs_finished_total", on_worker, "status", window)
            ) == {(status,): float(n) for status, n in outcomes.items()}
            sent = counted(
                prometheus,
                "celery_task_sent_total",
                f'instance="{api}"',
                "name",
                (start[api], end[api]),
            )
            assert sent == tasks
            assert prometheus.value(f'sum(celery_worker_up{{job="{job}"}})') == 1
        for target in (api, *workers):  # rate() over RATE_INTERVAL needs two recent samples
            prometheus.scraped(target)
            prometheus.scraped(target)
        check_dashboard_and_alerts(prometheus, project, job)

        if "jobs" in features:
            # With no worker up, the jobs submitted wait: the backlog Prometheus reads is theirs.
            worker.kill()
            wait_until(
                lambda: prometheus.value(f'up{{instance="{celery}"}}') == 0,
                "the worker to be seen down",
                every=0.2,
            )
            for _ in range(3):
                assert (
                    clients.send("POST", "/jobs", files={"file": ("x.csv", BAD_ROWS)}).status_code
                    == 202
                )
            backlog = f'max(celery_queue_length{{job="{job}", queue_name="heavy"}})'
            wait_for(
                lambda: prometheus.value(backlog),
                lambda waiting: waiting == 3,
                "the backlog of 3 jobs",
                every=0.2,
            )
            assert prometheus.value(f'(sum(celery_worker_up{{job="{job}"}}) or vector(0))') == 0
