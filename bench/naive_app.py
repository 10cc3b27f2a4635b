"""A naive setup, as people often write one: the endpoint the comparison measures, an
`@app.on_event` startup handler, a request id from `@app.middleware("http")` and
prometheus-fastapi-instrumentator with its defaults. Served as such setups usually are:
`gunicorn -w 2*cpu+1 -k uvicorn.workers.UvicornWorker naive_app:app`."""

import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from prometheus_fastapi_instrumentator import Instrumentator

app = FastAPI()


@app.on_event("startup")
async def startup() -> None:
    app.state.started = True


@app.middleware("http")
async def add_request_id(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    response = await call_next(request)
    response.headers["X-Request-ID"] = request_id
    return response


Instrumentator().instrument(app).expose(app)


@app.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "alive"}
