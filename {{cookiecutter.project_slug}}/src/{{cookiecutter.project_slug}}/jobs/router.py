import uuid
from typing import Annotated

from celery import Celery
from fastapi import APIRouter, File, Request, Response, UploadFile, status
from fastapi.exceptions import RequestValidationError
from kombu.exceptions import OperationalError

from ..blocking import call_blocking
from ..db import SessionDep
from ..errors import Unavailable, documented
from . import broker, csvstats, service
from .models import FILENAME_MAX_LENGTH
from .schemas import JobAccepted, JobOut

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=documented(503))

CsvFile = Annotated[
    UploadFile,
    File(description="A CSV file whose header names at least the columns group and value"),
]


@router.post("", status_code=status.HTTP_202_ACCEPTED, responses=documented(400, 413))
async def submit_job(
    request: Request, response: Response, session: SessionDep, file: CsvFile
) -> JobAccepted:
    """Queue a CSV file for aggregation; poll `status_url` for the outcome."""
    data = await file.read()
    try:
        # Decoding a large file takes a while: not on the event loop.
        await call_blocking(csvstats.check, data)
    except csvstats.CsvProblem as problem:
        raise RequestValidationError(
            [{"type": "csv", "loc": ("body", "file"), "msg": str(problem), "input": None}]
        ) from None
    job = await service.create_job(session, _storable(file.filename), data)
    celery: Celery = request.app.state.celery
    try:
        await call_blocking(broker.enqueue, celery, job.id)
    except OperationalError:
        await service.delete_job(session, job.id)
        raise Unavailable("the job queue is unavailable; try again shortly", 5) from None
    status_url = str(request.url_for("get_job", job_id=job.id))
    response.headers["location"] = status_url
    return JobAccepted(id=job.id, status=job.status, status_url=status_url)


@router.get("/{job_id}", responses=documented(404), response_model_exclude_none=True)
async def get_job(session: SessionDep, job_id: uuid.UUID) -> JobOut:
    return JobOut.model_validate(await service.get_job(session, job_id))


def _storable(filename: str | None) -> str:
    """The client's file name, as a database can store it: no NUL, valid UTF-8, bounded."""
    name = (filename or "upload.csv").replace("\x00", "")
    return name.encode("utf-8", "replace").decode()[:FILENAME_MAX_LENGTH] or "upload.csv"
