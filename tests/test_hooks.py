"""The pre-generation hook refuses bad answers with one clear sentence, writing nothing."""

import subprocess
import sys
from pathlib import Path

import pytest

from .baked import TEMPLATE


def bake(output: Path, *answers: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cookiecutter",
            str(TEMPLATE),
            "--no-input",
            "-o",
            str(output),
            *answers,
        ],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        (["project_slug=my-service"], "project_slug 'my-service' is not a Python identifier"),
        (["project_slug=2fast"], "project_slug '2fast' is not a Python identifier"),
        (["project_slug=class"], "project_slug 'class' is a Python keyword"),
        (["project_slug=json"], "project_slug 'json' shadows the standard-library module"),
        (["project_slug=fastapi"], "project_slug 'fastapi' would hide the fastapi package"),
        (["use_celery=maybe"], "use_celery 'maybe' is not an answer: say yes or no"),
        (["project_slug=celery"], "project_slug 'celery' would hide the celery package"),
        (["scenario=batch", "use_celery=no"], "scenario 'batch' runs its jobs on Celery"),
        (["scenario=batch", "database=none"], "use_celery=yes keeps its jobs in a database"),
        (["project_slug=_2fast"], "project_slug '_2fast' gives the deployment name '2fast'"),
        (["project_slug=" + "a" * 64], f"project_slug '{'a' * 64}' gives the deployment name"),
        (["database=none"], "scenario 'public_api' stores its /items resource in a database"),
        (
            ["scenario=ml_inference", "database=postgresql"],
            "scenario 'ml_inference' serves a model and keeps no data: answer database=none",
        ),
        (["project_slug=sklearn"], "project_slug 'sklearn' would hide the sklearn package"),
        (["project_slug=bench"], "project_slug 'bench' would hide the bench package"),
        (
            ["scenario=websocket", "database=postgresql"],
            "scenario 'websocket' relays messages between connected clients and keeps no data",
        ),
        (
            ["scenario=websocket", "use_celery=yes"],
            "scenario 'websocket' keeps no data, and Celery jobs live in a database table: "
            "answer use_celery=no",
        ),
        (["project_slug=websockets"], "project_slug 'websockets' would hide the websockets"),
    ],
)
def test_bad_answer_is_refused_with_its_message_and_nothing_written(
    tmp_path: Path, answers: list[str], message: str
) -> None:
    result = bake(tmp_path, *answers)

    assert result.returncode != 0
    assert f"ERROR: {message}" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        (["scenario=graphql"], "graphql provided for choice variable scenario"),
        (["python_version=3.9"], "3.9 provided for choice variable python_version"),
    ],
)
def test_answer_outside_a_choice_is_refused_by_cookiecutter(
    tmp_path: Path, answers: list[str], message: str
) -> None:
    result = bake(tmp_path, *answers)

    assert result.returncode != 0
    assert message in result.stderr.strip().splitlines()[-1]
    assert list(tmp_path.iterdir()) == []


def test_good_answers_bake_and_print_the_next_steps(tmp_path: Path) -> None:
    result = bake(tmp_path, "project_name=Order Service")

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "order_service" / "gunicorn.conf.py").is_file()
    assert "make run" in result.stdout


def test_ml_inference_defaults_to_no_database(tmp_path: Path) -> None:
    result = bake(tmp_path, "scenario=ml_inference")

    assert result.returncode == 0, result.stderr
    project = tmp_path / "my_service"
    assert (project / "src" / "my_service" / "inference").is_dir()
    assert not (project / "src" / "my_service" / "db.py").exists()
    assert not (project / "alembic.ini").exists()
    assert "make run     # install, train the model and serve" in result.stdout


def test_websocket_defaults_to_no_database_and_keeps_only_its_rooms(tmp_path: Path) -> None:
    result = bake(tmp_path, "scenario=websocket")

    assert result.returncode == 0, result.stderr
    package = tmp_path / "my_service" / "src" / "my_service"
    assert (package / "rooms").is_dir()
    assert not (package / "db.py").exists()
    assert not (package / "items").exists()
    assert not (package / "inference").exists()


def test_batch_asks_for_celery_by_default(tmp_path: Path) -> None:
    result = bake(tmp_path, "scenario=batch")

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "my_service" / "src" / "my_service" / "jobs" / "celery_app.py").is_file()
    assert "make worker" in result.stdout


def test_the_templates_own_code_is_lint_clean() -> None:
    own_code = ["hooks", "tests", "bench", "dev.py"]
    for command in (["check", *own_code], ["format", "--check", *own_code]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command],
            cwd=TEMPLATE,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
