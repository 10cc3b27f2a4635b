"""The model: loaded once where it can be shared, served by /predict and /model."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..features import Feature, ReadinessChecks
from ..settings import Settings
from .metadata import ModelError, read_metadata
from .model import ModelSlot, load_model
from .router import create_router


def _install(app: FastAPI, settings: Settings) -> None:
    # With preload, Gunicorn calls create_app once, in its master, before it forks: the
    # model loaded here is in every worker from its first instruction, its pages shared.
    # Without, each worker loads its own copy as it starts (_running).
    try:
        preloaded = load_model(settings.model_path) if settings.preload else None
    except ModelError as error:
        raise SystemExit(f"invalid model: {error}") from None
    app.state.model = ModelSlot(settings.model_path, preloaded)
    metadata = preloaded.metadata if preloaded else read_metadata(settings.model_path)
    app.include_router(create_router(metadata, settings.inference))


@asynccontextmanager
async def _running(app: FastAPI) -> AsyncIterator[ReadinessChecks]:
    model: ModelSlot = app.state.model
    model.start_loading()  # unless the Gunicorn master loaded it before forking this worker
    try:
        yield {"model": model.ready}
    finally:
        model.stop_loading()


INFERENCE = Feature(_install, _running)
