"""The generated service with what bench/compare.py reads from inside a worker: how long each
garbage collection paused it (timed by `gc.callbacks`) and how many SQL statements it ran.
Both at GET /bench/probe (`?reset=1` starts counting again), a route the service does not
have. Served as `probes:frozen` (the service as it ships) or `probes:unfrozen` (the same
without freezing the heap once the worker has started)."""

import gc
import time
from typing import Any

from fastapi import FastAPI
from my_service.main import create_app
from my_service.serving import gunicorn_worker
from sqlalchemy import event
from sqlalchemy.engine import Engine

# Upper bounds, in milliseconds, of the pause histogram's buckets (and one past the last).
BOUNDS_MS = (0.1, 0.5, 1, 2, 5, 10, 20, 50, 100)
pauses: dict[int, list[int]] = {generation: [0] * (len(BOUNDS_MS) + 1) for generation in range(3)}
longest_ms = [0.0, 0.0, 0.0]
statements = 0
_began = 0.0


def _time_collection(phase: str, info: dict[str, Any]) -> None:
    global _began
    if phase == "start":
        _began = time.perf_counter()
        return
    ms = (time.perf_counter() - _began) * 1000
    generation = info["generation"]
    pauses[generation][sum(ms > bound for bound in BOUNDS_MS)] += 1
    longest_ms[generation] = max(longest_ms[generation], ms)


gc.callbacks.append(_time_collection)


def _count_statement(*_: object) -> None:
    global statements
    statements += 1


def probe(reset: bool = False) -> dict[str, object]:
    global statements
    found = {
        "bounds_ms": BOUNDS_MS,
        "pauses": {str(generation): list(counts) for generation, counts in pauses.items()},
        "longest_ms": list(longest_ms),
        "statements": statements,
        "frozen_objects": gc.get_freeze_count(),
        "thresholds": gc.get_threshold(),
    }
    if reset:
        for counts in pauses.values():
            counts[:] = [0] * len(counts)
        longest_ms[:] = [0.0, 0.0, 0.0]
        statements = 0
    return found


def _probed() -> FastAPI:
    app = create_app()
    app.add_api_route("/bench/probe", probe)
    # Every engine the worker creates (in its lifespan, after this), whichever it is.
    event.listen(Engine, "before_cursor_execute", _count_statement)
    return app


def frozen() -> FastAPI:
    return _probed()


def unfrozen() -> FastAPI:
    # The worker calls its module's function by name once the app has started.
    gunicorn_worker.freeze_startup_heap = lambda: None
    return _probed()
