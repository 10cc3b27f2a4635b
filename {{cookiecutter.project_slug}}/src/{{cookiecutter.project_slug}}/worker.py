"""The Gunicorn worker: Uvicorn's, with connections that drain instead of drop.

When a worker is told to stop (a reload, `max_requests`, SIGTERM), stock Uvicorn closes
idle keep-alive connections at once. A client that was already sending its next request
on one of them gets a reset: under steady load, a reload or a recycle loses requests.
Here an idle connection is instead marked as draining: its next request is answered with
`Connection: close`, and it is closed only if it stays idle for a short grace period.
"""

from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker
{%- if cookiecutter.scenario == "websocket" %}

from .rooms import protocol as rooms_protocol
from .settings import get_settings
{%- endif %}

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


class Worker(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "uvloop",
        "http": DrainingHttpToolsProtocol,
        # The app's own middleware writes the access log, with the request id.
        "access_log": False,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Finish in-flight requests for as long as Gunicorn lets the worker live.
        self.config.timeout_graceful_shutdown = self.cfg.graceful_timeout
{%- if cookiecutter.scenario == "websocket" %}
        # Heartbeats, idle timeout, message size and 1001 on shutdown (rooms/protocol.py).
        rooms_protocol.configure(self.config, get_settings())
{%- endif %}
