"""POST /predict (the KServe v1 shape) and GET /model."""

from datetime import datetime
from typing import Annotated

from annotated_types import Len
from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, Field

from ..blocking import call_blocking
from ..bodies import ClientBody
from ..errors import documented
from .metadata import ModelError, ModelMetadata
from .model import Model, ModelSlot, Prediction
from .settings import InferenceLimits


async def get_model(request: Request) -> Model:
    slot: ModelSlot = request.app.state.model
    try:
        return await slot.get()
    except ModelError:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the model is not ready") from None


ModelDep = Annotated[Model, Depends(get_model)]


class Predictions(BaseModel):
    """One prediction per instance, in the order of the instances."""

    predictions: list[Prediction]


class ModelInfo(BaseModel):
    name: str
    version: str
    n_features: int
    feature_names: list[str]
    sha256: str
    loaded_at: datetime
    load_seconds: float


def create_router(metadata: ModelMetadata, limits: InferenceLimits) -> APIRouter:
    """The routes, with the request schema fitted to the model: each instance has exactly
    as many features as the model takes, so the OpenAPI schema tells clients the shape."""
    n_features = metadata.n_features
    bound = limits.max_feature_magnitude
    feature = Field(strict=True, allow_inf_nan=False, ge=-bound, le=bound)
    router = APIRouter(tags=["inference"])

    class PredictRequest(ClientBody):
        """Instances to predict, each a list of feature values in the order of
        `feature_names` (GET /model). Strict: `true` and `"1.5"` are not numbers."""

        instances: Annotated[
            list[Annotated[list[Annotated[float, feature]], Len(n_features, n_features)]],
            Len(1, limits.max_batch_size),
        ]

    @router.post("/predict", responses=documented(400, 413, 503))
    async def predict(model: ModelDep, body: PredictRequest) -> Predictions:
        return Predictions(predictions=await call_blocking(model.predict, body.instances))

    @router.get("/model", responses=documented(503))
    async def model_info(model: ModelDep) -> ModelInfo:
        return ModelInfo(
            **model.metadata.model_dump(include={"name", "version", "feature_names", "sha256"}),
            n_features=model.metadata.n_features,
            loaded_at=model.loaded_at,
            load_seconds=model.load_seconds,
        )

    return router
