"""A first deploy as an operator meets it: the service started as the image, the systemd
unit and Kubernetes start it (`python -m <package>.serve`, no migration first), a wrong
value in any variable it reads, a new DATABASE_SCHEMA, a new migration."""

import functools
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from .baked import Project, Server, free_port
from .waiting import wait_for

# A wrong value for every setting of a type that has one; what is wrong for a text setting
# depends on what it names, so each has its own here (with what else makes it wrong).
WRONG_BY_TYPE = {"bool": "maybe", "int": "many", "float": "soon", "choice": "none-of-these"}
WRONG_TEXT = {
    "SECRET_KEY": {"SECRET_KEY": "short", "ENVIRONMENT": "production", "ALLOWED_HOSTS": "a.test"},
    "ALLOWED_HOSTS": {"ALLOWED_HOSTS": ","},
    "BIND": {"BIND": "127.0.0.1:http"},
    "FORWARDED_ALLOW_IPS": {"FORWARDED_ALLOW_IPS": "the proxy"},
    "WORKER_CLASS": {"WORKER_CLASS": "no.such.Worker"},
    "DATABASE_URL": {"DATABASE_URL": "postgresql+asyncpg://db:port/app"},
    "CELERY_BROKER_URL": {"CELERY_BROKER_URL": "kafka://broker:9092"},
    "REDIS_URL": {"REDIS_URL": "http://redis:6379"},
    "MODEL_PATH": {"MODEL_PATH": "/nonexistent/model.joblib"},
}
# Text settings any value of which is a value: names and prefixes, a list of origins, a
# directory used only where it exists, a socket path.
ANY_TEXT = {
    "CORS_ORIGINS",
    "WS_ALLOWED_ORIGINS",
    "REDIS_KEY_PREFIX",
    "CELERY_QUEUE",
    "DATABASE_SCHEMA",
    "GUNICORN_WORKER_TMP_DIR",
    "GUNICORN_CONTROL_SOCKET",
}
# A file setting: the line names the files (which are what is wrong), not the variable: the
# model's, or its metadata's beside it (read first).
NAMED_BY_FILE = {"MODEL_PATH"}

# Every setting of the bake, by its variable, with the kind of value it takes; with
# `own`, only those its features declare beside the service's own.
SETTING_KINDS = """
import json, sys, types, typing
from pydantic import BaseModel
from {package}.service_settings import ServiceSettings, env_name, setting_paths
from {package}.settings import Settings

def kind(path):
    model = Settings
    for key in path[:-1]:
        model = model.model_fields[key].annotation
    annotation = model.model_fields[path[-1]].annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return "choice"
    return {{bool: "bool", int: "int", float: "float"}}.get(annotation, "text")

paths = set(setting_paths(Settings))
if sys.argv[1:] == ["own"]:
    paths -= set(setting_paths(ServiceSettings))
print(json.dumps({{env_name(path): kind(path) for path in paths}}))
"""


def settings_of(project: Project, *, own: bool = False) -> dict[str, str]:
    return _settings_of(project.path, project.venv, own)


@functools.cache
def _settings_of(path: Path, venv: Path, own: bool) -> dict[str, str]:
    project = Project(path, {}, venv)
    code = SETTING_KINDS.format(package=path.name)
    kinds: dict[str, str] = json.loads(project.python(code, *(["own"] if own else [])))
    return kinds


def start_env(project: Project, **env: str) -> dict[str, str]:
    """The environment of a start: none of the service's variables inherited, free ports."""
    ours = set(settings_of(project))
    inherited = {k: v for k, v in project.env.items() if k not in ours}
    return {**inherited, "PORT": str(free_port()), "METRICS_PORT": str(free_port()), **env}


# Starts `python -m <package>.serve` once for each environment given, as that command
# would, but from a process that has imported the launcher once and forks a child for each
# start (a start imports for seconds on a busy machine; a fork takes milliseconds). A child
# whose settings pass goes on to exec Gunicorn, as the launcher does.
STARTS = """
import json, os, sys, tempfile, time, traceback
from {package} import serve  # imported once, before the forks

base, starts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
outcomes = {{}}
for name, env in starts.items():
    stdout, stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    pid = os.fork()
    if pid == 0:
        os.dup2(stdout.fileno(), 1)
        os.dup2(stderr.fileno(), 2)
        os.environ.clear()
        os.environ.update(base | env)
        sys.argv = ["serve"]
        status = 0
        try:
            serve.main()  # what `python -m {package}.serve` runs
        except SystemExit as error:  # what the interpreter does with one at the top
            if isinstance(error.code, str):
                print(error.code, file=sys.stderr)
            status = error.code if isinstance(error.code, int) else 1
        except BaseException:
            traceback.print_exc()
            status = 1
        sys.stderr.flush()
        os._exit(status)
    deadline = time.monotonic() + 60
    while (waited := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    if waited == (0, 0):  # it serves: a wrong value was taken
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        status = None
    else:
        status = os.waitstatus_to_exitcode(waited[1])
    outputs = []
    for output in (stdout, stderr):
        output.seek(0)
        outputs.append(output.read().decode(errors="replace"))
    outcomes[name] = [status, *outputs]
print(json.dumps(outcomes))
"""


def starts(project: Project, environments: dict[str, dict[str, str]]) -> dict[str, str]:
    """For each of `environments`, by name, what is wrong with the way the service refused
    to start with it ("" if it refused with one line, a non-zero status and no traceback),
    or else the line it refused with."""
    code = STARTS.format(package=project.path.name)
    outcomes = json.loads(
        project.python(code, json.dumps(start_env(project)), json.dumps(environments))
    )
    found = {}
    for name, (status, stdout, stderr) in outcomes.items():
        lines = stderr.strip().splitlines()
        if status is None:
            found[name] = "it started"
        elif status == 0 or len(lines) != 1 or "Traceback" in stdout:
            found[name] = f"exit {status}, stderr:\n{stderr}"
        else:
            found[name] = lines[0]
    return found


@pytest.mark.parametrize(
    ("project", "walked"),
    [
        pytest.param("batch", "every", marks=pytest.mark.quick),
        ("websocket", "own"),
        ("ml_inference", "own"),
    ],
    indirect=["project"],
)
def test_every_wrong_setting_stops_the_start_with_one_line_naming_it(
    project: Project, walked: str
) -> None:
    # batch has the service's settings, the database's and the jobs'; the others add theirs.
    kinds = settings_of(project, own=walked == "own")
    walk = {}
    for name, kind in sorted(kinds.items()):
        if name in ANY_TEXT:
            assert kind == "text", f"{name} takes a {kind}: it has wrong values"
        elif kind in WRONG_BY_TYPE:
            walk[name] = {name: WRONG_BY_TYPE[kind]}
        else:
            assert name in WRONG_TEXT, f"no wrong value known for {name}: add one to WRONG_TEXT"
            walk[name] = WRONG_TEXT[name]

    lines = starts(project, walk)

    def named(name: str) -> str:
        return str(Path(walk[name][name]).with_suffix("")) if name in NAMED_BY_FILE else name

    assert walk  # the settings were found
    assert {name: line for name, line in lines.items() if named(name) not in line} == {}


@pytest.mark.quick
@pytest.mark.parametrize("project", ["batch"], indirect=True)
def test_the_launcher_itself_refuses_a_worker_count_gunicorn_would_choke_on(
    project: Project,
) -> None:
    # The command the image, the unit and `make run` start, in a process of its own: Gunicorn
    # alone would parse WEB_CONCURRENCY as it is imported, into a traceback.
    serve = [str(project.venv / "bin" / "python"), "-m", f"{project.path.name}.serve"]

    result = subprocess.run(
        serve,
        cwd=project.path,
        env=start_env(project, WEB_CONCURRENCY="abc"),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "invalid configuration: WEB_CONCURRENCY: Input should be a valid integer, "
        "unable to parse string as an integer"
    ]
    assert "Traceback" not in result.stdout


@pytest.mark.parametrize("project", ["batch"], indirect=True)
def test_the_celery_worker_refuses_a_wrong_setting_with_one_line(project: Project) -> None:
    worker = [str(project.venv / "bin" / "celery"), "--app", f"{project.path.name}.jobs.celery_app"]

    result = subprocess.run(
        [*worker, "worker"],
        cwd=project.path,
        env=start_env(project, CELERY_TIME_LIMIT="soon"),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "invalid configuration: CELERY_TIME_LIMIT: Input should be a valid integer, "
        "unable to parse string as an integer"
    ]


@contextmanager
def launched(project: Project, workers: int, **env: str) -> Iterator[Server]:
    """The service as the image starts it: `python -m <package>.serve`, no migration first."""
    environment = start_env(project, WEB_CONCURRENCY=str(workers), **env)
    log = project.path / "var" / f"serve-{environment['PORT']}.log"
    log.parent.mkdir(exist_ok=True)
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(project.venv / "bin" / "python"), "-m", f"{project.path.name}.serve"],
            cwd=project.path,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    metrics = f"http://127.0.0.1:{environment['METRICS_PORT']}/metrics"
    server = Server(f"http://127.0.0.1:{environment['PORT']}", process, log, metrics)
    try:
        server.wait_until_serving()
        yield server
    finally:
        server.stop()


def messages(server: Server, logger: str) -> list[str]:
    return [entry["message"] for entry in server.log_entries(logger)]


@pytest.mark.parametrize("project", ["public_api"], indirect=True)
def test_a_server_started_before_the_migrations_is_not_ready_until_they_are_applied(
    project: Project,
) -> None:
    database = {"DATABASE_URL": f"sqlite+aiosqlite:///{project.path}/var/{uuid.uuid4().hex}.db"}
    behind = (
        "the database is at revision none, the code expects 0001: "
        "apply the migrations (alembic upgrade head)"
    )
    package = project.path.name

    with launched(project, workers=2, **database) as server, httpx.Client() as client:
        ready = client.get(f"{server.url}/health/ready")
        items = [client.get(f"{server.url}/items").status_code for _ in range(10)]
        at_start = messages(server, f"{package}.schema_state")
        unavailable = messages(server, f"{package}.db")
        project.make("migrate", **database)
        ready_after = wait_for(
            lambda: [client.get(f"{server.url}/health/ready").status_code for _ in range(4)],
            lambda codes: codes == [200] * 4,
            "every worker ready once migrated",
        )
        items_after = client.get(f"{server.url}/items")
        workers = len(server.workers())

    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "failed": {"migrations": behind}}
    # One line at start from each worker, which finds it for itself.
    assert at_start == [f"not ready: {behind}"] * workers
    assert items == [503] * 10
    # The 503s say why, a line at most every 10 s per worker.
    assert 1 <= len(unavailable) <= workers, unavailable
    assert all(
        line.startswith("the database is unavailable (503): OperationalError: ")
        and "no such table: items" in line
        for line in unavailable
    ), unavailable
    assert ready_after == [200] * 4
    assert items_after.status_code == 200


def sql(project: Project, postgres_url: str, statement: str) -> str:
    """The first value `statement` returns, if any, as text."""
    return project.python(
        "import asyncio, asyncpg, sys\n"
        "async def main():\n"
        "    connection = await asyncpg.connect(sys.argv[1])\n"
        "    print(await connection.fetchval(sys.argv[2]))\n"
        "    await connection.close()\n"
        "asyncio.run(main())\n",
        postgres_url.replace("+asyncpg", ""),
        statement,
    ).strip()


@pytest.mark.parametrize("project", ["public_api"], indirect=True)
def test_migrate_creates_a_missing_database_schema_and_migrates_an_existing_one(
    project: Project, postgres_url: str
) -> None:
    missing, existing = (f"first_{uuid.uuid4().hex[:12]}" for _ in range(2))
    count = "SELECT count(*) FROM pg_tables WHERE schemaname = '{}'"
    try:
        sql(project, postgres_url, f'CREATE SCHEMA "{existing}"')
        tables = {}
        for schema in (missing, existing):
            project.make("migrate", DATABASE_URL=postgres_url, DATABASE_SCHEMA=schema)
            tables[schema] = sql(project, postgres_url, count.format(schema))
        with launched(
            project, workers=1, DATABASE_URL=postgres_url, DATABASE_SCHEMA=missing
        ) as server:
            ready = httpx.get(f"{server.url}/health/ready")
    finally:
        for schema in (missing, existing):
            sql(project, postgres_url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    assert tables == {missing: "2", existing: "2"}  # alembic_version and items
    assert ready.status_code == 200


@pytest.mark.parametrize("project", ["public_api"], indirect=True)
def test_a_new_migration_passes_lint_as_written(project: Project, tmp_path: Path) -> None:
    # A copy of the bake, whose model gains a column: the shared bake stays as it was.
    copy = Project(tmp_path / project.path.name, project.answers, project.venv)
    shutil.copytree(project.path, copy.path, ignore=shutil.ignore_patterns("var", ".venv"))
    models = copy.path / "src" / copy.path.name / "items" / "models.py"
    models.write_text(
        models.read_text().replace(
            "    price_cents: Mapped[int]\n",
            "    price_cents: Mapped[int]\n"
            "    stock_keeping_unit_code: Mapped[str | None] = mapped_column(\n"
            "        String(40), index=True\n"
            "    )\n",
        )
    )
    database = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/service.db"}
    migrated = copy.run(str(copy.venv / "bin" / "alembic"), "upgrade", "head", **database)
    assert migrated.returncode == 0, migrated.stderr

    copy.make("migration", m="add a stock keeping unit", **database)

    [written] = (copy.path / "migrations" / "versions").glob("*add_a_stock_keeping_unit.py")
    assert "stock_keeping_unit_code" in written.read_text()
    for lint in (["ruff", "check"], ["ruff", "format", "--check"], ["mypy"]):
        result = copy.run(str(copy.venv / "bin" / lint[0]), *lint[1:], str(written))
        assert result.returncode == 0, result.stdout + result.stderr
