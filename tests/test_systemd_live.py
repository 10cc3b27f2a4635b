"""The hardened systemd units run the service under a real systemd.

`systemd-analyze security` only scores a unit. Here a baked project's units run under
systemd itself, PID 1 of namespaces of its own on a throwaway root (systemd_sandbox.sh),
with every hardening setting they keep: Gunicorn binds its port, forks its workers, writes
its Prometheus files where the unit says, reloads on SIGHUP, follows CPUQuota= and stops
cleanly; the Celery worker takes a job from Redis and records its outcome. Needs root,
unshare and systemd, as these machines have.
"""

import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from .baked import TEMPLATE, Project, free_port
from .conftest import bake_path, require_tool, supported_combinations
from .test_deploy import with_celery
from .waiting import TimedOut, wait_for, wait_until

SANDBOX = Path(__file__).with_name("systemd_sandbox.sh")
SYSTEM_PYTHON = Path("/usr/bin/python3")  # ProtectHome= hides interpreters under /root
# Seconds an HTTP request to the service may take: workers that are still starting, on a
# busy machine, answer late but answer.
HTTP_TIMEOUT = 60


@dataclass
class Host:
    """The sandbox's systemd, and the service its units run."""

    pid: int  # systemd's pid as this machine sees it
    name: str
    url: str

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        namespaces = ["--mount", "--pid", "--cgroup", "--uts", "--ipc", "--root", "--wd"]
        return subprocess.run(
            ["nsenter", f"--target={self.pid}", *namespaces, *command],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    def systemctl(self, *args: str) -> str:
        result = self.run("systemctl", "--no-pager", *args)
        assert result.returncode == 0, (
            f"systemctl {' '.join(args)}:\n{result.stdout}{result.stderr}"
        )
        return result.stdout.strip()

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", unit, f"--property={prop}", "--value")

    def api_processes(self) -> tuple[int, set[int]]:
        """The Gunicorn master's pid and its workers', as the sandbox sees them."""
        master = int(self.show(f"{self.name}.service", "MainPID"))
        children = self.run("cat", f"/proc/{master}/task/{master}/children").stdout
        return master, {int(pid) for pid in children.split()}

    def wait_until_serving(self, workers: int) -> set[int]:
        """The workers' pids, once the service answers and has `workers` of them."""

        def serving_workers() -> set[int]:
            try:
                if httpx.get(f"{self.url}/health/live", timeout=HTTP_TIMEOUT).status_code == 200:
                    return self.api_processes()[1]
            except (httpx.TransportError, AssertionError, ValueError):
                pass  # not started yet, or (re)starting
            return set()

        try:
            return wait_for(
                serving_workers,
                lambda pids: len(pids) == workers,
                f"{workers} workers serving",
                every=0.2,
            )
        except TimedOut as error:
            status = self.run("systemctl", "--no-pager", "status", f"{self.name}.service")
            raise AssertionError(f"{error}\n{status.stdout}") from None


def requirements() -> None:
    if os.geteuid() != 0:
        message = "booting systemd in namespaces of its own needs root"
        if os.environ.get("REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    for tool in ("unshare", "nsenter", "uv", "/lib/systemd/systemd", str(SYSTEM_PYTHON)):
        require_tool(tool)


def remove_cgroups(listed: Path) -> None:
    """The cgroups the sandbox made, with whatever its systemd left below them."""
    if not listed.exists():
        return
    for top in listed.read_text().split():
        for group in sorted(Path(top).glob("**/"), key=lambda path: len(path.parts), reverse=True):
            group.rmdir()


@pytest.fixture(scope="module")
def host(
    cookies_session: object, installed_venv: Path, postgres_url: str, redis_url: str
) -> Iterator[Host]:
    """A project with Celery, installed under /opt as deploy/README.md says, its units
    started by systemd with an environment file pointing at PostgreSQL and Redis."""
    requirements()
    answers = next(answers for answers in supported_combinations() if with_celery(answers))
    project = Project(bake_path(cookies_session, answers), answers, installed_venv)
    name = project.path.name.replace("_", "-")
    work = project.path.parent / "systemd-host"
    (work / "root").mkdir(parents=True)
    (project.path / ".venv").mkdir()  # where the service's environment is mounted
    venv = work / "venv"
    subprocess.run(
        ["uv", "venv", "--quiet", "--relocatable", "--python", str(SYSTEM_PYTHON), str(venv)],
        check=True,
    )
    subprocess.run(
        [
            "uv",
            "pip",
            "install",
            "--quiet",
            "--python",
            str(venv / "bin" / "python"),
            str(project.path),
        ],
        check=True,
    )
    port = free_port()
    settings = {
        "ENVIRONMENT": "production",
        "SECRET_KEY": uuid.uuid4().hex,
        "ALLOWED_HOSTS": "127.0.0.1",
        **project.database(postgres_url),
        # Redis keys of its own: no other worker takes these jobs, not even the sandbox's
        # of another run on this machine. (Under the prefix of the run's own keys where
        # there is one, tests/services.py: they go when the run ends.)
        "CELERY_BROKER_URL": redis_url,
        "REDIS_KEY_PREFIX": f"{project.env.get('REDIS_KEY_PREFIX', '')}{uuid.uuid4().hex}:",
        "PORT": str(port),
        "METRICS_PORT": str(free_port()),
    }
    env_file = work / f"{name}.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
    cgroups = work / "cgroups"
    with (work / "sandbox.log").open("w") as log:
        sandbox = subprocess.Popen(
            [
                str(SANDBOX),
                str(work / "root"),
                str(project.path),
                str(venv),
                str(project.path / "deploy" / "systemd"),
                str(env_file),
                name,
                str(cgroups),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    systemd_pid = None
    try:
        systemd_pid = systemd_of(sandbox, work / "sandbox.log")
        host = Host(systemd_pid, name, f"http://127.0.0.1:{port}")
        wait_until(
            lambda: (
                host.run("systemctl", "is-system-running").stdout.strip() in ("running", "degraded")
            ),
            "the sandbox's systemd to finish booting",
            every=0.2,
        )
        host.systemctl("start", f"{name}.service", f"{name}-worker.service")
        yield host
    finally:
        if systemd_pid is not None:
            os.kill(systemd_pid, signal.SIGRTMIN + 4)  # systemd's "power off"
        try:
            sandbox.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(sandbox.pid, signal.SIGKILL)
            if systemd_pid is not None:
                os.kill(systemd_pid, signal.SIGKILL)
            sandbox.wait()
        remove_cgroups(cgroups)


def systemd_of(sandbox: subprocess.Popen[bytes], log: Path) -> int:
    """The pid of the sandbox's systemd: the child unshare forks."""
    children = Path(f"/proc/{sandbox.pid}/task/{sandbox.pid}/children")

    def systemd() -> int:
        """Its pid, or 0 while there is none yet."""
        if sandbox.poll() is not None:
            raise AssertionError(f"the sandbox exited:\n{log.read_text()}")
        for pid in children.read_text().split() if children.exists() else []:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                return int(pid)
        return 0

    try:
        return wait_for(systemd, bool, "the sandbox's systemd to start", every=0.1)
    except TimedOut as error:
        raise AssertionError(f"{error}:\n{log.read_text()}") from None


def test_api_serves_with_a_worker_per_cpu_and_metrics_in_its_runtime_directory(
    host: Host,
) -> None:
    workers = host.wait_until_serving(workers=len(os.sched_getaffinity(0)))

    def readiness() -> tuple[int, dict[str, str]]:
        answer = httpx.get(f"{host.url}/health/ready", timeout=HTTP_TIMEOUT)
        return answer.status_code, answer.json()["failed"]

    # Each dependency has the readiness timeout (1 s) to answer: on a busy machine a new
    # worker's first answers may come later, and a load balancer's next probe sees it ready.
    ready = wait_for(readiness, lambda ready: ready == (200, {}), "readiness", every=0.5)
    metrics_dir = host.run("stat", "--format=%U %a", f"/run/{host.name}/metrics")
    files = host.run("ls", f"/run/{host.name}/metrics").stdout.split()

    def serving() -> set[int]:
        """Workers that marked themselves serving, for the recycling turns (serving/)."""
        files = host.run("ls", f"/run/{host.name}/metrics/serving").stdout.split()
        return {int(file.removesuffix(".serving")) for file in files if file.endswith(".serving")}

    # A worker may still be starting its app.
    marked = wait_for(serving, lambda pids: pids == workers, "every worker marked serving")

    assert ready == (200, {})
    assert metrics_dir.stdout.split() == [host.name, "700"]
    samples = [file for file in files if file.endswith(".db")]
    writers = {int(re.sub(r"\D", "", file.rpartition("_")[2])) for file in samples}
    assert samples
    assert writers <= workers
    assert marked == workers
    assert host.show(f"{host.name}.service", "StatusText") == "Gunicorn arbiter booted"


def test_worker_takes_a_job_from_the_broker_and_records_it(host: Host) -> None:
    csv = (TEMPLATE / "{{cookiecutter.project_slug}}" / "examples" / "orders.csv").read_bytes()
    host.wait_until_serving(workers=len(os.sched_getaffinity(0)))

    accepted = httpx.post(
        f"{host.url}/jobs", files={"file": ("orders.csv", csv)}, timeout=HTTP_TIMEOUT
    )
    job = wait_for(
        lambda: httpx.get(accepted.json()["status_url"], timeout=HTTP_TIMEOUT).json(),
        lambda job: job["status"] in ("succeeded", "failed"),
        "the job to finish",
        every=0.2,
    )

    assert accepted.status_code == 202
    assert (job["status"], job["result"]["rows"]) == ("succeeded", 200)


def test_reload_replaces_the_workers_under_the_same_master(host: Host) -> None:
    cpus = len(os.sched_getaffinity(0))
    before = host.wait_until_serving(workers=cpus)
    master = host.api_processes()[0]

    host.systemctl("reload", f"{host.name}.service")
    wait_for(
        lambda: host.api_processes()[1],
        lambda pids: pids.isdisjoint(before) and len(pids) == cpus,
        "new workers in place of the old",
        every=0.2,
    )
    live = httpx.get(f"{host.url}/health/live", timeout=HTTP_TIMEOUT)

    assert host.api_processes()[0] == master
    assert live.status_code == 200


def test_cpu_quota_sets_the_worker_count(host: Host) -> None:
    drop_in = f"/etc/systemd/system/{host.name}.service.d"
    host.run("mkdir", "-p", drop_in)
    host.run("sh", "-c", f"printf '[Service]\\nCPUQuota=100%%\\n' > {drop_in}/quota.conf")
    host.systemctl("daemon-reload")
    host.systemctl("restart", f"{host.name}.service")

    workers = host.wait_until_serving(workers=1)
    quota = host.show(f"{host.name}.service", "CPUQuotaPerSecUSec")
    host.run("rm", "-r", drop_in)
    host.systemctl("daemon-reload")

    assert (len(workers), quota) == (1, "1s")


def test_stop_is_graceful_and_removes_the_runtime_directory(host: Host) -> None:
    host.systemctl("stop", f"{host.name}.service", f"{host.name}-worker.service")

    for unit in (f"{host.name}.service", f"{host.name}-worker.service"):
        assert (host.show(unit, "Result"), host.show(unit, "ExecMainStatus")) == ("success", "0")
    assert host.run("test", "-e", f"/run/{host.name}").returncode == 1
    worker_log = host.run("journalctl", "--no-pager", "--unit", f"{host.name}-worker.service")
    assert re.search(r"Warm shutdown", worker_log.stdout)
