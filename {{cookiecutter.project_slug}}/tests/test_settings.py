"""Where settings come from and which wins; production mode is locked down; settings errors
are one readable line."""

import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from {{ cookiecutter.project_slug }}.main import create_app
from {{ cookiecutter.project_slug }}.service_settings import PROFILE_FILES, env_name
from {{ cookiecutter.project_slug }}.settings import Settings

from .conftest import refusal

pytestmark = pytest.mark.anyio

PRODUCTION = {
    "environment": "production",
    "secret_key": "a-real-secret-from-the-vault-of-32-characters-or-more",
    "allowed_hosts": ["testserver"],  # the test client's
}


def leaves(table: dict[str, Any], within: str = "") -> dict[str, Any]:
    """A profile's values by setting: `[gunicorn] timeout` is `gunicorn.timeout`."""
    found: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            found |= leaves(value, f"{within}{key}.")
        else:
            found[within + key] = value
    return found


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No variable of the caller's sets a setting."""
    for name in leaves(Settings(_env_file=None).model_dump()):
        monkeypatch.delenv(env_name(tuple(name.split("."))), raising=False)


@pytest.mark.usefixtures("clean_environment")
def test_the_scenarios_profile_wins_over_the_base_one_key_by_key() -> None:
    base, scenario = (leaves(tomllib.loads(path.read_text())) for path in PROFILE_FILES)

    settings = Settings(_env_file=None)

    values = leaves(settings.model_dump())
    for name, value in (base | scenario).items():
        assert values[name] == value, name
        expected = PROFILE_FILES[1].name if name in scenario else PROFILE_FILES[0].name
        assert settings.origins[name] == f"profile {expected}", name
    assert settings.origins["port"] == "default"


@pytest.mark.usefixtures("clean_environment")
def test_an_environment_variable_overrides_the_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADER_TIMEOUT", "2.5")
    monkeypatch.setenv("GUNICORN_KEEPALIVE", "42")

    settings = Settings(_env_file=None)

    assert settings.header_timeout == 2.5
    assert settings.gunicorn.keepalive == 42
    assert settings.origins["header_timeout"] == "env HEADER_TIMEOUT"
    assert settings.origins["gunicorn.keepalive"] == "env GUNICORN_KEEPALIVE"


@pytest.mark.usefixtures("clean_environment")
def test_keyword_arguments_beat_the_environment_which_beats_dotenv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("PORT=9001\nMETRICS_PORT=9002\nLOG_LEVEL=debug\n")
    monkeypatch.setenv("METRICS_PORT", "9003")

    settings = Settings(_env_file=dotenv, log_level="error")

    assert (settings.port, settings.metrics_port, settings.log_level) == (9001, 9003, "error")
    assert settings.origins["port"] == ".env PORT"
    assert settings.origins["metrics_port"] == "env METRICS_PORT"
    assert settings.origins["log_level"] == "init"


def test_an_empty_variable_is_an_unset_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "")

    assert Settings(_env_file=None).web_concurrency is None


def test_production_refuses_to_start_with_the_default_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SECRET_KEY", raising=False)

    refused = refusal(monkeypatch, ENVIRONMENT="production")

    assert "SECRET_KEY must be set" in refused
    assert "\n" not in refused


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"secret_key": "x"}, "SECRET_KEY"),
        ({"secret_key": "too-short-to-be-a-real-secret"}, "SECRET_KEY"),
        ({"allowed_hosts": ["*"]}, "ALLOWED_HOSTS"),
    ],
)
def test_production_refuses_a_weak_secret_and_any_host(
    change: dict[str, object], named: str
) -> None:
    profiles = Settings(_env_file=None).model_dump()

    with pytest.raises(ValueError, match=named):
        Settings.model_validate({**profiles, **PRODUCTION, **change})


@pytest.mark.parametrize(
    ("overrides", "docs_status"),
    [({}, 200), (PRODUCTION, 404), ({**PRODUCTION, "docs_enabled": True}, 200)],
)
async def test_interactive_docs_are_off_in_production_unless_enabled(
    settings: Settings, overrides: dict[str, object], docs_status: int
) -> None:
    app = create_app(Settings.model_validate({**settings.model_dump(), **overrides}))

    async with _client(app) as client:
        assert (await client.get("/docs")).status_code == docs_status
        assert (await client.get("/openapi.json")).status_code == docs_status


async def test_hosts_outside_allowed_hosts_are_refused_except_for_probes(
    settings: Settings,
) -> None:
    app = create_app(settings.model_copy(update={"allowed_hosts": ["api.example.com"]}))

    async with _client(app, "http://api.example.com") as client:
        allowed = await client.get("/openapi.json")
    async with _client(app, "http://10.0.0.7:8000") as client:
        refused = await client.get("/openapi.json")
        probe = await client.get("/health/live")

    assert allowed.status_code == 200
    assert refused.status_code == 400
    assert probe.status_code == 200, "probes address the pod by IP and must pass"


async def test_cors_allows_only_configured_origins(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"cors_origins": ["https://app.example.com"]}))
    preflight = {"access-control-request-method": "GET"}

    async with _client(app) as client:
        allowed = await client.options(
            "/health/live", headers={**preflight, "origin": "https://app.example.com"}
        )
        refused = await client.options(
            "/health/live", headers={**preflight, "origin": "https://evil.example.net"}
        )

    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "access-control-allow-origin" not in refused.headers


def _client(app: FastAPI, base_url: str = "http://testserver") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)
