"""The model's files: the fitted estimator, and its metadata beside it.

`make model` writes `model.joblib` (the estimator) and `model.json` (name, version, feature
names and the sha256 of `model.joblib`). Checking the one against the other needs neither
numpy nor unpickling, so the Gunicorn master does it before anything starts: a missing,
truncated or replaced model stops the service at once with one line, instead of failing
every request.
"""

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

REBUILD = "run `make model` to build it"


class ModelError(Exception):
    """The model cannot be served; the message says why, in one line."""


class ModelMetadata(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: str
    feature_names: list[str] = Field(min_length=1)
    # Of the estimator file, so a corrupt or replaced file is caught before it is unpickled.
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # The scikit-learn version the model was trained with: unpickling needs a compatible one.
    sklearn_version: str

    @property
    def n_features(self) -> int:
        return len(self.feature_names)


def metadata_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def read_metadata(model_path: Path) -> ModelMetadata:
    path = metadata_path(model_path)
    try:
        return ModelMetadata.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise ModelError(f"{path} (the model's metadata) does not exist: {REBUILD}") from None
    except (OSError, ValidationError) as error:
        reason = error.strerror if isinstance(error, OSError) else _first(error)
        raise ModelError(f"{path} (the model's metadata) is unreadable: {reason}") from None


def check_model_files(model_path: Path) -> ModelMetadata:
    """The metadata, once the model file is known to be the one it describes."""
    metadata = read_metadata(model_path)
    try:
        with model_path.open("rb") as model_file:
            digest = hashlib.file_digest(model_file, "sha256").hexdigest()
    except FileNotFoundError:
        raise ModelError(f"{model_path} does not exist: {REBUILD}") from None
    except OSError as error:
        raise ModelError(f"{model_path} is unreadable: {error.strerror}") from None
    if digest != metadata.sha256:
        raise ModelError(
            f"{model_path} does not match the sha256 in {metadata_path(model_path)}: "
            f"the file is corrupt or was replaced; {REBUILD}"
        )
    return metadata


def write_metadata(model_path: Path, metadata: ModelMetadata) -> None:
    metadata_path(model_path).write_text(json.dumps(metadata.model_dump(), indent=2) + "\n")


def _first(error: ValidationError) -> str:
    problem = error.errors()[0]
    where = ".".join(map(str, problem["loc"]))
    return f"{where}: {problem['msg']}" if where else problem["msg"]
