"""Schemathesis, against each scenario's OpenAPI schema, on Gunicorn (and PostgreSQL, for a
scenario with a database), finds no 5xx and no response that breaks the schema."""

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .baked import Project

CHECKS = ["--checks", "all"]
CONFIG = Path(__file__).with_name("schemathesis.toml")


def test_schemathesis_finds_no_failure(
    project: Project,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    summary: Callable[[str], None],
) -> None:
    database = (
        project.database(request.getfixturevalue("postgres_url")) if project.has_database else {}
    )

    with project.serve(workers=2, **database) as server:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(CONFIG),
                "run",
                *CHECKS,
                f"{server.url}/openapi.json",
            ],
            cwd=tmp_path,  # a fresh example database: every run starts from its own seed
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )

    cases = re.search(r"(\d+) generated", result.stdout)
    summary(f"schemathesis {project.scenario}: {cases[1] if cases else '?'} cases")
    assert result.returncode == 0, result.stdout[-6000:]
    assert cases, result.stdout[-2000:]
    assert int(cases[1]) > 100, result.stdout[-2000:]
    assert not re.search(r'HTTP/1.1" 5\d\d', server.log()), "the server answered a 5xx"
