"""Random operation sequences against both job stores, checked against a tiny model.

Catches interactions the example tests do not spell out: recovery after a
cancel, claims after requeues, positions after any mix of them.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
import pytest
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from lorastudio.services.jobs import JobStatus, PostgresJobStore, SqliteJobStore

WORKERS = st.sampled_from(["w1", "w2"])
TIMEOUT, MAX_ATTEMPTS = 10.0, 2


class Clock:
    t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


class QueueModel(RuleBasedStateMachine):
    postgres_url: str | None = None  # set per run: None = SQLite in memory

    def __init__(self):
        super().__init__()
        self.clock = Clock()
        options = dict(clock=self.clock, heartbeat_timeout_s=TIMEOUT, max_attempts=MAX_ATTEMPTS)
        if self.postgres_url is None:
            self.store = SqliteJobStore(":memory:", **options)
        else:
            self.store = PostgresJobStore(self.postgres_url, **options)
            # Every example starts from an empty queue, as a fresh in-memory SQLite does.
            self.store._run(lambda c, _: c.execute(
                "TRUNCATE jobs, job_logs, job_deliveries; ALTER SEQUENCE jobs_queue_back RESTART;"
                " ALTER SEQUENCE jobs_queue_front RESTART"))
        self.ids: list[str] = []
        self.queue: list[str] = []  # front first
        self.owner: dict[str, str] = {}  # running job -> worker
        self.claim_order: dict[str, int] = {}  # running job -> its place in line
        self.status: dict[str, JobStatus] = {}
        self.cancel_requested: set[str] = set()
        self.attempts: dict[str, int] = {}
        self.line = 0

    def teardown(self):
        self.store.close()

    def _job(self, data):
        return data.draw(st.sampled_from(self.ids))

    @rule()
    def submit(self):
        job = self.store.submit("training", {})
        self.ids.append(job.id)
        self.queue.append(job.id)
        self.status[job.id] = JobStatus.IN_QUEUE
        self.attempts[job.id] = 0

    @rule(worker=WORKERS)
    def claim(self, worker):
        got = self.store.claim_next(worker)
        if not self.queue:
            assert got is None
            return
        expected = self.queue.pop(0)
        assert got is not None and got.id == expected
        self.owner[expected] = worker
        self.line += 1
        self.claim_order[expected] = self.line
        self.status[expected] = JobStatus.IN_PROGRESS

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), worker=WORKERS,
          outcome=st.sampled_from([JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED]))
    def finish(self, data, worker, outcome):
        job_id = self._job(data)
        call = {
            JobStatus.COMPLETED: lambda: self.store.complete(job_id, worker, {"by": worker}),
            JobStatus.FAILED: lambda: self.store.fail(job_id, worker, "x"),
            JobStatus.CANCELLED: lambda: self.store.mark_cancelled(job_id, worker),
        }[outcome]
        ok = call()
        assert ok == (self.owner.get(job_id) == worker)
        if ok:
            del self.owner[job_id]
            self.status[job_id] = outcome

    @precondition(lambda self: self.ids)
    @rule(data=st.data(), worker=WORKERS)
    def heartbeat(self, data, worker):
        job_id = self._job(data)
        assert self.store.heartbeat(job_id, worker) == (self.owner.get(job_id) == worker)

    @precondition(lambda self: self.ids)
    @rule(data=st.data())
    def cancel(self, data):
        job_id = self._job(data)
        self.store.request_cancel(job_id)
        if job_id in self.queue:
            self.queue.remove(job_id)
            self.status[job_id] = JobStatus.CANCELLED
        elif job_id in self.owner:
            self.cancel_requested.add(job_id)

    @rule()
    def all_workers_die(self):
        self.clock.t += TIMEOUT + 1
        recovered = self.store.recover_after_restart()
        dead = sorted(self.owner, key=self.claim_order.__getitem__)
        assert sorted(j.id for j in recovered) == sorted(dead)
        requeued = []
        for job_id in dead:
            del self.owner[job_id]
            if job_id in self.cancel_requested:
                self.status[job_id] = JobStatus.CANCELLED
            elif self.attempts[job_id] + 1 >= MAX_ATTEMPTS:
                self.attempts[job_id] += 1
                self.status[job_id] = JobStatus.FAILED
            else:
                self.attempts[job_id] += 1
                self.status[job_id] = JobStatus.IN_QUEUE
                requeued.append(job_id)
        self.queue = requeued + self.queue

    @invariant()
    def store_matches_model(self):
        jobs = {j.id: j for j in self.store.list()}
        assert set(jobs) == set(self.ids)
        for job_id, job in jobs.items():
            assert job.status == self.status[job_id]
            assert job.attempts == self.attempts[job_id]
            if not job.status.is_terminal:  # a finished job keeps its last owner's id
                assert job.worker_id == self.owner.get(job_id)
            assert job.position == (self.queue.index(job_id) if job_id in self.queue else None)
            assert self.store.queue_position(job_id) == job.position  # computed another way


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_queue_model(backend, request):
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else None
    model = type("Model", (QueueModel,), {"postgres_url": url})
    examples = 60 if backend == "sqlite" else 30  # a server round trip per call: fewer, still varied
    run_state_machine_as_test(model, settings=settings(max_examples=examples, stateful_step_count=20,
                                                       deadline=None))
