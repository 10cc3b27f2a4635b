"""The baked batch service's Celery app, with a job that will not stop by itself: a CSV with
a group named `stubborn` makes the job ignore its soft time limit, so that only the hard
limit (`CELERY_TIME_LIMIT`) ends it. Every other job runs as the service runs it.

Run with `celery --app stubborn_jobs:app worker` (tests/baked.py puts this folder on the
path and names the baked package in SERVICE_PACKAGE).
"""

import importlib
import os
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

package = os.environ["SERVICE_PACKAGE"]
celery_app = importlib.import_module(f"{package}.jobs.celery_app")
csvstats = importlib.import_module(f"{package}.jobs.csvstats")
aggregate = csvstats.aggregate


def stubborn(data: bytes) -> dict[str, Any]:
    if b"\nstubborn," not in data:
        result: dict[str, Any] = aggregate(data)
        return result
    while True:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            continue  # what a job must never do


# The task looks the function up in its module at each run.
csvstats.aggregate = stubborn
app = celery_app.app
