"""The Gunicorn worker: Uvicorn's, with what a service facing clients needs. Connections
drain instead of being dropped; recycling takes turns; a reload keeps the old workers
serving until the new ones do; a stop answers what waits in the listen backlog; request
heads are limited under Gunicorn's own setting names (414, 431); and slow heads and bodies
are cut off (408). Its HTTP protocol is a subclass of Uvicorn's httptools protocol.

When a worker is told to stop (a reload, `max_requests`, SIGTERM), stock Uvicorn closes
idle keep-alive connections at once. A client that was already sending its next request
on one of them gets a reset: under steady load, a reload or a recycle loses requests.
Here an idle connection is instead marked as draining: its next request is answered with
`Connection: close`, and it is closed only if it stays idle for a short grace period.

Gunicorn starts a recycled worker's successor only once it has exited, and the successor
takes a while to import the app. Workers under even load reach `max_requests` together,
so stock recycling can leave no worker serving, for as long as a successor takes to boot.
Here a worker past its limit (`max_requests`, or the profile's `max_worker_lifetime` in
seconds) leaves only while every other worker serves (`Turns`), and goes on serving until
then. The first worker to start lists the libraries it imported, which the master imports
before it forks the next ones (gunicorn.conf.py): a successor then imports only the
project's own code.

Once the app has started, the worker freezes its heap (`gc.freeze()`): Python's full
collections otherwise walk every object the app, its routes and its libraries hold, tens
of milliseconds during which no request is served.

Each request is stamped with when it reached the worker, for the middleware to shed one
that waited too long (serving/middleware.py): when its head was read, or, for a new
connection's first request, when the kernel received it, since a busy worker leaves new
connections waiting in the listen backlog.

On a reload (SIGHUP), Gunicorn starts the new workers and at once tells the old ones to
stop, while the new ones are still importing the app: for a second or more nothing
serves. Here a worker being replaced (listed by the master's `on_reload`) stays until as
many new workers serve, then leaves; a second SIGTERM makes it leave at once.

Connections the kernel accepted but no worker took yet wait in the listen backlog, and are
reset when the last worker closes the socket. A worker that stops takes those first, and
gives a new connection until the header timeout for its first request.

Gunicorn's sync workers enforce `limit_request_line`, `limit_request_fields` and
`limit_request_field_size`; Uvicorn's worker does not, and has no deadline for a request's
head or body. Here the protocol refuses an oversized head as it arrives (414 or 431, then
reads and drops what the client still sends for a moment, so that the answer is not lost to
a reset), and the server's once-a-second tick closes connections whose head
(`header_timeout`, 408) or body (`body_timeout`) is too slow. Every refusal is counted in
`http_requests_refused_total{reason}`.
"""

import asyncio
import fcntl
import functools
import gc
import importlib
import json
import logging
import os
import random
import signal
import socket
import sys
import sysconfig
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar

from gunicorn.arbiter import Arbiter
from uvicorn import Config, Server
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from ..settings import get_settings
from .admission import ADMISSION, NEVER_SHED, Admission

if TYPE_CHECKING:  # imported for its type alone: see count_refused
    from .metrics import RefusalReason

logger = logging.getLogger("uvicorn.error")

# Seconds an idle connection stays open after shutdown begins, for a request in flight to land.
DRAIN_GRACE = 1.0
# Linux's struct tcp_info, as far as tcpi_last_data_recv: milliseconds since the kernel
# last received data on the connection (<linux/tcp.h>).
TCP_INFO_SIZE = 56
LAST_DATA_RECV = slice(52, 56)
# Seconds a refused request's connection goes on reading (and dropping) what the client
# still sends: closed with unread data, it would be reset, and the answer lost with it.
LINGER = 2.0


@dataclass(frozen=True)
class RequestLimits:
    """How much of a request head a client may send, and how slowly it may send a request.

    The sizes are Gunicorn's own settings (`limit_request_line`, `limit_request_fields`,
    `limit_request_field_size`; 0: no limit), which its sync workers enforce and Uvicorn's
    worker does not; the timeouts come from the profile."""

    line: int
    fields: int
    field_size: int
    header_timeout: float
    body_timeout: float

    @property
    def head_size(self) -> int:
        """Bytes a whole head may take, checked as it arrives: the parser hands over a
        header only once it is complete, so a single endless header line is bounded here."""
        if not (self.line and self.fields and self.field_size):
            return 0
        return self.line + self.fields * (self.field_size + 2) + 2


class Refused(Exception):
    """A request the server turns away: its status, a metric label, and what to tell the client."""

    def __init__(self, status: int, reason: "RefusalReason", message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class _Shed:
    """Stands for the request-response cycle of a request the protocol answered 503 itself:
    already complete, so Uvicorn's parser callbacks drop its body. Uvicorn sets its event
    when the connection is lost (nothing waits on it)."""

    response_complete = True
    waiting_for_100_continue = False
    message_event = asyncio.Event()


SHED = _Shed()
NEVER_SHED_RAW = tuple(path.encode() for path in NEVER_SHED)


class ServingProtocol(HttpToolsProtocol):
    """Uvicorn's HTTP protocol, with request limits and connections that drain.

    Limits: a request line or head over its limit gets a 414 or 431 and the connection is
    closed; so is a connection whose head is not complete within `header_timeout` (408),
    new connections included. A body that makes no progress for `body_timeout` is cut off.
    `enforce_deadlines` runs once a second for every connection (RecyclingServer), which
    keeps timers off the path of each request.

    Draining: see the module's docstring.
    """

    limits: ClassVar[RequestLimits]
    head_size: ClassVar[int]
    # Set as this worker's server begins to shut down. A connection the event loop had
    # accepted but not yet made (`connection_made` runs a turn later) is not among those the
    # shutdown drains: it drains as it is made, or it would serve on until the master kills
    # the worker at graceful_timeout, its request in flight lost.
    stopping: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.draining = False
        self.refused = False
        self.requests_begun = 0
        self.head_began: float | None = None  # while a head is being read
        self.head_bytes = 0
        self.reading_body = False
        self.body_bytes = 0
        self.body_checked: tuple[int, float] | None = None  # body bytes when last seen, and when

    @classmethod
    def configure(cls, limits: RequestLimits) -> None:
        cls.limits = limits
        cls.head_size = limits.head_size

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self.head_began = self.loop.time()  # a client that sends nothing is timed out too
        if self.stopping:
            self.shutdown()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if not self.reading_body:
            if self.head_began is None:
                self.head_began = self.loop.time()
            self.head_bytes += len(data)
        super().data_received(data)
        size = self.head_size
        reading_head = self.head_began is not None and not self.refused
        if size and self.head_bytes > size and reading_head and not self.transport.is_closing():
            self.refuse(Refused(431, "head_too_large", f"a request head over {size} bytes"))

    def on_message_begin(self) -> None:
        self.requests_begun += 1
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if self.limits.line and len(self.url) > self.limits.line:
            raise Refused(414, "line_too_long", f"request line over {self.limits.line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        if self.limits.fields and len(self.headers) > self.limits.fields:
            raise Refused(431, "too_many_headers", f"more than {self.limits.fields} headers")
        if self.limits.field_size and len(name) + len(value) + 2 > self.limits.field_size:
            size = self.limits.field_size
            raise Refused(431, "header_too_large", f"a header line over {size} bytes")

    def on_headers_complete(self) -> None:
        if self.draining and self.parser.should_upgrade():
            # A WebSocket opened now would outlive the shutdown already under way.
            raise Refused(503, "draining", "the server is restarting; connect again")
        # When the request reached the worker: the middleware sheds it if it waited too long
        # before the app could see it (serving/middleware.py reads this same key).
        read_at = self.loop.time()
        if self.requests_begun == 1:  # a new connection's: it may have waited to be accepted
            read_at -= self.waited_in_kernel()
        extensions: dict[str, object] = {"head_read_at": read_at}
        self.scope["extensions"] = extensions  # type: ignore[typeddict-item]
        admission: Admission | None = self.app_state.get(ADMISSION)
        # A WebSocket is not counted in flight (it never reaches the middleware's count).
        upgrade = self.parser.should_upgrade()
        if admission is not None and not upgrade and not self.url.startswith(NEVER_SHED_RAW):
            if admission.admit():
                extensions["admitted"] = True  # the middleware counts it out when answered
            elif self.may_answer_now():
                self.shed(admission)
                return
            # else the middleware sheds it, at the cost of a task
        super().on_headers_complete()
        self.head_began, self.head_bytes = None, 0
        self.reading_body, self.body_bytes, self.body_checked = True, 0, None
        if self.draining:
            self.cycle.keep_alive = False  # answer with Connection: close, then close

    def may_answer_now(self) -> bool:
        """Whether a 503 may go out now, on a connection that stays open: no answer before
        it still to come (pipelining), and the client neither closes nor waits for a 100
        Continue (it may never send the body, which the connection would wait for)."""
        return (
            (self.cycle is None or self.cycle.response_complete)
            and self.parser.should_keep_alive()
            and not self.expect_100_continue
        )

    def shed(self, admission: Admission) -> None:
        """Answer 503 with Retry-After without creating the request's task or its scope's
        route: turning a request away costs a small share of answering it. A body that
        follows is read and dropped."""
        admission.shed(self.parser.get_method().decode())
        self.transport.write(admission.answer)
        self.cycle = SHED  # type: ignore[assignment]
        self.head_began, self.head_bytes = None, 0
        self.reading_body, self.body_bytes, self.body_checked = True, 0, None
        self.on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        # Pipelined requests taken on but never started are no longer in flight.
        admission: Admission | None = self.app_state.get(ADMISSION)
        if admission is not None:
            for cycle, _ in self.pipeline:
                if cycle.scope.get("extensions", {}).get("admitted"):
                    admission.done()
            self.pipeline.clear()
        super().connection_lost(exc)

    def waited_in_kernel(self) -> float:
        """Seconds since the kernel received the last of this connection's data: a new
        connection waits in the listen backlog, unseen by the worker, while it is busy."""
        connection = self.transport.get_extra_info("socket")
        try:
            info = connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
        except (AttributeError, OSError):  # not Linux, or not TCP
            return 0.0
        return int.from_bytes(info[LAST_DATA_RECV], sys.byteorder) / 1000

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.reading_body = False
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        # Uvicorn answers every parser error with a 400, a Refused raised by a callback too
        # (the parser's error then has it as its context).
        error = sys.exc_info()[1]
        if error is not None and isinstance(error.__context__, Refused):
            self.refuse(error.__context__)
        else:
            super().send_400_response(msg)

    def refuse(self, refusal: Refused) -> None:
        """Answer `refusal` and close, unless an answer is already on its way (then only close)."""
        logger.warning("refused a request: %s (%d)", refusal, refusal.status)
        count_refused(refusal.reason)
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()
            return
        body = str(refusal).encode()
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n" % (refusal.status, HTTPStatus(refusal.status).phrase.encode())
            + b"content-type: text/plain; charset=utf-8\r\n"
            + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            + body
        )
        self.refused = True
        self.transport.write_eof()
        self.loop.call_later(LINGER, self.transport.close)

    def eof_received(self) -> None:
        if self.refused:
            self.transport.close()  # the client read the answer and closed its side

    def enforce_deadlines(self, now: float) -> None:
        if self.refused or self.transport.is_closing():
            return
        if self.head_began is not None and now - self.head_began > self.limits.header_timeout:
            if self.cycle is None or self.cycle.response_complete:
                timeout = self.limits.header_timeout
                if self.head_bytes:
                    self.refuse(Refused(408, "header_timeout", f"no complete head in {timeout} s"))
                else:  # nothing was asked: nothing to answer
                    count_refused("idle_timeout")
                    self.transport.close()
        elif self.reading_body and self.cycle is not None:
            if self.flow.read_paused or self.cycle.waiting_for_100_continue:
                self.body_checked = None  # the worker is not reading: not the client's stall
            elif self.body_checked is None or self.body_checked[0] != self.body_bytes:
                self.body_checked = (self.body_bytes, now)
            elif now - self.body_checked[1] > self.limits.body_timeout:
                logger.warning("closed a connection: its body stalled")
                count_refused("body_timeout")
                self.transport.close()

    def shutdown(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False
            return
        self.draining = True
        self._unset_keepalive_if_required()
        if self.requests_begun:
            self.loop.call_later(DRAIN_GRACE, self._close_if_still_idle, self.requests_begun)
        # else a new connection, whose first request is on its way (a client connects to
        # ask something): it has until the header timeout, as it would have had anyway.

    def _close_if_still_idle(self, requests_begun_at_shutdown: int) -> None:
        if self.requests_begun == requests_begun_at_shutdown and not self.transport.is_closing():
            self.transport.close()


def count_refused(reason: "RefusalReason") -> None:
    # Imported here: Gunicorn's master imports this module before it sets
    # PROMETHEUS_MULTIPROC_DIR, which prometheus_client reads once, as it is imported.
    from .metrics import refused

    refused(reason).inc()


def serving_marker(metrics_dir: str, pid: int) -> Path:
    """The file that says worker `pid` serves: beside the metrics samples, which already
    live where every worker can write."""
    return Path(metrics_dir) / "serving" / f"{pid}.serving"


def replaced_workers(metrics_dir: str) -> Path:
    """The file that lists, during a reload, the workers being replaced and how many new
    ones there will be (gunicorn.conf.py)."""
    return Path(metrics_dir) / "serving" / "replaced.json"


def libraries_noted(metrics_dir: str) -> Path:
    """The file in which the first worker to start lists the libraries it imported."""
    return Path(metrics_dir) / "serving" / "libraries.json"


# Where libraries live: the standard library and the environment's site-packages.
LIBRARY_PATHS = tuple(
    {sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
)
PROJECT_PACKAGE = __name__.partition(".")[0]


def note_libraries(path: Path) -> None:
    """List the libraries this worker imported, the project's own code left out, unless a
    worker did already: what the master imports before it forks a worker again."""
    if path.exists():
        return
    names = sorted(
        name
        for name, module in list(sys.modules.items())
        if name.partition(".")[0] != PROJECT_PACKAGE
        and str(getattr(module, "__file__", None) or "").startswith(LIBRARY_PATHS)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    draft = path.with_name(f"{path.name}.{os.getpid()}")
    draft.write_text(json.dumps(names))
    draft.replace(path)


def import_libraries(path: Path) -> int:
    """In the master: import the libraries a worker noted, so that every worker forked from
    now on has them already instead of spending a second or more of CPU importing them.
    Returns how many were imported; 0 until a worker has noted them."""
    try:
        names = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    imported = 0
    for name in names:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except Exception as error:  # a worker imports it itself, as it would without this
            logger.debug("could not import %s ahead of the workers: %s", name, error)
        else:
            imported += 1
    return imported


def write_replaced(path: Path, replaced: list[int], workers: int) -> None:
    """Replace the file whole: a worker reading it meanwhile sees the old or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    written = path.with_suffix(".tmp")
    written.write_text(json.dumps({"replaced": replaced, "workers": workers}))
    os.replace(written, path)


def read_replaced(path: Path) -> tuple[list[int], int]:
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        return [], 0
    return content["replaced"], content["workers"]


def forget_replaced(path: Path, pid: int) -> None:
    """A replaced worker has exited: off the list (its pid may be reused)."""
    replaced, workers = read_replaced(path)
    if pid in replaced:
        write_replaced(path, [other for other in replaced if other != pid], workers)


class Turns:
    """Which workers serve: one empty file each, in a directory the master wipes at start
    and clears of dead workers (gunicorn.conf.py). A worker may leave while every other one
    serves; deciding under an exclusive lock keeps two from leaving on the same count."""

    def __init__(self, metrics_dir: str, workers: int) -> None:
        self.mine = serving_marker(metrics_dir, os.getpid())
        self.directory = self.mine.parent
        self.workers = workers
        self.replaced = replaced_workers(metrics_dir)

    def being_replaced(self) -> bool:
        return os.getpid() in read_replaced(self.replaced)[0]

    def successors_serve(self) -> bool:
        """Whether as many workers serve as the reload asked for, none of them replaced."""
        replaced, workers = read_replaced(self.replaced)
        serving = [int(path.stem) for path in self.directory.glob("*.serving")]
        return sum(1 for pid in serving if pid not in replaced) >= workers

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


def freeze_startup_heap() -> None:
    """Move what the worker holds once it has started (the app, its routes, a model loaded
    at startup: objects that live as long as the worker) out of the garbage collector's
    reach. A full collection otherwise walks all of them every time: tens of milliseconds
    during which no request is served. One collection first, so no garbage is kept."""
    gc.collect()
    gc.freeze()


class RecyclingServer(Server):
    """Uvicorn's server, leaving after `recycle_after` requests or `lifetime` seconds when
    `turns` allow it."""

    def __init__(
        self, config: Config, recycle_after: int, lifetime: float, turns: Turns | None
    ) -> None:
        super().__init__(config)
        self.recycle_after = recycle_after
        self.lifetime = lifetime
        self.began = 0.0
        self.leave_at = float("inf")
        self.turns = turns
        self.waiting = False
        self.leaving_for_successors = False

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)  # the app's lifespan startup first
        if not self.started:
            return
        freeze_startup_heap()
        self.began = asyncio.get_running_loop().time()
        if self.lifetime:
            self.leave_at = self.began + self.lifetime
        if self.turns is not None:
            self.turns.serving()
            note_libraries(libraries_noted(str(self.turns.directory.parent)))

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        replacing = sig == signal.SIGTERM and not self.leaving_for_successors
        if replacing and self.turns is not None and self.turns.being_replaced():
            self.leaving_for_successors = True  # on_tick leaves once the successors serve
            logger.info("being replaced; leaving once the new workers serve")
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        if counter % 10 == 0:  # once a second
            self.enforce_deadlines()
        if self.leaving_for_successors and self.turns and self.turns.successors_serve():
            logger.info("the new workers serve; leaving")
            return True
        requests = self.server_state.total_requests
        if requests < self.recycle_after and asyncio.get_running_loop().time() < self.leave_at:
            return False
        if self.turns is None or self.turns.may_leave():
            age = asyncio.get_running_loop().time() - self.began
            logger.info("recycling after %d requests, %.0f s", requests, age)
            return True
        if not self.waiting:
            self.waiting = True
            logger.info(
                "past max_requests or max_worker_lifetime; recycling once every other worker serves"
            )
        return False

    def enforce_deadlines(self) -> None:
        now = asyncio.get_running_loop().time()
        for connection in list(self.server_state.connections):
            if isinstance(connection, ServingProtocol):
                try:
                    connection.enforce_deadlines(now)
                except Exception:  # one connection's trouble must not stop the worker
                    logger.exception("could not enforce a connection's deadlines")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        ServingProtocol.stopping = True
        if self.should_exit:  # a stop: no other worker may be left to take the backlog
            await self.take_waiting_connections(sockets or [])
        # A head or body that stalls now must not hold the worker until graceful_timeout.
        deadlines = asyncio.create_task(self.enforce_deadlines_every_second())
        try:
            await super().shutdown(sockets)
        finally:
            deadlines.cancel()

    async def enforce_deadlines_every_second(self) -> None:
        while True:
            await asyncio.sleep(1)
            self.enforce_deadlines()

    async def take_waiting_connections(self, listeners: list[socket.socket]) -> None:
        """Accept what waits in the listen backlog (at most a backlog's worth: connections
        go on arriving until the last worker closes the socket), to be answered with
        `Connection: close` like the connections already open."""
        loop = asyncio.get_running_loop()
        protocol = functools.partial(
            ServingProtocol,  # the worker's (CONFIG_KWARGS)
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )
        for listener in listeners:
            for _ in range(self.config.backlog):
                try:
                    connection, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except ConnectionAbortedError:  # that client gave up: take the next one
                    continue
                except OSError as error:  # out of file descriptors, say: stop as before
                    logger.warning("could not take the waiting connections: %s", error)
                    return
                await loop.connect_accepted_socket(protocol, connection, ssl=self.config.ssl)


class Worker(UvicornWorker):
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "uvloop",
        "http": ServingProtocol,
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
        settings = get_settings()
        ServingProtocol.configure(
            RequestLimits(
                line=self.cfg.limit_request_line,
                fields=self.cfg.limit_request_fields,
                field_size=self.cfg.limit_request_field_size,
                header_timeout=settings.header_timeout,
                body_timeout=settings.body_timeout,
            )
        )
        settings.configure_worker(self.config)

    async def _serve(self) -> None:
        # uvicorn_worker's own _serve, with a server that takes turns to recycle.
        self.config.app = self.wsgi
        server = RecyclingServer(
            self.config,
            recycle_after=self.max_requests,
            lifetime=self.lifetime(),
            turns=self.turns(),
        )
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)

    def lifetime(self) -> float:
        """Seconds this worker serves before it recycles (0: no limit), its jitter drawn.
        Off with a single worker, as `max_requests` is (gunicorn.conf.py)."""
        table = get_settings().gunicorn
        if self.cfg.workers < 2 or not table.max_worker_lifetime:
            return 0
        return table.max_worker_lifetime + random.uniform(0, table.max_worker_lifetime_jitter)  # noqa: S311

    def turns(self) -> Turns | None:
        metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # set by gunicorn.conf.py
        if metrics_dir is None:
            return None
        return Turns(metrics_dir, self.cfg.workers)
