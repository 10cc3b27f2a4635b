"""Each baked project's own test suite passes, on SQLite and, with a database, on PostgreSQL."""

import re

import pytest

from .baked import Project
from .conftest import SCENARIOS_WITH_DATABASE

on_a_database = pytest.mark.parametrize("project", SCENARIOS_WITH_DATABASE, indirect=True)
# The quick tier's one baked suite: the scenario with the most parts (a database and jobs).
QUICK_SUITE = "batch"


def test_suite_passes_on_sqlite(project: Project) -> None:
    result = project.make("test")

    assert " passed" in result.stdout
    assert " failed" not in result.stdout
    # The worker under a real Gunicorn, through a reload and a recycle: run, none skipped.
    assert re.search(r"^tests/test_serving\.py \.+ ", result.stdout, re.MULTILINE), result.stdout


@pytest.mark.parametrize(
    "project",
    [
        pytest.param(scenario, marks=pytest.mark.quick) if scenario == QUICK_SUITE else scenario
        for scenario in SCENARIOS_WITH_DATABASE
    ],
    indirect=True,
)
def test_suite_passes_on_postgresql(project: Project, postgres_url: str) -> None:
    result = project.make("test", DATABASE_URL=postgres_url)

    assert " passed" in result.stdout
    assert " failed" not in result.stdout


@on_a_database
def test_migrations_run_down_and_up_again_on_postgresql(
    project: Project, postgres_url: str
) -> None:
    database = project.database(postgres_url)

    for step in ("downgrade base", "upgrade head"):
        result = project.run("alembic", *step.split(), **database)
        assert result.returncode == 0, result.stderr
