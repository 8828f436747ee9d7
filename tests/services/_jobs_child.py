"""Code the job-queue tests run in other processes (real crashes, real contention).

Run as a script (`python _jobs_child.py worker DB MARKERS`) or imported by
multiprocessing's spawn start method.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def open_store(db: str, backend: str, **kw):
    """backend: 'postgres' or 'sqlite-<claim strategy>' (as the store tests name them)."""
    from lorastudio.services.jobs import SqliteJobStore, open_job_store

    if backend.startswith("sqlite-"):
        return SqliteJobStore(db, claim_strategy=backend.split("-", 1)[1], **kw)
    return open_job_store(db, **kw)


def claim_until_empty(db: str, backend: str, worker_id: str, start, out) -> None:
    """Claim and complete jobs as fast as possible; report what this process claimed."""
    store = open_store(db, backend)
    start.wait(30)
    claimed: list[str] = []
    refused: list[str] = []
    while True:
        job = store.claim_next(worker_id, ["training"])
        if job is None:
            break
        claimed.append(job.id)
        # A job claimed twice would be owned by the other process by now, so
        # this would be refused: record it rather than crash to see all of them.
        if not store.complete(job.id, worker_id, {"by": worker_id}):
            refused.append(job.id)
    store.close()
    out.put((worker_id, claimed, refused))


def run_crashing_worker(db: str, markers: str) -> None:
    """A worker whose 'train' handler reports a checkpoint then hangs until killed."""
    from lorastudio.services.jobs import JobWorker, SqliteJobStore

    marker_dir = Path(markers)

    def train(job, ctx):
        ctx.progress(step=1, total_steps=10)
        ctx.log("checkpoint saved at step 1")
        (marker_dir / f"{job.id}.started.{os.getpid()}").write_text("")
        time.sleep(120)
        (marker_dir / f"{job.id}.finished.{os.getpid()}").write_text("")
        return {"finished_by": os.getpid()}

    store = SqliteJobStore(db, heartbeat_timeout_s=60)
    worker = JobWorker(store, {"train": train}, worker_id=f"child-{os.getpid()}",
                       heartbeat_interval_s=0.1, poll_interval_s=0.05)
    worker.start()
    while True:
        time.sleep(1)


def claim_and_exit(db: str) -> None:
    """Claim one job and exit without finishing it (a clean death, heartbeat fresh)."""
    from lorastudio.services.jobs import open_job_store

    store = open_job_store(db, heartbeat_timeout_s=60)
    job = store.claim_next(f"exiting-{os.getpid()}")
    print(job.id if job else "")


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"worker": run_crashing_worker, "claim-and-exit": claim_and_exit}[mode](*args)
