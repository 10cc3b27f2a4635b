"""Loading the model, and the one model a worker serves.

With preload (the profile's default) the Gunicorn master loads the model once, before it
forks: every worker starts with it and shares its memory pages. Without, each worker loads
its own copy in the background as it starts; /health/ready answers 503 until it is there,
and predictions wait for it.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from ..blocking import call_blocking
from .metadata import ModelError, ModelMetadata, check_model_files

logger = logging.getLogger(__name__)

# What one instance's prediction is: a class label, or a number for a regressor.
Prediction = str | int | float


@dataclass(frozen=True)
class Model:
    estimator: Any
    metadata: ModelMetadata
    loaded_at: datetime
    load_seconds: float

    def predict(self, instances: list[list[float]]) -> list[Prediction]:
        """CPU work: call it through `call_blocking` (numpy releases the GIL meanwhile)."""
        predictions: list[Prediction] = self.estimator.predict(
            np.asarray(instances, dtype=np.float64)
        ).tolist()
        return predictions


def load_model(path: Path) -> Model:
    started = time.perf_counter()
    metadata = check_model_files(path)
    try:
        estimator = joblib.load(path)
    except Exception as error:  # unpickling can fail in as many ways as there are classes
        raise ModelError(f"{path} cannot be loaded: {type(error).__name__}: {error}") from None
    if getattr(estimator, "n_features_in_", metadata.n_features) != metadata.n_features:
        raise ModelError(
            f"{path} takes {estimator.n_features_in_} features, but its metadata names "
            f"{metadata.n_features}: rebuild both with `make model`"
        )
    model = Model(estimator, metadata, datetime.now(UTC), time.perf_counter() - started)
    logger.info(
        "model %s %s loaded from %s in %.3f s",
        metadata.name,
        metadata.version,
        path,
        model.load_seconds,
        extra={"event": "model_loaded", "model_sha256": metadata.sha256},
    )
    return model


class StillLoading(Exception):
    """The worker is loading its model; readiness names this until it is done."""


class ModelSlot:
    """The model of this worker: there from the start, or loading in a thread."""

    def __init__(self, path: Path, model: Model | None = None) -> None:
        self.path = path
        self._model = model
        self._loading: asyncio.Task[Model] | None = None

    def start_loading(self) -> None:
        """Load the model in a thread unless it is already here; call it in the lifespan."""
        if self._model is None and self._loading is None:
            self._loading = asyncio.create_task(call_blocking(load_model, self.path))
            self._loading.add_done_callback(_report_failure)

    async def get(self) -> Model:
        """The model, once loaded; ModelError if loading failed."""
        if self._model is None:
            if self._loading is None:
                raise ModelError("the model is not being loaded")
            self._model = await asyncio.shield(self._loading)
        return self._model

    async def ready(self) -> None:
        """For /health/ready: fails at once while loading, and for good if loading failed."""
        if self._model is None and self._loading is not None and not self._loading.done():
            raise StillLoading
        await self.get()

    def stop_loading(self) -> None:
        if self._loading is not None:
            self._loading.cancel()


def _report_failure(loading: asyncio.Task[Model]) -> None:
    if not loading.cancelled() and (error := loading.exception()) is not None:
        logger.error("the model could not be loaded: %s", error)
