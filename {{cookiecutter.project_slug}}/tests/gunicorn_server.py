"""A real Gunicorn serving this project, and a keep-alive load on it, for the tests that
watch worker processes come and go (tests/test_serving.py).

Gunicorn runs this project's gunicorn.conf.py with the embedded defaults, on free loopback
ports, in a working directory of the test's own (no `.env` is read, nothing is written
into the project), in a process group of its own that is killed whole should it not stop.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from .test_gunicorn_conf import PROJECT_ROOT, clean_env

# Seconds any one wait may take: only a failure comes near it (a busy machine stretches a
# second's work to a few, not to a minute).
PATIENCE = 60.0
# Seconds an answer may take before its request counts as lost.
ANSWER_WITHIN = 10.0
# Seconds after which the load stops by itself, should a test not stop it: longer than
# the waits a test does under load.
LOAD_LIMIT = 5 * PATIENCE
# What Uvicorn logs as a worker begins to serve, and as it begins to stop.
STARTED, STOPPING = "Application startup complete.", "Shutting down"


class TimedOut(AssertionError):
    """What a test waited for did not happen within PATIENCE."""


def wait_until(condition: Callable[[], object], what: str, within: float = PATIENCE) -> None:
    """Check `condition` every 20 ms until it holds; fail, saying what was awaited, if
    `within` seconds pass first."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimedOut(f"waited {within:g} s for {what}")
        time.sleep(0.02)


def free_port(but: int = 0) -> int:
    """A free loopback port (not `but`) below the kernel's range for outgoing connections,
    so that none of the load's connections can take it before Gunicorn binds it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randrange(10_000, low)  # noqa: S311 (not a secret)
        if port == but:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


@dataclass
class Gunicorn:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    started: set[int] = field(default_factory=set)  # workers that logged the app's startup
    log_read: int = 0  # bytes of the log read for them

    def workers(self) -> set[int]:
        """Pids of the master's live worker processes."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return {int(pid) for pid in children.read_text().split()}
        except OSError:
            return set()

    def serving_workers(self) -> set[int]:
        """The live workers that have started the app: they take connections."""
        with self.log_path.open("rb") as log:
            log.seek(self.log_read)
            lines = log.read().split(b"\n")[:-1]  # a line still being written waits
        self.log_read += sum(len(line) + 1 for line in lines)
        for line in lines:  # thousands of access lines: only the few that can match are parsed
            if STARTED.encode() in line and line.startswith(b"{"):
                self.started.add(json.loads(line)["pid"])
        return self.workers() & self.started

    def log(self) -> str:
        return self.log_path.read_text()

    def stops_while_none_other_served(self) -> list[int]:
        """The workers that began to shut down while no other worker served, as the log
        tells it: each serves from its app's startup to its "Shutting down"."""
        serving: set[int] = set()
        alone = []
        for line in self.log().split("\n")[:-1]:
            if not line.startswith("{") or not (STARTED in line or STOPPING in line):
                continue  # an access line: thousands, and none of them is parsed
            entry = json.loads(line)
            if entry["logger"] != "uvicorn.error":
                continue
            if entry["message"] == STARTED:
                serving.add(entry["pid"])
            elif entry["message"] == STOPPING:
                serving.discard(entry["pid"])
                if not serving:
                    alone.append(entry["pid"])
        return alone

    def lifecycle(self) -> str:
        """The log but the access lines: what the master and the workers did."""
        return "\n".join(
            line for line in self.log().split("\n") if '"logger": "access"' not in line
        )

    def wait_until_serving(self, workers: int) -> set[int]:
        """Until the master has `workers` workers, each of them serving; returns their pids."""

        def serving() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"Gunicorn exited:\n{self.lifecycle()}")
            current = self.workers()
            return len(current) == workers and current == self.serving_workers()

        wait_until(serving, f"{workers} workers serving")
        return self.workers()

    def stop(self) -> None:
        """SIGTERM, as a supervisor stops it; past PATIENCE, SIGKILL to every process of it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=PATIENCE)
        with suppress(ProcessLookupError):  # workers a killed master left (usually none)
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@contextmanager
def gunicorn(workdir: Path, env: dict[str, str], workers: int = 2) -> Iterator[Gunicorn]:
    """This project under Gunicorn with `workers` workers serving, until the block ends;
    `env` adds to (or overrides) the environment of the embedded defaults."""
    port = free_port()
    log_path = workdir / "gunicorn.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", str(PROJECT_ROOT / "gunicorn.conf.py")],
            cwd=workdir,
            env=clean_env(
                PORT=str(port),
                METRICS_PORT=str(free_port(but=port)),
                WEB_CONCURRENCY=str(workers),
                PROMETHEUS_MULTIPROC_DIR=str(workdir / "metrics"),
            )
            | env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Gunicorn(process, port, log_path)
    try:
        server.wait_until_serving(workers)
        yield server
    except BaseException:
        print(server.lifecycle())  # shown with the failure
        raise
    finally:
        server.stop()


@dataclass
class Load:
    """What the load's clients saw. `lost`: requests sent whose whole answer never came."""

    answered: Counter[int] = field(default_factory=Counter)  # status -> count
    lost: int = 0
    refused: int = 0  # connections that could not be opened
    errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def total(self) -> int:
        with self.lock:
            return sum(self.answered.values())

    def wait_for_answers(self, more: int) -> None:
        """Until `more` requests more than now have been answered."""
        enough = self.total() + more
        wait_until(lambda: self.total() >= enough, f"{more} more answers under load")


@contextmanager
def keep_alive_load(port: int, path: str, clients: int, pause: float) -> Iterator[Load]:
    """`clients` clients, each on one keep-alive connection that it sends its next request
    on `pause` seconds after the last answer came, without first checking whether the
    server closed it, and never retrying: exactly the request a stopping worker can lose.
    A client opens a new connection only when told `Connection: close`, or after a loss.
    The clients stop when the block ends (each after its request in flight), or after
    LOAD_LIMIT."""
    load = Load()
    stop = threading.Event()
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()

    def count(outcome: str | int, error: Exception | None = None) -> None:
        with load.lock:
            if isinstance(outcome, int):
                load.answered[outcome] += 1
            elif outcome == "lost":
                load.lost += 1
            else:
                load.refused += 1
            if error is not None:
                load.errors[type(error).__name__] += 1

    def client() -> None:
        deadline = time.monotonic() + LOAD_LIMIT
        connection: socket.socket | None = None
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                if connection is None:
                    try:
                        connection = socket.create_connection(("127.0.0.1", port), ANSWER_WITHIN)
                    except OSError as error:
                        count("refused", error)
                        stop.wait(0.05)
                        continue
                try:
                    connection.sendall(request)
                    status, keep_open = read_answer(connection)
                except (OSError, EOFError) as error:
                    count("lost", error)
                    keep_open = False
                else:
                    count(status)
                if not keep_open:
                    connection.close()
                    connection = None
                stop.wait(pause)
        finally:
            if connection is not None:
                connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield load
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=ANSWER_WITHIN + 5)


def read_answer(connection: socket.socket) -> tuple[int, bool]:
    """The status of one whole HTTP/1.1 answer, and whether the connection stays open;
    EOFError if the connection ends before the answer does."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += receive(connection)
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines)
    }
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        body += receive(connection)
    return int(status_line.split()[1]), headers.get("connection", "").lower() != "close"


def receive(connection: socket.socket) -> bytes:
    data = connection.recv(65536)
    if not data:
        raise EOFError("the connection closed before the whole answer came")
    return data
