"""How many CPUs this process may really use.

``os.cpu_count()`` counts the host's CPUs. A container, a Kubernetes pod or a systemd
slice usually grants fewer: through CPU affinity (``taskset``, cpusets) or through a CFS
quota in its cgroup. One worker per host CPU inside a 1-CPU quota makes every request
slower, so the worker count starts from the smallest of those limits.
"""

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuCount:
    count: int
    source: str


def effective_cpu_count(proc_self: Path = Path("/proc/self"), root: Path = Path("/")) -> CpuCount:
    """The smallest of the affinity mask and every CFS quota above this process, rounded up.

    ``proc_self`` and ``root`` exist so tests can point the lookup at a synthetic tree.
    """
    if hasattr(os, "sched_getaffinity"):
        limits = [CpuCount(len(os.sched_getaffinity(0)), "affinity")]
    else:  # macOS: no affinity masks, no cgroups
        limits = [CpuCount(os.cpu_count() or 1, "os.cpu_count")]
    limits += _quota_limits(proc_self, root)
    return min(limits, key=lambda limit: limit.count)


def _quota_limits(proc_self: Path, root: Path) -> Iterator[CpuCount]:
    try:
        memberships = (proc_self / "cgroup").read_text().splitlines()
        mounts = [_Mount.parse(line) for line in (proc_self / "mountinfo").read_text().splitlines()]
    except OSError:
        return
    for membership in memberships:
        _, controllers, path = membership.split(":", 2)
        files: tuple[str, ...]
        if controllers == "":
            version, files = "v2", ("cpu.max",)
            mount = next((m for m in mounts if m.fstype == "cgroup2"), None)
        elif "cpu" in controllers.split(","):
            version, files = "v1", ("cpu.cfs_quota_us", "cpu.cfs_period_us")
            mount = next((m for m in mounts if m.fstype == "cgroup" and "cpu" in m.options), None)
        else:
            continue
        if mount is None:
            continue
        for directory in mount.directories_of(path, root):
            cpus = _read_quota(directory, files)
            if cpus is not None:
                yield CpuCount(cpus, f"cgroup {version} quota in {directory}")


def _read_quota(directory: Path, files: tuple[str, ...]) -> int | None:
    """CPUs granted by the quota in one cgroup directory, or None when it has none."""
    try:
        if len(files) == 1:
            quota, period = (directory / files[0]).read_text().split()
        else:
            quota, period = ((directory / name).read_text().strip() for name in files)
    except (OSError, ValueError):
        return None
    if quota in ("max", "-1") or int(period) <= 0:
        return None
    return max(1, math.ceil(int(quota) / int(period)))


@dataclass(frozen=True)
class _Mount:
    """One line of /proc/self/mountinfo, as far as cgroups need it."""

    root: str
    mount_point: str
    fstype: str
    options: frozenset[str]

    @classmethod
    def parse(cls, line: str) -> "_Mount":
        before, after = line.split(" - ", 1)
        fields = before.split()
        fstype, _source, super_options = after.split()[:3]
        return cls(
            root=_unescape(fields[3]),
            mount_point=_unescape(fields[4]),
            fstype=fstype,
            options=frozenset(super_options.split(",")),
        )

    def directories_of(self, cgroup_path: str, root: Path) -> Iterator[Path]:
        """The cgroup's own directory, then each parent up to the mount point.

        A limit set on any ancestor applies to every cgroup below it.
        """
        inside = cgroup_path.startswith(self.root)
        relative = os.path.relpath(cgroup_path, self.root) if inside else "."
        base = root / self.mount_point.lstrip("/")
        parts = [] if relative == "." else Path(relative).parts
        for depth in range(len(parts), -1, -1):
            yield base.joinpath(*parts[:depth])


def _unescape(field: str) -> str:
    """mountinfo writes spaces and tabs in paths as octal escapes (\\040)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field
