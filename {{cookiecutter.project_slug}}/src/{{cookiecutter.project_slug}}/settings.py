"""Run-time settings: read once, from the profiles, `.env` and the environment.

How they are read, and which of those wins, is in service_settings.py.
"""

from functools import lru_cache

from pydantic import ValidationError
from pydantic_settings import SettingsError
{%- if cookiecutter.__jobs %}

from .jobs.settings import JobSettings


class Settings(JobSettings):
    """Every knob of this service: the jobs', their database's, and the service's own."""
{%- elif cookiecutter.__database %}

from .db_settings import DatabaseSettings


class Settings(DatabaseSettings):
    """Every knob of this service: its database's, and the service's own."""
{%- elif cookiecutter.__rooms %}

from .rooms.settings import RoomSettings


class Settings(RoomSettings):
    """Every knob of this service: the rooms', and the service's own."""
{%- else %}

from .inference.settings import InferenceSettings


class Settings(InferenceSettings):
    """Every knob of this service: the model's, and the service's own."""
{%- endif %}


@lru_cache
def get_settings() -> Settings:
    """The settings, or exit with one readable line saying what is wrong with them."""
    try:
        return Settings()
    except SettingsError as error:
        raise SystemExit(f"invalid configuration: {error}") from None
    except ValidationError as error:
        problems = "; ".join(
            # The variable that sets it: ("celery", "time_limit") is CELERY_TIME_LIMIT.
            "_".join(str(key) for key in e["loc"] if isinstance(key, str)).upper()
            + ": " * bool(e["loc"])
            + e["msg"].removeprefix("Value error, ")
            for e in error.errors()
        )
        raise SystemExit(f"invalid configuration: {problems}") from None
