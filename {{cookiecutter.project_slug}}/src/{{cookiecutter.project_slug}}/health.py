"""Liveness and readiness.

Liveness says the process serves; it never looks at dependencies, so a database outage
does not get healthy workers restarted. Readiness asks every dependency, each under a
short timeout, so a load balancer stops sending traffic quickly and resumes by itself.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel

ReadinessCheck = Callable[[], Awaitable[None]]


class NotReady(Exception):
    """A check's failure whose words are meant for the answer (and name no host or user):
    /health/ready shows them as they are. The check logs what it finds itself."""


logger = logging.getLogger(__name__)

router = APIRouter(prefix="/health", tags=["health"])


class Liveness(BaseModel):
    status: Literal["alive"] = "alive"


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    # Each failed dependency and why, e.g. {"database": "no answer within 1.0 s"}.
    failed: dict[str, str]


@router.get("/live")
async def live() -> Liveness:
    return Liveness()


@router.get("/ready", responses={503: {"model": Readiness}})
async def ready(request: Request, response: Response) -> Readiness:
    checks: dict[str, ReadinessCheck] = request.app.state.readiness_checks
    within: float = request.app.state.settings.readiness_timeout
    outcomes = await asyncio.gather(
        *(_failure(name, check(), within) for name, check in checks.items())
    )
    failed = {name: reason for name, reason in zip(checks, outcomes, strict=True) if reason}
    if failed:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return Readiness(status="unavailable", failed=failed)
    return Readiness(status="ready", failed={})


async def _failure(name: str, check: Awaitable[None], within: float) -> str | None:
    """Why the check failed, or None when it passed in time.

    The answer names only the kind of failure: error messages can carry host and user
    names, and /health/ready is often reachable from outside. The log has the details.
    """
    try:
        async with asyncio.timeout(within):
            await check
    except TimeoutError:
        logger.warning("readiness: %s gave no answer within %s s", name, within)
        return f"no answer within {within} s"
    except NotReady as error:
        return str(error)
    except Exception as error:  # any failure of a dependency means "not ready"
        logger.warning("readiness: %s failed: %r", name, error)
        return type(error).__name__
    return None
