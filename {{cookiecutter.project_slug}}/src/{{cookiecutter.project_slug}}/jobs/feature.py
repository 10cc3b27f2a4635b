"""The jobs: POST /jobs and GET /jobs/{id}, the broker they are queued on, and the
sweeper that queues again what was lost (its sessions come from the database feature)."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from ..blocking import call_blocking
from ..features import Feature, ReadinessChecks
from ..serving.metrics import collect_when_scraped
from ..settings import Settings
from . import broker, metrics
from .router import router
from .sweeper import sweeping


def _install(app: FastAPI, settings: Settings) -> None:
    app.include_router(router, max_body_size=settings.max_upload_size)
    collect_when_scraped(app, metrics.QueueLengths(lambda: getattr(app.state, "celery", None)))


@asynccontextmanager
async def _running(app: FastAPI) -> AsyncIterator[ReadinessChecks]:
    settings: Settings = app.state.settings
    broker.warn_if_not_durable(settings)
    app.state.celery = celery = broker.create_celery(settings)
    metrics.count_sent_from_zero(celery)
    try:
        async with sweeping(app):
            yield {"broker": partial(call_blocking, broker.ping, celery)}
    finally:
        celery.close()


JOBS = Feature(_install, _running)
