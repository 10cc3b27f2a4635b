"""The model's settings: where its file is, and how much one request may ask of it."""

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt

from ..service_settings import ServiceSettings
from .metadata import ModelError, check_model_files


class InferenceLimits(BaseModel):
    """The `[inference]` table."""

    model_config = ConfigDict(frozen=True)

    # Rows in one /predict request; a larger batch gets 422.
    max_batch_size: PositiveInt
    # Largest absolute value a feature may have; larger gets 422.
    max_feature_magnitude: PositiveFloat
    # Threads each worker's numeric libraries (OpenBLAS, OpenMP) may start.
    blas_threads: PositiveInt


class InferenceSettings(ServiceSettings):
    # The model file `make model` writes; its metadata is beside it, with a .json suffix.
    model_path: Path = Path("models/model.joblib")
    inference: InferenceLimits

    def prepare_master(self) -> dict[str, object]:
        # A missing, corrupt or replaced model stops the service here, with one line.
        try:
            metadata = check_model_files(self.model_path)
        except ModelError as error:
            raise SystemExit(f"invalid model: {error}") from None
        # Numeric libraries start a thread per CPU by default; with one worker per CPU that
        # would be CPUs x CPUs threads. Set before any worker imports numpy.
        for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(variable, str(self.inference.blas_threads))
        return {"model": f"{metadata.name} {metadata.version} ({self.model_path})"}
