"""Persistent job queue (fal-style statuses) and the worker that drains it.

`open_job_store(url)` picks the implementation: a SQLite file by default, PostgreSQL
for a `postgresql://` URL (psycopg is imported only then).
"""

from lorastudio.services.jobs.models import (
    TERMINAL_STATUSES,
    Job,
    JobRequirements,
    JobStatus,
    LogLine,
    WorkerCapabilities,
)
from lorastudio.services.jobs.opening import open_job_store
from lorastudio.services.jobs.postgres_store import PostgresJobStore  # psycopg is imported on use
from lorastudio.services.jobs.sqlite_store import MIGRATIONS, SqliteJobStore
from lorastudio.services.jobs.store import JobStore
from lorastudio.services.jobs.worker import JobCancelled, JobContext, JobWorker

__all__ = [
    "MIGRATIONS",
    "TERMINAL_STATUSES",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobRequirements",
    "JobStatus",
    "JobStore",
    "JobWorker",
    "LogLine",
    "PostgresJobStore",
    "SqliteJobStore",
    "WorkerCapabilities",
    "open_job_store",
]
