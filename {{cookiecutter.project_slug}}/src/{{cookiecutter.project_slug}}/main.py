"""The application factory: `gunicorn.conf.py` serves `create_app()` in every worker."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
{%- if cookiecutter.database != "none" %}
from functools import partial
{%- endif %}

from fastapi import FastAPI, status
from fastapi.exceptions import RequestValidationError
{%- if cookiecutter.database != "none" %}
from sqlalchemy.ext.asyncio import async_sessionmaker
{%- endif %}
from starlette.middleware.cors import CORSMiddleware

from . import blocking, {% if cookiecutter.database != "none" %}db, {% endif %}errors, health
{%- if cookiecutter.scenario == "ml_inference" %}
from .inference.metadata import ModelError, read_metadata
from .inference.model import ModelSlot, load_model
from .inference.router import create_router
{%- endif %}
{%- if cookiecutter.scenario in ["public_api", "microservice"] %}
from .items.router import router as items_router
{%- endif %}
{%- if cookiecutter.use_celery == "yes" %}
from .jobs import broker
from .jobs.router import router as jobs_router
{%- endif %}
{%- if cookiecutter.scenario == "websocket" %}
from .rooms.fanout import Rooms, create_fanout
from .rooms.router import router as rooms_router
{%- endif %}
from .serving import metrics
from .serving.middleware import RequestObserver, TrustedHosts
from .settings import Settings, get_settings


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
{%- if cookiecutter.database != "none" %}
    # Created here, after Gunicorn forked this worker: connections never cross processes.
{%- endif %}
    blocking.limit_threads(app.state.settings.thread_pool_size)
{%- if cookiecutter.database != "none" %}
    engine = db.create_engine(app.state.settings)
    app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
    app.state.readiness_checks = {"database": partial(db.ping, engine)}
{%- if cookiecutter.use_celery == "yes" %}
    broker.warn_if_not_durable(app.state.settings)
    app.state.celery = celery = broker.create_celery(app.state.settings)
    app.state.readiness_checks["broker"] = partial(blocking.call_blocking, broker.ping, celery)
{%- endif %}
    try:
        yield
    finally:
{%- if cookiecutter.use_celery == "yes" %}
        celery.close()
{%- endif %}
        await engine.dispose()
{%- endif %}
{%- if cookiecutter.scenario == "ml_inference" %}
    model: ModelSlot = app.state.model
    model.start_loading()  # unless the Gunicorn master loaded it before forking this worker
    app.state.readiness_checks = {"model": model.ready}
    try:
        yield
    finally:
        model.stop_loading()
{%- endif %}
{%- if cookiecutter.scenario == "websocket" %}
    app.state.rooms = rooms = Rooms()
    app.state.fanout = fanout = create_fanout(app.state.settings, rooms)
    app.state.readiness_checks = fanout.readiness_checks
    async with fanout.running():
        yield
{%- endif %}


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
{%- if cookiecutter.database != "none" %}
            **dict.fromkeys(errors.DATABASE_ERRORS, errors.database_unavailable),
{%- endif %}
        },
        max_body_size=settings.max_body_size,
        responses=errors.HEAD_REFUSED,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.settings = settings
{%- if cookiecutter.scenario == "ml_inference" %}
    # With preload, Gunicorn calls this factory once, in its master, before it forks: the
    # model loaded here is in every worker from its first instruction, its pages shared.
    # Without, each worker loads its own copy as it starts (the lifespan).
    try:
        preloaded = load_model(settings.model_path) if settings.preload else None
    except ModelError as error:
        raise SystemExit(f"invalid model: {error}") from None
    app.state.model = ModelSlot(settings.model_path, preloaded)
    metadata = preloaded.metadata if preloaded else read_metadata(settings.model_path)
{%- endif %}
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
    app.add_middleware(RequestObserver, max_in_flight=settings.max_concurrent_requests)
    app.include_router(health.router)
    app.include_router(metrics.router)
{%- if cookiecutter.scenario == "ml_inference" %}
    app.include_router(create_router(metadata, settings.inference))
{%- endif %}
{%- if cookiecutter.scenario in ["public_api", "microservice"] %}
    app.include_router(items_router)
{%- endif %}
{%- if cookiecutter.scenario == "websocket" %}
    app.include_router(rooms_router, max_body_size=settings.ws_max_message_size)
{%- endif %}
{%- if cookiecutter.use_celery == "yes" %}
    app.include_router(jobs_router, max_body_size=settings.max_upload_size)
{%- endif %}
    return app
