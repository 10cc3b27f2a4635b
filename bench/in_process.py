"""Drive a baked project's app in-process with N requests to GET /health/live, no server:
what bench/compare.py's `instructions` section runs under callgrind.

    python bench/in_process.py full|bare|full-without-access-log N

`bare` and `full` are the apps of the project's bench/apps.py; the access log is on, at
`info`, and writes to /dev/null. Each request gets a turn of the event loop to itself.
"""

import asyncio
import logging
import logging.config
import os
import sys
import tempfile

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp())
os.environ["LOG_LEVEL"] = "info"

# Imported after the environment above, which the app reads when it is created.
from my_service.serving.logs import logging_config

from bench import apps

REQUEST = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/health/live",
    "raw_path": b"/health/live",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


async def receive() -> dict[str, object]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: dict[str, object]) -> None:
    if message["type"] == "http.response.start" and message["status"] != 200:
        sys.exit(f"GET /health/live answered {message['status']}")


async def serve(variant: str, requests: int) -> None:
    app = apps.bare if variant == "bare" else apps.full
    logging.getLogger("access").disabled = variant == "full-without-access-log"
    async with app.router.lifespan_context(app):
        for _ in range(requests):
            await app({**REQUEST, "state": {}}, receive, send)
            # A turn of the event loop for each request, so the work the stack does once a
            # turn (access lines, durations, the in-progress gauge) is paid by every request:
            # its worst case. Under load a server's turn finishes dozens of requests.
            await asyncio.sleep(0)


if __name__ == "__main__":
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (the log's stream, for the whole run)
    logging.config.dictConfig(logging_config("info"))
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
