"""Error answers other than validation errors, and their place in the OpenAPI schema."""

import json
from typing import Any

{% if cookiecutter.database != "none" -%}
import asyncpg  # type: ignore[import-untyped]
{% endif -%}
from fastapi import HTTPException, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
{%- if cookiecutter.database != "none" %}
from sqlalchemy import exc as sa
{%- endif %}
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

{%- if cookiecutter.database != "none" %}


# The exceptions a database failure surfaces as, from SQLAlchemy or from the driver beneath
# it. Not all of them mean "unavailable": `is_unavailable` decides.
DATABASE_ERRORS = (OSError, TimeoutError, sa.DBAPIError, sa.TimeoutError)

# SQLSTATE classes of a database that cannot serve now, whatever the request: connection
# exceptions (08), insufficient resources such as too many connections (53), and operator
# intervention (57): shutting down, starting up, in recovery, a statement cancelled at its
# deadline (statement_timeout).
UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` says the database could not serve, rather than that the request or
    the code was wrong: a retry a moment later may succeed.

    A lost or refused connection, a database shutting down, starting up or recovering, a
    connection left unusable, and a query past its deadline are; an integrity or
    programming error is not. SQLAlchemy wraps the driver's error (`orig`), which wraps
    asyncpg's own (`__cause__`): the whole chain is read.
    """
    if isinstance(error, sa.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, (sa.IntegrityError, sa.ProgrammingError, sa.DataError)):
        return False
    causes: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in causes:
        causes.append(cause)
        orig = cause.orig if isinstance(cause, sa.DBAPIError) else None
        cause = orig if isinstance(orig, BaseException) else cause.__cause__
    for each in causes:
        sqlstate = getattr(each, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(UNAVAILABLE_SQLSTATE_CLASSES):
            return True
        if isinstance(each, (OSError, TimeoutError, sa.TimeoutError)):
            return True
        # asyncpg's own protocol state refused the next step ("cannot switch to state"):
        # the connection is no longer usable.
        if isinstance(each, asyncpg.InternalClientError):
            return True
    # The DB-API's words for a failure of the database or of the link to it (SQLite's
    # "database is locked" too).
    return isinstance(error, (sa.OperationalError, sa.InterfaceError))


async def database_unavailable(_request: Request, error: Exception) -> Response:
    """503 with Retry-After, not a 500, when the request was fine and the database was not
    there; any other database error goes on to be the 500 (or whatever) it was."""
    if not is_unavailable(error):
        raise error
    return unavailable("the database is unavailable; try again shortly")
{%- endif %}
