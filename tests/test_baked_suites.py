"""Each baked project's own test suite passes, on SQLite and on PostgreSQL."""

from .baked import Project


def test_suite_passes_on_sqlite(project: Project) -> None:
    result = project.make("test")

    assert " passed" in result.stdout
    assert " failed" not in result.stdout


def test_suite_passes_on_postgresql(project: Project, postgres_url: str) -> None:
    result = project.make("test", DATABASE_URL=postgres_url)

    assert " passed" in result.stdout
    assert " failed" not in result.stdout


def test_migrations_run_down_and_up_again_on_postgresql(
    project: Project, postgres_url: str
) -> None:
    database = project.database(postgres_url)

    for step in ("downgrade base", "upgrade head"):
        result = project.run("alembic", *step.split(), **database)
        assert result.returncode == 0, result.stderr
