"""The ml_inference scenario under Gunicorn with real workers: every worker predicts, the
model is loaded once in the master with preload and once per worker without, and a bad
model file stops Gunicorn at start with one line."""

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from .baked import Project, Server
from .waiting import wait_for

pytestmark = pytest.mark.parametrize("project", ["ml_inference"], indirect=True)

SETOSA = [5.1, 3.5, 1.4, 0.2]


def model_loads(server: Server) -> list[int]:
    """The pid of each process that loaded the model, from the log."""
    return [
        entry["pid"]
        for entry in server.log_entries("my_service.inference.model")
        if entry.get("event") == "model_loaded"
    ]


def predictions_from_every_worker(server: Server, workers: int) -> set[int]:
    """New connections until each worker has answered a prediction; their pids. A worker
    still loading its model (preload off) answers once it has loaded it."""

    def answered() -> set[int]:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            response = client.post("/predict", json={"instances": [SETOSA]})
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": ["setosa"]}
        return {
            entry["pid"]
            for entry in server.log_entries("access")
            if entry["path"] == "/predict" and entry["status"] == 200
        }

    return wait_for(answered, lambda pids: len(pids) >= workers, f"{workers} workers to predict")


def test_two_workers_predict_describe_the_model_and_refuse_a_short_row(project: Project) -> None:
    with project.serve(workers=2) as server, httpx.Client(base_url=server.url) as client:
        answered = predictions_from_every_worker(server, workers=2)
        model = client.get("/model")
        short_row = client.post("/predict", json={"instances": [SETOSA[:3]]})
        ready = client.get("/health/ready")
        workers = server.workers()

    assert answered == workers
    assert model.status_code == 200
    assert model.json()["n_features"] == 4
    assert short_row.status_code == 422
    assert short_row.json()["detail"][0]["loc"] == ["body", "instances", 0]
    assert ready.json() == {"status": "ready", "failed": {}}


def test_with_preload_the_master_loads_the_model_once_for_every_worker(project: Project) -> None:
    with project.serve(workers=2) as server:
        answered = predictions_from_every_worker(server, workers=2)
        loads = model_loads(server)

    assert loads == [server.process.pid]
    assert len(answered) == 2
    assert server.process.pid not in answered


def test_without_preload_each_worker_loads_its_own_copy(project: Project) -> None:
    with project.serve(workers=2, PRELOAD="false") as server:
        answered = predictions_from_every_worker(server, workers=2)
        loads = model_loads(server)

    assert sorted(loads) == sorted(answered)
    assert len(loads) == 2


def pss_mib(server: Server) -> float:
    """Proportional set size of the master and its workers together: each shared page is
    split between the processes that map it, so the sum is what the service costs."""
    total = 0
    for pid in [server.process.pid, *server.workers()]:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        found = re.search(r"^Pss:\s+(\d+) kB", rollup, re.MULTILINE)
        assert found, rollup
        total += int(found[1])
    return total / 1024


def test_with_preload_two_workers_cost_at_most_1_3_times_one(
    project: Project, summary: Callable[[str], None]
) -> None:
    memory = {}
    for workers in (1, 2):
        with project.serve(workers=workers) as server:
            predictions_from_every_worker(server, workers)
            memory[workers] = pss_mib(server)

    ratio = memory[2] / memory[1]
    summary(
        f"ml_inference PSS with preload: 1 worker {memory[1]:.0f} MiB, "
        f"2 workers {memory[2]:.0f} MiB, ratio {ratio:.2f}"
    )
    assert ratio <= 1.3, memory


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_bad_model_stops_gunicorn_at_start_with_one_line(
    project: Project, tmp_path: Path, damage: str
) -> None:
    model = tmp_path / "model.joblib"
    for suffix in (".joblib", ".json"):
        shutil.copy(project.path / "models" / f"model{suffix}", model.with_suffix(suffix))
    if damage == "truncated":
        model.write_bytes(model.read_bytes()[:-1])
    else:
        model.unlink()

    result = project.run("gunicorn", "--config", "gunicorn.conf.py", MODEL_PATH=str(model))

    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    expected = "does not match the sha256" if damage == "truncated" else "does not exist"
    assert line.startswith(f"invalid model: {model} {expected}"), line
