"""The CPU count follows affinity and every CFS quota above the process, not the host."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from {{ cookiecutter.project_slug }}.serving.cpu import effective_cpu_count

from .test_gunicorn_conf import clean_env

PROJECT_ROOT = Path(__file__).parent.parent
HOST_CPUS = len(os.sched_getaffinity(0))
V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNT = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"


def cgroup_tree(tmp_path: Path, membership: str, mountinfo: str, files: dict[str, str]) -> Path:
    """A fake /proc/self and cgroup filesystem under tmp_path; returns the fake /proc/self."""
    proc_self = tmp_path / "proc" / "self"
    proc_self.mkdir(parents=True)
    (proc_self / "cgroup").write_text(membership)
    (proc_self / "mountinfo").write_text(mountinfo)
    for name, content in files.items():
        path = tmp_path / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return proc_self


def test_v2_quota_of_the_process_own_cgroup_counts(tmp_path: Path) -> None:
    proc_self = cgroup_tree(
        tmp_path,
        "0::/kubepods/pod1/app\n",
        V2_MOUNT,
        {
            "/sys/fs/cgroup/cpu.max": "max 100000\n",
            "/sys/fs/cgroup/kubepods/pod1/app/cpu.max": "100000 100000\n",
        },
    )

    cpus = effective_cpu_count(proc_self, root=tmp_path)

    assert cpus.count == 1
    assert cpus.source.endswith("kubepods/pod1/app")


def test_v2_quota_of_an_ancestor_limits_its_children(tmp_path: Path) -> None:
    proc_self = cgroup_tree(
        tmp_path,
        "0::/slice/service\n",
        V2_MOUNT,
        {
            "/sys/fs/cgroup/slice/cpu.max": "150000 100000\n",
            "/sys/fs/cgroup/slice/service/cpu.max": "max 100000\n",
        },
    )

    cpus = effective_cpu_count(proc_self, root=tmp_path)

    assert cpus.count == min(2, HOST_CPUS)  # 1.5 CPUs round up to 2


def test_v2_without_a_quota_falls_back_to_affinity(tmp_path: Path) -> None:
    proc_self = cgroup_tree(
        tmp_path, "0::/\n", V2_MOUNT, {"/sys/fs/cgroup/cpu.max": "max 100000\n"}
    )

    cpus = effective_cpu_count(proc_self, root=tmp_path)

    assert (cpus.count, cpus.source) == (HOST_CPUS, "affinity")


def test_v2_inside_a_container_namespace_reads_the_mount_root(tmp_path: Path) -> None:
    # A container sees its own cgroup as "/" and has it mounted at /sys/fs/cgroup.
    mountinfo = "30 23 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    proc_self = cgroup_tree(
        tmp_path, "0::/kubepods/pod1\n", mountinfo, {"/sys/fs/cgroup/cpu.max": "50000 100000\n"}
    )

    assert effective_cpu_count(proc_self, root=tmp_path).count == 1


def test_v1_quota_is_read_from_the_cpu_controller(tmp_path: Path) -> None:
    proc_self = cgroup_tree(
        tmp_path,
        "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n",
        V1_MOUNT,
        {
            "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000\n",
            "/sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )

    assert effective_cpu_count(proc_self, root=tmp_path).count == 1


def test_unreadable_cgroup_files_fall_back_to_affinity(tmp_path: Path) -> None:
    assert effective_cpu_count(tmp_path / "missing", root=tmp_path).source == "affinity"


def test_taskset_limits_the_worker_count() -> None:
    taskset = shutil.which("taskset")
    assert taskset, "taskset (util-linux) is needed to pin the process to one CPU"

    printed = subprocess.run(
        [taskset, "-c", "0", sys.executable, "gunicorn.conf.py"],
        cwd=PROJECT_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    config = json.loads(printed)

    assert (config["cpus"], config["cpus_from"], config["workers"]) == (1, "affinity", 1)
