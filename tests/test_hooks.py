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
    # cookiecutter adds where the template is once the answers are in.
    cookiecutter = {**prompt_for_config(context, no_input=True), "_repo_dir": str(TEMPLATE)}
    jinja = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return {
        name: jinja.from_string(placeholder).render(cookiecutter=cookiecutter)
        for name, placeholder in hook.ANSWERS.items()
    }


COOKIECUTTER_JSON = json.loads((TEMPLATE / "cookiecutter.json").read_text())
PROMPTS = COOKIECUTTER_JSON["__prompts__"]
SLUG = '"Python package name (a valid identifier)"'
CELERY = '"Run CPU-heavy jobs on Celery workers? (yes/no)"'
DATABASE = '"Database (PostgreSQL in production, SQLite when run locally)"'


def refusals(hook: ModuleType, *given: str) -> list[str]:
    found: list[str] = hook.problems(answers(hook, *given), PROMPTS)
    return found


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
        (["project_slug=my-service"], f'"my-service" to {SLUG}, which is not a Python identifier'),
        (["project_slug=2fast"], f'"2fast" to {SLUG}, which is not a Python identifier'),
        (["project_slug=café"], f'"café" to {SLUG}, which is not a Python identifier'),
        (["project_slug=class"], f'"class" to {SLUG}, which is a Python keyword'),
        (["project_slug=match"], f'"match" to {SLUG}, which is a Python keyword'),
        (["project_slug=json"], f'"json" to {SLUG}, which would shadow the standard-library'),
        (["project_slug=fastapi"], f'"fastapi" to {SLUG}, which would hide the fastapi package'),
        (["use_celery=maybe"], f'"maybe" to {CELERY}: answer "yes" or "no".'),
        (["project_slug=celery"], f'"celery" to {SLUG}, which would hide the celery package'),
        (
            ["scenario=batch", "use_celery=no"],
            f'"no" to {CELERY}, but the Batch scenario runs its jobs on Celery: answer "yes".',
        ),
        (
            ["scenario=batch", "database=none"],
            f'"No database" to {DATABASE}, but Celery jobs ("yes" to {CELERY}) live in a '
            'database table: choose "PostgreSQL".',
        ),
        (["project_slug=_2fast"], f"\"_2fast\" to {SLUG}, which gives the deployment name '2fast'"),
        (["project_slug=" + "a" * 64], f'"{"a" * 64}" to {SLUG}, which gives the deployment name'),
        (
            ["database=none"],
            f'"No database" to {DATABASE}, but the Public API scenario stores its /items '
            'resource in a database: choose "PostgreSQL".',
        ),
        (
            ["scenario=microservice", "database=none"],
            f'"No database" to {DATABASE}, but the Internal microservice scenario stores its '
            "/items resource in a database",
        ),
        (
            ["scenario=ml_inference", "database=postgresql"],
            f'"PostgreSQL" to {DATABASE}, but the ML inference scenario serves a model and '
            'keeps no data: choose "No database", or the default.',
        ),
        (
            ["scenario=ml_inference", "use_celery=yes"],
            f'"yes" to {CELERY}, but the ML inference scenario keeps no data, and Celery jobs '
            'live in a database table: answer "no".',
        ),
        (["project_slug=sklearn"], f'"sklearn" to {SLUG}, which would hide the sklearn package'),
        (["project_slug=bench"], f'"bench" to {SLUG}, which would hide the bench package'),
        (
            ["scenario=websocket", "database=postgresql"],
            f'"PostgreSQL" to {DATABASE}, but the WebSocket rooms scenario relays messages '
            "between connected clients and keeps no data",
        ),
        (
            ["scenario=websocket", "use_celery=yes"],
            f'"yes" to {CELERY}, but the WebSocket rooms scenario keeps no data, and Celery '
            'jobs live in a database table: answer "no".',
        ),
        (["project_slug=websockets"], f'"websockets" to {SLUG}, which would hide the websockets'),
    ],
)
def test_bad_answer_is_refused_with_one_sentence_naming_the_prompt_and_the_answer(
    hook: ModuleType, given: list[str], message: str
) -> None:
    found = refusals(hook, *given)

    assert len(found) == 1, found
    assert found[0].startswith("You answered " + message)
    # One sentence, in the prompts' words: no command-line key=value.
    assert found[0].endswith(".")
    assert ". " not in found[0]
    assert "=" not in found[0]


def test_every_problem_is_reported_not_only_the_first(hook: ModuleType) -> None:
    found = refusals(hook, "project_slug=json", "scenario=batch", "use_celery=no")

    assert found == [
        f'You answered "json" to {SLUG}, which would shadow the standard-library module of '
        "that name: choose another name.",
        f'You answered "no" to {CELERY}, but the Batch scenario runs its jobs on Celery: '
        'answer "yes".',
    ]


def test_kubernetes_other_than_yes_or_no_is_refused(hook: ModuleType) -> None:
    # cookiecutter's choice list refuses this first; the hook does not count on it
    given = {**answers(hook), "kubernetes": "maybe"}

    found = hook.problems(given, PROMPTS)

    assert found == [
        'You answered "maybe" to "Generate Kubernetes manifests?": answer "yes" or "no".'
    ]


@pytest.mark.parametrize(
    "given",
    [
        [],
        ["scenario=microservice"],
        ["scenario=ml_inference"],
        ["scenario=websocket"],
        ["scenario=batch"],
        ["scenario=ml_inference", "database=none"],
        ["scenario=batch", "database=postgresql"],
        ["use_celery=yes"],
        ["kubernetes=yes"],
        ["project_name=Order Service"],
        ["project_slug=_internal"],
        ["project_slug=" + "a" * 63],
    ],
)
def test_supported_answers_are_accepted(hook: ModuleType, given: list[str]) -> None:
    assert refusals(hook, *given) == []


# The wiring, end to end: a real cookiecutter run per test.


def test_a_refused_answer_stops_cookiecutter_with_its_error_and_writes_nothing(
    tmp_path: Path,
) -> None:
    result = bake(tmp_path, "project_slug=json")

    assert result.returncode != 0
    assert f'ERROR: You answered "json" to {SLUG}, which would shadow' in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_template_named_by_a_relative_path_words_its_refusals_in_the_prompts(
    tmp_path: Path,
) -> None:
    """`cookiecutter path/to/fastapi-prod`: the hook runs in the project's folder, and finds
    the prompts relative to where cookiecutter was started."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cookiecutter",
            TEMPLATE.name,
            "--no-input",
            "-o",
            str(tmp_path),
            "scenario=batch",
            "use_celery=no",
        ],
        cwd=TEMPLATE.parent,
        env={**os.environ, "PWD": str(TEMPLATE.parent)},
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode != 0
    assert f'ERROR: You answered "no" to "{PROMPTS["use_celery"]}", but' in result.stderr
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


def test_next_steps_name_the_project_as_the_shell_that_baked_it_reaches_it(
    tmp_path: Path,
) -> None:
    # Baked into out/ by a shell in tmp_path (as dev.py serve bakes into .scratch/), and by
    # one elsewhere. No lock is written: an index nothing listens at.
    unreachable = {"UV_DEFAULT_INDEX": "http://127.0.0.1:9/simple", "UV_HTTP_RETRIES": "0"}

    inside = bake(tmp_path / "out", PWD=str(tmp_path), **unreachable)
    outside = bake(
        tmp_path / "other", "project_name=Other", PWD=str(tmp_path / "out"), **unreachable
    )

    assert "\n  cd out/my_service\n" in inside.stdout, inside.stdout
    assert f"\n  cd {tmp_path.resolve()}/other/other\n" in outside.stdout, outside.stdout


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


# The prompts a person answers, driven for real.


def choices(prompted: str) -> list[list[str]]:
    """The choices of each choice prompt cookiecutter printed, in order."""
    blocks = re.split(r"\[\d+/\d+\]", prompted)
    return [found for block in blocks if (found := re.findall(r"^ +\d+ - (.+)$", block, re.M))]


@pytest.mark.parametrize("scenario", COOKIECUTTER_JSON["scenario"])
def test_interactive_prompts_list_each_choice_once_and_default_to_what_the_scenario_needs(
    tmp_path: Path, scenario: str
) -> None:
    # Enter at every prompt but the scenario's, answered with its number; no lock is written
    # (an index nothing listens at) to keep the bake short.
    typed = "\n" * 4 + f"{COOKIECUTTER_JSON['scenario'].index(scenario) + 1}\n" + "\n" * 4
    result = subprocess.run(
        [sys.executable, "-m", "cookiecutter", str(TEMPLATE), "-o", str(tmp_path)],
        input=typed,
        env={
            **os.environ,
            "COLUMNS": "200",
            "UV_DEFAULT_INDEX": "http://127.0.0.1:9/simple",
            "UV_HTTP_RETRIES": "0",
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    listed = choices(result.stdout)
    database = PROMPTS["database"]

    assert result.returncode == 0, result.stdout + result.stderr
    assert len(listed) == 4  # scenario, database, kubernetes, python_version
    assert [sorted(set(block)) for block in listed] == [sorted(block) for block in listed]
    assert listed[1] == [database[value] for value in COOKIECUTTER_JSON["database"]]
    keeps_data = COOKIECUTTER_JSON["_scenarios"][scenario]["database"] != "refused"
    assert (tmp_path / "my_service" / "alembic.ini").exists() == keeps_data


# The shape of the template: features, not scenarios.

PROJECT = TEMPLATE / "{{cookiecutter.project_slug}}"
# The files that must ask features (the Python files, and these three).
ASKING_FEATURES = [
    *PROJECT.rglob("*.py"),
    *(PROJECT / name for name in ("Makefile", "pyproject.toml", "compose.yaml")),
]
JINJA_TAG = re.compile(r"\{%.*?%\}", re.DOTALL)
SCENARIOS = COOKIECUTTER_JSON["scenario"]


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
