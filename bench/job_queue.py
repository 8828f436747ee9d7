#!/usr/bin/env python
"""Job-queue overhead on PostgreSQL: claim -> start latency with 3 workers, claims/s under contention.

A real PostgreSQL server is started for the run (lorastudio.testing.postgres_server, the same
one the tests use: fsync off, small buffers), or --db URL names an existing one.

    claim_to_start_ms   3 JobWorker processes (the real worker loop: claim, "started" log line,
                        heartbeat thread, complete) drain --jobs no-op jobs. Per job: the time from
                        the claim's timestamp (started_at, written in the claim) to the handler's
                        first line, median and p95. It is what the queue adds before a GPU starts.
    submit_to_start_ms  from submit (created_at) to the handler starting, with workers idle-polling
                        at --poll-interval; the poll interval dominates it, as it should.
    claims_per_s        --procs processes call claim_next + complete as fast as they can on one
                        queue of --contention-jobs jobs (every claim contends for the same front
                        rows; SKIP LOCKED keeps them from queueing behind each other). Goal >= 200.
    duplicates          jobs claimed twice in the contention run (must be 0)

The last line of output is one JSON object with these figures.
"""

from __future__ import annotations

import sys
from pathlib import Path


import argparse
import json
import multiprocessing
import shutil
import statistics
import tempfile
import time

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


def _completed(store) -> int:
    return store._run(lambda c, _: c.execute(
        "SELECT count(*) AS n FROM jobs WHERE status = 'COMPLETED'").fetchone()["n"])


def _worker_proc(url: str, name: str, poll: float, until_completed: int, out) -> None:
    from lorastudio.services.jobs import JobWorker, PostgresJobStore

    store = PostgresJobStore(url, heartbeat_timeout_s=30)
    starts: dict[str, float] = {}

    def handle(job, ctx):
        starts[job.id] = time.time()
        return {"by": name}

    worker = JobWorker(store, {"noop": handle}, worker_id=name, poll_interval_s=poll)
    worker.start(recover=False)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and _completed(store) < until_completed:
        time.sleep(0.2)
    worker.stop(10)
    store.close()
    out.put(starts)


def _claimer_proc(url: str, name: str, start, out) -> None:
    from lorastudio.services.jobs import PostgresJobStore

    store = PostgresJobStore(url)
    start.wait(60)
    claimed, t0 = [], time.perf_counter()
    while True:
        job = store.claim_next(name, ["noop"])
        if job is None:
            break
        store.complete(job.id, name, {})
        claimed.append(job.id)
    out.put((claimed, t0, time.perf_counter()))
    store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", help="postgresql:// URL of an existing server (default: start one)")
    ap.add_argument("--jobs", type=int, default=150)
    ap.add_argument("--contention-jobs", type=int, default=1500)
    ap.add_argument("--procs", type=int, default=3)
    ap.add_argument("--poll-interval", type=float, default=0.05)
    args = ap.parse_args()

    from lorastudio.services.jobs import PostgresJobStore

    server, tmp = None, None
    if args.db:
        url = args.db
    else:
        from lorastudio.testing.postgres_server import PostgresServer

        tmp = Path(tempfile.mkdtemp(prefix="lorastudio-bench-pg-"))
        server = PostgresServer(tmp)
        server.init()
        server.start()
        url = server.create_database("bench")
    ctx = multiprocessing.get_context("spawn")
    try:
        # --- claim -> start with 3 workers ------------------------------------------------------
        store = PostgresJobStore(url)
        ids = [store.submit("noop", {"i": i}).id for i in range(args.jobs)]
        out = ctx.Queue()
        procs = [ctx.Process(target=_worker_proc, args=(url, f"w{n}", args.poll_interval, args.jobs, out))
                 for n in range(3)]
        for p in procs:
            p.start()
        starts: dict[str, float] = {}
        for _ in procs:
            starts.update(out.get(timeout=600))
        for p in procs:
            p.join(30)
        jobs = {j.id: j for j in store.list(kind="noop")}
        claim_to_start = [(starts[i] - jobs[i].started_at.timestamp()) * 1000 for i in ids if i in starts]
        # --- submit -> start with idle workers ----------------------------------------------------
        procs = [ctx.Process(target=_worker_proc, args=(url, f"idle{n}", args.poll_interval, args.jobs + 30, out))
                 for n in range(3)]
        for p in procs:
            p.start()
        time.sleep(8)  # let them import and reach idle polling
        idle_ids = []
        for i in range(30):
            idle_ids.append(store.submit("noop", {"idle": i}).id)
            time.sleep(0.1)
        idle_starts: dict[str, float] = {}
        for _ in procs:
            idle_starts.update(out.get(timeout=600))
        for p in procs:
            p.join(30)
        submit_to_start = [(idle_starts[i] - store.get(i).created_at.timestamp()) * 1000
                           for i in idle_ids if i in idle_starts]

        # --- contention -------------------------------------------------------------------------
        for i in range(args.contention_jobs):
            store.submit("noop", {"c": i})
        start, out2 = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_claimer_proc, args=(url, f"c{n}", start, out2)) for n in range(args.procs)]
        for p in procs:
            p.start()
        time.sleep(3)  # imports done, connected
        start.set()
        reports = [out2.get(timeout=600) for _ in procs]
        for p in procs:
            p.join(30)
        claimed = [j for got, _, _ in reports for j in got]
        t0, t1 = min(r[1] for r in reports), max(r[2] for r in reports)
        store.close()
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(tmp, ignore_errors=True)

    def q(xs, p):
        xs = sorted(xs)
        return round(xs[min(len(xs) - 1, int(p * len(xs)))], 2) if xs else None

    result = {
        "bench": "queue",
        "backend": "postgresql",
        "workers": 3,
        "jobs": len(claim_to_start),
        "claim_to_start_ms_median": round(statistics.median(claim_to_start), 2),
        "claim_to_start_ms_p95": q(claim_to_start, 0.95),
        "submit_to_start_ms_median": round(statistics.median(submit_to_start), 2) if submit_to_start else None,
        "submit_to_start_ms_p95": q(submit_to_start, 0.95),
        "poll_interval_s": args.poll_interval,
        "contention_procs": args.procs,
        "claims": len(claimed),
        "claims_per_s": round(len(claimed) / (t1 - t0), 1),
        "duplicates": len(claimed) - len(set(claimed)),
        "goal_claims_per_s": 200,
    }
    print(f"claim->start median {result['claim_to_start_ms_median']} ms, p95 {result['claim_to_start_ms_p95']} ms; "
          f"{result['claims_per_s']} claims/s with {args.procs} processes")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
