"""Production mode is locked down; settings errors are one readable line."""

import httpx
import pytest
from fastapi import FastAPI

from {{ cookiecutter.project_slug }}.main import create_app
from {{ cookiecutter.project_slug }}.settings import Settings, get_settings

pytestmark = pytest.mark.anyio

PRODUCTION = {
    "environment": "production",
    "secret_key": "a-real-secret-from-the-vault-of-32-characters-or-more",
    "allowed_hosts": ["testserver"],  # the test client's
}


def test_production_refuses_to_start_with_the_default_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.delenv("SECRET_KEY", raising=False)
    get_settings.cache_clear()

    with pytest.raises(SystemExit) as refusal:
        get_settings()

    get_settings.cache_clear()
    assert "SECRET_KEY must be set" in str(refusal.value)
    assert "\n" not in str(refusal.value)


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
    with pytest.raises(ValueError, match=named):
        Settings.model_validate({**PRODUCTION, **change})


{% if cookiecutter.database != "none" -%}
def test_a_sync_database_url_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://localhost/app")
    get_settings.cache_clear()

    with pytest.raises(SystemExit) as refusal:
        get_settings()

    get_settings.cache_clear()
    assert "DATABASE_URL" in str(refusal.value)
    assert "postgresql+asyncpg://" in str(refusal.value)


{% endif -%}
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
