"""The scenario profile: every process-model knob of this service, as data.

`profile.toml` beside this module holds the values; `gunicorn.conf.py`, the app{% if cookiecutter.use_celery == "yes" %}, Celery{% endif %} and the
rest of the service read them from `PROFILE`. Environment variables that operators expect
(`WEB_CONCURRENCY`, `GUNICORN_CMD_ARGS`, ...) still override them at run time.
"""

import math
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveFloat, PositiveInt

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
    stale_after: PositiveInt
    publish_timeout: PositiveFloat
    max_tasks_per_child: PositiveInt
    max_memory_per_child_kib: PositiveInt
    max_upload_size: PositiveInt

    def processes_for(self, cpus: int) -> int:
        return self.processes_per_cpu * cpus

{% endif %}
{%- if cookiecutter.scenario == "ml_inference" %}
class InferenceProfile(BaseModel):
    """The `[inference]` table: how much one request may ask of the model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch_size: PositiveInt
    max_feature_magnitude: PositiveFloat
    blas_threads: PositiveInt

{% endif %}
{%- if cookiecutter.scenario == "websocket" %}
class WebSocketProfile(BaseModel):
    """The `[websocket]` table: how long-lived connections are kept healthy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    heartbeat_interval: PositiveFloat
    idle_timeout: PositiveFloat
    max_message_size: PositiveInt
    send_queue_size: PositiveInt
    resubscribe_grace: PositiveFloat

{% endif %}
class Profile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    workers_per_cpu: PositiveInt
    extra_workers: int
    timeout: PositiveInt
    graceful_timeout: PositiveInt
    keepalive: PositiveInt
    limit_request_line: NonNegativeInt
    limit_request_fields: PositiveInt
    limit_request_field_size: NonNegativeInt
    header_timeout: PositiveFloat
    body_timeout: PositiveFloat
    max_concurrent_requests: PositiveInt
    max_requests: int
    max_requests_jitter: int
    preload: bool
    worker_tmp_dir: str
    forwarded_allow_ips: str
    thread_pool_size: PositiveInt
{%- if cookiecutter.database != "none" %}
    db_max_connections: PositiveInt
    db_statement_timeout: PositiveInt
{%- endif %}
{%- if cookiecutter.use_celery == "yes" %}
    celery: CeleryProfile
{%- endif %}
{%- if cookiecutter.scenario == "ml_inference" %}
    inference: InferenceProfile
{%- endif %}
{%- if cookiecutter.scenario == "websocket" %}
    websocket: WebSocketProfile
{%- endif %}

    def workers_for(self, cpus: int) -> int:
        return max(1, math.ceil(self.workers_per_cpu * cpus) + self.extra_workers)

    @classmethod
    def load(cls, path: Path) -> "Profile":
        return cls.model_validate(tomllib.loads(path.read_text()))


PROFILE = Profile.load(Path(__file__).with_name("profile.toml"))
