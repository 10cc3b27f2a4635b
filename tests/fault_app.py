"""The baked service, plus what the fault tests need to provoke faults at known moments.

Served with `gunicorn -c gunicorn.conf.py fault_app:app` (tests/baked.py puts this folder on
the path). The test and every worker share a directory, FAULT_APP_DIR:

- `in-flight/`: one file per request to /test/held or /test/block while it is served,
  named `<worker pid>-<n>`, so the test sees what is in flight on which worker (a killed
  worker's files stay);
- `release`: once it exists, held requests are answered;
- `hold-new-workers`: while it exists, a worker that starts waits before creating the
  app (Gunicorn's heartbeat does not start before that, so it is not timed out meanwhile).
"""

import asyncio
import importlib
import itertools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import FastAPI

SHARED = Path(os.environ["FAULT_APP_DIR"])
IN_FLIGHT = SHARED / "in-flight"
RELEASE = SHARED / "release"
HOLD_NEW_WORKERS = SHARED / "hold-new-workers"

while HOLD_NEW_WORKERS.exists():
    time.sleep(0.05)
create_app = importlib.import_module(f"{os.environ['SERVICE_PACKAGE']}.main").create_app
app: FastAPI = create_app()
IN_FLIGHT.mkdir(exist_ok=True)
numbers = itertools.count()


@contextmanager
def in_flight() -> Iterator[None]:
    marker = IN_FLIGHT / f"{os.getpid()}-{next(numbers)}"
    marker.touch()
    try:
        yield
    finally:
        marker.unlink()


@app.get("/test/worker")
async def worker() -> dict[str, int]:
    """Which worker answered."""
    return {"pid": os.getpid()}


@app.get("/test/held")
async def held() -> dict[str, int]:
    """Answered once the test releases it: in flight for as long as the test needs."""
    with in_flight():
        while not RELEASE.exists():
            await asyncio.sleep(0.05)
    return {"pid": os.getpid()}


@app.get("/test/block")
async def block(seconds: float) -> dict[str, float]:
    with in_flight():
        time.sleep(seconds)  # holds the event loop: the worker stops answering Gunicorn's heartbeat
    return {"blocked": seconds}
