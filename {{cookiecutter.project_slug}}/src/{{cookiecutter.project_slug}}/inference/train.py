"""Train the model and write it with its metadata: `make model`.

The data set ships inside scikit-learn (Fisher's iris: four measurements of a flower, three
species), so training needs no download. Replace `train` with your own model; the service
needs only an estimator with `predict`, saved by joblib, and the metadata beside it.
"""

import argparse
import hashlib
import os
import tempfile
from pathlib import Path

import joblib
import sklearn
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from ..settings import get_settings
from .metadata import ModelMetadata, write_metadata

NAME = "iris-species"
VERSION = "1.0.0"


def train() -> tuple[Pipeline, list[str]]:
    """The fitted estimator and the names of its features, in the order it takes them."""
    iris = load_iris()
    species = iris.target_names[iris.target]  # predictions are species names, not indices
    estimator = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    estimator.fit(iris.data, species)
    return estimator, list(iris.feature_names)


def save(estimator: Pipeline, feature_names: list[str], path: Path) -> ModelMetadata:
    """Write the model and then its metadata, each whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as scratch:
        joblib.dump(estimator, scratch)
    digest = hashlib.sha256(Path(scratch.name).read_bytes()).hexdigest()
    os.replace(scratch.name, path)
    metadata = ModelMetadata(
        name=NAME,
        version=VERSION,
        feature_names=feature_names,
        sha256=digest,
        sklearn_version=sklearn.__version__,
    )
    write_metadata(path, metadata)
    return metadata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--output", type=Path, default=get_settings().model_path)
    output: Path = parser.parse_args().output
    metadata = save(*train(), output)
    print(f"{output}: {metadata.name} {metadata.version}, sha256 {metadata.sha256}")


if __name__ == "__main__":
    main()
