"""While PostgreSQL stops, restarts or recovers from a crash, a service answers only 2xx or
503 with Retry-After, and the client's keep-alive connections survive the 503s; a query
held up longer than its deadline answers 503; a pool whose every connection is busy does
not make readiness say the database is down.

Each test runs against a PostgreSQL server of this module's own (initdb and pg_ctl on a
free port), which the tests stop and start; the shared server is never touched.
"""

import asyncio
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from .baked import Project, free_port
from .conftest import require_that
from .load import LoadResult, constant_load
from .waiting import wait_for, wait_until

CONNECTIONS = 16
# One fault per test: a max_requests recycle during it would be a second one.
NO_RECYCLING = "--max-requests 0"
pytestmark = pytest.mark.parametrize("project", ["public_api"], indirect=True)


def postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    require_that(pg_ctl is not None, "PostgreSQL's server binaries (initdb, pg_ctl) are missing")
    assert pg_ctl is not None
    return Path(pg_ctl).parent


@dataclass
class LocalPostgres:
    """A throwaway PostgreSQL server, trust authentication, on a free loopback port."""

    bin: Path
    data: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, *command: str) -> None:
        # PostgreSQL refuses to run as root; its own system user runs it then.
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run(
            [*as_user, *command], capture_output=True, text=True, check=False, timeout=120
        )
        assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"

    def pg_ctl(self, *args: str) -> None:
        self.run(str(self.bin / "pg_ctl"), "--pgdata", str(self.data / "db"), *args)

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data} -c fsync=off "
            # Counts every statement each connection runs (tests/test_database_statements.py).
            "-c shared_preload_libraries=pg_stat_statements"
        )
        self.pg_ctl("start", "--wait", "--log", str(self.data / "postgres.log"), "-o", options)

    def stop(self, mode: str) -> None:
        self.pg_ctl("stop", "--wait", "--mode", mode)

    def fetchval(self, query: str, database: str = "postgres") -> object:
        async def fetch() -> object:
            url = self.url.replace("+asyncpg", "").rpartition("/")[0] + f"/{database}"
            connection = await asyncpg.connect(url, timeout=5)
            try:
                return await connection.fetchval(query)
            finally:
                await connection.close()

        return asyncio.run(fetch())


@pytest.fixture(scope="module")
def postgres() -> Iterator[LocalPostgres]:
    # Not tmp_path: the server's own user must reach its data directory, and pytest's
    # directories are private to whoever runs the tests.
    data = Path(tempfile.mkdtemp(prefix="fpt-postgres-"))
    server = LocalPostgres(postgres_bin(), data, free_port())
    try:
        if os.geteuid() == 0:
            shutil.chown(data, "postgres")
        server.run(
            str(server.bin / "initdb"), "--pgdata", str(data / "db"), "--auth", "trust",
            "--username", "postgres", "--no-sync",
        )  # fmt: skip
        server.start()
        yield server
    finally:
        if (data / "db" / "postmaster.pid").exists():
            server.stop("immediate")
        shutil.rmtree(data)


@pytest.fixture(scope="module")
def database(project: Project, postgres: LocalPostgres) -> dict[str, str]:
    settings = {"DATABASE_URL": postgres.url}
    project.make("migrate", **settings)
    return settings


def successes(load: LoadResult) -> int:
    return sum(n for status, n in list(load.answered.items()) if 200 <= status < 300)


def succeeded_more(load: LoadResult, more: int) -> None:
    enough = successes(load) + more
    wait_for(lambda: load, lambda load: successes(load) >= enough, f"{more} more 2xx under load")


def create_item(url: str, name: str) -> int:
    created = httpx.post(f"{url}/items", json={"name": name, "price_cents": 1}, timeout=30)
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_stopping_and_restarting_under_load_answers_only_2xx_or_503(
    project: Project,
    postgres: LocalPostgres,
    database: dict[str, str],
    mode: str,
    summary: Callable[[str], None],
) -> None:
    with project.serve(workers=2, GUNICORN_CMD_ARGS=NO_RECYCLING, **database) as server:
        item = create_item(server.url, f"restart-{mode}")
        with constant_load(server.url, f"/items/{item}", CONNECTIONS) as load:
            succeeded_more(load, 100)
            try:
                postgres.stop(mode)
                wait_until(lambda: load.answered[503] > 0, "503s while PostgreSQL is down")
            finally:
                postgres.start()
            succeeded_more(load, 100)

    summary(f"PostgreSQL {mode} stop under load: answered {dict(load.answered)}, lost {load.lost}")
    assert {status for status in load.answered if not 200 <= status < 300} == {503}, load
    assert load.retry_after[503] == load.answered[503], load
    assert load.lost == 0, load
    # Not one connection was closed by the server: keep-alive survived every 503.
    assert load.opened == CONNECTIONS, load


@contextmanager
def items_locked(postgres: LocalPostgres) -> Iterator[None]:
    """Another connection holds an exclusive lock on the items table until the block ends."""
    locked, release = threading.Event(), threading.Event()

    async def hold() -> None:
        connection = await asyncpg.connect(postgres.url.replace("+asyncpg", ""), timeout=5)
        try:
            async with connection.transaction():
                await connection.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
                locked.set()
                await asyncio.to_thread(release.wait)
        finally:
            await connection.close()

    with ThreadPoolExecutor(1, thread_name_prefix="lock") as runner:
        holding = runner.submit(asyncio.run, hold())
        try:
            wait_until(lambda: locked.is_set() or holding.done(), "the lock on items")
            if holding.done():
                holding.result()  # raises why the lock could not be taken
            yield
        finally:
            release.set()
            holding.result(timeout=60)


def test_a_query_waiting_on_a_lock_answers_503_within_the_statement_deadline(
    project: Project, postgres: LocalPostgres, database: dict[str, str]
) -> None:
    with project.serve(workers=1, DB_STATEMENT_TIMEOUT="2", **database) as server:
        item = create_item(server.url, "locked")
        with items_locked(postgres):
            # Answered while the lock is still held: only the deadline can have ended it.
            # Without one the request waits for the lock, and this times out.
            answer = httpx.get(f"{server.url}/items/{item}", timeout=30)
        after = httpx.get(f"{server.url}/items/{item}", timeout=30)

    assert answer.status_code == 503, answer.text
    assert "retry-after" in answer.headers
    assert after.status_code == 200, after.text


def test_readiness_says_ready_while_every_pooled_connection_is_busy(
    project: Project, postgres: LocalPostgres, database: dict[str, str]
) -> None:
    pool = 2
    with (
        project.serve(
            workers=1, DB_MAX_CONNECTIONS=str(pool), DB_STATEMENT_TIMEOUT="120", **database
        ) as server,
        ThreadPoolExecutor(pool) as clients,
    ):
        with items_locked(postgres):
            held = [
                clients.submit(httpx.get, f"{server.url}/items", timeout=180) for _ in range(pool)
            ]
            waiting_on_the_lock = (
                "SELECT count(*) FROM pg_stat_activity "
                f"WHERE wait_event_type = 'Lock' AND application_name = '{project.path.name}'"
            )
            wait_until(
                lambda: postgres.fetchval(waiting_on_the_lock) == pool,
                "every pooled connection waiting on the lock",
            )
            ready = httpx.get(f"{server.url}/health/ready", timeout=30)
        answers = [answer.result() for answer in held]

    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"
    assert [answer.status_code for answer in answers] == [200] * pool
