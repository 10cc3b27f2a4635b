"""Every Python version offered at bake time runs its bake's own tests and linters, with
that interpreter (found with pyenv or uv; missing in CI, a failure); and the baked Makefile
makes its environment with the Python it is told to use, and only that one."""

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .baked import Project, venv_for
from .conftest import EVERY_DEPENDENCY, PYTHON_VERSIONS, answers_for, bake_path, require_python

# The bake with the most parts: items in a database, and Celery jobs.
WIDEST = EVERY_DEPENDENCY[0]


@pytest.fixture
def bake(cookies_session: object) -> Callable[[dict[str, str]], Path]:
    """A bake of the test's own: these tests run and install in it."""

    return lambda answers: bake_path(cookies_session, answers)


@pytest.mark.parametrize("version", PYTHON_VERSIONS)
def test_a_bake_for_each_python_passes_its_own_tests_and_lint(
    version: str, bake: Callable[[dict[str, str]], Path]
) -> None:
    baked = bake({**WIDEST, "python_version": version})
    project = Project(baked, WIDEST, venv_for(require_python(version)))

    tested = project.make("test")
    linted = project.make("lint")

    assert " passed" in tested.stdout
    assert " failed" not in tested.stdout
    assert "Success: no issues found" in linted.stdout


def make(project: Path, *args: str) -> tuple[int, str]:
    """`make` in a bake as its user runs it, outside any virtual environment; exit code and
    output."""
    env = {name: value for name, value in os.environ.items() if name != "VIRTUAL_ENV"}
    result = subprocess.run(
        ["make", *args], cwd=project, env=env, capture_output=True, text=True, check=False
    )
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def websocket_bake(bake: Callable[[dict[str, str]], Path]) -> Path:
    """The bake with the fewest dependencies, for the tests that install it again."""
    return bake({**answers_for("websocket"), "python_version": PYTHON_VERSIONS[0]})


def test_make_stops_with_one_line_when_python_cannot_run(websocket_bake: Path) -> None:
    code, output = make(websocket_bake, "install", "PYTHON=/nonexistent/python3")

    assert code != 0
    assert "No Python at PYTHON=/nonexistent/python3" in output
    assert len(output.strip().splitlines()) == 1, output


def test_make_refuses_a_python_older_than_the_bakes(
    bake: Callable[[dict[str, str]], Path],
) -> None:
    newest = bake({**answers_for("websocket"), "python_version": PYTHON_VERSIONS[-1]})
    oldest = require_python(PYTHON_VERSIONS[0])

    code, output = make(newest, "install", f"PYTHON={oldest}")

    assert code != 0
    assert f"is Python {PYTHON_VERSIONS[0]}; this service needs {PYTHON_VERSIONS[-1]}" in output


def test_make_builds_the_environment_again_only_when_another_python_made_it(
    websocket_bake: Path, tmp_path: Path
) -> None:
    oldest, newer = require_python(PYTHON_VERSIONS[0]), require_python(PYTHON_VERSIONS[1])
    venv = tmp_path / "venv"
    first_code, first = make(websocket_bake, "install", f"VENV={venv}", f"PYTHON={oldest}")

    again_code, again = make(websocket_bake, "install", f"VENV={venv}", f"PYTHON={newer}")
    same_code, same = make(websocket_bake, "install", f"VENV={venv}", f"PYTHON={newer}")

    assert (first_code, again_code, same_code) == (0, 0, 0), first + again + same
    assert f"was made by Python {PYTHON_VERSIONS[0]}" in again
    assert (venv / "bin" / f"python{PYTHON_VERSIONS[1]}").exists()
    assert "was made by" not in same


def test_make_installs_into_a_venv_uv_made_without_uv_on_its_path(
    websocket_bake: Path, tmp_path: Path
) -> None:
    """A venv made by uv has no pip (python3 dev.py serve makes its bake's so): make, run
    where no uv is on PATH, gives it pip to install uv with, rather than failing."""
    python = require_python(PYTHON_VERSIONS[0])
    venv = tmp_path / "venv"
    subprocess.run(["uv", "venv", "--quiet", "--python", python, str(venv)], check=True)
    no_uv = tmp_path / "bin"
    no_uv.mkdir()
    for tool in ("make", "sh", "cut", "rm", "touch", "ls", "cat", "dirname", "uname"):
        found = shutil.which(tool)
        if found:
            (no_uv / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(no_uv)}  # the package index's settings kept
    env.pop("VIRTUAL_ENV", None)

    result = subprocess.run(
        ["make", "install", f"VENV={venv}", f"PYTHON={python}"],
        cwd=websocket_bake,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert (venv / "bin" / "uv").exists()
    assert (venv / "bin" / "gunicorn").exists()
