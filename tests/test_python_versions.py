"""Every Python version offered at bake time runs its bake's own tests and linters, with
that interpreter (found with pyenv or uv; missing in CI, a failure)."""

from pathlib import Path

import pytest

from .baked import TEMPLATE, Project, find_interpreter, venv_for
from .conftest import EVERY_DEPENDENCY, PYTHON_VERSIONS, require_that

# The bake with the most parts: items in a database, and Celery jobs.
WIDEST = EVERY_DEPENDENCY[0]


@pytest.mark.parametrize("version", PYTHON_VERSIONS)
def test_a_bake_for_each_python_passes_its_own_tests_and_lint(
    version: str, cookies_session: object
) -> None:
    interpreter = find_interpreter(version)
    require_that(interpreter is not None, f"no Python {version} here (pyenv, uv python find)")
    assert interpreter is not None
    result = cookies_session.bake(  # type: ignore[attr-defined]
        template=str(TEMPLATE), extra_context={**WIDEST, "python_version": version}
    )
    assert result.exit_code == 0, result.exception
    project = Project(Path(result.project_path), WIDEST["scenario"], venv_for(interpreter))

    tested = project.make("test")
    linted = project.make("lint")

    assert " passed" in tested.stdout
    assert " failed" not in tested.stdout
    assert f"Python {version}" in project.python("import sys; print('Python', sys.version)")
    assert "Success: no issues found" in linted.stdout
