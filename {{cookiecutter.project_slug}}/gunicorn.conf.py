"""Gunicorn configuration, computed from the settings (the profiles and the environment).

Run `python gunicorn.conf.py` to see what Gunicorn will do on this machine, as JSON, with
every setting and where its value came from. Overrides, by the ecosystem's usual names:
  WEB_CONCURRENCY     number of workers (default: from the CPUs this process may use)
  BIND or PORT        listen address (127.0.0.1:8000 in development, 0.0.0.0:PORT otherwise)
  WORKER_CLASS        the project's Uvicorn worker (default) or Gunicorn's own "asgi"
  FORWARDED_ALLOW_IPS proxies trusted for X-Forwarded-* headers (default: 127.0.0.1)
  GUNICORN_<SETTING>  any setting of the profiles' [gunicorn] table (GUNICORN_TIMEOUT)
  GUNICORN_CMD_ARGS   any other Gunicorn flag; read by Gunicorn itself, after this file
"""

import gc
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from {{ cookiecutter.project_slug }}.service_settings import flat
from {{ cookiecutter.project_slug }}.serving.cpu import effective_cpu_count
from {{ cookiecutter.project_slug }}.serving.gunicorn_worker import (
    forget_replaced,
    import_libraries,
    libraries_noted,
    replaced_workers,
    serving_marker,
    write_replaced,
)
from {{ cookiecutter.project_slug }}.serving.logs import logging_config
from {{ cookiecutter.project_slug }}.settings import get_settings

# Gunicorn runs this file again on a reload (SIGHUP): read .env and the profiles again too.
get_settings.cache_clear()
settings = get_settings()  # exits with one readable line if the configuration is wrong
cpus = effective_cpu_count()

wsgi_app = "{{ cookiecutter.project_slug }}.main:create_app()"
# Uvicorn's worker, with keep-alive connections that drain on reload (serving/).
worker_class = settings.worker_class
try:
    workers, workers_source = settings.workers_for(cpus.count)
except ValueError as error:
    raise SystemExit(f"invalid configuration: {error}") from None
default_host = "127.0.0.1" if settings.environment == "development" else "0.0.0.0"  # noqa: S104
# The service, and beside it the listener that alone serves /metrics (serving/metrics.py).
bind = [
    settings.bind or f"{default_host}:{settings.port}",
    f"{default_host}:{settings.metrics_port}",
]

gunicorn_settings = settings.gunicorn
timeout = gunicorn_settings.timeout
graceful_timeout = gunicorn_settings.graceful_timeout
keepalive = gunicorn_settings.keepalive
# Enforced by the project's worker (serving/) as Gunicorn's sync workers do: 414 and 431.
limit_request_line = gunicorn_settings.limit_request_line
limit_request_fields = gunicorn_settings.limit_request_fields
limit_request_field_size = gunicorn_settings.limit_request_field_size
# Recycling replaces a worker only after it has exited: with a single worker nothing serves
# while the new one imports the app, so it is off. The worker applies max_worker_lifetime
# itself, by the same rule.
max_requests = gunicorn_settings.max_requests if workers > 1 else 0
max_requests_jitter = gunicorn_settings.max_requests_jitter if workers > 1 else 0
max_worker_lifetime = gunicorn_settings.max_worker_lifetime if workers > 1 else 0
preload_app = settings.preload
forwarded_allow_ips = settings.forwarded_allow_ips
worker_tmp_dir = (
    gunicorn_settings.worker_tmp_dir if os.path.isdir(gunicorn_settings.worker_tmp_dir) else None
)
# What the master checks and sets up before it forks (the model, where there is one).
prepared = settings.prepare_master()

# No control socket unless asked: it is one more way in, and two instances would share its path.
control_socket_disable = gunicorn_settings.control_socket is None
control_socket = gunicorn_settings.control_socket or ""

# JSON lines on stdout; the app writes the access log itself, with the request id.
accesslog = None
errorlog = "-"
loglevel = settings.log_level
logconfig_dict = logging_config(loglevel)

# Metrics from every worker go to files in one directory, summed by /metrics. It must be
# known before the workers import prometheus_client, and survive reloads: set it once.
# The workers' recycling turns live in it too (serving/gunicorn_worker.py).
os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR",
    os.path.join(
        "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir(),  # noqa: S108
        f"{{ cookiecutter.project_slug }}-metrics-{os.getpid()}",
    ),
)
metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def on_starting(server: Arbiter) -> None:
    """Refuse a worker count the service cannot run (`--workers` in GUNICORN_CMD_ARGS is
    only known here), and start counting from zero: samples left by an earlier run would
    be summed in."""
    try:
        settings.check_workers(server.cfg.workers)
    except ValueError as error:
        raise SystemExit(f"invalid configuration: {error}") from None
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True, exist_ok=True)


def on_reload(server: Arbiter) -> None:
    """The workers running now are about to be replaced: each stays until the new ones
    serve (serving/gunicorn_worker.py), so that a reload never leaves the service without a
    worker."""
    write_replaced(replaced_workers(str(metrics_dir)), list(server.WORKERS), server.num_workers)


def post_fork(server: Arbiter, worker: Worker) -> None:
    """Gunicorn tells each worker how many serve beside it (`--workers` in GUNICORN_CMD_ARGS
    included): budgets of the whole service are shared among them."""
    settings.share_among(worker.cfg.workers)


libraries_imported = False


def pre_fork(server: Arbiter, worker: Worker) -> None:
    """With preload, the app is in the master's memory and every worker shares its pages
    until one writes to them. Without, the master imports the libraries the first worker
    noted it imported (never the project's own code, which each worker imports: a reload
    runs new code), once: a recycled worker then starts in a fraction of the time.
    Freezing moves the master's objects out of the garbage collector's reach, so the
    workers' collections do not write to (and copy) them."""
    global libraries_imported
    if not preload_app and not libraries_imported:
        imported = import_libraries(libraries_noted(str(metrics_dir)))
        libraries_imported = imported > 0
        if libraries_imported:
            server.log.info("imported %d libraries for the workers to come", imported)
    if preload_app or libraries_imported:
        gc.freeze()


def child_exit(server: Arbiter, worker: Worker) -> None:
    """A dead worker's gauges go; its counters stay, so totals never go backwards. It no
    longer serves, whatever way it died (serving/gunicorn_worker.py's recycling turns)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
    serving_marker(str(metrics_dir), worker.pid).unlink(missing_ok=True)
    forget_replaced(replaced_workers(str(metrics_dir)), worker.pid)


def on_exit(server: Arbiter) -> None:
    shutil.rmtree(metrics_dir, ignore_errors=True)


def resolved() -> dict[str, object]:
    return {
        "wsgi_app": wsgi_app,
        "worker_class": worker_class,
        "workers": workers,
        "workers_from": workers_source,
        "cpus": cpus.count,
        "cpus_from": cpus.source,
        "bind": bind,
        "timeout": timeout,
        "graceful_timeout": graceful_timeout,
        "keepalive": keepalive,
        "limit_request_line": limit_request_line,
        "limit_request_fields": limit_request_fields,
        "limit_request_field_size": limit_request_field_size,
        "max_requests": max_requests,
        "max_requests_jitter": max_requests_jitter,
        "max_worker_lifetime": max_worker_lifetime,
        "preload": preload_app,
        **prepared,
        "forwarded_allow_ips": forwarded_allow_ips,
        "worker_tmp_dir": worker_tmp_dir,
        "control_socket": None if control_socket_disable else control_socket,
        "metrics_dir": str(metrics_dir),
        # Every setting, a password in a URL masked, and where its value came from.
        "settings": {".".join(path): _masked(value) for path, value in flat(settings.model_dump())},
        "settings_from": settings.origins,
    }


def _masked(value: object) -> object:
    if isinstance(value, str):
        return re.sub(r"(://[^/:@]*:)[^/@]+@", r"\1***@", value)
    return value if isinstance(value, int | float | bool | None | list) else str(value)


if __name__ == "__main__":
    print(json.dumps(resolved(), indent=2))
