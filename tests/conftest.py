"""Fixtures for the template's tests: bakes, shared virtual environments, real services.

Baked projects install into virtual environments shared per Python version and kind of
bake (.cache/baked-venv-<version>[-<kind>]), so a bake costs seconds, not a fresh install. With
REQUIRE_SERVICES=1 (CI) a real service or tool that cannot be reached fails the tests that
need it instead of skipping them. The run keeps to its own database, Redis prefixes and
RabbitMQ vhosts on the shared servers (tests/services.py) and removes them when it ends.
"""

import functools
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from . import services
from .baked import TEMPLATE, Project, features_of, find_interpreter, venv_for

# The scenarios, as cookiecutter.json offers them. Every other answer is left to its
# default, which follows the scenario there (database, use_celery).
SCENARIOS = tuple(json.loads((TEMPLATE / "cookiecutter.json").read_text())["scenario"])
# Bakes that, together, depend on every package any supported bake depends on.
EVERY_DEPENDENCY = (
    {"scenario": "public_api", "use_celery": "yes", "kubernetes": "no"},
    {"scenario": "ml_inference", "kubernetes": "no"},
    {"scenario": "websocket", "kubernetes": "no"},
)
PYTHON_VERSIONS = ("3.11", "3.12", "3.13")
# Lines the run prints at its end: figures a reader of CI's log wants to see.
SUMMARY: list[str] = []


def answers_for(scenario: str) -> dict[str, str]:
    return {"scenario": scenario, "kubernetes": "no"}


SCENARIOS_WITH_DATABASE = tuple(s for s in SCENARIOS if "database" in features_of(answers_for(s)))


def supported_combinations() -> list[dict[str, str]]:
    """Every combination of answers the template supports so far.

    kubernetes=yes rides on the newest Python's bake: the manifests do not depend on the
    Python version, so every scenario is baked with and without them at no extra bake.
    """
    return [
        {
            **answers_for(scenario),
            "python_version": version,
            "kubernetes": "yes" if version == PYTHON_VERSIONS[-1] else "no",
        }
        for scenario in SCENARIOS
        for version in PYTHON_VERSIONS
    ] + [{**EVERY_DEPENDENCY[0], "python_version": "3.11"}]


def bake_path(cookies: object, answers: dict[str, str]) -> Path:
    """Where pytest-cookies baked these answers; the bake must succeed."""
    result = cookies.bake(template=str(TEMPLATE), extra_context=answers)  # type: ignore[attr-defined]
    assert result.exit_code == 0, result.exception
    return Path(result.project_path)


def require_python(version: str) -> str:
    """An interpreter of this Python version; like require(), a failure in CI if missing."""
    found = find_interpreter(version)
    require_that(found is not None, f"no Python {version} here (pyenv, uv python find)")
    assert found is not None
    return found


def leads_the_run(config: pytest.Config) -> bool:
    """The pytest process that leads the run: the only one, or xdist's controller."""
    return not hasattr(config, "workerinput")


def deployment_combinations() -> list[dict[str, str]]:
    """One supported combination per scenario, kubernetes and use_celery answer: the
    deployment artifacts do not change with the Python version beyond its number."""
    chosen: dict[tuple[str, ...], dict[str, str]] = {}
    for answers in supported_combinations():
        key = (answers["scenario"], answers["kubernetes"], answers.get("use_celery", ""))
        chosen.setdefault(key, answers)
    return list(chosen.values())


def pytest_configure(config: pytest.Config) -> None:
    if not leads_the_run(config):
        services.RUN_PID = config.workerinput["run_pid"]  # type: ignore[attr-defined]
        return
    for service in services.ALL:
        with suppress(Exception):  # unreachable: the fixtures that need it say so
            # What killed runs left, this run's pid's included (a killed run had it before).
            if swept := service.sweep() + service.sweep(run_pid=services.RUN_PID):
                SUMMARY.append(f"removed what killed runs left: {', '.join(swept)}")
    with suppress(Exception):  # postgres_url says why, if it must
        services.Postgres().create()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: object) -> None:
    """Each xdist worker names what it creates after the run's leader."""
    node.workerinput["run_pid"] = services.RUN_PID  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    """The run removes its database, Redis keys and vhosts, whatever became of its tests."""
    if leads_the_run(config):
        for service in services.ALL:
            with suppress(Exception):
                service.sweep(run_pid=services.RUN_PID)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":  # each of a test's reports carries all its properties
        SUMMARY.extend(str(line) for name, line in report.user_properties if name == "summary")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in SUMMARY:
        terminalreporter.write_line(line)


@pytest.fixture
def summary(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Adds a line to what the run prints at its end (from any xdist worker)."""
    return lambda line: request.node.user_properties.append(("summary", line))


def require_that(condition: bool, message: str) -> None:
    """Skip the test when a service, tool or interpreter it needs is missing; in CI
    (REQUIRE_SERVICES=1), fail it."""
    if not condition:
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)


def require(service: str, host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as error:
        require_that(False, f"{service} at {host}:{port} is unreachable: {error}")


def require_tool(name: str) -> str:
    """The path of a command-line tool; like require(), a failure in CI when it is missing."""
    path = shutil.which(name)
    require_that(
        path is not None, f"{name} is not installed (python3 dev.py test installs it where it can)"
    )
    assert path is not None
    return path


def require_url(service: str, url: str) -> None:
    parts = urlsplit(url)
    require(service, parts.hostname or "127.0.0.1", parts.port or 0)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The run's own database (made when the run starts, dropped when it ends)."""
    require_url("PostgreSQL", services.POSTGRES_URL)
    name = services.run_name()
    require_that(
        name in services.Postgres().databases(),
        f"the run's database {name} could not be created on {services.POSTGRES_URL} "
        "(may its user create databases?)",
    )
    return services.Postgres().url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The shared Redis; services baked here use it under this worker's key prefix
    (REDIS_KEY_PREFIX, see Project.env), whose keys go when the worker is done."""
    require_url("Redis", services.REDIS_URL)
    yield services.REDIS_URL
    services.Redis().delete_under(services.redis_prefix())


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """A vhost of this worker's own on the shared RabbitMQ, deleted when it is done."""
    require_url("RabbitMQ", services.AMQP_URL)
    broker = services.RabbitMQ()
    vhost = services.run_name(services.worker_name())
    try:
        broker.create(vhost)
    except (RuntimeError, subprocess.SubprocessError) as error:
        require_that(False, f"no RabbitMQ vhost for the tests: {error}")
    yield broker.vhost_url(vhost)
    broker.delete(vhost)


@pytest.fixture(scope="session")
def baked_venv() -> Path:
    """The environment most bakes share, on the oldest Python offered."""
    return venv_for(require_python(PYTHON_VERSIONS[0]))


@pytest.fixture(scope="session")
def installed_venv(cookies_session: object, baked_venv: Path) -> Path:
    """The shared environment, with every generated service's dependencies installed."""
    for answers in EVERY_DEPENDENCY:
        path = bake_path(cookies_session, answers)
        Project(path, answers, baked_venv).make("install")
    return baked_venv


@pytest.fixture(scope="session")
def bake(cookies_session: object, baked_venv: Path) -> Callable[[dict[str, str]], Project]:
    """Bakes each combination of answers at most once per xdist worker, for the tests that
    only read the bake (rendering, linters, deployment checks)."""
    bakes: dict[tuple[tuple[str, str], ...], Project] = {}

    def bake_once(answers: dict[str, str]) -> Project:
        key = tuple(sorted(answers.items()))
        if key not in bakes:
            path = bake_path(cookies_session, answers)
            bakes[key] = Project(path, answers, baked_venv)
        return bakes[key]

    return bake_once


@pytest.fixture(scope="session")
def scenario_bakes(cookies_session: object) -> Callable[[str], Project]:
    """Bakes each scenario at most once per xdist worker, whatever order its tests come in.

    `make install` installs exactly what the bake's uv.lock names, and the locks of bakes
    with jobs pin a package the others lock newer (kombu[redis] pins packaging): served
    bakes with jobs and without get an environment each, or every install would swap that
    package under the tests running meanwhile. (The linters' environment, baked_venv, holds
    every dependency and runs nothing.)"""
    python = require_python(PYTHON_VERSIONS[0])

    @functools.cache
    def bake_scenario(scenario: str) -> Project:
        answers = answers_for(scenario)
        kind = "served-jobs" if "jobs" in features_of(answers) else "served"
        path = bake_path(cookies_session, answers)
        baked = Project(path, answers, venv_for(python, kind))
        baked.make("install")
        if "inference" in baked.features:
            baked.make("model")
        return baked

    return bake_scenario


@pytest.fixture(scope="module", params=SCENARIOS)
def project(request: pytest.FixtureRequest, scenario_bakes: Callable[[str], Project]) -> Project:
    """A project baked with the scenario's defaults and installed with its own `make install`
    (and, for ml_inference, its model built with `make model`)."""
    return scenario_bakes(request.param)
