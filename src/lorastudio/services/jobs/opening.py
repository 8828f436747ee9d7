"""Open the job store a URL names: a SQLite file path, or a postgresql:// URL."""

from __future__ import annotations

import os
from typing import Any

from lorastudio.services.jobs.store import JobStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(url: str | os.PathLike[str] | None) -> bool:
    return isinstance(url, str) and url.startswith(POSTGRES_SCHEMES)


def open_job_store(url: str | os.PathLike[str], **options: Any) -> JobStore:
    """`postgresql://user@host/db` -> PostgresJobStore; anything else is a SQLite file path."""
    if is_postgres_url(url):
        from lorastudio.services.jobs.postgres_store import PostgresJobStore

        return PostgresJobStore(str(url), **options)
    from lorastudio.services.jobs.sqlite_store import SqliteJobStore

    return SqliteJobStore(url, **options)
