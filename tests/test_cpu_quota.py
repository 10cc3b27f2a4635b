"""`python gunicorn.conf.py` counts a real cgroup CPU quota, its own or an ancestor's.

Needs root and a writable cgroup hierarchy with the cpu controller (v1 or v2), as these
machines have; elsewhere the test is skipped and says why.
"""

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .baked import Project

PERIOD_US = 100_000


def cpu_hierarchy() -> tuple[str, Path] | None:
    """The cgroup version and root directory where CPU quotas can be set, if any."""
    v2_controllers = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2_controllers.exists() and "cpu" in v2_controllers.read_text().split():
        return "v2", v2_controllers.parent
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cpu.cfs_quota_us").exists():
        return "v1", v1
    return None


def set_quota(version: str, group: Path, cpus: float) -> None:
    if version == "v2":
        (group / "cpu.max").write_text(f"{int(cpus * PERIOD_US)} {PERIOD_US}")
    else:
        (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(int(cpus * PERIOD_US)))


@contextmanager
def nested_cgroups(parent_cpus: float | None, child_cpus: float | None) -> Iterator[Path]:
    """A parent cgroup with a child, each with an optional quota; removed afterwards."""
    found = cpu_hierarchy()
    if found is None:
        pytest.skip("no cgroup hierarchy with the cpu controller is mounted here")
    version, root = found
    parent = root / f"fastapi-prod-test-{uuid.uuid4().hex[:8]}"
    child = parent / "service"
    try:
        parent.mkdir()
    except OSError as error:
        pytest.skip(f"the cgroup hierarchy at {root} is not writable: {error}")
    try:
        if version == "v2":
            (parent / "cgroup.subtree_control").write_text("+cpu")
        child.mkdir()
        for group, cpus in ((parent, parent_cpus), (child, child_cpus)):
            if cpus is not None:
                set_quota(version, group, cpus)
        yield child
    finally:
        for group in (child, parent):
            if group.exists():
                group.rmdir()


def config_inside(project: Project, group: Path) -> dict[str, object]:
    """What gunicorn.conf.py resolves for a process that starts inside the cgroup."""
    result = project.run(
        "sh",
        "-c",
        'echo $$ > "$0/cgroup.procs" && exec python gunicorn.conf.py',
        str(group),
        WEB_CONCURRENCY="",
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, object] = json.loads(result.stdout)
    return config


def test_quota_of_the_process_own_cgroup_sets_the_workers(project: Project) -> None:
    with nested_cgroups(parent_cpus=None, child_cpus=1) as group:
        config = config_inside(project, group)

    assert (config["cpus"], config["workers"]) == (1, 1)
    assert str(config["cpus_from"]).endswith(f"{group.parent.name}/service")


def test_quota_of_a_parent_cgroup_limits_the_process_below_it(project: Project) -> None:
    with nested_cgroups(parent_cpus=1, child_cpus=None) as group:
        config = config_inside(project, group)

    assert (config["cpus"], config["workers"]) == (1, 1)
    assert str(config["cpus_from"]).endswith(group.parent.name)
