"""Every supported combination bakes into a project that is fully rendered and lint-clean."""

import re
from collections.abc import Callable

import pytest

from .baked import Project
from .conftest import PYTHON_VERSIONS, SCENARIOS, answers_for, require_tool, supported_combinations

pytestmark = pytest.mark.quick
UNRENDERED = re.compile(r"{{|{%|cookiecutter\.")


@pytest.fixture(params=supported_combinations(), ids=lambda answers: "-".join(answers.values()))
def baked(request: pytest.FixtureRequest, bake: Callable[[dict[str, str]], Project]) -> Project:
    return bake(request.param)


def test_no_file_keeps_template_syntax(baked: Project) -> None:
    leftovers = [
        f"{path.relative_to(baked.path)}:{number}: {line.strip()}"
        for path in baked.path.rglob("*")
        if path.is_file()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if UNRENDERED.search(line)
    ]

    assert leftovers == []


def test_only_the_base_profile_and_the_scenarios_are_left(baked: Project) -> None:
    profiles = baked.path / "src" / "my_service" / "profiles"

    assert sorted(path.name for path in profiles.iterdir()) == sorted(
        ["base.toml", f"{baked.scenario}.toml"]
    )
    assert not (baked.path / "src" / "my_service" / "profile.py").exists()


@pytest.mark.usefixtures("installed_venv")
def test_ruff_and_mypy_strict_pass(baked: Project) -> None:
    for command in (["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]):
        result = baked.run(*command)
        assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_bake_ships_a_lock_that_matches_its_dependencies(
    scenario: str, bake: Callable[[dict[str, str]], Project]
) -> None:
    # The oldest Python's bake: uv locks with a Python the project accepts, and finds this one.
    baked = bake({**answers_for(scenario), "python_version": PYTHON_VERSIONS[0]})

    result = baked.run(require_tool("uv"), "lock", "--check")

    assert result.returncode == 0, result.stderr
