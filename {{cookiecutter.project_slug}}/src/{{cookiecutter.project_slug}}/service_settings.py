"""The knobs every service has, and how all settings are read.

Each knob is declared once, in a settings class: the service's own below, a feature's in its
package (`Settings` in settings.py puts them together). Its value is, from the first of
these that sets it: the keyword arguments of `Settings(...)`, the environment, `.env`, this
scenario's profile (its file in `profiles/`, only what differs from the base), the base
profile (`profiles/base.toml`), the field's default. A table in a profile is a nested
setting, set from the environment as `<TABLE>_<KEY>`: `[gunicorn] timeout` is
`GUNICORN_TIMEOUT`. `origins` says, for each value, which of them set it.
"""

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    NonNegativeInt,
    PositiveInt,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

if TYPE_CHECKING:
    from uvicorn import Config

PROFILES = Path(__file__).with_name("profiles")
BASE_PROFILE = PROFILES / "base.toml"
# The base first, then the scenario's file (the only other one the bake keeps), which
# overrides it table by table.
PROFILE_FILES = (BASE_PROFILE, *sorted(set(PROFILES.glob("*.toml")) - {BASE_PROFILE}))

# Good enough on a laptop, refused in production; so is a secret shorter than this.
DEVELOPMENT_SECRET = "development-only-secret-change-me"  # noqa: S105
MIN_SECRET_LENGTH = 32

# A setting's place: its field's name, then its key in a nested setting.
SettingPath = tuple[str, ...]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# A list given as one comma-separated string: ALLOWED_HOSTS=a.example,b.example.
CommaSeparated = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]


def _empty_is_unset(value: object) -> object:
    return None if value == "" else value


# An optional setting given as an empty variable (WEB_CONCURRENCY=) is an unset one. Only
# these: an empty DATABASE_URL or SECRET_KEY must be refused, not replaced by the default.
EmptyIsUnset = BeforeValidator(_empty_is_unset)


class GunicornSettings(BaseModel):
    """The `[gunicorn]` table: Gunicorn's own settings, under its names (GUNICORN_CMD_ARGS,
    read by Gunicorn after gunicorn.conf.py, still overrides any of them)."""

    model_config = ConfigDict(frozen=True)

    workers_per_cpu: PositiveInt
    extra_workers: int
    timeout: PositiveInt
    graceful_timeout: PositiveInt
    keepalive: PositiveInt
    limit_request_line: NonNegativeInt
    limit_request_fields: PositiveInt
    limit_request_field_size: NonNegativeInt
    max_requests: NonNegativeInt
    max_requests_jitter: NonNegativeInt
    # Seconds a worker serves before it is recycled (0: no limit), plus up to the jitter:
    # the project's worker reads them (serving/gunicorn_worker.py), Gunicorn has no such setting.
    max_worker_lifetime: NonNegativeInt
    max_worker_lifetime_jitter: NonNegativeInt
    # Used where it exists, else Gunicorn's default (the system's temporary directory).
    worker_tmp_dir: str
    # A control socket is one more way in, and two instances would share its path: none
    # unless GUNICORN_CONTROL_SOCKET names one.
    control_socket: Annotated[str | None, EmptyIsUnset] = None


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        extra="ignore",
        frozen=True,
        # CELERY_TIME_LIMIT is `time_limit` in the `celery` setting: one `_` is the nesting.
        env_nested_delimiter="_",
        env_nested_max_split=1,
    )

    environment: Literal["development", "production"] = "development"
    secret_key: SecretStr = SecretStr(DEVELOPMENT_SECRET)
    # Seconds /health/ready waits for each dependency before calling it unavailable.
    readiness_timeout: float = Field(default=1.0, gt=0)
    # None: on in development, off in production.
    docs_enabled: bool | None = None
    # Host names the service answers to; any in development, to be named in production.
    allowed_hosts: CommaSeparated = Field(default=["*"], min_length=1)
    cors_origins: CommaSeparated = []
    # Request bodies larger than this get a 413 before they are read.
    max_body_size: int = Field(default=1024 * 1024, ge=0)
    # Seconds for a request's complete head (else 408), and for a body to make progress.
    header_timeout: float = Field(gt=0)
    body_timeout: float = Field(gt=0)
    # Requests one worker answers at once; past it a fast 503 (health checks excepted).
    max_concurrent_requests: int = Field(ge=1)
    # Seconds a request may wait in a worker, from its head being read to the app seeing
    # it, before it gets a fast 503 instead (health checks excepted); 0: never for waiting.
    max_request_wait: float = Field(ge=0)
    # Threads per worker for blocking calls (blocking.py).
    thread_pool_size: PositiveInt

    gunicorn: GunicornSettings
    # Workers; default: the profile's workers per usable CPU (gunicorn.conf.py).
    web_concurrency: Annotated[int | None, EmptyIsUnset] = Field(default=None, ge=1)
    # Load the app in the Gunicorn master before forking the workers.
    preload: bool
    port: int = Field(default=8000, ge=1, le=65535)
    # The listener that alone serves /metrics: keep it where the scraper reaches it and
    # clients do not (the Kubernetes NetworkPolicy opens it to the monitoring namespace).
    metrics_port: int = Field(default=9464, ge=1, le=65535)
    bind: Annotated[str | None, EmptyIsUnset] = None
    # Proxies whose X-Forwarded-* headers are believed.
    forwarded_allow_ips: str
    # The project's Uvicorn worker, or Gunicorn's own "asgi" worker.
    worker_class: str = f"{__package__}.serving.gunicorn_worker.Worker"
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
{%- if cookiecutter.__redis %}
    # Every Redis key and channel of this service starts with it, so that services (or two
    # deployments of one) can share a Redis server; what one prefix wrote, another never sees.
    redis_key_prefix: str = f"{__package__}:"
{%- endif %}

    # The workers among which the service's budgets are shared: Gunicorn's count, in each
    # worker it forks (gunicorn.conf.py's post_fork); 1 anywhere else. A fact of the
    # process, not of one settings object: a reload reads the settings again, while a
    # preloaded app keeps the object it was created with.
    workers_in_service: ClassVar[int] = 1
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def load(cls) -> Self:
        """The settings, or exit with one readable line saying what is wrong with them,
        naming the variable that sets each wrong value."""
        try:
            return cls()
        except SettingsError as error:
            raise SystemExit(f"invalid configuration: {error}") from None
        except ValidationError as error:
            problems = "; ".join(
                env_name(tuple(key for key in e["loc"] if isinstance(key, str)))
                + ": " * bool(e["loc"])
                + e["msg"].removeprefix("Value error, ")
                for e in error.errors()
            )
            raise SystemExit(f"invalid configuration: {problems}") from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        profile = ProfileSource(settings_cls)
        return init_settings, env_settings, dotenv_settings, profile, Origins(settings_cls, profile)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_origins(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        origins = data.pop(Origins.KEY, {}) if isinstance(data, dict) else {}
        settings = handler(data)
        settings._origins = origins
        return settings

    @field_validator("log_level", mode="before")
    @classmethod
    def _lowercase(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    # Gunicorn reads these three only once it runs: each is checked here as Gunicorn will
    # read it, so that a wrong one stops the start with a line that names its variable.
    @field_validator("bind")
    @classmethod
    def _an_address(cls, value: str | None) -> str | None:
        from gunicorn.util import parse_address

        if value is not None:
            try:
                parse_address(value)
            except RuntimeError as error:
                raise ValueError(str(error)) from None
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _networks(cls, value: str) -> str:
        for network in (part.strip() for part in value.split(",")):
            if network not in ("", "*"):
                ipaddress.ip_network(network)  # its ValueError says what is wrong
        return value

    @field_validator("worker_class")
    @classmethod
    def _a_worker_class(cls, value: str) -> str:
        if value == cls.model_fields["worker_class"].default:
            return value
        from gunicorn.util import load_class

        try:
            load_class(value, section="gunicorn.workers")
        except Exception:  # Gunicorn's own words are a traceback
            raise ValueError(
                f"{value!r} is no Gunicorn worker class (asgi, or a dotted path)"
            ) from None
        return value

    @model_validator(mode="after")
    def _metrics_on_a_port_of_their_own(self) -> Self:
        if self.metrics_port == self.port:
            raise ValueError("METRICS_PORT must differ from PORT: metrics have a port of their own")
        return self

    @model_validator(mode="after")
    def _production_is_locked_down(self) -> Self:
        if self.environment != "production":
            return self
        secret = self.secret_key.get_secret_value()
        if secret == DEVELOPMENT_SECRET or len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"SECRET_KEY must be set to a secret of your own in production, at least "
                f"{MIN_SECRET_LENGTH} characters"
            )
        if "*" in self.allowed_hosts:
            raise ValueError(
                "ALLOWED_HOSTS must name the host names this service answers to in production "
                "(not *): URLs it builds, such as a redirect, take the request's Host header"
            )
        return self

    @property
    def show_docs(self) -> bool:
        if self.docs_enabled is None:
            return self.environment == "development"
        return self.docs_enabled

    @property
    def origins(self) -> dict[str, str]:
        """Where each value came from, by setting (`gunicorn.timeout`): "env GUNICORN_TIMEOUT",
        ".env PORT", "profile base.toml", "init" (a keyword argument) or "default"."""
        return self._origins

    def workers_for(self, cpus: int) -> tuple[int, str]:
        """How many Gunicorn workers serve on `cpus` usable CPUs, and why that many.

        Raises ValueError, naming the setting, when this service cannot run that many."""
        if self.web_concurrency:
            workers, source = self.web_concurrency, "WEB_CONCURRENCY"
        else:
            table = self.gunicorn
            workers = max(1, table.workers_per_cpu * cpus + table.extra_workers)
            source = f"{table.workers_per_cpu} x CPUs + {table.extra_workers}"
        self.check_workers(workers)
        return workers, source

    @classmethod
    def share_among(cls, workers: int) -> None:
        """This process is one of `workers` Gunicorn workers: budgets of the whole service
        are shared among them."""
        ServiceSettings.workers_in_service = workers

    def check_workers(self, workers: int) -> None:
        """Raise ValueError, naming the setting, when this service cannot run `workers`."""

    def configure_worker(self, config: "Config") -> None:
        """Set what a feature needs of the Uvicorn configuration of each worker (the rooms:
        their WebSocket protocol); the HTTP side is the worker's own (serving/)."""

    def prepare_master(self) -> dict[str, object]:
        """What the Gunicorn master makes ready before it forks (a feature whose files must
        be in place checks them here, and exits with one line if they are not); returns what
        `python gunicorn.conf.py` shows about it."""
        return {}


def setting_paths(model: type[BaseModel], within: SettingPath = ()) -> Iterator[SettingPath]:
    """Every setting of `model`, a nested setting's keys included."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from setting_paths(annotation, (*within, name))
        else:
            yield (*within, name)


def flat(table: dict[str, Any], within: SettingPath = ()) -> Iterator[tuple[SettingPath, Any]]:
    """Each value of nested tables with its path: `{"gunicorn": {"timeout": 30}}` gives
    `(("gunicorn", "timeout"), 30)`."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from flat(value, (*within, key))
        else:
            yield (*within, key), value


def env_name(path: SettingPath) -> str:
    """The variable that sets a setting: `("celery", "time_limit")` is CELERY_TIME_LIMIT."""
    return "_".join(path).upper()


class ProfileSource(TomlConfigSettingsSource):
    """The base profile deep-merged with the scenario's (a table the scenario's file states
    replaces only the keys it names), noting which file each value came from."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        self.files: dict[SettingPath, str] = {}
        self.known = set(setting_paths(settings_cls))
        super().__init__(settings_cls, toml_file=list(PROFILE_FILES), deep_merge=True)

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        table = super()._read_file(file_path)
        for path, _value in flat(table):
            if path not in self.known:
                raise SettingsError(f"profile {file_path.name}: {'.'.join(path)} is not a setting")
            self.files[path] = file_path.name
        return table


class Origins(PydanticBaseSettingsSource):
    """Sets no value: notes which source, of those before it, set each one."""

    KEY = "__origins__"

    def __init__(self, settings_cls: type[BaseSettings], profile: ProfileSource) -> None:
        super().__init__(settings_cls)
        self.profile = profile

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        # The sources before this one, highest priority first, by their class names.
        states = self.settings_sources_data
        origins = {}
        for path in setting_paths(self.settings_cls):
            setters = (source for source, state in states.items() if _has(state, path))
            origins[".".join(path)] = self._label(next(setters, "default"), path)
        return {self.KEY: origins}

    def _label(self, source: str, path: SettingPath) -> str:
        if source == "ProfileSource":
            return f"profile {self.profile.files[path]}"
        return {
            "InitSettingsSource": "init",
            "EnvSettingsSource": f"env {env_name(path)}",
            "DotEnvSettingsSource": f".env {env_name(path)}",
        }.get(source, source)


def _has(state: Any, path: SettingPath) -> bool:
    for key in path:
        if not isinstance(state, dict) or key not in state:
            return False
        state = state[key]
    return True
