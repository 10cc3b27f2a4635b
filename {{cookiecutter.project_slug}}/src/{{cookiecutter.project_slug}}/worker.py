"""The Gunicorn worker: Uvicorn's, with connections that drain instead of drop, and
recycling that takes turns.

When a worker is told to stop (a reload, `max_requests`, SIGTERM), stock Uvicorn closes
idle keep-alive connections at once. A client that was already sending its next request
on one of them gets a reset: under steady load, a reload or a recycle loses requests.
Here an idle connection is instead marked as draining: its next request is answered with
`Connection: close`, and it is closed only if it stays idle for a short grace period.

Gunicorn starts a recycled worker's successor only once it has exited, and the successor
needs about a second to import the app. Workers under even load reach `max_requests`
together, so stock recycling can leave no worker serving (p99 of seconds in
docs/performance.md). Here a worker past its limit leaves only while every other worker
serves (`Turns`), and goes on serving until then.
"""

import fcntl
import logging
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

from gunicorn.arbiter import Arbiter
from uvicorn import Config, Server
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker
{%- if cookiecutter.scenario == "websocket" %}

from .rooms import protocol as rooms_protocol
from .settings import get_settings
{%- endif %}

logger = logging.getLogger("uvicorn.error")

# Seconds an idle connection stays open after shutdown begins, for a request in flight to land.
DRAIN_GRACE = 1.0


class DrainingHttpToolsProtocol(HttpToolsProtocol):
    draining = False
    requests_begun = 0

    def on_message_begin(self) -> None:
        self.requests_begun += 1
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.draining:
            self.cycle.keep_alive = False  # answer with Connection: close, then close

    def shutdown(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return
        self.draining = True
        self._unset_keepalive_if_required()
        self.loop.call_later(DRAIN_GRACE, self._close_if_still_idle, self.requests_begun)

    def _close_if_still_idle(self, requests_begun_at_shutdown: int) -> None:
        if self.requests_begun == requests_begun_at_shutdown and not self.transport.is_closing():
            self.transport.close()


def serving_marker(metrics_dir: str, pid: int) -> Path:
    """The file that says worker `pid` serves: beside the metrics samples, which already
    live where every worker can write."""
    return Path(metrics_dir) / "serving" / f"{pid}.serving"


class Turns:
    """Which workers serve: one empty file each, in a directory the master wipes at start
    and clears of dead workers (gunicorn.conf.py). A worker may leave while every other one
    serves; deciding under an exclusive lock keeps two from leaving on the same count."""

    def __init__(self, metrics_dir: str, workers: int) -> None:
        self.mine = serving_marker(metrics_dir, os.getpid())
        self.directory = self.mine.parent
        self.workers = workers

    def serving(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.mine.touch()

    def may_leave(self) -> bool:
        # Microseconds of tmpfs work, and only once this worker is past its limit.
        with (self.directory / "lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            others = sum(1 for path in self.directory.glob("*.serving") if path != self.mine)
            if others < self.workers - 1:
                return False
            self.mine.unlink(missing_ok=True)
            return True


class RecyclingServer(Server):
    """Uvicorn's server, leaving after `recycle_after` requests when `turns` allow it."""

    def __init__(self, config: Config, recycle_after: int, turns: Turns | None) -> None:
        super().__init__(config)
        self.recycle_after = recycle_after
        self.turns = turns
        self.waiting = False

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started and self.turns is not None:
            self.turns.serving()

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        if self.server_state.total_requests < self.recycle_after:
            return False
        if self.turns is None or self.turns.may_leave():
            logger.info("recycling after %d requests", self.server_state.total_requests)
            return True
        if not self.waiting:
            self.waiting = True
            logger.info("past max_requests; recycling once every other worker serves")
        return False


class Worker(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "uvloop",
        "http": DrainingHttpToolsProtocol,
        # The app's own middleware writes the access log, with the request id.
        "access_log": False,
        # No "server: uvicorn" on every answer: which server and version runs is nobody's
        # business outside.
        "server_header": False,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Finish in-flight requests for as long as Gunicorn lets the worker live.
        self.config.timeout_graceful_shutdown = self.cfg.graceful_timeout
        # RecyclingServer counts requests instead, so that workers take turns.
        self.config.limit_max_requests = None
{%- if cookiecutter.scenario == "websocket" %}
        # Heartbeats, idle timeout, message size and 1001 on shutdown (rooms/protocol.py).
        rooms_protocol.configure(self.config, get_settings())
{%- endif %}

    async def _serve(self) -> None:
        # uvicorn_worker's own _serve, with a server that takes turns to recycle.
        self.config.app = self.wsgi
        server = RecyclingServer(self.config, recycle_after=self.max_requests, turns=self.turns())
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    def turns(self) -> Turns | None:
        metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # set by gunicorn.conf.py
        if metrics_dir is None:
            return None
        return Turns(metrics_dir, self.cfg.workers)
