"""The app under test, with the fixtures of each of its features (tests/fixtures/)."""

import importlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from fastapi import FastAPI

from {{ cookiecutter.project_slug }}.main import create_app
from {{ cookiecutter.project_slug }}.settings import Settings, get_settings

FIXTURES = Path(__file__).parent / "fixtures"
# One module of fixtures per feature this service has: tests/fixtures/<feature>.py.
FEATURES = sorted(path.stem for path in FIXTURES.glob("[!_]*.py"))
pytest_plugins = [f"tests.fixtures.{feature}" for feature in FEATURES]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(request: pytest.FixtureRequest) -> Settings:
    # Everything a test relies on is set here, whatever the caller's environment says.
    features: dict[str, object] = {}
    for feature in FEATURES:
        features |= request.getfixturevalue(f"{feature}_settings")
    return Settings(
        _env_file=None,
        environment="development",
        docs_enabled=None,
        allowed_hosts=["*"],
        cors_origins=[],
        **features,  # type: ignore[arg-type]
    )


@pytest.fixture
def server_environment(request: pytest.FixtureRequest) -> dict[str, str]:
    """What a real server of this service needs set in the tests, feature by feature."""
    environment: dict[str, str] = {}
    for feature in FEATURES:
        if hasattr(fixtures_of(feature), f"{feature}_environment"):
            environment |= request.getfixturevalue(f"{feature}_environment")
    return environment


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
        for feature in FEATURES:
            reset = getattr(fixtures_of(feature), "reset", None)
            if reset is not None:
                await reset(app)


def fixtures_of(feature: str) -> ModuleType:
    return importlib.import_module(f"tests.fixtures.{feature}")


def refusal(monkeypatch: pytest.MonkeyPatch, **environment: str) -> str:
    """The one line the service exits with at start when the environment holds these."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    with pytest.raises(SystemExit) as refused:
        get_settings()
    get_settings.cache_clear()
    return str(refused.value)
