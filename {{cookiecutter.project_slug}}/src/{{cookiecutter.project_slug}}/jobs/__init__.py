"""Jobs: CPU-heavy work handed to Celery workers, tracked in the database.

The API stores the upload as a job (`router`, `service`), then puts the job's id on the
broker (`broker`); a Celery worker (`celery_app`) claims it, aggregates the CSV
(`csvstats`) and records the outcome. The job table is the only record of truth: a job
delivered twice is computed twice at most and recorded once, and one whose message or
worker was lost is queued again by the API's `sweeper`.
"""
