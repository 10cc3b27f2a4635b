"""Run-time settings: read once, from the profiles, `.env` and the environment.

How they are read, and which of those wins, is in service_settings.py.
"""

from functools import lru_cache
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
{%- elif cookiecutter.__inference %}

from .inference.settings import InferenceSettings


class Settings(InferenceSettings):
    """Every knob of this service: the model's, and the service's own."""
{%- else %}

from .service_settings import ServiceSettings


class Settings(ServiceSettings):
    """Every knob of this service."""
{%- endif %}


@lru_cache
def get_settings() -> Settings:
    """The settings, or exit with one readable line saying what is wrong with them."""
    return Settings.load()
