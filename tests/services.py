"""The shared PostgreSQL, Redis and RabbitMQ, and each test run's own corner of them.

A run works in a PostgreSQL database, under Redis key and channel prefixes and in RabbitMQ
vhosts, all named `fpt_<host>_<pid>...` after the machine and the pytest process that lead
it. It removes them when it ends, failed tests or not, and at its start removes those of
this machine's earlier runs whose process is gone (a run that was killed). Each xdist worker
gets a Redis prefix and a vhost of its own, so that two tests running side by side never
share a queue or a channel.

The servers come from TEST_POSTGRES_URL, TEST_REDIS_URL and TEST_AMQP_URL; a vhost is made
with `rabbitmqctl`, so it must be able to reach the broker (it is local, or configured).
"""

import asyncio
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis

POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
# Every name a run gives to what it creates: fpt_<host>_<pid of the run's pytest>[_<part>].
NAME = re.compile(r"fpt_([0-9a-f]{6})_(\d+)(?:_[a-z0-9]+)?")
# Runs on other machines may share the servers; whether they still go on cannot be told
# from here, so only this machine's runs are ever swept.
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
# The pid of the run's leading pytest process; conftest.py hands it to xdist's workers.
RUN_PID = os.getpid()


def run_name(part: str = "") -> str:
    return f"fpt_{HOST}_{RUN_PID}_{part}".rstrip("_")


def worker_name() -> str:
    """This xdist worker's name (gw0, gw1...), or "main" without xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def redis_prefix() -> str:
    """The prefix of every Redis key and channel of the services this worker starts."""
    return run_name(worker_name()) + ":"


def belongs_to_a_live_run(name: str, run_pid: int | None = None) -> bool:
    """Whether `name` is a run's and that run still goes on; with run_pid, whether it is
    that run's (a run sweeps its own names at its end, live or not)."""
    match = NAME.fullmatch(name)
    if match is None or match[1] != HOST:
        return True  # not a run's, or another machine's: never touched
    pid = int(match[2])
    if run_pid is not None:
        return pid != run_pid
    with suppress(OSError):
        return b"pytest" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


def with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


@dataclass(frozen=True)
class Postgres:
    """The run's own database on the TEST_POSTGRES_URL server."""

    admin_url: str = POSTGRES_URL

    @property
    def url(self) -> str:
        return with_path(self.admin_url, "/" + run_name())

    async def _admin(self, *statements: str) -> list[str]:
        connection = await asyncpg.connect(self.admin_url.replace("+asyncpg", ""), timeout=5)
        try:
            names = [
                row["datname"]
                for row in await connection.fetch(
                    r"SELECT datname FROM pg_database WHERE datname LIKE 'fpt\_%'"
                )
            ]
            for statement in statements:
                await connection.execute(statement)
            return names
        finally:
            await connection.close()

    def databases(self) -> list[str]:
        return asyncio.run(self._admin())

    def create(self, name: str | None = None) -> None:
        asyncio.run(self._admin(f'CREATE DATABASE "{name or run_name()}"'))

    def sweep(self, run_pid: int | None = None) -> list[str]:
        gone = [name for name in self.databases() if not belongs_to_a_live_run(name, run_pid)]
        for name in gone:  # one at a time: a database another sweep took is no failure
            asyncio.run(self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        return gone


@dataclass(frozen=True)
class Redis:
    url: str = REDIS_URL

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def run_keys(self) -> list[str]:
        with self.client() as client:
            return [key.decode() for key in client.scan_iter(match="fpt_*", count=1000)]

    def sweep(self, run_pid: int | None = None) -> list[str]:
        gone = [
            key for key in self.run_keys() if not belongs_to_a_live_run(key.split(":")[0], run_pid)
        ]
        self._delete(gone)
        return gone

    def delete_under(self, prefix: str) -> None:
        self._delete([key for key in self.run_keys() if key.startswith(prefix)])

    def _delete(self, keys: list[str]) -> None:
        if keys:
            with self.client() as client:
                client.delete(*keys)


@dataclass(frozen=True)
class RabbitMQ:
    url: str = AMQP_URL

    def vhost_url(self, vhost: str) -> str:
        return with_path(self.url, "/" + vhost)

    @staticmethod
    def ctl(*args: str) -> str:
        rabbitmqctl = shutil.which("rabbitmqctl")
        if rabbitmqctl is None:
            raise RuntimeError("rabbitmqctl is not installed: no vhost can be made for the tests")
        return subprocess.run(
            [rabbitmqctl, "--quiet", *args], capture_output=True, text=True, check=True, timeout=60
        ).stdout

    def create(self, vhost: str) -> None:
        user = urlsplit(self.url).username or "guest"
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "--vhost", vhost, user, ".*", ".*", ".*")

    def vhosts(self) -> list[str]:
        return [name for name in self.ctl("list_vhosts", "--no-table-headers").split() if name]

    def delete(self, vhost: str) -> None:
        self.ctl("delete_vhost", vhost)

    def sweep(self, run_pid: int | None = None) -> list[str]:
        gone = [name for name in self.vhosts() if not belongs_to_a_live_run(name, run_pid)]
        for name in gone:
            self.delete(name)
        return gone


ALL = (Postgres(), Redis(), RabbitMQ())


def leftovers() -> dict[str, list[str]]:
    """What test runs named on the shared servers and have not removed (yet); and, to see
    what anything else left, the schemas of TEST_POSTGRES_URL's own database, every Redis
    database's key count and the queues of RabbitMQ's default vhost."""
    postgres = Postgres()

    async def schemas() -> list[str]:
        connection = await asyncpg.connect(postgres.admin_url.replace("+asyncpg", ""))
        try:
            rows = await connection.fetch(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
                "AND nspname NOT IN ('public', 'information_schema')"
            )
            return [row["nspname"] for row in rows]
        finally:
            await connection.close()

    with Redis().client() as client:
        keyspace = [f"{db}={info['keys']}" for db, info in client.info("keyspace").items()]
    return {
        "PostgreSQL databases fpt_*": postgres.databases(),
        "Redis keys fpt_*": Redis().run_keys(),
        "RabbitMQ vhosts fpt_*": [name for name in RabbitMQ().vhosts() if NAME.fullmatch(name)],
        "schemas in TEST_POSTGRES_URL's database": asyncio.run(schemas()),
        "keys in each Redis database": keyspace,
        "queues in RabbitMQ's / vhost": RabbitMQ.ctl("list_queues", "--no-table-headers").split(),
    }


if __name__ == "__main__":
    # .venv/bin/python -m tests.services [--check]: what test runs have left on the shared
    # servers; with --check, exit 1 if a run that has ended left anything.
    left = leftovers()
    for kind, names in left.items():
        print(f"{kind}: {len(names)}", *names[:20])
    if "--check" in sys.argv:
        ended = [
            name
            for kind in ("PostgreSQL databases fpt_*", "Redis keys fpt_*", "RabbitMQ vhosts fpt_*")
            for name in left[kind]
            if not belongs_to_a_live_run(name.split(":")[0])
        ]
        sys.exit(f"left by test runs that have ended: {ended}" if ended else 0)
