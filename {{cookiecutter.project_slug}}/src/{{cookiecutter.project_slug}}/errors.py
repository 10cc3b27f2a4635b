"""Error answers other than validation errors, and their place in the OpenAPI schema."""

import json
import logging
import time
from typing import Any

from fastapi import HTTPException, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match


class Problem(BaseModel):
    """The body of every error answer that is not a validation error."""

    detail: str


# FastAPI's body limit answers in JSON or plain text, depending on how the body was framed.
TOO_LARGE = {
    "description": "Request body larger than MAX_BODY_SIZE",
    "content": {
        "application/json": {"schema": Problem.model_json_schema()},
        "text/plain": {"schema": {"type": "string"}},
    },
}


# Any request may be refused by the worker before it is routed (serving/): documented on
# every operation, since any of them may answer so.
HEAD_REFUSED: dict[int | str, dict[str, Any]] = {
    code: {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}
    for code, description in (
        (414, "Request line longer than limit_request_line"),
        (431, "Request headers over limit_request_fields or limit_request_field_size"),
    )
}


def documented(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that may answer with these error codes.

    A route that reads a body may answer 400 (a body that is not UTF-8 text, say FastAPI's
    own words) and 413 (a body over the limit).
    """
    return {code: TOO_LARGE if code == 413 else {"model": Problem} for code in status_codes}


class Unavailable(HTTPException):
    """A 503 with Retry-After: the request was fine, something it needs is not there now."""

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail, {"retry-after": str(retry_after)}
        )


def unavailable(detail: str) -> Response:
    """`Unavailable`'s answer, for where no exception handler runs (middleware, handlers)."""
    return Response(
        Problem(detail=detail).model_dump_json(),
        status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"retry-after": "1"},
        media_type="application/json",
    )


def described(error: BaseException) -> str:
    """An error's class and the first line of its message, for a log line: SQLAlchemy's go
    on with the statement and a link."""
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


class Throttled:
    """A warning that may recur at every request logged at most once per `every` seconds
    (per process), so that an outage does not flood the log; the next line counts the ones
    left out."""

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self.logger = logger
        self.every = every
        self.next_at = -float("inf")
        self.left_out = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self.next_at:
            self.left_out += 1
            return
        if self.left_out:
            message += f" ({self.left_out} more since the last such line)"
        self.logger.warning(message, *args)
        self.next_at, self.left_out = now + self.every, 0


# A 422 names this many errors, the first ones, and quotes at most this many characters of
# the input each: its size and the time to build it stay bounded whatever the body was.
ERRORS_NAMED = 10
QUOTED_CHARACTERS = 200


async def validation_failed(_request: Request, error: RequestValidationError) -> Response:
    """FastAPI's own 422 body, with the first errors only and the input they quote cut short.

    FastAPI quotes the whole input of each error: a missing field quotes the whole object,
    so a large body would be sent back whole, once per error. Strings are cut, objects and
    arrays not quoted (`loc` says where the error is). Encoded as ASCII, so that a lone
    surrogate in the input cannot turn the 422 into a 500.
    """
    errors = [_quoting_less(e) for e in error.errors()[:ERRORS_NAMED]]
    body = json.dumps({"detail": jsonable_encoder(errors)}, ensure_ascii=True)
    return Response(body, status.HTTP_422_UNPROCESSABLE_CONTENT, media_type="application/json")


def _quoting_less(error: Any) -> dict[str, Any]:
    quoted = {key: value for key, value in error.items() if key != "input"}
    value = error.get("input")
    if isinstance(value, str):
        quoted["input"] = value[:QUOTED_CHARACTERS]
    elif isinstance(value, int | float | bool) or value is None:
        quoted["input"] = value
    return quoted


HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


async def method_not_allowed(request: Request, error: StarletteHTTPException) -> Response:
    """A 405 whose `Allow` names every method the path answers: Starlette's names only
    those of the first route that matched the path (GET /items/{id} said `Allow: GET`,
    without PUT and DELETE). Each method is tried against the routes, as the router would."""

    def answers(method: str) -> bool:
        scope = {**request.scope, "method": method}
        return any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes)

    methods = [method for method in HTTP_METHODS if answers(method)]
    allowed = HTTPException(error.status_code, error.detail, {"allow": ", ".join(methods)})
    return await http_exception_handler(request, allowed)
