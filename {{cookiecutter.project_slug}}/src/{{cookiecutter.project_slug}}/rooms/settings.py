"""The rooms' settings: Redis between workers, and how long-lived connections are kept."""

from typing import TYPE_CHECKING, Annotated, Self

from pydantic import Field, field_validator, model_validator

from ..service_settings import CommaSeparated, EmptyIsUnset, ServiceSettings

if TYPE_CHECKING:
    from uvicorn import Config

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class RoomSettings(ServiceSettings):
    # Redis relays room messages between workers and machines: redis://host:6379/0. Unset:
    # messages fan out inside one process, so gunicorn.conf.py starts a single worker.
    redis_url: Annotated[str | None, EmptyIsUnset] = None
    # Origins a browser may open /ws/ from, comma-separated; unset: any. Clients that send no
    # Origin header (not browsers) are always let in.
    ws_allowed_origins: CommaSeparated = Field(default_factory=list)
    ws_heartbeat_interval: float = Field(gt=0)
    ws_idle_timeout: float = Field(gt=0)
    ws_max_message_size: int = Field(ge=1)
    ws_send_queue_size: int = Field(ge=1)
    ws_resubscribe_grace: float = Field(gt=0)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(REDIS_SCHEMES):
            raise ValueError(f"must start with one of {', '.join(REDIS_SCHEMES)}")
        return url

    @model_validator(mode="after")
    def _idle_outlasts_heartbeat(self) -> Self:
        if not self.ws_heartbeat_interval < self.ws_idle_timeout:
            raise ValueError(
                "WS_IDLE_TIMEOUT must exceed WS_HEARTBEAT_INTERVAL, or a client would be "
                "dropped before it was even asked for a pong"
            )
        return self

    def workers_for(self, cpus: int) -> tuple[int, str]:
        workers, source = super().workers_for(cpus)
        if self.redis_url is None and workers > 1:
            # Without Redis a room message reaches only the clients of the worker it arrives on.
            return 1, f"1, not {workers} ({source}): without REDIS_URL rooms are per worker"
        return workers, source

    def configure_worker(self, config: "Config") -> None:
        # Heartbeats, idle timeout, message size and 1001 on shutdown (rooms/protocol.py).
        from .protocol import configure  # imports Uvicorn's WebSocket protocol: workers only

        configure(config, self)
