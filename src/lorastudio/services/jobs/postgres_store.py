"""JobStore on PostgreSQL (psycopg 3): one queue for API nodes and workers on many machines.

Same contract as the SQLite store, with what a shared server adds:
- a claim is one `UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED)`: concurrent
  workers skip each other's candidate row instead of queueing behind its lock;
- the lease is the heartbeat: a worker on another machine cannot be probed, so its job
  goes back to the queue once its heartbeat is older than heartbeat_timeout_s;
- every change to a job or its log sends `NOTIFY lorastudio_jobs, '<job id>'` (from
  triggers, so no code path can forget it); `wait_for_change` LISTENs for them;
- a lost connection (database restart, failover) is retried until reconnect_timeout_s,
  and each operation is written so that a retry after an unacknowledged commit has the
  same effect as one success: submit re-inserts the same id, a claim finds its own token,
  complete/fail/cancel recognise their own finished state.

Times are unix seconds from the injected clock (as in SQLite), not the server's now(),
so the contract tests drive both stores with the same fake clock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from datetime import datetime
from typing import Any, Callable, Iterable, Sequence, TypeVar

from lorastudio.core.errors import InvalidParameter, LorastudioError, NotFound
from lorastudio.services.jobs.liveness import host_identity, process_start_token
from lorastudio.services.jobs.models import (
    Job,
    JobRequirements,
    JobStatus,
    LogLine,
    WorkerCapabilities,
)
from lorastudio.services.jobs.store import (
    JobStore,
    check_submission,
    dumps_json,
    finite,
    job_filter_values,
    orphan_reason,
    recovery_for,
    requirement_values,
    row_to_job,
    to_datetime,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

CHANNEL = "lorastudio_jobs"
# Held (transaction-scoped) while migrating: two processes opening a fresh database at
# once must not both apply version 1. Any constant works; this one spells "lorastud".
_MIGRATION_LOCK = 0x6C6F726173747564

# Append only, numbered like sqlite_store.MIGRATIONS: version N of either database has
# the same tables and columns (PostgreSQL types, plus what only a server needs).
MIGRATIONS: tuple[str, ...] = (
    """
    -- queue_order: submissions count up from 1; recovered jobs take the front by
    -- counting down from 0, so a requeue never races a submit for the same number.
    CREATE SEQUENCE jobs_queue_back START 1;
    CREATE SEQUENCE jobs_queue_front INCREMENT -1 START 0 MAXVALUE 0;
    CREATE TABLE jobs (
        id               TEXT PRIMARY KEY,
        submit_seq       BIGSERIAL NOT NULL,         -- submission order (SQLite's rowid)
        kind             TEXT NOT NULL,
        payload          TEXT NOT NULL,              -- JSON text, byte-for-byte as submitted
        status           TEXT NOT NULL CHECK (status IN
                         ('IN_QUEUE','IN_PROGRESS','COMPLETED','FAILED','CANCELLED')),
        queue_order      BIGINT NOT NULL DEFAULT nextval('jobs_queue_back'),
        created_at       DOUBLE PRECISION NOT NULL,  -- unix seconds, UTC
        started_at       DOUBLE PRECISION,
        finished_at      DOUBLE PRECISION,
        heartbeat_at     DOUBLE PRECISION,
        attempts         INTEGER NOT NULL DEFAULT 0,
        progress         TEXT NOT NULL DEFAULT '{}',
        error            TEXT,
        result           TEXT,
        cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
        worker_id        TEXT,
        worker_host      TEXT,
        worker_pid       INTEGER,
        worker_start     TEXT,
        claim_token      TEXT                        -- lets a retried claim find itself
    );
    CREATE INDEX jobs_status_order ON jobs (status, queue_order);
    CREATE INDEX jobs_queued ON jobs (queue_order) WHERE status = 'IN_QUEUE';
    CREATE TABLE job_logs (
        seq     BIGSERIAL PRIMARY KEY,
        job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        ts      DOUBLE PRECISION NOT NULL,
        level   TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX job_logs_job_seq ON job_logs (job_id, seq);
    CREATE FUNCTION lorastudio_notify_job() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('lorastudio_jobs', NEW.id);
        RETURN NULL;
    END $$;
    CREATE FUNCTION lorastudio_notify_log() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('lorastudio_jobs', NEW.job_id);
        RETURN NULL;
    END $$;
    CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs
        FOR EACH ROW EXECUTE FUNCTION lorastudio_notify_job();
    -- Not on heartbeats alone: they change nothing a reader shows.
    CREATE TRIGGER jobs_changed AFTER UPDATE ON jobs FOR EACH ROW
        WHEN (OLD.status IS DISTINCT FROM NEW.status
              OR OLD.progress IS DISTINCT FROM NEW.progress
              OR OLD.cancel_requested IS DISTINCT FROM NEW.cancel_requested
              OR OLD.attempts IS DISTINCT FROM NEW.attempts)
        EXECUTE FUNCTION lorastudio_notify_job();
    CREATE TRIGGER job_logs_inserted AFTER INSERT ON job_logs
        FOR EACH ROW EXECUTE FUNCTION lorastudio_notify_log();
    """,
    # 2: what a worker needs to take the job (WorkerCapabilities / JobRequirements).
    """
    ALTER TABLE jobs ADD COLUMN family TEXT;
    ALTER TABLE jobs ADD COLUMN min_memory_mb INTEGER;
    """,
    # 3: one-time side effects of a job (webhook calls), claimed by one API node of many.
    """
    CREATE TABLE job_deliveries (
        job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        what       TEXT NOT NULL,
        owner      TEXT NOT NULL,
        claimed_at DOUBLE PRECISION NOT NULL,
        done_at    DOUBLE PRECISION,
        PRIMARY KEY (job_id, what)
    );
    """,
)

_WITH_POSITION = (
    "SELECT j.*, CASE WHEN j.status = 'IN_QUEUE' THEN (SELECT count(*) FROM jobs q"
    " WHERE q.status = 'IN_QUEUE' AND q.queue_order < j.queue_order) END AS position"
    " FROM jobs j"
)


class PostgresJobStore(JobStore):
    """JobStore in a PostgreSQL database, shared by processes on any number of machines."""

    pushes_changes = True

    def __init__(
        self,
        url: str,
        *,
        heartbeat_timeout_s: float = 30.0,
        max_attempts: int = 3,
        clock: Callable[[], float] = time.time,
        migrations: Sequence[str] = MIGRATIONS,
        pool_size: int = 4,
        connect_timeout_s: float = 10.0,
        reconnect_timeout_s: float = 60.0,
    ):
        import psycopg  # noqa: F401  (fail here, with the install hint, not on first use)
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        if max_attempts < 1:
            raise InvalidParameter("max_attempts", max_attempts, "must be >= 1")
        self.url = url
        self.heartbeat_timeout_s = float(heartbeat_timeout_s)
        self.max_attempts = int(max_attempts)
        self.reconnect_timeout_s = float(reconnect_timeout_s)
        self._clock = clock
        # Read when the store opens, not when the module is imported.
        self._host = host_identity()
        self._connect_timeout_s = connect_timeout_s
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            kwargs={"autocommit": True, "row_factory": dict_row,
                    "connect_timeout": max(1, int(connect_timeout_s))},
            open=False,
            name="lorastudio-jobs",
            # A restarted server leaves the pool with dead connections; it replaces them
            # in the background, and _run retries the one call that met a dead one.
            reconnect_timeout=max(reconnect_timeout_s, 1.0),
        )
        self._listener: _Listener | None = None
        self._listener_lock = threading.Lock()
        try:
            # One direct connection first: a wrong host, password or database name is reported
            # at once, in the server's words, instead of as a pool timeout.
            psycopg.connect(url, connect_timeout=max(1, int(connect_timeout_s))).close()
            self._pool.open(wait=True, timeout=connect_timeout_s)
            self._migrate(migrations)
        except Exception as exc:
            self._pool.close()
            if isinstance(exc, LorastudioError):
                raise
            raise LorastudioError(
                f"job database {_redact(url)}: cannot open ({type(exc).__name__}: {exc})"
            ) from exc

    # ---------------------------------------------------------------- plumbing

    def _run(self, fn: Callable[[Any, int], T]) -> T:
        """fn(connection, attempt) with retries while the server is unreachable.

        fn runs one transaction (or one autocommit statement) and must be safe to run
        again after an attempt whose commit may have happened (see the module doc).
        """
        import psycopg
        from psycopg_pool import PoolTimeout

        deadline = time.monotonic() + self.reconnect_timeout_s
        attempt, delay = 0, 0.05
        while True:
            try:
                with self._pool.connection(timeout=self._connect_timeout_s) as conn:
                    return fn(conn, attempt)
            except (psycopg.OperationalError, PoolTimeout) as exc:
                # OperationalError: connection lost, server shutting down, serialization
                # failure, deadlock: all worth another attempt. Anything else (a bug, a
                # constraint) is raised at once.
                if time.monotonic() + delay > deadline:
                    raise LorastudioError(
                        f"job database {_redact(self.url)} unreachable for "
                        f"{self.reconnect_timeout_s:.0f}s: {exc}"
                    ) from exc
                log.warning("job database: %s; retrying in %.2fs", exc, delay)
                time.sleep(delay)
                attempt, delay = attempt + 1, min(delay * 2, 1.0)

    def _migrate(self, migrations: Sequence[str]) -> None:
        def apply(conn, _attempt):
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    " id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
                )
                row = conn.execute("SELECT version FROM schema_version").fetchone()
                current = row["version"] if row else 0
                if row is None:
                    conn.execute("INSERT INTO schema_version (id, version) VALUES (1, 0)")
                if current > len(migrations):
                    raise LorastudioError(
                        f"{_redact(self.url)}: job database schema version {current} is newer "
                        f"than this lorastudio knows ({len(migrations)}); upgrade lorastudio"
                    )
                for version, script in enumerate(migrations[current:], start=current + 1):
                    # No parameters: psycopg sends the script as one simple query, so
                    # function bodies keep their inner ';' and it all commits or nothing.
                    conn.execute(script)
                    conn.execute("UPDATE schema_version SET version = %s", (version,))

        self._run(apply)

    def schema_version(self) -> int:
        return self._run(
            lambda c, _: c.execute("SELECT version FROM schema_version").fetchone()["version"]
        )

    def close(self) -> None:
        with self._listener_lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        self._pool.close()

    # ------------------------------------------------------------- queue API

    def submit(
        self, kind: str, payload: dict[str, Any], requires: JobRequirements | None = None
    ) -> Job:
        check_submission(kind, payload)
        job_id = str(uuid.uuid4())
        blob = dumps_json(payload, "payload")
        family, memory = requirement_values(requires)
        now = self._clock()
        # ON CONFLICT: a retry after a commit whose acknowledgement was lost is a no-op.
        self._run(lambda c, _: c.execute(
            "INSERT INTO jobs (id, kind, payload, status, created_at, family, min_memory_mb)"
            " VALUES (%s, %s, %s, 'IN_QUEUE', %s, %s, %s) ON CONFLICT (id) DO NOTHING",
            (job_id, kind, blob, now, family, memory),
        ))
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        row = self._run(
            lambda c, _: c.execute(_WITH_POSITION + " WHERE j.id = %s", (job_id,)).fetchone()
        )
        if row is None:
            raise NotFound("job", job_id)
        return row_to_job(row, row["position"])

    def list(self, status: JobStatus | None = None, kind: str | None = None) -> list[Job]:
        where, params = [], []
        if status is not None:
            where.append("j.status = %s")
            params.append(JobStatus(status).value)
        if kind is not None:
            where.append("j.kind = %s")
            params.append(kind)
        # One statement, one snapshot: the positions agree with the statuses.
        sql = (
            "SELECT j.*, q.position FROM jobs j LEFT JOIN (SELECT id, row_number() OVER"
            " (ORDER BY queue_order) - 1 AS position FROM jobs WHERE status = 'IN_QUEUE') q"
            " ON q.id = j.id"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY j.created_at, j.submit_seq"
        rows = self._run(lambda c, _: c.execute(sql, params).fetchall())
        return [row_to_job(r, r["position"]) for r in rows]

    def queue_position(self, job_id: str) -> int | None:
        return self.get(job_id).position

    def claim_next(
        self,
        worker_id: str,
        kinds: Iterable[str] | None = None,
        can_run: WorkerCapabilities | None = None,
    ) -> Job | None:
        kinds, families, memory_mb = job_filter_values(kinds, can_run)
        if kinds is not None and not kinds:
            return None
        token = uuid.uuid4().hex
        now = self._clock()
        owner = (worker_id, self._host, os.getpid(), process_start_token(os.getpid()), token)
        # FOR UPDATE SKIP LOCKED: a row another claimer holds is passed over, not waited
        # for; a row that changed before it was locked is re-checked and skipped. The row
        # stays locked by this statement until the UPDATE, so no outer status guard: with
        # one, the planner walks the queue index past every queued row instead of the key.
        sql = (
            "UPDATE jobs SET status = 'IN_PROGRESS', worker_id = %s, worker_host = %s,"
            " worker_pid = %s, worker_start = %s, claim_token = %s,"
            " started_at = COALESCE(started_at, %s), heartbeat_at = %s"
            " WHERE id = (SELECT id FROM jobs WHERE status = 'IN_QUEUE'"
            " AND (%s::text[] IS NULL OR kind = ANY(%s::text[]))"
            " AND (family IS NULL OR %s::text[] IS NULL OR family = ANY(%s::text[]))"
            " AND (min_memory_mb IS NULL OR %s::integer IS NULL OR min_memory_mb <= %s::integer)"
            " ORDER BY queue_order LIMIT 1 FOR UPDATE SKIP LOCKED)"
            " RETURNING *"
        )
        params = (*owner, now, now, kinds, kinds, families, families, memory_mb, memory_mb)

        def claim(c, attempt):
            if attempt:  # the previous attempt may have committed: find our own claim
                row = c.execute(
                    "SELECT * FROM jobs WHERE claim_token = %s AND status = 'IN_PROGRESS'",
                    (token,),
                ).fetchone()
                if row is not None:
                    return row
            return c.execute(sql, params).fetchone()

        row = self._run(claim)
        return None if row is None else row_to_job(row, None)

    def heartbeat(self, job_id: str, worker_id: str) -> bool:
        return self._owned_update(job_id, worker_id, "heartbeat_at = %s", (self._clock(),))

    def update_progress(
        self, job_id: str, progress: dict[str, Any], worker_id: str | None = None
    ) -> bool:
        blob = dumps_json(finite(progress), "progress")
        if worker_id is not None:
            return self._owned_update(job_id, worker_id, "progress = %s", (blob,))
        return self._run(lambda c, _: c.execute(
            "UPDATE jobs SET progress = %s WHERE id = %s", (blob, job_id)).rowcount == 1)

    def append_log(self, job_id: str, level: str, message: str) -> LogLine:
        import psycopg

        ts, level, message = self._clock(), str(level).upper(), str(message)

        def write(c, _attempt):
            with c.transaction():
                # Per-job lock around taking a seq and committing: lines of one job become
                # visible in seq order, so a reader paging with since=seq skips none.
                c.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (job_id,))
                return c.execute(
                    "INSERT INTO job_logs (job_id, ts, level, message) VALUES (%s, %s, %s, %s)"
                    " RETURNING seq", (job_id, ts, level, message)).fetchone()["seq"]

        try:
            seq = self._run(write)
        except psycopg.errors.ForeignKeyViolation:
            raise NotFound("job", job_id) from None
        return LogLine(seq=seq, ts=to_datetime(ts), level=level, message=message)

    def logs(self, job_id: str, since: int | datetime | None = None) -> list[LogLine]:
        sql, params = "SELECT * FROM job_logs WHERE job_id = %s", [job_id]
        if isinstance(since, datetime):
            sql, params = sql + " AND ts > %s", params + [since.timestamp()]
        elif since is not None:
            sql, params = sql + " AND seq > %s", params + [int(since)]

        def read(c, _attempt):
            with c.transaction():
                c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                if c.execute("SELECT 1 FROM jobs WHERE id = %s", (job_id,)).fetchone() is None:
                    raise NotFound("job", job_id)
                return c.execute(sql + " ORDER BY seq", params).fetchall()

        return [
            LogLine(seq=r["seq"], ts=to_datetime(r["ts"]), level=r["level"], message=r["message"])
            for r in self._run(read)
        ]

    def complete(self, job_id: str, worker_id: str, result: dict[str, Any]) -> bool:
        if not isinstance(result, dict):
            raise InvalidParameter("result", type(result).__name__, "must be a JSON object")
        blob = dumps_json(result, "result")
        return self._finish(job_id, worker_id, JobStatus.COMPLETED, "result = %s", (blob,))

    def fail(self, job_id: str, worker_id: str, error: str) -> bool:
        return self._finish(job_id, worker_id, JobStatus.FAILED, "error = %s", (str(error),))

    def mark_cancelled(self, job_id: str, worker_id: str) -> bool:
        return self._finish(
            job_id, worker_id, JobStatus.CANCELLED, "error = %s", ("cancelled by request",)
        )

    def claim_delivery(self, job_id: str, what: str, owner: str, stale_after_s: float) -> bool:
        now = self._clock()
        # One upsert: the row's primary key decides the race, its WHERE the takeover; a retry
        # after a lost acknowledgement finds its own owner and succeeds again.
        return self._run(lambda c, _: c.execute(
            "INSERT INTO job_deliveries (job_id, what, owner, claimed_at) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (job_id, what) DO UPDATE SET owner = excluded.owner, claimed_at = excluded.claimed_at"
            " WHERE job_deliveries.done_at IS NULL AND (job_deliveries.owner = excluded.owner"
            " OR job_deliveries.claimed_at < %s)",
            (job_id, what, owner, now, now - stale_after_s),
        ).rowcount == 1)

    def finish_delivery(self, job_id: str, what: str, owner: str) -> bool:
        now = self._clock()
        return self._run(lambda c, _: c.execute(
            "UPDATE job_deliveries SET done_at = %s WHERE job_id = %s AND what = %s AND owner = %s",
            (now, job_id, what, owner),
        ).rowcount == 1)

    def request_cancel(self, job_id: str) -> Job:
        now = self._clock()

        def cancel(c, _attempt):
            with c.transaction():
                row = c.execute(
                    "SELECT status FROM jobs WHERE id = %s FOR UPDATE", (job_id,)
                ).fetchone()
                if row is None:
                    raise NotFound("job", job_id)
                if row["status"] == JobStatus.IN_QUEUE.value:
                    c.execute(
                        "UPDATE jobs SET status = 'CANCELLED', cancel_requested = TRUE,"
                        " finished_at = %s, error = 'cancelled by request' WHERE id = %s",
                        (now, job_id),
                    )
                    _log(c, job_id, now, "INFO", "cancelled while queued")
                elif row["status"] == JobStatus.IN_PROGRESS.value:
                    c.execute(
                        "UPDATE jobs SET cancel_requested = TRUE WHERE id = %s", (job_id,)
                    )
                    _log(c, job_id, now, "INFO", "cancel requested")

        self._run(cancel)
        return self.get(job_id)

    def recover_after_restart(self) -> list[Job]:
        now = self._clock()

        def recover(c, _attempt) -> list[str]:
            touched: list[str] = []
            with c.transaction():
                # SKIP LOCKED: a row being heartbeaten or finished right now is not
                # stale; another node recovering at the same time takes the others.
                rows = c.execute(
                    "SELECT * FROM jobs WHERE status = 'IN_PROGRESS'"
                    " ORDER BY queue_order DESC FOR UPDATE SKIP LOCKED"
                ).fetchall()
                for row in rows:  # newest first: each takes the new front, order is kept
                    why = orphan_reason(row, now, self.heartbeat_timeout_s, self._host)
                    if why is None:
                        continue
                    touched.append(row["id"])
                    r = recovery_for(row, why, self.max_attempts)
                    if r.status == JobStatus.IN_QUEUE:
                        c.execute(
                            "UPDATE jobs SET status = 'IN_QUEUE', attempts = %s,"
                            " queue_order = nextval('jobs_queue_front'),"
                            " worker_id = NULL, worker_host = NULL, worker_pid = NULL,"
                            " worker_start = NULL, claim_token = NULL, heartbeat_at = NULL"
                            " WHERE id = %s",
                            (r.attempts, row["id"]),
                        )
                    else:
                        c.execute(
                            "UPDATE jobs SET status = %s, finished_at = %s, error = %s, attempts = %s WHERE id = %s",
                            (r.status.value, now, r.error, r.attempts, row["id"]),
                        )
                    _log(c, row["id"], now, r.level, r.log)
            return touched

        touched = self._run(recover)
        return [self.get(job_id) for job_id in reversed(touched)]  # queue order

    # ------------------------------------------------------- change notifications

    def change_counter(self, job_id: str) -> int:
        return self._listening().counter(job_id)

    def wait_for_change(self, job_id: str, seen: int, timeout_s: float) -> int:
        return self._listening().wait(job_id, seen, timeout_s)

    def _listening(self) -> _Listener:
        with self._listener_lock:
            if self._listener is None:
                self._listener = _Listener(self.url, self._connect_timeout_s)
                self._listener.start()
            return self._listener

    # ---------------------------------------------------------------- helpers

    def _owned_update(
        self, job_id: str, worker_id: str, assignment: str, params: tuple[Any, ...]
    ) -> bool:
        sql = (
            f"UPDATE jobs SET {assignment} WHERE id = %s AND worker_id = %s"
            " AND status = 'IN_PROGRESS'"
        )
        return self._run(lambda c, _: c.execute(sql, (*params, job_id, worker_id)).rowcount == 1)

    def _finish(
        self,
        job_id: str,
        worker_id: str,
        status: JobStatus,
        assignment: str,
        params: tuple[Any, ...],
    ) -> bool:
        now = self._clock()
        sql = (
            f"UPDATE jobs SET status = %s, finished_at = %s, heartbeat_at = %s, {assignment}"
            " WHERE id = %s AND worker_id = %s AND status = 'IN_PROGRESS'"
        )

        def finish(c, attempt):
            if c.execute(sql, (status.value, now, now, *params, job_id, worker_id)).rowcount:
                return True
            if not attempt:
                return False
            # Retried: did our first attempt commit before the connection dropped?
            row = c.execute(
                "SELECT status, worker_id, finished_at FROM jobs WHERE id = %s", (job_id,)
            ).fetchone()
            return bool(row) and (row["status"], row["worker_id"], row["finished_at"]) == (
                status.value, worker_id, now)

        return self._run(finish)


class _Listener:
    """One connection LISTENing on the jobs channel; counts notifications per job id.

    Runs in its own thread and reconnects after a lost connection, bumping every
    counter then (notifications sent while it was away are lost, so readers re-read).
    """

    def __init__(self, url: str, connect_timeout_s: float):
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._cond = threading.Condition()
        self._counts: dict[str, int] = {}
        self._epoch = 0  # bumped on every (re)connect
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()
        # The first LISTEN is in place before a reader's first wait, so nothing between
        # its read of the job and its wait is missed.
        self._ready.wait(self.connect_timeout_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def counter(self, job_id: str) -> int:
        with self._cond:
            return self._epoch + self._counts.get(job_id, 0)

    def wait(self, job_id: str, seen: int, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                now_count = self._epoch + self._counts.get(job_id, 0)
                remaining = deadline - time.monotonic()
                if now_count != seen or remaining <= 0:
                    return now_count
                self._cond.wait(remaining)

    def _loop(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True,
                                     connect_timeout=max(1, int(self.connect_timeout_s))) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    with self._cond:
                        self._epoch += 1_000_000  # a reconnect is "everything may have changed"
                        self._cond.notify_all()
                    self._ready.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            with self._cond:
                                self._counts[note.payload] = self._counts.get(note.payload, 0) + 1
                                self._cond.notify_all()
            except psycopg.OperationalError as exc:
                log.warning("job notifications: %s; reconnecting", exc)
                self._stop.wait(0.5)


def _log(c: Any, job_id: str, ts: float, level: str, message: str) -> None:
    c.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (job_id,))
    c.execute(
        "INSERT INTO job_logs (job_id, ts, level, message) VALUES (%s, %s, %s, %s)",
        (job_id, ts, level, message),
    )


def _redact(url: str) -> str:
    """The URL without its password: it goes into error messages and logs."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(url)
    except Exception:
        return "<database url>"
    user, host = parts.get("user", ""), parts.get("host", "")
    port, db = parts.get("port", ""), parts.get("dbname", "")
    return f"postgresql://{user + '@' if user else ''}{host}{':' + port if port else ''}/{db}"
