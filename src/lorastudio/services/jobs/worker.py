"""A worker thread that runs queued jobs one at a time, plus short priority tasks.

One worker owns one accelerator: jobs run strictly one after another on the
worker thread. Short priority tasks (e.g. a txt2img request) run on the same
thread, between jobs and at `JobContext.yield_point()` calls inside a job, so
they never touch the device concurrently with a training step yet do not wait
for a whole training run either.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from concurrent.futures import Future
from typing import Any, Callable, Mapping, TypeVar

from lorastudio.core.errors import InvalidParameter
from lorastudio.services.jobs.models import Job, JobStatus, WorkerCapabilities
from lorastudio.services.jobs.store import JobStore

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[Job, "JobContext"], "dict[str, Any] | None"]


class JobCancelled(Exception):
    """Raised inside a handler (by check_cancelled) to stop the job as CANCELLED."""


class JobContext:
    """What a handler may do with its running job. Not shared between jobs."""

    def __init__(self, worker: JobWorker, job: Job):
        self.job = job
        self.worker_id = worker.worker_id
        self._worker = worker
        self._store = worker.store
        # A resumed job starts from what its previous run last reported.
        self._progress: dict[str, Any] = dict(job.progress)
        self._rate_origin: tuple[float, float] | None = None
        # Set when the store says this worker no longer owns the job (another
        # process recovered it): the handler should stop, its result is void.
        self.lease_lost = threading.Event()

    def progress(self, **fields: Any) -> None:
        """Merge fields (step, total_steps, loss, ...) into the job's progress.

        eta_s is derived from the step rate of this run unless given.
        """
        self._progress.update(fields)
        if "eta_s" not in fields:
            self._estimate_eta()
        if not self._store.update_progress(self.job.id, dict(self._progress), self.worker_id):
            self.lease_lost.set()

    def log(self, message: str, level: str = "INFO") -> None:
        self._store.append_log(self.job.id, level, message)

    def cancelled(self) -> bool:
        """True once a cancel was requested or the job was taken away. Never raises."""
        if self.lease_lost.is_set():
            return True
        try:
            job = self._store.get(self.job.id)
        except Exception:  # a locked database must not kill the training loop
            log.warning("cancel check failed for job %s", self.job.id, exc_info=True)
            return False
        if job.status != JobStatus.IN_PROGRESS or job.worker_id != self.worker_id:
            self.lease_lost.set()
            return True
        return job.cancel_requested

    def check_cancelled(self) -> None:
        if self.cancelled():
            raise JobCancelled(self.job.id)

    def yield_point(self) -> int:
        """Run waiting priority tasks now; returns how many ran.

        Call between training steps, where the device is free.
        """
        return self._worker._run_priority_tasks()

    def _estimate_eta(self) -> None:
        step, total = self._progress.get("step"), self._progress.get("total_steps")
        if not isinstance(step, (int, float)) or not isinstance(total, (int, float)):
            return
        now = time.monotonic()
        # Measured from the first step seen in this run: a resumed run starting
        # at step 500 must not count the steps done before the restart.
        if self._rate_origin is None or step < self._rate_origin[1]:
            self._rate_origin = (now, step)
            return
        t0, s0 = self._rate_origin
        if step > s0:
            self._progress["eta_s"] = round((now - t0) / (step - s0) * max(total - step, 0), 1)


class _PriorityTask:
    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn
        self.future: Future[Any] = Future()

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            self.future.set_result(self.fn())
        except BaseException as e:  # the caller gets it; the job must go on
            self.future.set_exception(e)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobWorker:
    def __init__(
        self,
        store: JobStore,
        handlers: Mapping[str, Handler],
        worker_id: str | None = None,
        *,
        poll_interval_s: float = 0.5,
        heartbeat_interval_s: float | None = None,
        recover_interval_s: float | None = None,
        can_run: WorkerCapabilities | None = None,
    ):
        if not handlers:
            raise InvalidParameter("handlers", {}, "a worker needs at least one job kind")
        self.store = store
        self.handlers = dict(handlers)
        self.worker_id = worker_id or default_worker_id()
        self.poll_interval_s = poll_interval_s
        self.heartbeat_interval_s = heartbeat_interval_s or min(
            5.0, store.heartbeat_timeout_s / 4
        )
        self.recover_interval_s = recover_interval_s or store.heartbeat_timeout_s
        # What this worker's machine offers: it claims only jobs whose requirements fit.
        self.can_run = can_run
        self.current_job_id: str | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()
        # Guards the priority heap and the idle bookkeeping below.
        self._cond = threading.Condition()
        self._tasks: list[tuple[int, int, _PriorityTask]] = []
        self._task_seq = itertools.count()
        self._scan_gen = 0  # bumped at the start of every look for work
        self._idle_gen = -1  # the scan that last found nothing to do
        self._last_recover = 0.0

    # ------------------------------------------------------------ lifecycle

    def start(self, recover: bool = True) -> None:
        """Start the thread; first requeue jobs left running by dead processes."""
        if self._thread is not None:
            raise RuntimeError(f"worker {self.worker_id} was already started")
        if recover:
            self._recover()
        self._thread = threading.Thread(
            target=self._run, name=f"job-worker-{self.worker_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Stop after the current job; True if the thread ended within timeout.

        A job still running at process exit stays IN_PROGRESS and is recovered
        by the next start, exactly like after a crash.
        """
        with self._cond:
            self._stopping.set()
        self._wake.set()
        if self._thread is None:
            self._cancel_pending_tasks()
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        """Look for work now instead of at the next poll (call after submit)."""
        self._wake.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until a look for work that began after this call found nothing.

        So jobs submitted before the call, and any they lead to, are finished.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            called_at = self._scan_gen
            self._wake.set()
            while self._idle_gen <= called_at:
                if not self.running:
                    raise RuntimeError(f"worker {self.worker_id} is not running")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(0.1 if remaining is None else min(remaining, 0.1))
        return True

    def run_priority(self, fn: Callable[[], T], priority: int = 0) -> Future[T]:
        """Run fn on the worker thread at the next gap; lower priority runs first."""
        task = _PriorityTask(fn)
        with self._cond:
            # Checked under the lock the exiting thread takes to cancel what is
            # left, so a task is either refused here or resolved there.
            if self._stopping.is_set():
                raise RuntimeError(f"worker {self.worker_id} is stopped")
            heapq.heappush(self._tasks, (priority, next(self._task_seq), task))
        self._wake.set()
        return task.future

    # ---------------------------------------------------------------- loop

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._look_for_work()
        finally:
            self._cancel_pending_tasks()

    def _look_for_work(self) -> None:
        with self._cond:
            self._scan_gen += 1
            gen = self._scan_gen
        self._wake.clear()  # before looking: a wake during the look is kept
        ran = self._run_priority_tasks()
        try:
            if time.monotonic() - self._last_recover > self.recover_interval_s:
                self._recover()
            job = self.store.claim_next(self.worker_id, self.handlers, self.can_run)
        except Exception:
            log.exception("worker %s: could not claim a job", self.worker_id)
            self._wake.wait(self.poll_interval_s)
            return
        if job is not None:
            try:
                self._execute(job)
            except Exception:
                # Only store failures get here; the job keeps our ownership and
                # is recovered once its heartbeat goes stale.
                log.exception("worker %s: bookkeeping of job %s failed", self.worker_id, job.id)
            return
        if ran:
            return
        with self._cond:
            if not self._tasks:
                self._idle_gen = gen
                self._cond.notify_all()
        self._wake.wait(self.poll_interval_s)

    def _cancel_pending_tasks(self) -> None:
        # Nobody will run them: resolve their futures so callers stop waiting.
        with self._cond:
            for _, _, task in self._tasks:
                task.future.cancel()
            self._tasks.clear()
            self._cond.notify_all()

    def _recover(self) -> None:
        self._last_recover = time.monotonic()
        for job in self.store.recover_after_restart():
            log.warning("job %s recovered after restart: %s", job.id, job.status.value)

    def _run_priority_tasks(self) -> int:
        # Bounded by what was waiting on entry, so a stream of new tasks cannot
        # stall the training step that called yield_point forever.
        with self._cond:
            budget = len(self._tasks)
        ran = 0
        while ran < budget:
            with self._cond:
                if not self._tasks:
                    break
                _, _, task = heapq.heappop(self._tasks)
            task.run()
            ran += 1
        return ran

    def _execute(self, job: Job) -> None:
        store, wid = self.store, self.worker_id
        self.current_job_id = job.id
        ctx = JobContext(self, job)
        resumed = f" (resuming after {job.attempts} interrupted run(s))" if job.attempts else ""
        store.append_log(job.id, "INFO", f"started on worker {wid}{resumed}")
        beat_stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat, args=(job.id, ctx, beat_stop), daemon=True,
            name=f"job-heartbeat-{job.id[:8]}",
        )
        beat.start()
        try:
            try:
                result = self.handlers[job.kind](job, ctx)
            except JobCancelled:
                if store.mark_cancelled(job.id, wid):
                    store.append_log(job.id, "INFO", "cancelled")
                else:
                    self._discarded(job, "cancel")
                return
            except Exception as e:
                store.append_log(job.id, "ERROR", traceback.format_exc().rstrip())
                if not store.fail(job.id, wid, f"{type(e).__name__}: {e}"):
                    self._discarded(job, "failure")
                return
            try:
                done = store.complete(job.id, wid, {} if result is None else result)
            except InvalidParameter as e:  # the handler returned something not JSON
                store.append_log(job.id, "ERROR", str(e))
                done = store.fail(job.id, wid, str(e))
            if done:
                store.append_log(job.id, "INFO", "completed")
            else:
                self._discarded(job, "result")
        finally:
            beat_stop.set()
            beat.join()
            self.current_job_id = None

    def _discarded(self, job: Job, what: str) -> None:
        # Another process recovered the job (our heartbeat looked stale, or our
        # process looked dead): reporting now would report it from a stale run.
        msg = f"{what} of worker {self.worker_id} discarded: job no longer owned by it"
        log.warning("job %s: %s", job.id, msg)
        self.store.append_log(job.id, "WARNING", msg)

    def _heartbeat(self, job_id: str, ctx: JobContext, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_interval_s):
            try:
                if not self.store.heartbeat(job_id, self.worker_id):
                    ctx.lease_lost.set()
                    return
            except Exception:  # transient (locked database); retry next beat
                log.warning("heartbeat for job %s failed", job_id, exc_info=True)
