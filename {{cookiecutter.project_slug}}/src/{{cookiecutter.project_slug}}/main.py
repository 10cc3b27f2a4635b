"""The application factory: `gunicorn.conf.py` serves `create_app()` in every worker."""

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI, status
from fastapi.exceptions import RequestValidationError
from starlette.middleware.cors import CORSMiddleware

from . import blocking, errors, health
{%- for feature, where in cookiecutter._features.items() if cookiecutter["__" ~ feature] %}
from .{{ where.module }} import {{ where.name }}
{%- endfor %}
from .serving import metrics
from .serving.middleware import RequestObserver, TrustedHosts
from .settings import Settings, get_settings

# The service's features (features.py), in the order they start: each after those it uses.
FEATURES = [{% for feature, where in cookiecutter._features.items() if cookiecutter["__" ~ feature] %}{{ where.name }}{{ ", " if not loop.last }}{% endfor %}]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    blocking.limit_threads(app.state.settings.thread_pool_size)
    metrics.count_from_zero(app)
    app.state.readiness_checks = {}
    async with AsyncExitStack() as running:
        for feature in FEATURES:
            app.state.readiness_checks |= await running.enter_async_context(feature.running(app))
        yield


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    docs = settings.show_docs
    app = FastAPI(
        title={{ cookiecutter.project_name | jsonify }},
        description={{ cookiecutter.description | jsonify }},
        lifespan=lifespan,
        exception_handlers={
            RequestValidationError: errors.validation_failed,
            status.HTTP_405_METHOD_NOT_ALLOWED: errors.method_not_allowed,
        },
        max_body_size=settings.max_body_size,
        responses=errors.HEAD_REFUSED,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    if settings.allowed_hosts != ["*"]:
        app.add_middleware(TrustedHosts, allowed_hosts=settings.allowed_hosts)
    # Outermost, so that every answer (a refused host included) is counted and logged.
    app.add_middleware(
        RequestObserver,
        max_in_flight=settings.max_concurrent_requests,
        max_wait=settings.max_request_wait,
    )
    app.include_router(health.router)
    app.include_router(metrics.router)
    for feature in FEATURES:
        feature.install(app, settings)
    return app
