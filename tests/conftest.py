"""Fixtures for the template's tests: bakes, one shared virtual environment, real services.

Every baked project installs into one virtual environment (.cache/baked-venv), so a bake
costs seconds, not a fresh install. With REQUIRE_SERVICES=1 (CI) a real service that
cannot be reached fails the tests that need it instead of skipping them.
"""

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from .baked import BAKED_VENV, TEMPLATE, Project

# use_celery is left to its default, which follows the scenario (yes for batch).
DEFAULTS = {"database": "postgresql", "kubernetes": "no"}
SCENARIOS = ("public_api", "microservice", "ml_inference", "websocket", "batch")
# Answers a scenario needs that differ from DEFAULTS.
SCENARIO_ANSWERS = {"ml_inference": {"database": "none"}, "websocket": {"database": "none"}}
# Bakes that, together, depend on every package any supported bake depends on.
EVERY_DEPENDENCY = (
    {**DEFAULTS, "scenario": "public_api", "use_celery": "yes"},
    {**DEFAULTS, **SCENARIO_ANSWERS["ml_inference"], "scenario": "ml_inference"},
    {**DEFAULTS, **SCENARIO_ANSWERS["websocket"], "scenario": "websocket"},
)
PYTHON_VERSIONS = ("3.11", "3.12", "3.13")
# Lines the run prints at its end: figures a reader of CI's log wants to see.
SUMMARY: list[str] = []
POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def answers_for(scenario: str) -> dict[str, str]:
    return {**DEFAULTS, "scenario": scenario, **SCENARIO_ANSWERS.get(scenario, {})}


SCENARIOS_WITH_DATABASE = tuple(s for s in SCENARIOS if answers_for(s)["database"] != "none")


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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in SUMMARY:
        terminalreporter.write_line(line)


def require(service: str, host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as error:
        message = f"{service} at {host}:{port} is unreachable: {error}"
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)


def require_tool(name: str) -> str:
    """The path of a command-line tool; like require(), a failure in CI when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (python3 dev.py test installs it where it can)"
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def postgres_url() -> str:
    require("PostgreSQL", "127.0.0.1", 5432)
    return POSTGRES_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    require("Redis", "127.0.0.1", 6379)
    return "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    require("RabbitMQ", "127.0.0.1", 5672)
    return "amqp://guest:guest@127.0.0.1:5672//"


@pytest.fixture(scope="session")
def baked_venv() -> Path:
    if not (BAKED_VENV / "bin" / "python").exists():
        subprocess.run(["uv", "venv", "--quiet", "--python", "3.11", str(BAKED_VENV)], check=True)
    return BAKED_VENV


@pytest.fixture(scope="session")
def installed_venv(cookies_session: object, baked_venv: Path) -> Path:
    """The shared environment, with every generated service's dependencies installed."""
    for answers in EVERY_DEPENDENCY:
        result = cookies_session.bake(template=str(TEMPLATE), extra_context=answers)  # type: ignore[attr-defined]
        assert result.exit_code == 0, result.exception
        Project(Path(result.project_path), answers["scenario"], baked_venv).make("install")
    return baked_venv


@pytest.fixture(scope="session", params=SCENARIOS)
def project(request: pytest.FixtureRequest, cookies_session: object, baked_venv: Path) -> Project:
    """A project baked with the scenario's defaults and installed with its own `make install`
    (and, for ml_inference, its model built with `make model`)."""
    result = cookies_session.bake(  # type: ignore[attr-defined]
        template=str(TEMPLATE), extra_context=answers_for(request.param)
    )
    assert result.exit_code == 0, result.exception
    baked = Project(Path(result.project_path), scenario=request.param, venv=baked_venv)
    baked.make("install")
    if request.param == "ml_inference":
        baked.make("model")
    return baked
