"""No request is lost, and some worker always serves, while Gunicorn replaces its workers
on a reload (SIGHUP) or as they recycle after `max_requests`, under a keep-alive load: the
real Gunicorn, this project's gunicorn.conf.py, two real workers.

Stock Uvicorn closes a stopping worker's idle keep-alive connections at once, and a client
sending its next request on one of them loses it; its workers leave together, and nothing
serves while their successors start. The project's worker (serving/gunicorn_worker.py)
drains those connections and leaves only while another worker serves. It relies on private
parts of Uvicorn, uvicorn-worker and Gunicorn (serving/__init__.py lists them): a release
that changes one fails these tests.
"""

import signal
from pathlib import Path

import pytest
{%- if cookiecutter.__inference %}

from {{ cookiecutter.project_slug }}.inference import train
{%- endif %}

from .gunicorn_server import gunicorn, keep_alive_load, wait_until

CLIENTS = 8
# Seconds each client waits between an answer and its next request: its connection is then
# idle most of the time, as a stopping worker finds a keep-alive connection, and the
# clients leave the CPUs to the workers, which must start while the load goes on.
PAUSE = 0.02
# Answers the load gets between the steps of a test: each step has then served some.
ANSWERS = 200
# Two workers whatever gunicorn.conf.py would choose here: these tests are about worker
# processes, and ask only /health/live.
TWO_WORKERS = "--workers 2"
{%- if cookiecutter.__inference %}


@pytest.fixture(scope="module")
def environment(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The model `make model` trains, in a directory of the tests' own."""
    model = tmp_path_factory.mktemp("model") / "model.joblib"
    train.save(*train.train(), model)
    return {"MODEL_PATH": str(model)}
{%- else %}


@pytest.fixture
def environment() -> dict[str, str]:
    """The embedded defaults: nothing to set."""
    return {}
{%- endif %}


def test_a_reload_under_keep_alive_load_loses_no_request_old_workers_serve_till_new_ones_do(
    tmp_path: Path, environment: dict[str, str]
) -> None:
    no_recycling = f"{TWO_WORKERS} --max-requests 0"
    with (
        gunicorn(tmp_path, {"GUNICORN_CMD_ARGS": no_recycling, **environment}) as server,
        keep_alive_load(server.port, "/health/live", CLIENTS, PAUSE) as load,
    ):
        load.wait_for_answers(ANSWERS)
        old_workers = server.workers()

        server.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: not server.workers() & old_workers and len(server.serving_workers()) == 2,
            "two new workers serving, and the old ones gone",
        )
        load.wait_for_answers(ANSWERS)
        stopped_alone = server.stops_while_none_other_served()

    assert (load.lost, load.refused) == (0, 0), load
    assert set(load.answered) == {200}, load
    assert stopped_alone == [], "the old workers stopped before the new ones served"


def test_recycling_under_keep_alive_load_loses_no_request_and_workers_take_turns(
    tmp_path: Path, environment: dict[str, str]
) -> None:
    recycling = f"{TWO_WORKERS} --max-requests 50 --max-requests-jitter 0"
    with (
        gunicorn(tmp_path, {"GUNICORN_CMD_ARGS": recycling, **environment}) as server,
        keep_alive_load(server.port, "/health/live", CLIENTS, PAUSE) as load,
    ):
        first_workers = server.workers()

        wait_until(lambda: not server.workers() & first_workers, "both first workers recycled")
        load.wait_for_answers(ANSWERS)
        stopped_alone = server.stops_while_none_other_served()

    assert (load.lost, load.refused) == (0, 0), load
    assert set(load.answered) == {200}, load
    assert stopped_alone == [], "workers recycled at once, leaving none to serve"
