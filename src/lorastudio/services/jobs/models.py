"""Pydantic types of the job queue, shared by the store, the worker and the API.

Status names follow fal's queue API (IN_QUEUE / IN_PROGRESS / COMPLETED) so the
HTTP layer can pass them through unchanged; FAILED and CANCELLED are ours.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(str, Enum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class Job(BaseModel):
    """One queued unit of work, as last read from the store (a snapshot, not a live view)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="uuid4 string; the fal-style request_id")
    kind: str = Field(description="selects the handler, e.g. 'training'")
    payload: dict[str, Any] = Field(default_factory=dict)
    status: JobStatus
    # Filled in by the store from the live queue order, never persisted: 0 means
    # "next to run"; None for any job that is not IN_QUEUE.
    position: int | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    # Runs of this job that were interrupted (process died, lease lost) and put
    # back in the queue. 0 on a first run; a handler seeing > 0 should resume
    # from its own checkpoint.
    attempts: int = 0
    progress: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    result: dict[str, Any] | None = None
    cancel_requested: bool = False
    worker_id: str | None = None
    # What a worker needs to take the job (see JobRequirements); None = anyone.
    family: str | None = None
    min_memory_mb: int | None = None

    @property
    def request_id(self) -> str:
        return self.id


class LogLine(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Monotonic across the whole store: the cursor for `logs(id, since=seq)`,
    # because timestamps of lines written in the same microsecond are not unique.
    seq: int
    ts: datetime
    level: str
    message: str


class JobRequirements(BaseModel):
    """What a worker must offer to claim a job: the model family it can load, memory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str | None = Field(None, min_length=1, description="e.g. 'sd1', 'sdxl', 'flux'")
    min_memory_mb: int | None = Field(None, ge=0)


class WorkerCapabilities(BaseModel):
    """What a worker offers; a job is claimable when its JobRequirements are met.

    None for a field means "no limit": any family, any memory requirement.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    families: tuple[str, ...] | None = None
    memory_mb: int | None = Field(None, ge=0)

    def can_run(self, requires: JobRequirements | None) -> bool:
        if requires is None:
            return True
        if requires.family is not None and self.families is not None:
            if requires.family not in self.families:
                return False
        if requires.min_memory_mb is not None and self.memory_mb is not None:
            return requires.min_memory_mb <= self.memory_mb
        return True
