"""`make bench`'s middleware comparison runs on a baked project and prints what it promises.

One round of one second: this checks that the bench serves both apps under Gunicorn, drives
them with wrk and reports a table and the stack-to-bare ratio, not how fast anything is.
"""

import re

import pytest

from .baked import Project
from .conftest import require_tool

pytestmark = pytest.mark.parametrize("project", ["public_api"], indirect=True)


@pytest.fixture(scope="module")
def wrk() -> str:
    return require_tool("wrk")


def test_stack_bench_prints_both_apps_and_their_ratio(project: Project, wrk: str) -> None:
    result = project.run(
        str(project.venv / "bin" / "python"),
        "-m",
        "bench.stack",
        BENCH_SECONDS="1",
        BENCH_ROUNDS="1",
        BENCH_CONNECTIONS="4",
        PYTHONPATH=f"{project.path / 'src'}:{project.path}",
    )

    assert result.returncode == 0, result.stderr
    rows = dict(
        re.findall(r"^\| (bare FastAPI|full stack) \| (\d+) \| [\d.]+ \|$", result.stdout, re.M)
    )
    ratio = re.search(r"^stack / bare: (\d+\.\d\d)$", result.stdout, re.M)
    assert set(rows) == {"bare FastAPI", "full stack"}, result.stdout
    assert ratio is not None, result.stdout
    expected = int(rows["full stack"]) / int(rows["bare FastAPI"])
    assert float(ratio[1]) == pytest.approx(expected, abs=0.01)
