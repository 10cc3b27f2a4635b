"""Gunicorn configuration, computed from the scenario profile and the environment.

Run `python gunicorn.conf.py` to see what Gunicorn will do on this machine, as JSON.
Overrides, by the ecosystem's usual names:
  WEB_CONCURRENCY     number of workers (default: from the CPUs this process may use)
  BIND or PORT        listen address (127.0.0.1:8000 in development, 0.0.0.0:PORT otherwise)
  WORKER_CLASS        uvicorn_worker.UvicornWorker (default) or Gunicorn's own "asgi"
  FORWARDED_ALLOW_IPS proxies trusted for X-Forwarded-* headers (default: 127.0.0.1)
  GUNICORN_CMD_ARGS   any other Gunicorn flag; read by Gunicorn itself, after this file
"""

import json
import os

from {{ cookiecutter.project_slug }}.cpu import effective_cpu_count
from {{ cookiecutter.project_slug }}.profile import PROFILE
from {{ cookiecutter.project_slug }}.settings import get_settings

settings = get_settings()  # exits with one readable line if the configuration is wrong
cpus = effective_cpu_count()

wsgi_app = "{{ cookiecutter.project_slug }}.main:create_app()"
worker_class = os.environ.get("WORKER_CLASS", "uvicorn_worker.UvicornWorker")
if os.environ.get("WEB_CONCURRENCY"):
    workers = int(os.environ["WEB_CONCURRENCY"])
    workers_source = "WEB_CONCURRENCY"
else:
    workers = PROFILE.workers_for(cpus.count)
    workers_source = f"{PROFILE.workers_per_cpu} x CPUs + {PROFILE.extra_workers}"
default_host = "127.0.0.1" if settings.environment == "development" else "0.0.0.0"  # noqa: S104
bind = [os.environ.get("BIND") or f"{default_host}:{os.environ.get('PORT', '8000')}"]

timeout = PROFILE.timeout
graceful_timeout = PROFILE.graceful_timeout
keepalive = PROFILE.keepalive
max_requests = PROFILE.max_requests
max_requests_jitter = PROFILE.max_requests_jitter
preload_app = PROFILE.preload
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
# Heartbeat files on tmpfs: a worker blocked on a slow disk is not mistaken for a stuck one.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108

# No control socket unless asked: it is one more way in, and two instances would share its path.
control_socket_disable = os.environ.get("GUNICORN_CONTROL_SOCKET") is None
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "")

accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
# Gunicorn's access log format does not reach Uvicorn workers; the pid tells workers apart.
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "stream": "ext://sys.stdout",
        },
    },
    "loggers": {
        "gunicorn.error": {"handlers": ["console"], "level": loglevel.upper(), "propagate": False},
        "gunicorn.access": {"handlers": ["console"], "level": "INFO", "propagate": False},
    },
}


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
        "max_requests": max_requests,
        "max_requests_jitter": max_requests_jitter,
        "preload": preload_app,
        "forwarded_allow_ips": forwarded_allow_ips,
        "worker_tmp_dir": worker_tmp_dir,
        "control_socket": None if control_socket_disable else control_socket,
    }


if __name__ == "__main__":
    print(json.dumps(resolved(), indent=2))
