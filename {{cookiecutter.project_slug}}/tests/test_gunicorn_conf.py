"""`python gunicorn.conf.py` shows what Gunicorn will do, and honours the usual overrides."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from {{ cookiecutter.project_slug }}.service_settings import PROFILE_FILES, env_name, setting_paths
from {{ cookiecutter.project_slug }}.settings import Settings

PROJECT_ROOT = Path(__file__).parent.parent
PROFILES = tuple(f"profile {path.name}" for path in PROFILE_FILES)
PRODUCTION = {
    "ENVIRONMENT": "production",
    "SECRET_KEY": "a-real-secret-from-the-vault-of-32-characters-or-more",
    "ALLOWED_HOSTS": "api.example.com",
}


def clean_env(**env: str) -> dict[str, str]:
    """The caller's environment without any of the service's settings, plus `env`."""
    ours = {env_name(path) for path in setting_paths(Settings)} | {
        name.upper() for name in Settings.model_fields
    }
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


def origins(config: dict[str, object]) -> dict[str, str]:
    """Where each setting's value came from, as `python gunicorn.conf.py` says."""
    settings_from = config["settings_from"]
    assert isinstance(settings_from, dict)
    return settings_from


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
    assert config["max_worker_lifetime"] == 0


def test_web_concurrency_sets_the_worker_count() -> None:
    config = resolved_config(WEB_CONCURRENCY="1")

    assert config["workers"] == 1
    assert config["workers_from"] == "WEB_CONCURRENCY"
    assert origins(config)["web_concurrency"] == "env WEB_CONCURRENCY"


def test_the_profiles_set_gunicorn_and_say_so() -> None:
    config = resolved_config()
    settings = config["settings"]

    assert isinstance(settings, dict)
    for key in ("timeout", "graceful_timeout", "keepalive", "limit_request_line"):
        assert config[key] == settings[f"gunicorn.{key}"]
        assert origins(config)[f"gunicorn.{key}"] in PROFILES
    assert origins(config)["port"] == "default"


def test_every_setting_says_where_its_value_came_from() -> None:
    unset = origins(resolved_config())

    config = resolved_config(GUNICORN_TIMEOUT="7", HEADER_TIMEOUT="3")

    assert config["timeout"] == 7
    assert origins(config) == {
        **unset,
        "gunicorn.timeout": "env GUNICORN_TIMEOUT",
        "header_timeout": "env HEADER_TIMEOUT",
    }


def test_gunicorn_cmd_args_is_left_to_gunicorn() -> None:
    """Gunicorn reads it after this file: no setting takes it for one of its own."""
    config = resolved_config(GUNICORN_CMD_ARGS="--timeout 5")

    assert config["settings"] == resolved_config()["settings"]


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
