"""/predict and /model: the model's own predictions, a clear 4xx for every bad request,
inference off the event loop, and a model that is checked before it is served."""

import asyncio
import hashlib
import shutil
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import joblib
import pytest
from fastapi import FastAPI
from sklearn.datasets import load_iris

from {{ cookiecutter.project_slug }}.inference import model as model_module
from {{ cookiecutter.project_slug }}.inference.metadata import (
    ModelError,
    read_metadata,
    write_metadata,
)
from {{ cookiecutter.project_slug }}.inference.model import Model, load_model
from {{ cookiecutter.project_slug }}.main import create_app
from {{ cookiecutter.project_slug }}.settings import Settings

from .test_gunicorn_conf import run_config

pytestmark = pytest.mark.anyio

SETOSA = [5.1, 3.5, 1.4, 0.2]
# The profile's, as the tests' settings have it.
MAX_BATCH = Settings(_env_file=None).inference.max_batch_size


async def test_predictions_are_the_models_own(client: httpx.AsyncClient, model_path: Path) -> None:
    rows = load_iris().data[::10].tolist()

    response = await client.post("/predict", json={"instances": rows})

    assert response.status_code == 200
    assert response.json() == {"predictions": joblib.load(model_path).predict(rows).tolist()}
    assert response.json()["predictions"][0] == "setosa"


async def test_model_describes_itself(client: httpx.AsyncClient, model_path: Path) -> None:
    response = await client.get("/model")

    metadata = read_metadata(model_path)
    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["version"], body["sha256"]) == (
        metadata.name,
        metadata.version,
        metadata.sha256,
    )
    assert body["n_features"] == 4
    assert body["feature_names"] == load_iris().feature_names
    assert body["load_seconds"] >= 0
    assert "loaded_at" in body


async def test_a_full_batch_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post("/predict", json={"instances": [SETOSA] * MAX_BATCH})

    assert response.status_code == 200
    assert len(response.json()["predictions"]) == MAX_BATCH


@pytest.mark.parametrize(
    ("body", "where", "problem"),
    [
        ({"instances": [[5.1, 3.5, 1.4]]}, ["body", "instances", 0], "at least 4 items"),
        ({"instances": [[*SETOSA, 1.0]]}, ["body", "instances", 0], "at most 4 items"),
        ({"instances": [[5.1, "3.5", 1.4, 0.2]]}, ["body", "instances", 0, 1], "valid number"),
        ({"instances": [[5.1, True, 1.4, 0.2]]}, ["body", "instances", 0, 1], "valid number"),
        ({"instances": [[5.1, None, 1.4, 0.2]]}, ["body", "instances", 0, 1], "valid number"),
        ({"instances": [[5.1, 3.5, 1.4, 1e13]]}, ["body", "instances", 0, 3], "less than or"),
        ({"instances": []}, ["body", "instances"], "at least 1 item"),
        ({"instances": [SETOSA] * (MAX_BATCH + 1)}, ["body", "instances"], f"at most {MAX_BATCH}"),
        ({"instances": SETOSA}, ["body", "instances", 0], "valid list"),
        ({"rows": [SETOSA]}, ["body", "instances"], "Field required"),
    ],
    ids=[
        "too-few-features",
        "too-many-features",
        "a-string",
        "a-boolean",
        "a-null",
        "too-large",
        "empty-batch",
        "oversize-batch",
        "not-a-batch",
        "no-instances",
    ],
)
async def test_bad_input_gets_422_naming_the_problem(
    client: httpx.AsyncClient, body: dict[str, Any], where: list[object], problem: str
) -> None:
    response = await client.post("/predict", json=body)

    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(e["loc"] == where and problem in e["msg"] for e in errors), errors


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_nan_and_infinity_get_422(client: httpx.AsyncClient, value: str) -> None:
    body = '{"instances": [[5.1, 3.5, 1.4, VALUE]]}'.replace("VALUE", value)

    response = await client.post(
        "/predict", content=body, headers={"content-type": "application/json"}
    )

    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == "Input should be a finite number"


async def test_a_body_over_the_limit_gets_413(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"max_body_size": 1024}))

    async with served(app) as client:
        response = await client.post("/predict", json={"instances": [SETOSA] * 100})

    assert response.status_code == 413


async def test_live_answers_while_every_inference_thread_is_busy(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = app.state.settings.thread_pool_size
    busy = threading.Semaphore(0)
    release = threading.Event()
    predict = Model.predict

    def slow_predict(self: Model, instances: list[list[float]]) -> list[model_module.Prediction]:
        busy.release()
        release.wait(timeout=30)
        return predict(self, instances)

    monkeypatch.setattr(Model, "predict", slow_predict)
    calls = [
        asyncio.create_task(client.post("/predict", json={"instances": [SETOSA]}))
        for _ in range(threads * 2)
    ]
    for _ in range(threads):  # every thread of the pool is now inside a prediction
        await asyncio.to_thread(busy.acquire, timeout=30)
    live = await asyncio.wait_for(client.get("/health/live"), timeout=30)
    answered_while_busy = not release.is_set()
    release.set()
    predictions = await asyncio.gather(*calls)

    assert live.status_code == 200
    assert answered_while_busy
    assert [p.json() for p in predictions] == [{"predictions": ["setosa"]}] * len(calls)


async def test_without_preload_ready_is_503_until_the_worker_has_loaded_its_model(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def slow_load(path: Path) -> Model:
        release.wait(timeout=30)
        return load_model(path)

    monkeypatch.setattr(model_module, "load_model", slow_load)
    app = create_app(settings.model_copy(update={"preload": False}))

    async with served(app) as client:
        loading = await client.get("/health/ready")
        live = await client.get("/health/live")
        prediction = asyncio.create_task(client.post("/predict", json={"instances": [SETOSA]}))
        release.set()
        predicted = await asyncio.wait_for(prediction, timeout=30)
        ready = await client.get("/health/ready")

    assert loading.status_code == 503
    assert loading.json()["failed"] == {"model": "StillLoading"}
    assert live.status_code == 200
    assert predicted.json() == {"predictions": ["setosa"]}, "predictions wait for the model"
    assert ready.status_code == 200


async def test_a_model_that_fails_to_load_makes_ready_and_predict_503(
    settings: Settings, tmp_path: Path
) -> None:
    path = copy_model(settings.model_path, tmp_path)
    app = create_app(settings.model_copy(update={"preload": False, "model_path": path}))
    path.write_bytes(b"not a model")  # after the app read the metadata, before the worker loads

    async with served(app) as client:
        ready = await until_loading_ended(client)
        predicted = await client.post("/predict", json={"instances": [SETOSA]})

    assert ready.status_code == 503
    assert ready.json()["failed"] == {"model": "ModelError"}
    assert predicted.status_code == 503


def test_a_corrupt_model_is_refused_before_it_is_unpickled(
    model_path: Path, tmp_path: Path
) -> None:
    path = copy_model(model_path, tmp_path)
    path.write_bytes(path.read_bytes()[:-10])

    with pytest.raises(ModelError) as refusal:
        load_model(path)

    assert str(refusal.value) == (
        f"{path} does not match the sha256 in {path.with_suffix('.json')}: "
        "the file is corrupt or was replaced; run `make model` to build it"
    )


def test_a_model_that_matches_its_hash_but_cannot_be_loaded_stops_the_start(
    settings: Settings, tmp_path: Path
) -> None:
    path = copy_model(settings.model_path, tmp_path)
    path.write_bytes(b"not a model")
    metadata = read_metadata(path).model_copy(update={"sha256": sha256(b"not a model")})
    write_metadata(path, metadata)

    with pytest.raises(SystemExit) as refusal:
        create_app(settings.model_copy(update={"model_path": path}))

    assert str(refusal.value).startswith(f"invalid model: {path} cannot be loaded: ")
    assert "\n" not in str(refusal.value)


@pytest.mark.parametrize("damage", ["truncated", "missing", "no-metadata"])
def test_gunicorn_refuses_to_start_on_a_bad_model_with_one_line(
    model_path: Path, tmp_path: Path, damage: str
) -> None:
    path = copy_model(model_path, tmp_path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "missing":
        path.unlink()
    else:
        path.with_suffix(".json").unlink()

    result = run_config(MODEL_PATH=str(path))

    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"invalid model: {path.with_suffix('')}.")
    assert line.endswith("run `make model` to build it")


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def copy_model(model_path: Path, directory: Path) -> Path:
    for suffix in (".joblib", ".json"):
        shutil.copy(model_path.with_suffix(suffix), directory / f"model{suffix}")
    return directory / "model.joblib"


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client for `app`, with its lifespan running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def until_loading_ended(client: httpx.AsyncClient) -> httpx.Response:
    for _ in range(300):
        response = await client.get("/health/ready")
        if response.json()["failed"] != {"model": "StillLoading"}:
            return response
        await asyncio.sleep(0.05)
    return response


def test_a_missing_model_stops_gunicorn_with_the_fix() -> None:
    result = run_config(MODEL_PATH="nowhere/model.joblib")

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "invalid model: nowhere/model.json (the model's metadata) does not exist: "
        "run `make model` to build it"
    ]
