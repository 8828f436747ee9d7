"""The job queue's contract (`JobStore`) and what its implementations share.

The database is the only shared state between API processes, workers and a
restarted server, so every state transition is a single guarded UPDATE (or one
transaction): whoever loses a race sees `False`/`None`, never a job claimed
twice or finished twice. Implementations: `sqlite_store.SqliteJobStore` (the
embedded default) and `postgres_store.PostgresJobStore` (many machines).
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

from lorastudio.core.errors import InvalidParameter
from lorastudio.services.jobs.liveness import process_alive
from lorastudio.services.jobs.models import (
    Job,
    JobRequirements,
    JobStatus,
    LogLine,
    WorkerCapabilities,
)


class JobStore(ABC):
    """Contract of a job queue. Every method is safe to call from any thread."""

    heartbeat_timeout_s: float
    max_attempts: int

    # True when wait_for_change returns as soon as a job changes (LISTEN/NOTIFY);
    # False: it only sleeps, and a reader should poll at its own pace.
    pushes_changes: bool = False

    @abstractmethod
    def submit(
        self, kind: str, payload: dict[str, Any], requires: JobRequirements | None = None
    ) -> Job:
        """Append a job at the back of the queue; `requires` limits which workers may take it."""

    @abstractmethod
    def get(self, job_id: str) -> Job:
        """Raise NotFound for an unknown id."""

    @abstractmethod
    def list(self, status: JobStatus | None = None, kind: str | None = None) -> list[Job]:
        """Jobs in submission order."""

    @abstractmethod
    def queue_position(self, job_id: str) -> int | None:
        """0 = next to be claimed; None when the job is not IN_QUEUE."""

    @abstractmethod
    def claim_next(
        self,
        worker_id: str,
        kinds: Iterable[str] | None = None,
        can_run: WorkerCapabilities | None = None,
    ) -> Job | None:
        """Atomically move the front IN_QUEUE job (of one of `kinds`, whose requirements
        `can_run` meets; None = any) to IN_PROGRESS."""

    @abstractmethod
    def heartbeat(self, job_id: str, worker_id: str) -> bool:
        """False once the worker no longer owns the job (recovered, cancelled...)."""

    @abstractmethod
    def update_progress(
        self, job_id: str, progress: dict[str, Any], worker_id: str | None = None
    ) -> bool:
        """Replace the progress dict; with worker_id, only while that worker owns the job."""

    @abstractmethod
    def append_log(self, job_id: str, level: str, message: str) -> LogLine: ...

    @abstractmethod
    def logs(self, job_id: str, since: int | datetime | None = None) -> list[LogLine]:
        """Lines in write order; `since` is a LogLine.seq (exclusive) or a timestamp."""

    @abstractmethod
    def complete(self, job_id: str, worker_id: str, result: dict[str, Any]) -> bool:
        """IN_PROGRESS owned by worker_id -> COMPLETED; otherwise change nothing, False."""

    @abstractmethod
    def fail(self, job_id: str, worker_id: str, error: str) -> bool:
        """IN_PROGRESS owned by worker_id -> FAILED; otherwise change nothing, False."""

    @abstractmethod
    def mark_cancelled(self, job_id: str, worker_id: str) -> bool:
        """The owning worker acknowledges a cancel: IN_PROGRESS -> CANCELLED."""

    @abstractmethod
    def request_cancel(self, job_id: str) -> Job:
        """Queued: CANCELLED now. Running: set cancel_requested. Finished: no change."""

    @abstractmethod
    def recover_after_restart(self) -> list[Job]:
        """Requeue (front) or fail IN_PROGRESS jobs whose worker is gone; return them."""

    @abstractmethod
    def claim_delivery(self, job_id: str, what: str, owner: str, stale_after_s: float) -> bool:
        """Take the one-time side effect `what` of a job (a webhook call) for `owner`.

        True for exactly one of several nodes racing for it, and again for the owner that
        holds it (a retried call); False once it is done, or while another owner's claim is
        younger than stale_after_s (an owner that died mid-delivery is replaced after that).
        """

    @abstractmethod
    def finish_delivery(self, job_id: str, what: str, owner: str) -> bool:
        """Record `what` as done; False when `owner` no longer holds the claim."""

    def change_counter(self, job_id: str) -> int:
        """A number that grows whenever the job or its logs change (0 where not tracked).

        Read it before reading the job, then pass it to wait_for_change: a change in
        between is not missed.
        """
        return 0

    def wait_for_change(self, job_id: str, seen: int, timeout_s: float) -> int:
        """Block until change_counter(job_id) != seen or timeout_s; return the counter.

        The default only sleeps (see pushes_changes).
        """
        time.sleep(timeout_s)
        return seen

    def close(self) -> None:
        """Release resources; a no-op for stores that hold none."""

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------ shared helpers


def to_datetime(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc)


def row_to_job(row: Any, position: int | None) -> Job:
    """A Job from a row of the `jobs` table (sqlite3.Row or a dict), same columns in both."""
    return Job(
        id=row["id"],
        kind=row["kind"],
        payload=json.loads(row["payload"]),
        status=JobStatus(row["status"]),
        position=position,
        created_at=to_datetime(row["created_at"]),
        started_at=to_datetime(row["started_at"]),
        finished_at=to_datetime(row["finished_at"]),
        heartbeat_at=to_datetime(row["heartbeat_at"]),
        attempts=row["attempts"],
        progress=json.loads(row["progress"]),
        error=row["error"],
        result=None if row["result"] is None else json.loads(row["result"]),
        cancel_requested=bool(row["cancel_requested"]),
        worker_id=row["worker_id"],
        family=row["family"],
        min_memory_mb=row["min_memory_mb"],
    )


def dumps_json(value: Any, field: str) -> str:
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise InvalidParameter(field, type(value).__name__, f"not JSON-serializable: {e}") from None


def finite(value: Any) -> Any:
    # A diverging run reports loss=nan; JSON has no NaN, and the run should
    # still be observable, so non-finite numbers become null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def check_submission(kind: Any, payload: Any) -> None:
    if not isinstance(kind, str) or not kind:
        raise InvalidParameter("kind", kind, "must be a non-empty string")
    if not isinstance(payload, dict):
        raise InvalidParameter("payload", type(payload).__name__, "must be a JSON object")


@dataclass(frozen=True)
class Recovery:
    """What restart recovery does with an orphaned IN_PROGRESS job: each store writes it in its SQL."""

    status: JobStatus  # CANCELLED, FAILED, or IN_QUEUE (at the front, to run again)
    attempts: int
    level: str
    log: str
    error: str | None = None


def recovery_for(row: Any, why: str, max_attempts: int) -> Recovery:
    """A cancel asked for wins; a job interrupted max_attempts times fails; any other runs again."""
    attempts = row["attempts"] + 1
    if row["cancel_requested"]:
        return Recovery(JobStatus.CANCELLED, row["attempts"], "INFO", f"cancelled: {why}", "cancelled by request")
    if attempts >= max_attempts:
        error = f"interrupted {attempts} times (max_attempts={max_attempts}); last: {why}"
        return Recovery(JobStatus.FAILED, attempts, "ERROR", error, error)
    return Recovery(JobStatus.IN_QUEUE, attempts, "WARNING", f"resumed after restart ({why})")


def orphan_reason(row: Any, now: float, heartbeat_timeout_s: float, host: str) -> str | None:
    """Why an IN_PROGRESS row's worker counts as gone, or None while it may be alive.

    A lease: silent past the heartbeat timeout. Sooner, on the claimer's own host
    (same pid namespace, `host` = this store's host_identity()), when its process is provably gone.
    """
    last_sign_of_life = row["heartbeat_at"] or row["started_at"] or 0.0
    silent_for = now - last_sign_of_life
    if silent_for > heartbeat_timeout_s:
        return f"worker {row['worker_id']} silent for {silent_for:.0f}s"
    if row["worker_host"] == host and row["worker_pid"] is not None:
        if not process_alive(row["worker_pid"], row["worker_start"]):
            return f"worker {row['worker_id']} process {row['worker_pid']} is gone"
    return None


def job_filter_values(
    kinds: Iterable[str] | None, can_run: WorkerCapabilities | None
) -> tuple[list[str] | None, list[str] | None, int | None]:
    """(kinds, families, memory_mb) for a claim; None means 'no limit' for each."""
    kind_list = None if kinds is None else sorted(set(kinds))
    if can_run is None:
        return kind_list, None, None
    families = None if can_run.families is None else sorted(set(can_run.families))
    return kind_list, families, can_run.memory_mb


def requirement_values(requires: JobRequirements | None) -> tuple[str | None, int | None]:
    if requires is None:
        return None, None
    return requires.family, requires.min_memory_mb


def __getattr__(name: str) -> Any:
    # The SQLite store lived here before the PostgreSQL one existed; old imports keep working.
    if name in ("SqliteJobStore", "MIGRATIONS", "split_sql"):
        from lorastudio.services.jobs import sqlite_store

        return getattr(sqlite_store, name)
    raise AttributeError(name)
