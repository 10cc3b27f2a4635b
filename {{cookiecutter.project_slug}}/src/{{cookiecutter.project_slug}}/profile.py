"""The scenario profile: every process-model knob of this service, as data.

`profile.toml` beside this module holds the values; `gunicorn.conf.py`, the app{% if cookiecutter.use_celery == "yes" %}, Celery{% endif %} and the
database layer all read them from `PROFILE`. Environment variables that operators expect
(`WEB_CONCURRENCY`, `GUNICORN_CMD_ARGS`, ...) still override them at run time.
"""

import math
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, PositiveInt

{% if cookiecutter.use_celery == "yes" %}
class CeleryProfile(BaseModel):
    """The `[celery]` table: how the Celery workers run the jobs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    processes_per_cpu: PositiveInt
    queue: str
    prefetch_multiplier: PositiveInt
    soft_time_limit: PositiveInt
    time_limit: PositiveInt
    visibility_timeout: PositiveInt
    max_attempts: PositiveInt
    max_tasks_per_child: PositiveInt
    max_memory_per_child_kib: PositiveInt
    max_upload_size: PositiveInt

    def processes_for(self, cpus: int) -> int:
        return self.processes_per_cpu * cpus

{% endif %}
class Profile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    workers_per_cpu: PositiveInt
    extra_workers: int
    timeout: PositiveInt
    graceful_timeout: PositiveInt
    keepalive: PositiveInt
    max_requests: int
    max_requests_jitter: int
    preload: bool
    worker_tmp_dir: str
    forwarded_allow_ips: str
    thread_pool_size: PositiveInt
    db_max_connections: PositiveInt
{%- if cookiecutter.use_celery == "yes" %}
    celery: CeleryProfile
{%- endif %}

    def workers_for(self, cpus: int) -> int:
        return max(1, math.ceil(self.workers_per_cpu * cpus) + self.extra_workers)

    @classmethod
    def load(cls, path: Path) -> "Profile":
        return cls.model_validate(tomllib.loads(path.read_text()))


PROFILE = Profile.load(Path(__file__).with_name("profile.toml"))
