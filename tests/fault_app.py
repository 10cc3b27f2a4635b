"""The baked service, plus two routes the fault tests need: a slow one and one that blocks.

Served with `gunicorn -c gunicorn.conf.py tests.fault_app:app` from the template's root.
"""

import asyncio
import importlib
import os
import time

from fastapi import FastAPI

create_app = importlib.import_module(f"{os.environ['SERVICE_PACKAGE']}.main").create_app
app: FastAPI = create_app()


@app.get("/test/sleep")
async def sleep(seconds: float) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@app.get("/test/block")
async def block(seconds: float) -> dict[str, float]:
    time.sleep(seconds)  # holds the event loop: the worker stops answering Gunicorn's heartbeat
    return {"blocked": seconds}
