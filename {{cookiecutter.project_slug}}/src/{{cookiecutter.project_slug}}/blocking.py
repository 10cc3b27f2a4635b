"""Blocking calls, kept off the event loop.

Call sync I/O (a client library without async support, file work, a legacy SDK) through
`call_blocking`: it runs in a worker thread and the event loop keeps serving meanwhile.
One limit, the profile's `thread_pool_size`, bounds these threads together with the ones
FastAPI uses for plain `def` endpoints and dependencies, per worker process.
"""

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from anyio import to_thread
from starlette.concurrency import run_in_threadpool

P = ParamSpec("P")
T = TypeVar("T")


def limit_threads(threads: int) -> None:
    """Set the worker's thread limit; call it once the event loop runs (the lifespan)."""
    to_thread.current_default_thread_limiter().total_tokens = threads


async def call_blocking(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    return await run_in_threadpool(func, *args, **kwargs)
