"""The items resource: its routes (its sessions come from the database feature)."""

from fastapi import FastAPI

from ..features import Feature
from ..settings import Settings
from .router import router


def _install(app: FastAPI, _settings: Settings) -> None:
    app.include_router(router)


ITEMS = Feature(_install)
