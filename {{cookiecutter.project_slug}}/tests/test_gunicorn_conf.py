"""`python gunicorn.conf.py` shows what Gunicorn will do, and honours the usual overrides."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from {{ cookiecutter.project_slug }}.settings import Settings

PROJECT_ROOT = Path(__file__).parent.parent
PRODUCTION = {
    "ENVIRONMENT": "production",
    "SECRET_KEY": "a-real-secret-from-the-vault-of-32-characters-or-more",
    "ALLOWED_HOSTS": "api.example.com",
}


def clean_env(**env: str) -> dict[str, str]:
    """The caller's environment without any of the service's settings, plus `env`."""
    ours = {name.upper() for name in Settings.model_fields}
    inherited = {k: v for k, v in os.environ.items() if k not in ours}
    return {**inherited, "PYTHONPATH": str(PROJECT_ROOT / "src"), **env}


def run_config(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "gunicorn.conf.py"],
        cwd=PROJECT_ROOT,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        check=False,
    )


def resolved_config(**env: str) -> dict[str, object]:
    result = run_config(**env)
    assert result.returncode == 0, result.stderr
    config: dict[str, object] = json.loads(result.stdout)
    return config


def test_config_serves_the_app_with_uvicorn_workers() -> None:
    config = resolved_config()

    assert config["worker_class"] == "{{ cookiecutter.project_slug }}.serving.gunicorn_worker.Worker"
    assert config["wsgi_app"] == "{{ cookiecutter.project_slug }}.main:create_app()"
    for key in ("workers", "bind", "timeout", "graceful_timeout", "keepalive", "max_requests"):
        assert key in config
    assert config["control_socket"] is None


def test_a_single_worker_is_never_recycled() -> None:
    """A recycle would leave nothing serving while the new worker starts."""
    config = resolved_config(WEB_CONCURRENCY="1")

    assert config["max_requests"] == 0
    assert config["max_requests_jitter"] == 0


def test_web_concurrency_sets_the_worker_count() -> None:
    config = resolved_config(WEB_CONCURRENCY="3"{% if cookiecutter.scenario == "websocket" %}, REDIS_URL="redis://127.0.0.1:6379/0"{% endif %})

    assert config["workers"] == 3
    assert config["workers_from"] == "WEB_CONCURRENCY"
{%- if cookiecutter.scenario == "websocket" %}


def test_without_redis_one_worker_serves_every_room_and_says_why() -> None:
    config = resolved_config(WEB_CONCURRENCY="3")

    assert config["workers"] == 1
    assert config["workers_from"] == (
        "1, not 3 (WEB_CONCURRENCY): without REDIS_URL rooms are per worker"
    )
{%- endif %}


@pytest.mark.parametrize(
    ("env", "bind"),
    [
        ({"PORT": "9123"}, ["127.0.0.1:9123", "127.0.0.1:9464"]),
        ({"BIND": "unix:/run/app.sock"}, ["unix:/run/app.sock", "127.0.0.1:9464"]),
        ({"PORT": "9123", "METRICS_PORT": "9124", **PRODUCTION}, ["0.0.0.0:9123", "0.0.0.0:9124"]),
    ],
)
def test_bind_follows_port_and_bind(env: dict[str, str], bind: list[str]) -> None:
    assert resolved_config(**env)["bind"] == bind


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"ENVIRONMENT": "production"},
            "invalid configuration: SECRET_KEY must be set to a secret of your own in "
            "production, at least 32 characters",
        ),
        (
            {"WEB_CONCURRENCY": "lots"},
            "invalid configuration: WEB_CONCURRENCY: Input should be a valid integer, "
            "unable to parse string as an integer",
        ),
        (
            {"LOG_LEVEL": "verbose"},
            "invalid configuration: LOG_LEVEL: Input should be 'debug', 'info', 'warning', "
            "'error' or 'critical'",
        ),
{%- if cookiecutter.database != "none" %}
        (
            {"WEB_CONCURRENCY": "4", "DB_MAX_CONNECTIONS": "3"},
            "invalid configuration: DB_MAX_CONNECTIONS (3) is below the number of workers (4): "
            "each worker needs at least one connection",
        ),
{%- endif %}
{%- if cookiecutter.scenario == "websocket" %}
        (
            {"REDIS_URL": "localhost:6379"},
            "invalid configuration: REDIS_URL: must start with one of redis://, rediss://, unix://",
        ),
        (
            {"WS_HEARTBEAT_INTERVAL": "30", "WS_IDLE_TIMEOUT": "20"},
            "invalid configuration: WS_IDLE_TIMEOUT must exceed WS_HEARTBEAT_INTERVAL, or a "
            "client would be dropped before it was even asked for a pong",
        ),
{%- endif %}
{%- if cookiecutter.scenario == "ml_inference" %}
        (
            {"MODEL_PATH": "nowhere/model.joblib"},
            "invalid model: nowhere/model.json (the model's metadata) does not exist: "
            "run `make model` to build it",
        ),
{%- endif %}
        (
            {"PORT": "0"},
            "invalid configuration: PORT: Input should be greater than or equal to 1",
        ),
    ],
)
def test_bad_configuration_exits_with_one_readable_line(env: dict[str, str], message: str) -> None:
    result = run_config(**env)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [message]
