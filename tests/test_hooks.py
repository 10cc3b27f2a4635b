"""The pre-generation hook refuses bad answers with one clear sentence, writing nothing.

Its rules are checked in-process, on the answers cookiecutter would hand it; a few real
bakes prove that cookiecutter runs it and that good answers still bake.
"""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import jinja2
import pytest
from cookiecutter.generate import generate_context
from cookiecutter.prompt import prompt_for_config

from .baked import MISSING_LOCK, TEMPLATE, run_without_uv

pytestmark = pytest.mark.quick


@pytest.fixture(scope="module")
def hook() -> ModuleType:
    """hooks/pre_gen_project.py as a module (hooks/ is no package); importing it runs nothing."""
    spec = importlib.util.spec_from_file_location(
        "pre_gen_project", TEMPLATE / "hooks" / "pre_gen_project.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def answers(hook: ModuleType, *given: str) -> dict[str, str]:
    """What the hook's ANSWERS become when cookiecutter is run with `given` (key=value, as
    on its command line): the defaults and derived names come from cookiecutter.json."""
    context = generate_context(
        TEMPLATE / "cookiecutter.json",
        extra_context=dict(answer.split("=", 1) for answer in given),
    )
    cookiecutter = prompt_for_config(context, no_input=True)
    jinja = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return {
        name: jinja.from_string(placeholder).render(cookiecutter=cookiecutter)
        for name, placeholder in hook.ANSWERS.items()
    }


def bake(output: Path, *answers: str, **env: str) -> subprocess.CompletedProcess[str]:
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
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )


# The rules, in-process.


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["project_slug=my-service"], "project_slug 'my-service' is not a Python identifier"),
        (["project_slug=2fast"], "project_slug '2fast' is not a Python identifier"),
        (["project_slug=café"], "project_slug 'café' is not a Python identifier"),
        (["project_slug=class"], "project_slug 'class' is a Python keyword"),
        (["project_slug=match"], "project_slug 'match' is a Python keyword"),
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
            ["scenario=microservice", "database=none"],
            "scenario 'microservice' stores its /items resource in a database",
        ),
        (
            ["scenario=ml_inference", "database=postgresql"],
            "scenario 'ml_inference' serves a model and keeps no data: answer database=none",
        ),
        (
            ["scenario=ml_inference", "use_celery=yes"],
            "scenario 'ml_inference' keeps no data, and Celery jobs live in a database table: "
            "answer use_celery=no",
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
def test_bad_answer_is_refused_with_one_sentence_naming_it(
    hook: ModuleType, given: list[str], message: str
) -> None:
    refusals = hook.problems(answers(hook, *given))

    assert len(refusals) == 1, refusals
    assert refusals[0].startswith(message)


def test_every_problem_is_reported_not_only_the_first(hook: ModuleType) -> None:
    refusals = hook.problems(answers(hook, "project_slug=json", "scenario=batch", "use_celery=no"))

    assert refusals == [
        "project_slug 'json' shadows the standard-library module of that name: "
        "choose another name.",
        "scenario 'batch' runs its jobs on Celery: answer use_celery=yes.",
    ]


def test_kubernetes_other_than_yes_or_no_is_refused(hook: ModuleType) -> None:
    # cookiecutter's choice list refuses this first; the hook does not count on it
    given = {**answers(hook), "kubernetes": "maybe"}

    refusals = hook.problems(given)

    assert refusals == ["kubernetes 'maybe' is not an answer: say yes or no."]


@pytest.mark.parametrize(
    "given",
    [
        [],
        ["scenario=microservice"],
        ["scenario=ml_inference"],
        ["scenario=websocket"],
        ["scenario=batch"],
        ["use_celery=yes"],
        ["kubernetes=yes"],
        ["project_name=Order Service"],
        ["project_slug=_internal"],
        ["project_slug=" + "a" * 63],
    ],
)
def test_supported_answers_are_accepted(hook: ModuleType, given: list[str]) -> None:
    refusals = hook.problems(answers(hook, *given))

    assert refusals == []


# The wiring, end to end: a real cookiecutter run per test.


def test_a_refused_answer_stops_cookiecutter_with_its_error_and_writes_nothing(
    tmp_path: Path,
) -> None:
    result = bake(tmp_path, "project_slug=json")

    assert result.returncode != 0
    assert "ERROR: project_slug 'json' shadows the standard-library module" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_answer_outside_a_choice_is_refused_by_cookiecutter(tmp_path: Path) -> None:
    result = bake(tmp_path, "scenario=graphql")

    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "graphql provided for choice variable scenario" in last_line
    assert list(tmp_path.iterdir()) == []


def test_good_answers_bake_and_print_the_next_steps(tmp_path: Path) -> None:
    result = bake(tmp_path, "project_name=Order Service")

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "order_service" / "gunicorn.conf.py").is_file()
    assert "make run" in result.stdout
    assert (tmp_path / "order_service" / "uv.lock").is_file()
    assert result.stderr == ""  # the lock is written quietly


def test_without_the_package_index_the_bake_succeeds_and_says_the_lock_is_missing(
    tmp_path: Path,
) -> None:
    # An index nothing listens at, asked once.
    unreachable = {"UV_DEFAULT_INDEX": "http://127.0.0.1:9/simple", "UV_HTTP_RETRIES": "0"}

    result = bake(tmp_path, "scenario=websocket", **unreachable)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "my_service" / "Makefile").is_file()
    assert not (tmp_path / "my_service" / "uv.lock").exists()
    assert result.stderr == MISSING_LOCK + "\n"


def test_without_uv_the_hook_says_the_lock_is_missing_in_one_line(tmp_path: Path) -> None:
    # The post-generation hook's lock step alone, on a PATH without uv and with a Python
    # that sees no installed package (-S), so no `python -m uv` either.
    hook = TEMPLATE / "hooks" / "post_gen_project.py"
    write_lock = f"import runpy; runpy.run_path({str(hook)!r})['write_lock']()"
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "0"\n')

    result = run_without_uv([sys.executable, "-S", "-c", write_lock], tmp_path)

    assert (result.returncode, result.stdout, result.stderr) == (0, "", MISSING_LOCK + "\n")
    assert not (tmp_path / "uv.lock").exists()


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


# The shape of the template: features, not scenarios.

PROJECT = TEMPLATE / "{{cookiecutter.project_slug}}"
# The files that must ask features (the Python files, and these three).
ASKING_FEATURES = [
    *PROJECT.rglob("*.py"),
    *(PROJECT / name for name in ("Makefile", "pyproject.toml", "compose.yaml")),
]
JINJA_TAG = re.compile(r"\{%.*?%\}", re.DOTALL)
SCENARIOS = json.loads((TEMPLATE / "cookiecutter.json").read_text())["scenario"]


def test_jinja_in_the_project_asks_about_features_never_a_scenario() -> None:
    tags = {path: JINJA_TAG.findall(path.read_text()) for path in ASKING_FEATURES}
    naming_a_scenario = [
        f"{path.relative_to(PROJECT)}: {tag}"
        for path, found in tags.items()
        for tag in found
        if "scenario" in tag or any(name in tag for name in SCENARIOS)
    ]

    assert naming_a_scenario == []
    assert sum(len(found) for path, found in tags.items() if path.suffix == ".py") <= 60


def test_features_start_after_the_database_they_use() -> None:
    # main.py starts the features in the order of this table, and items and jobs use the
    # database's sessions.
    features = list(json.loads((TEMPLATE / "cookiecutter.json").read_text())["_features"])

    assert features[0] == "database"


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
