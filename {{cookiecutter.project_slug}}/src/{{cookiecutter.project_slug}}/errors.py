"""Error answers other than validation errors, and their place in the OpenAPI schema."""

import json
from typing import Any

from fastapi import Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
{%- if cookiecutter.database != "none" %}
from sqlalchemy import exc as sa
{%- endif %}


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


def documented(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that may answer with these error codes.

    A route that reads a body may answer 400 (a body that is not UTF-8 text, say FastAPI's
    own words) and 413 (a body over the limit).
    """
    return {code: TOO_LARGE if code == 413 else {"model": Problem} for code in status_codes}


async def validation_failed(_request: Request, error: RequestValidationError) -> Response:
    """FastAPI's own 422 body, encoded so that any input can be echoed back.

    The errors quote the client's input; a lone surrogate in it cannot be encoded as
    UTF-8, and the default handler would turn the 422 into a 500.
    """
    body = json.dumps({"detail": jsonable_encoder(error.errors())}, ensure_ascii=True)
    return Response(body, status.HTTP_422_UNPROCESSABLE_CONTENT, media_type="application/json")

{%- if cookiecutter.database != "none" %}


# What a request meets when the database is down, restarting or out of connections.
DATABASE_UNAVAILABLE = (OSError, sa.OperationalError, sa.InterfaceError, sa.TimeoutError)


async def database_unavailable(_request: Request, _error: Exception) -> Response:
    """503 with Retry-After, not a 500: the request was fine, the database was not there."""
    body = Problem(detail="the database is unavailable; try again shortly").model_dump_json()
    return Response(
        body,
        status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"retry-after": "1"},
        media_type="application/json",
    )
{%- endif %}
