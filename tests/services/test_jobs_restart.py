"""A real crash: SIGKILL a process in the middle of a job, then restart the queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lorastudio.services.jobs import JobStatus, JobWorker, SqliteJobStore

CHILD = Path(__file__).with_name("_jobs_child.py")


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_sigkill_mid_job_then_restart_resumes_once_and_drains_queue(tmp_path):
    db, markers = tmp_path / "jobs.db", tmp_path / "markers"
    markers.mkdir()
    # A heartbeat timeout far beyond the test's length: the dead worker must be
    # recognised from its process being gone, not by waiting.
    store = SqliteJobStore(db, heartbeat_timeout_s=600)
    running = store.submit("train", {"steps": 10})
    queued_train = store.submit("train", {"steps": 3})
    queued_other = store.submit("caption", {})  # the child has no handler for it

    child = subprocess.Popen([sys.executable, str(CHILD), "worker", str(db), str(markers)])
    try:
        _wait_for(lambda: any(markers.glob(f"{running.id}.started.*")) or child.poll() is not None)
        assert child.poll() is None, "child worker died on its own"
        mid = store.get(running.id)
        assert mid.status == JobStatus.IN_PROGRESS and mid.worker_id == f"child-{child.pid}"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(30)
    assert child.returncode == -signal.SIGKILL

    # What the crash left behind: nothing reported done, the rest untouched.
    after = {j.id: j for j in store.list()}
    assert after[running.id].status == JobStatus.IN_PROGRESS
    assert after[queued_train.id].status == JobStatus.IN_QUEUE
    assert after[queued_other.id].status == JobStatus.IN_QUEUE
    assert not [j for j in after.values() if j.status == JobStatus.COMPLETED]
    store.close()

    # Restart: a new store and worker in this process.
    runs = []

    def train(job, ctx):
        runs.append((job.id, job.attempts, job.progress.get("step")))
        return {"finished_by": "restarted", "resumed_from_step": job.progress.get("step")}

    def caption(job, ctx):
        runs.append((job.id, job.attempts, None))
        return {}

    store = SqliteJobStore(db, heartbeat_timeout_s=600)
    worker = JobWorker(store, {"train": train, "caption": caption}, poll_interval_s=0.02)
    started = time.monotonic()
    worker.start()
    assert worker.wait_idle(30)
    assert worker.stop(30)
    assert time.monotonic() - started < 30

    # The interrupted job ran first (front of the queue), exactly once, knowing
    # it is a resume and where its previous run got to; the others ran after.
    assert runs == [
        (running.id, 1, 1),
        (queued_train.id, 0, None),
        (queued_other.id, 0, None),
    ]
    final = {j.id: j for j in store.list()}
    assert all(j.status == JobStatus.COMPLETED for j in final.values())
    assert final[running.id].result == {"finished_by": "restarted", "resumed_from_step": 1}
    messages = [line.message for line in store.logs(running.id)]
    assert "checkpoint saved at step 1" in messages
    assert sum("resumed after restart" in m for m in messages) == 1
    # The killed run never reached its end; only the one killed child ever started it.
    assert not list(markers.glob("*.finished.*"))
    assert [p.name for p in markers.glob("*.started.*")] == [f"{running.id}.started.{child.pid}"]
    store.close()
