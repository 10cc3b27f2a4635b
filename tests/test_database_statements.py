"""What a request costs PostgreSQL, counted by PostgreSQL: a primary-key read on a warm
connection is one statement in one transaction (no ping, no BEGIN, no ROLLBACK); and with
the statement cache off (DB_STATEMENT_CACHE=false), the service works through a PgBouncer in
transaction pooling mode, where the cache's prepared statements break.

Each test runs against a PostgreSQL server of this module's own, started with the
pg_stat_statements library (tests/test_database_faults.py's helper), in a database of its own.
"""

import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from .baked import Project, free_port
from .conftest import require_that
from .test_database_faults import LocalPostgres, create_item, postgres  # noqa: F401 (fixture)
from .waiting import wait_until

DATABASE = "statements"
ROUNDS = 5
# A connection sends its transaction counts to pg_stat_database as it goes idle, before it
# says it is ready for the next query, but not within a second of its last sending
# (PostgreSQL's PGSTAT_MIN_INTERVAL); then it holds them back.
STATISTICS_INTERVAL = 1.1
pytestmark = pytest.mark.parametrize("project", ["public_api"], indirect=True)


@pytest.fixture(scope="module")
def database(project: Project, postgres: LocalPostgres) -> dict[str, str]:  # noqa: F811
    postgres.fetchval(f"CREATE DATABASE {DATABASE}")
    postgres.fetchval("CREATE EXTENSION pg_stat_statements")
    settings = {"DATABASE_URL": postgres.url.rpartition("/")[0] + f"/{DATABASE}"}
    project.make("migrate", **settings)
    return settings


def statements(postgres: LocalPostgres) -> dict[str, int]:  # noqa: F811
    """Each statement run in the database since the last reset, and how many times."""
    found = postgres.fetchval(
        "SELECT coalesce(json_object_agg(query, calls), '{}')::text FROM pg_stat_statements "
        f"WHERE dbid = (SELECT oid FROM pg_database WHERE datname = '{DATABASE}')"
    )
    return json.loads(str(found))


def transactions(postgres: LocalPostgres) -> int:  # noqa: F811
    count = postgres.fetchval(
        f"SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{DATABASE}'"
    )
    return int(str(count))


def idle_seconds(postgres: LocalPostgres) -> float:  # noqa: F811
    """How long the service's one connection has been idle (0 while it works)."""
    seconds = postgres.fetchval(
        "SELECT coalesce(min(extract(epoch FROM now() - state_change)), 0)::float "
        f"FROM pg_stat_activity WHERE datname = '{DATABASE}' AND state = 'idle'"
    )
    return float(str(seconds))


def sends_next_time(postgres: LocalPostgres) -> None:  # noqa: F811
    wait_until(
        lambda: idle_seconds(postgres) >= STATISTICS_INTERVAL,
        "the service's connection idle long enough to send its counts as it next goes idle",
    )


def test_a_primary_key_read_on_a_warm_connection_is_one_statement_in_one_transaction(
    project: Project,
    postgres: LocalPostgres,  # noqa: F811
    database: dict[str, str],
) -> None:
    # One worker with one connection: every request of the test uses the same one.
    with project.serve(workers=1, DB_MAX_CONNECTIONS="1", **database) as server:
        item = create_item(server.url, "counted")
        warm = httpx.get(f"{server.url}/items/{item}", timeout=30)  # prepares the statement
        # After a second of idleness the next request's counts are sent as it ends, with
        # any held back: after this one, pg_stat_database has all the connection did.
        sends_next_time(postgres)
        httpx.get(f"{server.url}/items/{item}", timeout=30)
        sends_next_time(postgres)
        before = transactions(postgres)
        postgres.fetchval("SELECT pg_stat_statements_reset()")

        read = httpx.get(f"{server.url}/items/{item}", timeout=30)

        after = transactions(postgres)
        counted = statements(postgres)

    assert warm.status_code == read.status_code == 200, read.text
    assert read.json() == warm.json()
    assert list(counted.values()) == [1], counted
    assert next(iter(counted)).startswith("SELECT items.id"), counted
    assert after - before == 1


def pgbouncer_bin() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
    )
    require_that(found is not None, "pgbouncer is missing (apt-get install pgbouncer)")
    assert found is not None
    return found


@contextmanager
def pgbouncer(postgres: LocalPostgres, server_connections: int) -> Iterator[str]:  # noqa: F811
    """A PgBouncer in transaction pooling mode in front of the test's database, with fewer
    server connections than the service has: transactions of different client connections
    take turns on them. Yields the service's DATABASE_URL through it."""
    port = free_port()
    folder = postgres.data / "pgbouncer"
    folder.mkdir(exist_ok=True)
    (folder / "users.txt").write_text('"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\n{DATABASE} = host=127.0.0.1 port={postgres.port} dbname={DATABASE}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {server_connections}\n"
        # PgBouncer passes on no other startup setting: statement_timeout must then be the
        # database role's (ALTER ROLE ... SET statement_timeout).
        "ignore_startup_parameters = statement_timeout,search_path\n"
        f"logfile = {folder / 'pgbouncer.log'}\n"
    )
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    process = subprocess.Popen(
        [*as_user, pgbouncer_bin(), str(folder / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{DATABASE}"
    try:
        wait_until(lambda: listening(port) or process.poll() is not None, "PgBouncer to listen")
        assert process.poll() is None, (folder / "pgbouncer.log").read_text()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def listening(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}", timeout=1)
    except httpx.TransportError as error:
        return not isinstance(error, httpx.ConnectError)
    return True


def answers_through(url: str, items: list[int]) -> Counter[int]:
    """The statuses of reads and writes from 8 clients at once (0: no answer)."""

    def client(number: int) -> list[int]:
        with httpx.Client(base_url=url, timeout=30) as http:
            statuses = []
            for round_ in range(ROUNDS):
                replaced = {"name": f"pgbouncer-{number}", "price_cents": round_}
                for method, path, body in (
                    ("GET", f"/items/{items[round_ % len(items)]}", None),
                    ("GET", "/items?limit=5", None),
                    ("PUT", f"/items/{items[number]}", replaced),
                ):
                    try:
                        statuses.append(http.request(method, path, json=body).status_code)
                    except httpx.TransportError:
                        statuses.append(0)  # the connection dropped: no answer
            return statuses

    with ThreadPoolExecutor(8) as clients:
        return Counter(status for each in clients.map(client, range(8)) for status in each)


@pytest.mark.parametrize("cache", ["false", "true"])
def test_without_the_statement_cache_the_service_works_through_pgbouncer_transaction_pooling(
    project: Project,
    postgres: LocalPostgres,  # noqa: F811
    database: dict[str, str],
    cache: str,
) -> None:
    items = insert_items(postgres, f"pooled-{cache}", 8)
    with (
        pgbouncer(postgres, server_connections=2) as through_pgbouncer,
        project.serve(
            workers=1,
            DATABASE_URL=through_pgbouncer,
            DB_MAX_CONNECTIONS="8",
            DB_STATEMENT_CACHE=cache,
        ) as server,
    ):
        statuses = answers_through(server.url, items)

    if cache == "false":
        assert statuses == Counter({200: 8 * ROUNDS * 3}), statuses
    else:
        # What the setting is for: with the cache, prepared statements meet server
        # connections that lack them (or already hold one of the same name).
        assert set(statuses) != {200}, statuses


def insert_items(postgres: LocalPostgres, prefix: str, count: int) -> list[int]:  # noqa: F811
    """Items written straight into the database, not through PgBouncer."""
    ids = postgres.fetchval(
        "WITH new AS (INSERT INTO items (name, price_cents, created_at, updated_at) "
        f"SELECT '{prefix}-' || n, n, now(), now() FROM generate_series(1, {count}) AS n "
        "RETURNING id) SELECT array_agg(id ORDER BY id) FROM new",
        DATABASE,
    )
    assert isinstance(ids, list)
    return ids
