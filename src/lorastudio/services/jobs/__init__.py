"""Persistent job queue (fal-style statuses) and the worker that drains it."""

from lorastudio.services.jobs.models import TERMINAL_STATUSES, Job, JobStatus, LogLine
from lorastudio.services.jobs.store import MIGRATIONS, JobStore, SqliteJobStore
from lorastudio.services.jobs.worker import JobCancelled, JobContext, JobWorker

__all__ = [
    "MIGRATIONS",
    "TERMINAL_STATUSES",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobStatus",
    "JobStore",
    "JobWorker",
    "LogLine",
    "SqliteJobStore",
]
