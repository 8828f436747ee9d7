"""JobWorker: outcomes of handlers, cancel, lost leases, priority tasks between steps."""

from __future__ import annotations

import threading
import time

import pytest

from lorastudio.services.jobs import (
    JobCancelled,
    JobStatus,
    JobWorker,
    PostgresJobStore,
    SqliteJobStore,
)

WAIT = 10  # generous ceilings: they only bound a hang, passing runs take ms


@pytest.fixture(params=["sqlite", "postgres"])
def reopen(request, tmp_path):
    """reopen(**kw) -> another store on the same queue (SQLite file or PostgreSQL database)."""
    if request.param == "postgres":
        url = request.getfixturevalue("postgres_url")
        return lambda **kw: PostgresJobStore(url, **kw)
    return lambda **kw: SqliteJobStore(tmp_path / "jobs.db", **kw)


@pytest.fixture
def store(reopen):
    s = reopen(heartbeat_timeout_s=10)
    yield s
    s.close()


@pytest.fixture
def make_worker(store):
    workers = []

    def make(handlers, **kw):
        kw.setdefault("poll_interval_s", 0.02)
        w = JobWorker(store, handlers, **kw)
        workers.append(w)
        w.start()
        return w

    yield make
    for w in workers:
        assert w.stop(WAIT)


def _messages(store, job_id):
    return [line.message for line in store.logs(job_id)]


def test_handler_result_progress_and_logs(store, make_worker):
    seen = []

    def train(job, ctx):
        seen.append((job.payload, job.status))
        for step in range(1, 6):
            ctx.progress(step=step, total_steps=5, loss=1.0 / step)
            time.sleep(0.002)
        ctx.log("saved lora.safetensors")
        return {"lora": "out/lora.safetensors"}

    job = store.submit("training", {"steps": 5})
    make_worker({"training": train}).wait_idle(WAIT)
    got = store.get(job.id)
    assert seen == [({"steps": 5}, JobStatus.IN_PROGRESS)]
    assert got.status == JobStatus.COMPLETED and got.result == {"lora": "out/lora.safetensors"}
    assert got.progress["step"] == 5 and got.progress["loss"] == pytest.approx(0.2)
    assert got.progress["eta_s"] == 0.0
    msgs = _messages(store, job.id)
    assert msgs[0].startswith("started on worker")
    assert msgs[1:] == ["saved lora.safetensors", "completed"]


def test_exception_fails_job_with_message_and_traceback_in_log(store, make_worker):
    def exploding_handler(job, ctx):
        raise ValueError("dataset folder is empty")

    job = store.submit("training", {})
    make_worker({"training": exploding_handler}).wait_idle(WAIT)
    got = store.get(job.id)
    assert got.status == JobStatus.FAILED
    assert got.error == "ValueError: dataset folder is empty"
    errors = [x for x in store.logs(job.id) if x.level == "ERROR"]
    assert len(errors) == 1
    assert "Traceback" in errors[0].message and "exploding_handler" in errors[0].message


def test_bad_or_missing_result(store, make_worker):
    a = store.submit("none", {})
    b = store.submit("bad", {})
    make_worker({"none": lambda j, c: None, "bad": lambda j, c: {"x": object()}}).wait_idle(WAIT)
    assert store.get(a.id).status == JobStatus.COMPLETED and store.get(a.id).result == {}
    got = store.get(b.id)
    assert got.status == JobStatus.FAILED and "not JSON" in got.error


def test_only_kinds_with_a_handler_are_taken(store, make_worker):
    other = store.submit("caption", {})
    mine = store.submit("training", {})
    make_worker({"training": lambda j, c: {}}).wait_idle(WAIT)
    assert store.get(mine.id).status == JobStatus.COMPLETED
    assert store.get(other.id).status == JobStatus.IN_QUEUE


def test_cancel_running_job_via_check_cancelled(store, make_worker):
    started, steps = threading.Event(), []

    def train(job, ctx):
        started.set()
        for step in range(10_000):
            ctx.check_cancelled()
            steps.append(step)
            time.sleep(0.002)
        return {"finished": True}

    job = store.submit("training", {})
    queued = store.submit("training", {})
    worker = make_worker({"training": train})
    assert started.wait(WAIT)
    store.request_cancel(queued.id)
    store.request_cancel(job.id)
    assert worker.wait_idle(WAIT)
    assert store.get(job.id).status == JobStatus.CANCELLED
    assert 0 < len(steps) < 10_000
    assert store.get(queued.id).status == JobStatus.CANCELLED
    assert _messages(store, queued.id) == ["cancelled while queued"]  # never started


def test_cancelled_is_a_raise_free_check(store, make_worker):
    started, observed = threading.Event(), []

    def train(job, ctx):
        started.set()
        deadline = time.monotonic() + WAIT
        while not ctx.cancelled() and time.monotonic() < deadline:
            time.sleep(0.002)
        observed.append(ctx.cancelled())
        raise JobCancelled(job.id)

    job = store.submit("training", {})
    worker = make_worker({"training": train})
    assert started.wait(WAIT)
    store.request_cancel(job.id)
    worker.wait_idle(WAIT)
    assert observed == [True]
    assert store.get(job.id).status == JobStatus.CANCELLED


def test_lost_lease_discards_the_stale_result(reopen, store, make_worker):
    # Another process, whose clock says our heartbeat is long overdue, takes the
    # job back; the stale run must notice and its result must not count.
    other = reopen(heartbeat_timeout_s=10, clock=lambda: time.time() + 1000)
    runs, started = [], threading.Event()

    def train(job, ctx):
        if job.attempts == 0:
            started.set()
            deadline = time.monotonic() + WAIT
            while not ctx.cancelled() and time.monotonic() < deadline:
                time.sleep(0.005)
            runs.append(("stale", ctx.lease_lost.is_set()))
            return {"run": "stale"}
        runs.append(("resumed", job.attempts))
        return {"run": "resumed"}

    job = store.submit("training", {})
    worker = make_worker({"training": train}, heartbeat_interval_s=0.02)
    assert started.wait(WAIT)
    assert [j.id for j in other.recover_after_restart()] == [job.id]
    deadline = time.monotonic() + WAIT
    while store.get(job.id).status != JobStatus.COMPLETED and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.wait_idle(WAIT)
    other.close()
    assert runs == [("stale", True), ("resumed", 1)]
    assert store.get(job.id).result == {"run": "resumed"}
    assert any("discarded" in m for m in _messages(store, job.id))


def test_heartbeat_keeps_a_long_job_owned(store, make_worker):
    beats = []

    def train(job, ctx):
        first = store.get(job.id).heartbeat_at
        time.sleep(0.3)
        beats.append((first, store.get(job.id).heartbeat_at))
        return {}

    store.submit("training", {})
    make_worker({"training": train}, heartbeat_interval_s=0.02).wait_idle(WAIT)
    (first, later), = beats
    assert later > first


def test_wait_idle_times_out_while_busy(store, make_worker):
    release = threading.Event()
    store.submit("training", {})
    worker = make_worker({"training": lambda j, c: {"ok": release.wait(WAIT)}})
    assert worker.wait_idle(0.2) is False
    release.set()
    assert worker.wait_idle(WAIT) is True


def test_wait_idle_sees_jobs_submitted_just_before(store, make_worker):
    worker = make_worker({"training": lambda j, c: {}})
    assert worker.wait_idle(WAIT)
    for _ in range(20):  # the idle flag of the previous round must not leak
        job = store.submit("training", {})
        assert worker.wait_idle(WAIT)
        assert store.get(job.id).status == JobStatus.COMPLETED


# ------------------------------------------------------------ priority tasks


def test_priority_task_runs_between_training_steps(store, make_worker):
    total, step_now = 200, [0]
    halfway, submitted = threading.Event(), threading.Event()
    handler_thread = []

    def train(job, ctx):
        handler_thread.append(threading.get_ident())
        for step in range(1, total + 1):
            time.sleep(0.003)  # stands in for a forward/backward pass
            step_now[0] = step
            if step % 10 == 0:
                ctx.progress(step=step, total_steps=total)
            if step == 20:  # pin "mid-way" to a step so the check is exact
                halfway.set()
                submitted.wait(WAIT)
            ctx.yield_point()
        return {"steps": total}

    def txt2img():
        return {"at_step": step_now[0], "thread": threading.get_ident(),
                "job_running": store.get(job.id).status == JobStatus.IN_PROGRESS}

    job = store.submit("training", {})
    worker = make_worker({"training": train})
    assert halfway.wait(WAIT)
    fut = worker.run_priority(txt2img)
    submitted.set()
    out = fut.result(WAIT)
    worker.wait_idle(WAIT)
    assert out["job_running"] and out["at_step"] == 20  # the next gap, not the end
    assert out["thread"] == handler_thread[0]  # never concurrent with a step
    assert store.get(job.id).result == {"steps": total}


def test_priority_tasks_run_lowest_number_first_and_errors_stay_local(store, make_worker):
    gate, entered, order = threading.Event(), threading.Event(), []

    def train(job, ctx):
        entered.set()
        gate.wait(WAIT)  # tasks pile up while a "step" runs
        ctx.yield_point()
        return {}

    def task(name):
        def run():
            order.append(name)
            if name == "broken":
                raise RuntimeError("sampler exploded")
            return name
        return run

    job = store.submit("training", {})
    worker = make_worker({"training": train})
    assert entered.wait(WAIT)
    futures = {name: worker.run_priority(task(name), priority=p)
               for name, p in [("low", 5), ("high", 1), ("broken", 2), ("mid", 3)]}
    gate.set()
    worker.wait_idle(WAIT)
    assert order == ["high", "broken", "mid", "low"]
    assert isinstance(futures["broken"].exception(WAIT), RuntimeError)
    assert futures["mid"].result(WAIT) == "mid"
    assert store.get(job.id).status == JobStatus.COMPLETED


def test_idle_worker_runs_priority_tasks_at_once(make_worker):
    worker = make_worker({"training": lambda j, c: {}}, poll_interval_s=5)
    worker.wait_idle(WAIT)
    asked = time.monotonic()
    assert worker.run_priority(lambda: 7).result(WAIT) == 7
    assert time.monotonic() - asked < 1  # woken, not left for the 5 s poll


def test_stop_cancels_tasks_that_never_ran(store):
    worker = JobWorker(store, {"training": lambda j, c: {}})
    fut = worker.run_priority(lambda: 1)  # not started: nobody will run it
    assert worker.stop(WAIT)
    assert fut.cancelled()
    with pytest.raises(RuntimeError):
        worker.run_priority(lambda: 2)
