"""Each baked project serves under Gunicorn with real workers, on embedded defaults and on
PostgreSQL, and its readiness follows the database."""

import time
from collections import defaultdict
from urllib.parse import urlsplit

import httpx
import pytest

from .baked import Project, Server
from .conftest import SCENARIOS_WITH_DATABASE
from .tcp_proxy import TcpProxy
from .waiting import wait_for, wait_until

on_a_database = pytest.mark.parametrize("project", SCENARIOS_WITH_DATABASE, indirect=True)


def pids_per_path(server: Server) -> dict[str, set[int]]:
    """Which worker processes answered each path with a success, from the access log."""
    answered: dict[str, set[int]] = defaultdict(set)
    for entry in server.log_entries("access"):
        if 200 <= entry["status"] < 300:
            answered[entry["path"]].add(entry["pid"])
    return answered


def until_every_worker_answered(server: Server, paths: list[str], workers: int) -> None:
    """New connections, a few at a time, until each path was served by every worker."""

    def every_worker_answered() -> bool:
        for path in paths:
            with httpx.Client(base_url=server.url) as client:
                assert client.get(path).status_code == 200
        answered = pids_per_path(server)
        return all(len(answered[path]) >= workers for path in paths)

    wait_until(every_worker_answered, f"{workers} workers to answer each of {paths}", every=0.01)


def create_item(project: Project, server: Server) -> str:
    created = httpx.post(f"{server.url}/items", json={"name": "first", "price_cents": 1})
    assert created.status_code == 201, created.text
    return "/items"


def submit_job(project: Project, server: Server) -> str:
    sample = (project.path / "examples" / "orders.csv").read_bytes()
    submitted = httpx.post(f"{server.url}/jobs", files={"file": ("orders.csv", sample)})
    assert submitted.status_code == 202, submitted.text
    return urlsplit(submitted.json()["status_url"]).path


# Per feature that stores something: create one of its resources over HTTP; the path that
# reads it back.
CREATE_RESOURCE = {"items": create_item, "jobs": submit_job}


@on_a_database
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_workers_both_serve_ready_and_the_scenario_resource(
    project: Project, database: str, request: pytest.FixtureRequest
) -> None:
    postgres_url = request.getfixturevalue("postgres_url") if database == "postgresql" else None
    settings = project.database(postgres_url)

    with project.serve(workers=2, **settings) as server:
        (create,) = (CREATE_RESOURCE[f] for f in project.features if f in CREATE_RESOURCE)
        resource = create(project, server)
        until_every_worker_answered(server, ["/health/ready", resource], workers=2)
        answered = pids_per_path(server)

    assert len(answered["/health/ready"]) == 2, server.log()
    assert len(answered[resource]) == 2, server.log()


@on_a_database
def test_readiness_fails_fast_naming_the_database_and_recovers(
    project: Project, postgres_url: str
) -> None:
    database = urlsplit(postgres_url)
    proxy = TcpProxy((database.hostname or "127.0.0.1", database.port or 5432))
    proxy.start()
    settings = project.database(postgres_url)
    credentials = database.netloc.rpartition("@")[0]
    settings["DATABASE_URL"] = database._replace(
        netloc=f"{credentials}@127.0.0.1:{proxy.port}".removeprefix("@")
    ).geturl()

    with (
        project.serve(workers=2, **settings) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        before = client.get("/health/ready")
        proxy.cut()
        started = time.monotonic()
        during = client.get("/health/ready")
        waited = time.monotonic() - started
        live = client.get("/health/live")
        proxy.start()
        after = wait_for(
            lambda: client.get("/health/ready"),
            lambda answer: answer.status_code == 200,
            "readiness to recover with the database back",
        )

    assert before.status_code == 200
    assert during.status_code == 503
    assert list(during.json()["failed"]) == ["database"]
    # Readiness gives up on a dependency after READINESS_TIMEOUT (1 s); hanging would mean
    # waiting for the driver's connect timeout (60 s). 10 s tells them apart on a busy machine.
    assert waited < 10, f"readiness took {waited:.1f} s with the database gone"
    assert live.status_code == 200
    assert after.status_code == 200


SECRET = "a-real-secret-from-the-vault-of-32-characters-or-more"


@pytest.mark.parametrize(
    ("env", "refusal"),
    [
        ({}, "SECRET_KEY must be set to a secret of your own in production, at least 32"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY must be set to a secret of your own in production"),
        ({"SECRET_KEY": SECRET}, "ALLOWED_HOSTS must name the host names this service answers to"),
    ],
    ids=["no-secret", "short-secret", "any-host"],
)
def test_production_refuses_a_weak_secret_and_any_host_under_gunicorn(
    project: Project, env: dict[str, str], refusal: str
) -> None:
    result = project.run(
        "gunicorn", "--config", "gunicorn.conf.py", ENVIRONMENT="production", **env
    )

    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(f"invalid configuration: {refusal}")


@pytest.mark.parametrize("project", ["public_api"], indirect=True)
def test_production_builds_no_url_from_a_host_it_does_not_serve(project: Project) -> None:
    production = {"ENVIRONMENT": "production", "SECRET_KEY": SECRET, "ALLOWED_HOSTS": "127.0.0.1"}
    with project.serve(workers=1, **production, **project.database(None)) as server:
        evil = {"host": "evil.example"}
        redirect = httpx.get(f"{server.url}/items/", headers=evil)
        health_redirect = httpx.get(f"{server.url}/health/live/", headers=evil)
        probe = httpx.get(f"{server.url}/health/live", headers=evil)
        own = httpx.get(f"{server.url}/items/")

    assert (redirect.status_code, health_redirect.status_code) == (400, 400)
    assert "evil.example" not in redirect.text + health_redirect.text
    assert probe.status_code == 200, "probes address a pod by its IP"
    assert own.status_code == 307
    assert own.headers["location"] == f"{server.url}/items"


@pytest.mark.parametrize("project", ["public_api"], indirect=True)
def test_answers_do_not_name_the_server(project: Project) -> None:
    with project.serve(workers=1, **project.database(None)) as server:
        answers = [httpx.get(f"{server.url}{path}") for path in ("/health/live", "/no/such/path")]

    assert [answer.status_code for answer in answers] == [200, 404]
    assert [answer.headers.get("server") for answer in answers] == [None, None]


@pytest.mark.parametrize("project", ["public_api"], indirect=True)
def test_metrics_are_served_on_their_own_port_only_whatever_the_host(project: Project) -> None:
    production = {
        "ENVIRONMENT": "production",
        "SECRET_KEY": SECRET,
        "ALLOWED_HOSTS": "api.example.com",
        "DOCS_ENABLED": "true",
    }
    with project.serve(workers=1, **production, **project.database(None)) as server:
        served = {"host": "api.example.com"}
        on_the_service_port = httpx.get(f"{server.url}/metrics", headers=served)
        # Prometheus addresses an instance by its IP, not by a name in ALLOWED_HOSTS.
        on_their_own = httpx.get(server.metrics_url)
        schema = httpx.get(f"{server.url}/openapi.json", headers=served).json()

    assert on_the_service_port.status_code == 404
    assert on_their_own.status_code == 200
    assert "http_requests_total" in on_their_own.text
    assert "/metrics" not in schema["paths"]
