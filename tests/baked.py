"""A baked project, and a real Gunicorn serving it."""

import fcntl
import functools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cookiecutter.generate import generate_context
from cookiecutter.prompt import prompt_for_config

from .services import redis_prefix, worker_name
from .waiting import TimedOut, wait_until

TEMPLATE = Path(__file__).parent.parent
CACHE = TEMPLATE / ".cache"
# What a bake without uv or the package index says, and what `docker build` says of a
# project without uv.lock.
MISSING_LOCK = 'uv.lock is missing: run "make lock" (it needs uv and the package index).'


def run_without_uv(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`command` in `cwd`, on a PATH that holds no uv (nor anything else)."""
    return subprocess.run(
        command,
        cwd=cwd,
        env={"PATH": str(cwd / "no-uv")},
        capture_output=True,
        text=True,
        check=False,
    )


@contextmanager
def exclusively(path: Path) -> Iterator[None]:
    """Hold a lock named after `path` (xdist's workers share the baked environments)."""
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield


def find_interpreter(version: str) -> str | None:
    """A Python of this major.minor version: pyenv's, or any that `uv python find` sees."""
    if shutil.which("pyenv"):
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=True)
        versions = Path(root.stdout.strip(), "versions")
        found = versions.glob(f"{version}.*/bin/python{version}")
        if newest := max(found, key=lambda path: int(path.parts[-3].split(".")[2]), default=None):
            return str(newest)
    if shutil.which("uv") is None:
        return None
    uv = subprocess.run(
        ["uv", "python", "find", "--system", version], capture_output=True, text=True, check=False
    )
    return uv.stdout.strip() if uv.returncode == 0 else None


def venv_for(interpreter: str, kind: str = "") -> Path:
    """The environment shared by the bakes of one kind on this interpreter's Python version."""
    version = subprocess.run(
        [interpreter, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    venv = CACHE / f"baked-venv-{version}{'-' * bool(kind)}{kind}"
    with exclusively(venv):
        if not (venv / "bin" / "python").exists():
            subprocess.run(
                ["uv", "venv", "--quiet", "--python", interpreter, str(venv)], check=True
            )
    return venv


@functools.cache
def _features(answers: tuple[tuple[str, str], ...]) -> frozenset[str]:
    context = generate_context(TEMPLATE / "cookiecutter.json", extra_context=dict(answers))
    return frozenset(prompt_for_config(context, no_input=True)["__features"].split())


def features_of(answers: dict[str, str]) -> frozenset[str]:
    """The features cookiecutter.json derives from these answers (database, items, jobs,
    rooms, redis, ...): what the template's tests ask about, as its own templates do."""
    return _features(tuple(sorted(answers.items())))


@dataclass
class Project:
    path: Path
    answers: dict[str, str]
    venv: Path

    @property
    def scenario(self) -> str:
        return self.answers["scenario"]

    @property
    def features(self) -> frozenset[str]:
        return features_of(self.answers)

    @property
    def has_database(self) -> bool:
        return "database" in self.features

    @property
    def env(self) -> dict[str, str]:
        """The environment the project's own commands see, with nothing inherited that
        would point them at another database."""
        inherited = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PORT")}
        return {
            **inherited,
            "VIRTUAL_ENV": str(self.venv),
            "PATH": f"{self.venv / 'bin'}:{os.environ['PATH']}",
            # Several bakes share one slug and one environment: import this bake's code,
            # and write no bytecode into the bake, whose every file a test reads.
            "PYTHONPATH": str(self.path / "src"),
            "PYTHONDONTWRITEBYTECODE": "1",
            # The linters' caches, shared by the bakes (the dependencies' types are read
            # once) and outside them.
            # (mypy's cache is a SQLite file that concurrent runs may find locked: one per
            # xdist worker.)
            "MYPY_CACHE_DIR": str(CACHE / "mypy" / worker_name()),
            "RUFF_CACHE_DIR": str(CACHE / "ruff"),
            # Redis keys and channels of this test worker's own (tests/services.py).
            "REDIS_KEY_PREFIX": redis_prefix(),
        }

    def run(self, *command: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command,
            cwd=self.path,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )

    def make(self, target: str, **env: str) -> subprocess.CompletedProcess[str]:
        # Every target installs first; that step is one bake at a time. The environment is
        # shared by several bakes, and its stamp (.installed) by them all: one made after
        # another bake's install would look installed, its own dependencies missing.
        with exclusively(self.venv):
            (self.venv / ".installed").unlink(missing_ok=True)
            installed = self._make("install", **env)
        return installed if target == "install" else self._make(target, **env)

    def _make(self, target: str, **env: str) -> subprocess.CompletedProcess[str]:
        # The environment's own Python: the Makefile then never makes it again.
        python = self.venv / "bin" / "python"
        result = self.run("make", target, f"VENV={self.venv}", f"PYTHON={python}", **env)
        assert result.returncode == 0, f"make {target} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def database(self, postgres_url: str | None) -> dict[str, str]:
        """Settings for a fresh, migrated database: a new PostgreSQL schema or SQLite file."""
        if postgres_url:
            schema = f"baked_{uuid.uuid4().hex[:12]}"
            self.python(
                "import asyncio, asyncpg, sys\n"
                "async def main():\n"
                "    connection = await asyncpg.connect(sys.argv[1])\n"
                f"    await connection.execute('CREATE SCHEMA {schema}')\n"
                "    await connection.close()\n"
                "asyncio.run(main())\n",
                postgres_url.replace("+asyncpg", ""),
            )
            database = {"DATABASE_URL": postgres_url, "DATABASE_SCHEMA": schema}
        else:
            database = {
                "DATABASE_URL": f"sqlite+aiosqlite:///{self.path}/var/{uuid.uuid4().hex}.db"
            }
        self.make("migrate", **database)
        return database

    def python(self, code: str, *args: str) -> str:
        result = self.run(str(self.venv / "bin" / "python"), "-c", code, *args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    @contextmanager
    def serve(self, workers: int = 2, app: str | None = None, **env: str) -> Iterator["Server"]:
        """Gunicorn with real workers on a free loopback port, stopped on exit.

        `app` replaces the project's app, e.g. "fault_app:app" from this folder.
        """
        port, metrics_port = free_port(), free_port()
        log = self.path / "var" / f"gunicorn-{port}.log"
        log.parent.mkdir(exist_ok=True)
        with log.open("w") as output:
            process = subprocess.Popen(
                [str(self.venv / "bin" / "gunicorn"), "--config", "gunicorn.conf.py"]
                + ([app] if app else []),
                cwd=self.path,
                env={
                    **self.env,
                    "PYTHONPATH": f"{self.path / 'src'}:{Path(__file__).parent}",
                    "SERVICE_PACKAGE": self.path.name,
                    "PORT": str(port),
                    "METRICS_PORT": str(metrics_port),
                    "WEB_CONCURRENCY": str(workers),
                    **env,
                },
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        server = Server(
            f"http://127.0.0.1:{port}", process, log, f"http://127.0.0.1:{metrics_port}/metrics"
        )
        try:
            server.wait_until_serving()
            yield server
        finally:
            server.stop()

    @contextmanager
    def celery_worker(self, app: str | None = None, **env: str) -> Iterator["CeleryWorker"]:
        """`make worker`'s Celery worker in a process group of its own, stopped on exit.

        `app` replaces the project's Celery app, e.g. "stubborn_jobs:app" from this folder.
        """
        log = self.path / "var" / f"celery-{uuid.uuid4().hex[:8]}.log"
        log.parent.mkdir(exist_ok=True)
        with log.open("w") as output:
            process = subprocess.Popen(
                [
                    *(
                        str(self.venv / "bin" / "celery"),
                        "--app",
                        app or f"{self.path.name}.jobs.celery_app",
                    ),
                    *("worker", "--loglevel", "INFO", "--hostname", f"{log.stem}@%h"),
                ],
                cwd=self.path,
                env={
                    **self.env,
                    "PYTHONPATH": f"{self.path / 'src'}:{Path(__file__).parent}",
                    "SERVICE_PACKAGE": self.path.name,
                    **env,
                },
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = CeleryWorker(process, log)
        try:
            worker.wait_until_ready()
            yield worker
        finally:
            worker.kill()


@dataclass
class CeleryWorker:
    process: subprocess.Popen[bytes]
    log_path: Path

    def wait_until_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Celery worker exited:\n{self.log()}")
            return " ready." in self.log()

        try:
            wait_until(ready, "the Celery worker to be ready", every=0.1)
        except TimedOut as error:
            raise TimedOut(f"{error}:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text()

    def kill(self) -> None:
        """SIGKILL the whole worker, its pool processes included: nothing gets to clean up."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_url: str  # /metrics, on a port of its own

    def wait_until_serving(self) -> None:
        """Until Gunicorn answers and every worker it runs has started the app (a worker
        still importing it would die at once on a signal a test sends)."""

        def serving() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"Gunicorn exited:\n{self.log()}")
            try:
                httpx.get(f"{self.url}/health/live", timeout=5)
            except httpx.TransportError:
                return False
            workers = self.workers()
            return bool(workers) and workers <= self.started_workers()

        try:
            wait_until(serving, f"Gunicorn and all its workers to serve at {self.url}", every=0.1)
        except TimedOut as error:
            raise TimedOut(f"{error}:\n{self.log()}") from None

    def started_workers(self) -> set[int]:
        """Pids of the workers that have logged the app's startup."""
        return {
            entry["pid"]
            for entry in self.log_entries("uvicorn.error")
            if entry["message"] == "Application startup complete."
        }

    def log(self) -> str:
        return self.log_path.read_text()

    def log_entries(self, logger: str = "access") -> list[dict[str, Any]]:
        """The JSON log lines of one logger (a line still being written is left out)."""
        entries = []
        for line in self.log().split("\n")[:-1]:
            if line.startswith("{") and (entry := json.loads(line)).get("logger") == logger:
                entries.append(entry)
        return entries

    def workers(self) -> set[int]:
        """Pids of the master's live worker processes."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return {int(pid) for pid in children.read_text().split()}
        except OSError:
            return set()

    def connections_to(self, port: int) -> int:
        """Open TCP connections from this server's processes (master and workers) to
        `port` on any host: read from /proc, so another process's connections never count."""
        sockets = set()
        for pid in (self.process.pid, *self.workers()):
            with suppress(OSError):  # a worker that just exited
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with suppress(OSError):
                        sockets.add(os.readlink(fd))
        count = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rpartition(":")[2], 16)
                established = fields[3] == "01"
                if established and remote_port == port and f"socket:[{fields[9]}]" in sockets:
                    count += 1
        return count

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range, which the many outgoing
    connections of a load test draw from: none of them can take it before the server binds
    it. (Another xdist worker picks at random too and checks the port is free.)"""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(10_000, low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
