"""The rooms: their WebSocket and HTTP routes, and the fan-out that links the workers."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..features import Feature, ReadinessChecks
from ..settings import Settings
from .fanout import Rooms, create_fanout
from .router import router


def _install(app: FastAPI, settings: Settings) -> None:
    app.include_router(router, max_body_size=settings.ws_max_message_size)


@asynccontextmanager
async def _running(app: FastAPI) -> AsyncIterator[ReadinessChecks]:
    app.state.rooms = rooms = Rooms()
    app.state.fanout = fanout = create_fanout(app.state.settings, rooms)
    async with fanout.running():
        yield fanout.readiness_checks


ROOMS = Feature(_install, _running)
