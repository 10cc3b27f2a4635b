"""What each feature of this service offers the app, through one small interface.

A feature (the database, a resource such as items, the model, the rooms, the jobs) is
installed once, when the app is created: its routes, its error handlers, anything the
workers share. It then runs in every worker for as long as that worker serves: what it
opens after the fork (connections, background tasks) and the readiness checks that say
whether it can serve. `main.py` composes the service's features in order, each after
those it uses (the database first).
"""

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI

from .health import ReadinessCheck
from .settings import Settings

ReadinessChecks = Mapping[str, ReadinessCheck]


@asynccontextmanager
async def nothing_to_run(_app: FastAPI) -> AsyncIterator[ReadinessChecks]:
    yield {}


@dataclass(frozen=True)
class Feature:
    # Called once, in create_app (in the Gunicorn master with preload, else in each worker).
    install: Callable[[FastAPI, Settings], None]
    # Entered in each worker's lifespan, in FEATURES order, and left in reverse order.
    running: Callable[[FastAPI], AbstractAsyncContextManager[ReadinessChecks]] = nothing_to_run
