"""SqliteJobStore: schema migrations, queue order, ownership, cancel, logs, recovery."""

from __future__ import annotations

import math
import multiprocessing
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from lorastudio.core.errors import InvalidParameter, LorastudioError, NotFound
from lorastudio.services.jobs import (
    MIGRATIONS,
    JobRequirements,
    JobStatus,
    SqliteJobStore,
    WorkerCapabilities,
)
from lorastudio.services.jobs import liveness
from lorastudio.services.jobs import postgres_store as pg_store
from lorastudio.services.jobs import sqlite_store as store_mod
from lorastudio.services.jobs.postgres_store import PostgresJobStore

HERE = Path(__file__).parent
if str(HERE) not in sys.path:  # spawn children import _jobs_child by name
    sys.path.insert(0, str(HERE))

STRATEGIES = ["returning", "immediate"] if store_mod._HAS_RETURNING else ["immediate"]
# The contract runs against every implementation: SQLite with each claim strategy, and
# a real PostgreSQL server (started by the postgres_server fixture, never mocked).
BACKENDS = [f"sqlite-{s}" for s in STRATEGIES] + ["postgres"]


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def location(backend, tmp_path, request) -> str:
    """Where the backend's database lives: a SQLite file or a fresh PostgreSQL database."""
    if backend == "postgres":
        return request.getfixturevalue("postgres_url")
    return str(tmp_path / "jobs.db")


@pytest.fixture
def make_store(backend, location):
    opened = []

    def make(**kw):
        if backend == "postgres":
            s = PostgresJobStore(location, **kw)
        else:
            s = SqliteJobStore(location, claim_strategy=backend.split("-", 1)[1], **kw)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(make_store, clock):
    return make_store(clock=clock, heartbeat_timeout_s=10, max_attempts=3)


def _migrations(backend: str) -> tuple[str, ...]:
    return pg_store.MIGRATIONS if backend == "postgres" else MIGRATIONS


def _sql(store, sql: str, params: tuple = ()) -> list:
    """Run raw SQL against a store's own database (to fake what the API cannot)."""
    if isinstance(store, PostgresJobStore):
        def run(c, _attempt):
            cur = c.execute(sql.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else []

        return store._run(run)
    with store._lock:
        return store._conn.execute(sql, params).fetchall()


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(str(path))


# ------------------------------------------------------------------ migrations


def test_migrations_from_empty_file(tmp_path):
    path = tmp_path / "sub" / "jobs.db"
    s = SqliteJobStore(path, busy_timeout_s=7)
    assert s.schema_version() == len(MIGRATIONS)
    assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 7000
    s.close()
    tables = {r[0] for r in _raw(path).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"jobs", "job_logs", "schema_version"} <= tables


def test_reopen_keeps_data_and_does_not_reapply(make_store, backend):
    s = make_store()
    job = s.submit("training", {"lr": 1e-4})
    s.close()
    # Re-running version 1 would fail on CREATE TABLE jobs: reopening proves idempotence.
    s = make_store()
    assert s.schema_version() == len(_migrations(backend))
    assert s.get(job.id).payload == {"lr": 1e-4}


def test_both_databases_have_the_same_numbered_migrations():
    assert len(pg_store.MIGRATIONS) == len(MIGRATIONS)


def test_postgres_starts_from_an_empty_database(postgres_url):
    with PostgresJobStore(postgres_url) as s:
        assert s.schema_version() == len(pg_store.MIGRATIONS)
        tables = {r["table_name"] for r in _sql(
            s, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert {"jobs", "job_logs", "schema_version"} <= tables


def test_upgrade_applies_only_new_migrations(make_store, backend):
    s = make_store()
    job = s.submit("training", {})
    s.close()
    newer = (*_migrations(backend), "ALTER TABLE jobs ADD COLUMN note TEXT; -- a comment; with ;")
    s = make_store(migrations=newer)
    assert s.schema_version() == len(_migrations(backend)) + 1
    assert s.get(job.id).status == JobStatus.IN_QUEUE
    _sql(s, "UPDATE jobs SET note = 'x'")  # fails unless the column exists


def test_failing_migration_rolls_back_entirely(make_store, backend):
    make_store().close()
    base = _migrations(backend)
    broken = (*base, "CREATE TABLE extra (x INTEGER); INSERT INTO missing VALUES (1);")
    expected = LorastudioError if backend == "postgres" else sqlite3.OperationalError
    with pytest.raises(expected, match="missing"):
        make_store(migrations=broken)
    s = make_store()
    assert s.schema_version() == len(base)
    _sql(s, "CREATE TABLE extra (y INTEGER)")  # would fail if the broken run had left it


def test_database_newer_than_code_is_refused(make_store, backend):
    make_store(migrations=(*_migrations(backend), "CREATE TABLE later (x INTEGER);")).close()
    with pytest.raises(LorastudioError, match="newer"):
        make_store()


def test_concurrent_first_open_migrates_once(make_store, backend):
    errors, stores = [], []

    def open_it():
        try:
            stores.append(make_store())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {s.schema_version() for s in stores} == {len(_migrations(backend))}


def test_split_sql_keeps_trigger_bodies_whole():
    script = """
        CREATE TABLE a (x); -- trailing; comment
        CREATE TRIGGER t AFTER INSERT ON a BEGIN
            UPDATE a SET x = 1; UPDATE a SET x = 2;
        END;
    """
    parts = store_mod.split_sql(script)
    assert len(parts) == 2 and parts[1].startswith("-- trailing")
    assert parts[1].rstrip().endswith("END;")
    with pytest.raises(ValueError, match="incomplete"):
        store_mod.split_sql("CREATE TABLE b (x")


# ------------------------------------------------------------ submit / queue


def test_submit_get_list_and_positions(store):
    a, b, c = (store.submit("training", {"i": i}) for i in range(3))
    assert [j.position for j in (a, b, c)] == [0, 1, 2]
    assert a.status == JobStatus.IN_QUEUE and a.attempts == 0 and a.progress == {}
    assert store.claim_next("w1").id == a.id
    assert store.queue_position(a.id) is None
    assert [store.queue_position(x.id) for x in (b, c)] == [0, 1]
    assert [(j.id, j.position) for j in store.list()] == [(a.id, None), (b.id, 0), (c.id, 1)]
    assert [j.id for j in store.list(status=JobStatus.IN_QUEUE)] == [b.id, c.id]
    assert store.list(kind="other") == []


def test_unknown_ids_and_bad_input(store):
    for call in (store.get, store.request_cancel, store.logs, store.queue_position):
        with pytest.raises(NotFound):
            call("nope")
    with pytest.raises(NotFound):
        store.append_log("nope", "INFO", "x")
    with pytest.raises(InvalidParameter, match="payload"):
        store.submit("training", {"x": object()})
    with pytest.raises(InvalidParameter, match="kind"):
        store.submit("", {})


def test_claim_is_fifo_and_filters_kinds(store):
    t1 = store.submit("training", {})
    g = store.submit("caption", {})
    t2 = store.submit("training", {})
    assert store.claim_next("w", []) is None
    assert store.claim_next("w", ["training"]).id == t1.id
    got = store.claim_next("w", ["training"])
    assert got.id == t2.id and got.status == JobStatus.IN_PROGRESS and got.worker_id == "w"
    assert store.claim_next("w", ["training"]) is None
    assert store.claim_next("w", ["caption", "training"]).id == g.id
    assert store.claim_next("w") is None


def test_workers_claim_only_jobs_they_can_run(store):
    flux = store.submit("training", {}, JobRequirements(family="flux", min_memory_mb=20_000))
    sdxl = store.submit("training", {}, JobRequirements(family="sdxl"))
    anyone = store.submit("training", {})
    assert store.get(flux.id).family == "flux" and store.get(flux.id).min_memory_mb == 20_000
    small_sd1 = WorkerCapabilities(families=("sd1",), memory_mb=8_000)
    assert store.claim_next("w-sd1", None, small_sd1).id == anyone.id  # skips flux and sdxl
    assert store.claim_next("w-sd1", None, small_sd1) is None
    big_flux_only_8gb = WorkerCapabilities(families=("flux", "sdxl"), memory_mb=8_000)
    assert store.claim_next("w-8gb", ["training"], big_flux_only_8gb).id == sdxl.id  # flux needs 20 GB
    assert store.claim_next("w-8gb", ["training"], big_flux_only_8gb) is None
    assert store.claim_next("w-any", None, WorkerCapabilities()).id == flux.id


def test_change_counter_moves_on_every_visible_change(store):
    job = store.submit("training", {})
    seen = store.change_counter(job.id)
    if not store.pushes_changes:  # SQLite: no notifications; waiting is a plain sleep
        assert store.wait_for_change(job.id, seen, 0.01) == seen
        return
    store.claim_next("w1")
    seen = store.wait_for_change(job.id, seen, 10)
    store.append_log(job.id, "INFO", "hello")
    after_log = store.wait_for_change(job.id, seen, 10)
    assert after_log != seen
    store.heartbeat(job.id, "w1")  # nothing a reader shows: no wake-up
    started = time.monotonic()
    assert store.wait_for_change(job.id, after_log, 0.3) == after_log
    assert time.monotonic() - started >= 0.25
    store.complete(job.id, "w1", {})
    assert store.wait_for_change(job.id, after_log, 10) != after_log


def test_progress_is_json_and_nan_becomes_null(store):
    job = store.submit("training", {})
    store.claim_next("w")
    assert store.update_progress(job.id, {"step": 3, "loss": math.nan}, worker_id="w")
    assert store.get(job.id).progress == {"step": 3, "loss": None}
    assert not store.update_progress(job.id, {"step": 4}, worker_id="intruder")
    assert store.get(job.id).progress["step"] == 3


# ------------------------------------------------------------------ ownership


def test_only_the_owner_finishes_and_only_once(store):
    job = store.submit("training", {})
    assert not store.complete(job.id, "w1", {})  # still queued
    store.claim_next("w1")
    assert store.heartbeat(job.id, "w1") and not store.heartbeat(job.id, "w2")
    assert not store.complete(job.id, "w2", {"by": "w2"})
    assert not store.fail(job.id, "w2", "no")
    assert store.complete(job.id, "w1", {"by": "w1"})
    assert not store.complete(job.id, "w1", {"by": "again"})
    assert not store.fail(job.id, "w1", "late")
    assert not store.heartbeat(job.id, "w1")
    done = store.get(job.id)
    assert done.status == JobStatus.COMPLETED and done.result == {"by": "w1"}
    assert done.error is None and done.finished_at is not None


def test_fail_records_error(store):
    job = store.submit("training", {})
    store.claim_next("w1")
    assert store.fail(job.id, "w1", "CUDA out of memory")
    got = store.get(job.id)
    assert (got.status, got.error, got.result) == (JobStatus.FAILED, "CUDA out of memory", None)
    assert not store.complete(job.id, "w1", {})


def test_stale_worker_cannot_report_after_recovery(store, clock):
    job = store.submit("training", {})
    store.claim_next("w1")
    clock.t += 11
    store.recover_after_restart()
    assert store.claim_next("w2").id == job.id
    assert not store.heartbeat(job.id, "w1")
    assert not store.complete(job.id, "w1", {"by": "w1"})
    assert store.complete(job.id, "w2", {"by": "w2"})
    assert store.get(job.id).result == {"by": "w2"}


def test_a_delivery_is_claimed_by_one_owner_and_done_once(make_store, store, clock):
    job = store.submit("training", {})
    other_job = store.submit("training", {})
    assert store.claim_delivery(job.id, "webhook", "api-1", stale_after_s=60)
    assert store.claim_delivery(job.id, "webhook", "api-1", stale_after_s=60)  # a retried call: still ours
    assert not store.claim_delivery(job.id, "webhook", "api-2", stale_after_s=60)
    assert store.claim_delivery(other_job.id, "webhook", "api-2", stale_after_s=60)  # per job
    assert store.claim_delivery(job.id, "report", "api-2", stale_after_s=60)  # per kind of delivery
    assert not store.finish_delivery(job.id, "webhook", "api-2")  # not its claim
    clock.t += 61  # api-1 died holding the claim: another node takes it over
    assert store.claim_delivery(job.id, "webhook", "api-2", stale_after_s=60)
    assert not store.finish_delivery(job.id, "webhook", "api-1")
    assert store.finish_delivery(job.id, "webhook", "api-2")
    clock.t += 1000
    for owner in ("api-1", "api-2", "api-3"):  # done is done, however old
        assert not store.claim_delivery(job.id, "webhook", owner, stale_after_s=60)

    # Many nodes (each its own connection) racing for the same deliveries: one winner each.
    nodes = [make_store(clock=clock) for _ in range(4)]
    jobs = [store.submit("training", {}).id for _ in range(10)]
    wins: list[tuple[str, int]] = []
    start = threading.Barrier(len(nodes))

    def race(i: int) -> None:
        start.wait()
        for jid in jobs:
            if nodes[i].claim_delivery(jid, "webhook", f"node-{i}", stale_after_s=60):
                wins.append((jid, i))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(nodes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(j for j, _ in wins) == sorted(jobs)  # every delivery claimed, none twice


def test_non_json_result_is_refused_without_changing_state(store):
    job = store.submit("training", {})
    store.claim_next("w1")
    with pytest.raises(InvalidParameter, match="result"):
        store.complete(job.id, "w1", {"tensor": object()})
    assert store.get(job.id).status == JobStatus.IN_PROGRESS


# --------------------------------------------------------------------- cancel


def test_cancel_queued_job_is_immediate(store):
    a, b = store.submit("training", {}), store.submit("training", {})
    got = store.request_cancel(a.id)
    assert got.status == JobStatus.CANCELLED and got.position is None and got.finished_at
    assert store.get(b.id).position == 0
    assert store.claim_next("w").id == b.id
    assert store.claim_next("w") is None
    assert [line.message for line in store.logs(a.id)] == ["cancelled while queued"]


def test_cancel_running_job_is_a_request_for_its_worker(store):
    job = store.submit("training", {})
    store.claim_next("w1")
    got = store.request_cancel(job.id)
    assert got.status == JobStatus.IN_PROGRESS and got.cancel_requested
    assert not store.mark_cancelled(job.id, "w2")
    assert store.mark_cancelled(job.id, "w1")
    assert store.get(job.id).status == JobStatus.CANCELLED
    assert not store.complete(job.id, "w1", {})


def test_cancel_finished_job_changes_nothing(store):
    job = store.submit("training", {})
    store.claim_next("w1")
    store.complete(job.id, "w1", {"ok": 1})
    got = store.request_cancel(job.id)
    assert got.status == JobStatus.COMPLETED and not got.cancel_requested


# ----------------------------------------------------------------------- logs


def test_logs_keep_write_order_and_page_by_seq_or_time(store, clock):
    job = store.submit("training", {})
    lines = []
    for i in range(5):
        clock.t += 1
        lines.append(store.append_log(job.id, "info" if i % 2 else "warning", f"line {i}"))
    got = store.logs(job.id)
    assert [x.message for x in got] == [f"line {i}" for i in range(5)]
    assert [x.level for x in got][:2] == ["WARNING", "INFO"]
    assert [x.seq for x in got] == sorted(x.seq for x in got)
    assert [x.message for x in store.logs(job.id, since=lines[2].seq)] == ["line 3", "line 4"]
    assert [x.message for x in store.logs(job.id, since=lines[3].ts)] == ["line 4"]
    assert store.logs(job.id, since=lines[3].ts - timedelta(seconds=0.5)) == got[3:]


def test_logs_from_threads_keep_each_writers_order(store):
    job = store.submit("training", {})

    def write(n):
        for i in range(25):
            store.append_log(job.id, "INFO", f"{n}:{i}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = store.logs(job.id)
    assert len(got) == 100
    for n in range(4):
        mine = [int(x.message.split(":")[1]) for x in got if x.message.startswith(f"{n}:")]
        assert mine == list(range(25))


# ------------------------------------------------------------------- recovery


def test_fresh_job_of_a_live_process_is_left_alone(store, clock):
    job = store.submit("training", {})
    store.claim_next("w1")  # claimed by this (live) process
    clock.t += 9
    assert store.recover_after_restart() == []
    assert store.get(job.id).status == JobStatus.IN_PROGRESS


def test_stale_heartbeat_requeues_at_front_in_original_order(store, clock):
    a, b, c = (store.submit("training", {"i": i}) for i in range(3))
    store.claim_next("w1")
    store.claim_next("w2")
    clock.t += 5
    store.heartbeat(b.id, "w2")
    clock.t += 6  # a: silent 11 s > 10 s; b: silent 6 s
    assert [j.id for j in store.recover_after_restart()] == [a.id]
    clock.t += 5
    assert [j.id for j in store.recover_after_restart()] == [b.id]
    got = {j.id: j for j in store.list()}
    assert [got[x.id].position for x in (a, b, c)] == [1, 0, 2]
    assert got[a.id].attempts == 1 and got[a.id].worker_id is None
    assert any("resumed after restart" in x.message for x in store.logs(a.id))
    d = store.submit("training", {})
    assert [store.claim_next("w3").id for _ in range(4)] == [b.id, a.id, c.id, d.id]


def test_jobs_recovered_together_keep_their_order_at_the_front(store, clock):
    a, b, c = (store.submit("training", {"i": i}) for i in range(3))
    store.claim_next("w1")
    store.claim_next("w2")
    clock.t += 11
    assert [j.id for j in store.recover_after_restart()] == [a.id, b.id]
    assert [store.queue_position(x.id) for x in (a, b, c)] == [0, 1, 2]


def test_dead_process_is_detected_without_waiting_for_the_heartbeat(make_store, location):
    with make_store(heartbeat_timeout_s=3600) as s:
        job = s.submit("training", {})
        out = subprocess.run(
            [sys.executable, str(HERE / "_jobs_child.py"), "claim-and-exit", location],
            capture_output=True, text=True, timeout=60, check=True,
        )
        assert out.stdout.strip() == job.id
        assert s.get(job.id).status == JobStatus.IN_PROGRESS
        assert [j.id for j in s.recover_after_restart()] == [job.id]
        assert s.get(job.id).status == JobStatus.IN_QUEUE


def test_reused_pid_counts_as_dead(store):
    job = store.submit("training", {})
    store.claim_next("w1")
    # Our own pid, but a different process start time: a restarted container
    # where the new server got the pid of the old one.
    _sql(store, "UPDATE jobs SET worker_start = '1' WHERE id = ?", (job.id,))
    assert [j.id for j in store.recover_after_restart()] == [job.id]


def test_unreaped_killed_process_counts_as_dead():
    assert Path("/proc/self/stat").exists(), "liveness reads process start times from procfs (Linux)"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        token = liveness.process_start_token(proc.pid)
        assert liveness.process_alive(proc.pid, token)
        proc.kill()
        for _ in range(200):  # zombie until reaped; wait for the kernel to mark it
            if not liveness.process_alive(proc.pid, token):
                break
            threading.Event().wait(0.01)
        assert not liveness.process_alive(proc.pid, token)
    finally:
        proc.kill()
        proc.wait()


def test_too_many_interruptions_fail_the_job(make_store, clock):
    s = make_store(clock=clock, heartbeat_timeout_s=10, max_attempts=2)
    job = s.submit("training", {})
    for expected in (JobStatus.IN_QUEUE, JobStatus.FAILED):
        assert s.claim_next("w").id == job.id
        clock.t += 11
        s.recover_after_restart()
        assert s.get(job.id).status == expected
    got = s.get(job.id)
    assert got.attempts == 2 and "interrupted 2 times" in got.error
    assert s.claim_next("w") is None
    s.close()


def test_dead_worker_with_pending_cancel_becomes_cancelled(store, clock):
    job = store.submit("training", {})
    store.claim_next("w1")
    store.request_cancel(job.id)
    clock.t += 11
    store.recover_after_restart()
    assert store.get(job.id).status == JobStatus.CANCELLED


# ------------------------------------------------------- two-process contention


def test_two_processes_claim_each_job_exactly_once(make_store, backend, location):
    from _jobs_child import claim_until_empty

    with make_store() as s:
        ids = [s.submit("training", {"i": i}).id for i in range(50)]
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=claim_until_empty, args=(location, backend, f"p{n}", start, out))
        for n in range(2)
    ]
    for p in procs:
        p.start()
    start.set()
    reports = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    claimed = [job_id for _, got, _ in reports for job_id in got]
    assert sorted(claimed) == sorted(ids)  # each once: no loss, no duplicate
    assert [refused for _, _, refused in reports] == [[], []]
    by = {job_id: wid for wid, got, _ in reports for job_id in got}
    with make_store() as s:
        for job in s.list():
            assert job.status == JobStatus.COMPLETED and job.result == {"by": by[job.id]}


def test_importing_the_queue_does_not_import_torch():
    # The API process imports the queue on startup; torch would cost seconds and GBs.
    code = "import sys, lorastudio.services.jobs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "False"
