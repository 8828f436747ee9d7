"""The embedded JobStore: one SQLite file (WAL), shared by threads and processes of one machine."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

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

# Append only: version N of a database means MIGRATIONS[:N] have been applied.
# Never edit a released entry; add a new one (ALTER TABLE, new index...).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id               TEXT PRIMARY KEY,
        kind             TEXT NOT NULL,
        payload          TEXT NOT NULL,              -- JSON object
        status           TEXT NOT NULL CHECK (status IN
                         ('IN_QUEUE','IN_PROGRESS','COMPLETED','FAILED','CANCELLED')),
        -- Claim order. Separate from created_at so a recovered job can go back
        -- to the front of the queue without lying about when it was submitted.
        queue_order      INTEGER NOT NULL,
        created_at       REAL NOT NULL,              -- unix seconds, UTC
        started_at       REAL,
        finished_at      REAL,
        heartbeat_at     REAL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        progress         TEXT NOT NULL DEFAULT '{}', -- JSON object
        error            TEXT,
        result           TEXT,                       -- JSON object
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        worker_id        TEXT,
        worker_host      TEXT,                       -- host + pid namespace of the claimer
        worker_pid       INTEGER,
        worker_start     TEXT                        -- process start time: detects pid reuse
    );
    CREATE INDEX jobs_status_order ON jobs (status, queue_order);
    CREATE TABLE job_logs (
        seq     INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        ts      REAL NOT NULL,
        level   TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX job_logs_job_seq ON job_logs (job_id, seq);
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
        claimed_at REAL NOT NULL,
        done_at    REAL,
        PRIMARY KEY (job_id, what)
    );
    """,
)

# UPDATE ... RETURNING arrived in SQLite 3.35.0.
_HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)

ClaimStrategy = Literal["auto", "returning", "immediate"]


class SqliteJobStore(JobStore):
    """JobStore in one SQLite file (WAL), shareable by threads and processes.

    Crash safety rests on SQLite: every state change is committed before the
    method returns, with synchronous=FULL so a power cut cannot lose it either.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        heartbeat_timeout_s: float = 30.0,
        max_attempts: int = 3,
        busy_timeout_s: float = 10.0,
        claim_strategy: ClaimStrategy = "auto",
        clock: Callable[[], float] = time.time,
        migrations: Sequence[str] = MIGRATIONS,
    ):
        if max_attempts < 1:
            raise InvalidParameter("max_attempts", max_attempts, "must be >= 1")
        if claim_strategy == "returning" and not _HAS_RETURNING:
            raise InvalidParameter(
                "claim_strategy", claim_strategy, f"SQLite {sqlite3.sqlite_version} < 3.35"
            )
        self.path = Path(path) if str(path) != ":memory:" else None
        self.heartbeat_timeout_s = float(heartbeat_timeout_s)
        self.max_attempts = int(max_attempts)
        self._use_returning = claim_strategy == "returning" or (
            claim_strategy == "auto" and _HAS_RETURNING
        )
        self._clock = clock
        # Read when the store opens, not when the module is imported.
        self._host = host_identity()
        self._lock = threading.RLock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so the module's
        # implicit transactions never hold a write lock behind our back.
        self._conn = sqlite3.connect(
            str(path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._conn.row_factory = sqlite3.Row
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(migrations)
        except BaseException:
            self._conn.close()
            raise

    # ---------------------------------------------------------------- plumbing

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock up front: two processes cannot both read
        # the same state and then both act on it.
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        # One snapshot for multi-query reads (a row and its queue position).
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    def _migrate(self, migrations: Sequence[str]) -> None:
        with self._write() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL)"
            )
            row = c.execute("SELECT version FROM schema_version").fetchone()
            current = row[0] if row else 0
            if row is None:
                c.execute("INSERT INTO schema_version (id, version) VALUES (1, 0)")
            if current > len(migrations):
                raise LorastudioError(
                    f"{self.path}: job database schema version {current} is newer than this "
                    f"lorastudio knows ({len(migrations)}); upgrade lorastudio"
                )
            for version, script in enumerate(migrations[current:], start=current + 1):
                for statement in split_sql(script):
                    c.execute(statement)
                c.execute("UPDATE schema_version SET version = ?", (version,))

    def schema_version(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT version FROM schema_version").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ------------------------------------------------------------- queue API

    def submit(
        self, kind: str, payload: dict[str, Any], requires: JobRequirements | None = None
    ) -> Job:
        check_submission(kind, payload)
        job_id = str(uuid.uuid4())
        with self._write() as c:
            c.execute(
                "INSERT INTO jobs (id, kind, payload, status, queue_order, created_at,"
                " family, min_memory_mb) VALUES (?, ?, ?, 'IN_QUEUE', "
                "(SELECT COALESCE(MAX(queue_order), 0) + 1 FROM jobs), ?, ?, ?)",
                (job_id, kind, dumps_json(payload, "payload"), self._clock(),
                 *requirement_values(requires)),
            )
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        with self._read() as c:
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound("job", job_id)
            return row_to_job(row, _position(c, row))

    def list(self, status: JobStatus | None = None, kind: str | None = None) -> list[Job]:
        where, params = [], []
        if status is not None:
            where.append("status = ?")
            params.append(JobStatus(status).value)
        if kind is not None:
            where.append("kind = ?")
            params.append(kind)
        sql = "SELECT * FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._read() as c:
            rows = c.execute(sql + " ORDER BY created_at, rowid", params).fetchall()
            queued = c.execute(
                "SELECT id FROM jobs WHERE status = 'IN_QUEUE' ORDER BY queue_order"
            ).fetchall()
        positions = {r["id"]: i for i, r in enumerate(queued)}
        return [row_to_job(r, positions.get(r["id"])) for r in rows]

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
        kind_sql = "" if kinds is None else f" AND kind IN ({','.join('?' * len(kinds))})"
        filter_params: list[Any] = list(kinds or ())
        if families is not None:
            kind_sql += (
                f" AND (family IS NULL OR family IN ({','.join('?' * len(families))}))"
            )
            filter_params += families
        if memory_mb is not None:
            kind_sql += " AND (min_memory_mb IS NULL OR min_memory_mb <= ?)"
            filter_params.append(memory_mb)
        now = self._clock()
        owner = (worker_id, self._host, os.getpid(), process_start_token(os.getpid()))
        set_sql = (
            "UPDATE jobs SET status = 'IN_PROGRESS', worker_id = ?, worker_host = ?,"
            " worker_pid = ?, worker_start = ?, started_at = COALESCE(started_at, ?),"
            " heartbeat_at = ?"
        )
        pick_sql = (
            "SELECT id FROM jobs WHERE status = 'IN_QUEUE'" + kind_sql
            + " ORDER BY queue_order LIMIT 1"
        )
        if self._use_returning:
            # One statement: SQLite takes the write lock before evaluating the
            # subquery, and the repeated status guard makes a lost race a no-op.
            with self._lock:
                rows = self._conn.execute(
                    f"{set_sql} WHERE id = ({pick_sql}) AND status = 'IN_QUEUE' RETURNING *",
                    (*owner, now, now, *filter_params),
                ).fetchall()
            return row_to_job(rows[0], None) if rows else None
        with self._write() as c:
            picked = c.execute(pick_sql, filter_params).fetchone()
            if picked is None:
                return None
            c.execute(
                f"{set_sql} WHERE id = ? AND status = 'IN_QUEUE'",
                (*owner, now, now, picked["id"]),
            )
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (picked["id"],)).fetchone()
        return row_to_job(row, None)

    def heartbeat(self, job_id: str, worker_id: str) -> bool:
        return self._owned_update(job_id, worker_id, "heartbeat_at = ?", (self._clock(),))

    def update_progress(
        self, job_id: str, progress: dict[str, Any], worker_id: str | None = None
    ) -> bool:
        blob = dumps_json(finite(progress), "progress")
        if worker_id is not None:
            return self._owned_update(job_id, worker_id, "progress = ?", (blob,))
        with self._write() as c:
            cur = c.execute("UPDATE jobs SET progress = ? WHERE id = ?", (blob, job_id))
        return cur.rowcount == 1

    def append_log(self, job_id: str, level: str, message: str) -> LogLine:
        ts, level = self._clock(), str(level).upper()
        try:
            with self._write() as c:
                cur = c.execute(
                    "INSERT INTO job_logs (job_id, ts, level, message) VALUES (?, ?, ?, ?)",
                    (job_id, ts, level, str(message)),
                )
        except sqlite3.IntegrityError:  # foreign key: no such job
            raise NotFound("job", job_id) from None
        return LogLine(seq=cur.lastrowid, ts=to_datetime(ts), level=level, message=str(message))

    def logs(self, job_id: str, since: int | datetime | None = None) -> list[LogLine]:
        sql, params = "SELECT * FROM job_logs WHERE job_id = ?", [job_id]
        if isinstance(since, datetime):
            sql, params = sql + " AND ts > ?", params + [since.timestamp()]
        elif since is not None:
            sql, params = sql + " AND seq > ?", params + [int(since)]
        with self._read() as c:
            if c.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise NotFound("job", job_id)
            rows = c.execute(sql + " ORDER BY seq", params).fetchall()
        return [
            LogLine(seq=r["seq"], ts=to_datetime(r["ts"]), level=r["level"], message=r["message"])
            for r in rows
        ]

    def complete(self, job_id: str, worker_id: str, result: dict[str, Any]) -> bool:
        if not isinstance(result, dict):
            raise InvalidParameter("result", type(result).__name__, "must be a JSON object")
        blob = dumps_json(result, "result")
        return self._finish(job_id, worker_id, JobStatus.COMPLETED, "result = ?", (blob,))

    def fail(self, job_id: str, worker_id: str, error: str) -> bool:
        return self._finish(job_id, worker_id, JobStatus.FAILED, "error = ?", (str(error),))

    def mark_cancelled(self, job_id: str, worker_id: str) -> bool:
        return self._finish(
            job_id, worker_id, JobStatus.CANCELLED, "error = ?", ("cancelled by request",)
        )

    def claim_delivery(self, job_id: str, what: str, owner: str, stale_after_s: float) -> bool:
        now = self._clock()
        with self._write() as c:
            # One upsert: the row's primary key decides the race, its WHERE the takeover.
            cur = c.execute(
                "INSERT INTO job_deliveries (job_id, what, owner, claimed_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (job_id, what) DO UPDATE SET owner = excluded.owner, claimed_at = excluded.claimed_at"
                " WHERE job_deliveries.done_at IS NULL AND (job_deliveries.owner = excluded.owner"
                " OR job_deliveries.claimed_at < ?)",
                (job_id, what, owner, now, now - stale_after_s),
            )
            return cur.rowcount == 1

    def finish_delivery(self, job_id: str, what: str, owner: str) -> bool:
        with self._write() as c:
            cur = c.execute("UPDATE job_deliveries SET done_at = ? WHERE job_id = ? AND what = ? AND owner = ?", (self._clock(), job_id, what, owner))
            return cur.rowcount == 1

    def request_cancel(self, job_id: str) -> Job:
        now = self._clock()
        with self._write() as c:
            row = c.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound("job", job_id)
            if row["status"] == JobStatus.IN_QUEUE.value:
                c.execute(
                    "UPDATE jobs SET status = 'CANCELLED', cancel_requested = 1,"
                    " finished_at = ?, error = 'cancelled by request' WHERE id = ?",
                    (now, job_id),
                )
                _log(c, job_id, now, "INFO", "cancelled while queued")
            elif row["status"] == JobStatus.IN_PROGRESS.value:
                c.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                _log(c, job_id, now, "INFO", "cancel requested")
        return self.get(job_id)

    def recover_after_restart(self) -> list[Job]:
        now = self._clock()
        touched: list[str] = []
        with self._write() as c:
            # Newest first, each one placed before the current front: the
            # recovered jobs end up at the front in their original order.
            rows = c.execute(
                "SELECT * FROM jobs WHERE status = 'IN_PROGRESS' ORDER BY queue_order DESC"
            ).fetchall()
            for row in rows:
                why = self._orphan_reason(row, now)
                if why is None:
                    continue
                touched.append(row["id"])
                r = recovery_for(row, why, self.max_attempts)
                if r.status == JobStatus.IN_QUEUE:
                    c.execute(
                        "UPDATE jobs SET status = 'IN_QUEUE', attempts = ?,"
                        " queue_order = (SELECT MIN(queue_order) FROM jobs) - 1,"
                        " worker_id = NULL, worker_host = NULL, worker_pid = NULL,"
                        " worker_start = NULL, heartbeat_at = NULL WHERE id = ?",
                        (r.attempts, row["id"]),
                    )
                else:
                    c.execute(
                        "UPDATE jobs SET status = ?, finished_at = ?, error = ?, attempts = ? WHERE id = ?",
                        (r.status.value, now, r.error, r.attempts, row["id"]),
                    )
                _log(c, row["id"], now, r.level, r.log)
        return [self.get(job_id) for job_id in reversed(touched)]  # queue order

    # ---------------------------------------------------------------- helpers

    def _owned_update(
        self, job_id: str, worker_id: str, assignment: str, params: tuple[Any, ...]
    ) -> bool:
        with self._write() as c:
            cur = c.execute(
                f"UPDATE jobs SET {assignment} WHERE id = ? AND worker_id = ?"
                " AND status = 'IN_PROGRESS'",
                (*params, job_id, worker_id),
            )
        return cur.rowcount == 1

    def _finish(
        self,
        job_id: str,
        worker_id: str,
        status: JobStatus,
        assignment: str,
        params: tuple[Any, ...],
    ) -> bool:
        now = self._clock()
        with self._write() as c:
            cur = c.execute(
                f"UPDATE jobs SET status = ?, finished_at = ?, heartbeat_at = ?, {assignment}"
                " WHERE id = ? AND worker_id = ? AND status = 'IN_PROGRESS'",
                (status.value, now, now, *params, job_id, worker_id),
            )
        return cur.rowcount == 1

    def _orphan_reason(self, row: sqlite3.Row, now: float) -> str | None:
        return orphan_reason(row, now, self.heartbeat_timeout_s, self._host)


# ------------------------------------------------------------------ module helpers


def split_sql(script: str) -> list[str]:
    """Split a migration script into statements (triggers keep their inner ';').

    Needed because executescript() commits first, which would break the
    all-or-nothing application of a migration. Every statement must end in ';'.
    """
    statements, buf = [], ""
    pieces = script.split(";")
    for piece in pieces[:-1]:
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            statements.append(buf.strip())
            buf = ""
    rest = re.sub(r"--[^\n]*|/\*.*?\*/", "", buf + pieces[-1], flags=re.S)
    if rest.strip():
        raise ValueError(f"incomplete SQL statement in migration: {rest.strip()[:80]!r}")
    return statements


def _log(c: sqlite3.Connection, job_id: str, ts: float, level: str, message: str) -> None:
    c.execute(
        "INSERT INTO job_logs (job_id, ts, level, message) VALUES (?, ?, ?, ?)",
        (job_id, ts, level, message),
    )


def _position(c: sqlite3.Connection, row: sqlite3.Row) -> int | None:
    if row["status"] != JobStatus.IN_QUEUE.value:
        return None
    return c.execute(
        "SELECT COUNT(*) FROM jobs WHERE status = 'IN_QUEUE' AND queue_order < ?",
        (row["queue_order"],),
    ).fetchone()[0]


