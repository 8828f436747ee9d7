"""A training farm: `lorastudio worker` and `serve --no-worker` processes on one PostgreSQL
database and one shared folder, with real tiny trainings, a real SIGKILL and a real database
restart. Everything here is a separate OS process talking to a real server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.farm,
              pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")]

# Heartbeat timeout of the farm's workers: short so the kill test does not wait long, yet long
# enough that a worker starved of CPU on a loaded 2-core machine still beats in time.
LEASE_S = 10.0
JOB = {"trigger": "zzfarm", "base": "tiny", "resolution": [64], "rank": 4, "seed": 3, "lr": 5e-3,
       "images": "datasets/stickers", "sample_steps": 1}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lorastudio.interfaces.cli.app", *args]


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else src
    return env


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Farm:
    """3 workers + 2 API nodes; workers killed by a test are replaced by the next test."""

    def __init__(self, root: Path, db: str, server):
        from lorastudio.testing.postgres_server import free_port

        self.root, self.db, self.server = root, db, server
        self.models, self.projects = root / "shared" / "models", root / "shared" / "projects"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True)
        self.workers: dict[str, subprocess.Popen] = {}
        self.apis = []
        self._next = 0
        for _ in range(2):
            port = free_port()
            proc = subprocess.Popen(
                _cli("serve", "--db", db, "--no-worker", "--port", str(port), "--models-dir", str(self.models),
                     "--projects-dir", str(self.projects), "--outdir", str(root / "outputs")),
                env=_env(), stdout=open(self.logs / f"api-{port}.log", "wb"), stderr=subprocess.STDOUT)
            self.apis.append((f"http://127.0.0.1:{port}", proc))
        self.fill_workers()
        for url, proc in self.apis:
            _wait(lambda: proc.poll() is not None or self._up(url), 120, f"API {url}")
            assert proc.poll() is None, (self.logs / f"api-{url.rsplit(':', 1)[1]}.log").read_text()[-3000:]

    def fill_workers(self, n: int = 3) -> None:
        for name, proc in list(self.workers.items()):
            if proc.poll() is not None:
                del self.workers[name]
        while len(self.workers) < n:
            name = f"w{self._next}"
            self._next += 1
            self.workers[name] = subprocess.Popen(
                _cli("worker", "--db", self.db, "--worker-id", name, "--device", "cpu",
                     "--models-dir", str(self.models), "--projects-dir", str(self.projects),
                     "--heartbeat-timeout", str(LEASE_S), "--poll-interval", "0.1",
                     "--no-report"),  # the LoRA report (minutes on the tiny model) has its own tests
                env=_env(), stdout=open(self.logs / f"{name}.log", "wb"), stderr=subprocess.STDOUT)

    @staticmethod
    def _up(url: str) -> bool:
        try:
            with urllib.request.urlopen(url + "/v1/trainings", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def request(self, api: int, method: str, path: str, body: dict | None = None) -> dict:
        url = self.apis[api % len(self.apis)][0] + path
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def status(self, api: int, rid: str) -> dict:
        return self.request(api, "GET", f"/v1/trainings/{rid}/status?logs=1")

    def close(self) -> None:
        for proc in [*self.workers.values(), *(p for _, p in self.apis)]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.workers.values(), *(p for _, p in self.apis)]:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    import shutil
    import tempfile

    from lorastudio.testing.postgres_server import PostgresServer
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    root = tmp_path_factory.mktemp("farm")
    (root / "shared" / "models" / "Stable-diffusion").mkdir(parents=True)
    save_sd1_single_file(tiny_sd1_pipeline(0), root / "shared" / "models" / "Stable-diffusion" / "tiny.safetensors")
    draw_sticker_dataset(root / "shared" / "projects" / "datasets" / "stickers", n=4, size=64)
    # Its own server (outside pytest's basetemp, see tests/conftest.py): one test restarts it.
    pg_root = Path(tempfile.mkdtemp(prefix="lorastudio-pg-farm-"))
    server = PostgresServer(pg_root)
    server.init()
    server.start()
    farm = None
    try:
        farm = Farm(root, server.create_database("farm"), server)
        yield farm
    finally:
        if farm is not None:
            farm.close()
        server.stop()
        shutil.rmtree(pg_root, ignore_errors=True)


def _starts(status: dict) -> list[str]:
    return [line["message"] for line in status["logs"] if line["message"].startswith("started on worker")]


def _done(farm: Farm, rids: list[str], timeout: float) -> dict[str, dict]:
    final: dict[str, dict] = {}

    def all_finished():
        for i, rid in enumerate(rids):
            if rid not in final:
                s = farm.status(i + 1, rid)  # read through the other API than the one that queued it
                if s["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
                    final[rid] = s
        return len(final) == len(rids)

    _wait(all_finished, timeout, f"{len(rids)} jobs to finish")
    return final


def test_twenty_jobs_through_two_apis_each_run_exactly_once(farm):
    farm.fill_workers()
    rids = [farm.request(i, "POST", "/v1/trainings", {**JOB, "project": f"many{i}", "steps": 1})["request_id"]
            for i in range(20)]
    # Each job loads the model, checks the dataset, trains, samples and exports: a few seconds of
    # CPU on an idle core; the ceiling is for a 2-core machine shared with other test processes.
    final = _done(farm, rids, 420)
    for rid, s in final.items():
        assert s["status"] == "COMPLETED", (rid, s.get("reason"), [x["message"][:300] for x in s["logs"]])
        assert s["attempts"] == 0 and len(_starts(s)) == 1, s["logs"]
    workers = {_starts(s)[0].split()[3] for s in final.values()}
    assert len(workers) >= 2, workers  # the queue was shared, not drained by one process
    for i, rid in enumerate(rids):
        lora = farm.projects / f"many{i}" / "versions" / "v1" / f"many{i}.safetensors"
        assert lora.is_file()
        assert farm.request(i, "GET", f"/v1/trainings/{rid}/result")["lora"]["name"] == f"many{i}.safetensors"


def test_sigkilled_worker_job_resumes_elsewhere_after_the_lease_bit_identical(farm):
    from safetensors.torch import load_file

    from lorastudio.services.jobs import PostgresJobStore
    from lorastudio.training.api import train
    from lorastudio.training.config import training_config

    import torch

    farm.fill_workers()
    rid = farm.request(0, "POST", "/v1/trainings", {**JOB, "project": "killed", "steps": 24, "save_every": 2})[
        "request_id"]
    store = PostgresJobStore(farm.db)
    try:
        running = _wait(lambda: (j := store.get(rid)).status.value == "IN_PROGRESS" and j, 120, "the job to start")
        victim = running.worker_id
        # As if the worker ran on another machine: its process cannot be probed, only its lease ends.
        store._run(lambda c, _: c.execute("UPDATE jobs SET worker_host = 'another-machine' WHERE id = %s", (rid,)))
        _wait(lambda: store.get(rid).progress.get("last_checkpoint"), 120, "a checkpoint")
        mid = store.get(rid)
        assert mid.status.value == "IN_PROGRESS" and mid.progress["step"] < 24, "finished before the kill"
        farm.workers[victim].send_signal(signal.SIGKILL)
        farm.workers[victim].wait(30)
        killed_at = time.monotonic()

        done = _wait(lambda: (j := store.get(rid)).status.value in ("COMPLETED", "FAILED") and j, 240, "the resume")
        assert time.monotonic() - killed_at >= LEASE_S * 0.5  # not taken over before the lease ran out
        assert done.status.value == "COMPLETED", done.error
        assert done.attempts == 1 and done.worker_id != victim
        messages = [line.message for line in store.logs(rid)]
        assert any(f"worker {victim} silent for" in m for m in messages), messages  # the lease, not a pid probe
        assert any("resuming killed/v1 from its last checkpoint" in m for m in messages), messages
        config = dict(store.get(rid).payload["config"])
    finally:
        store.close()

    # The same run, uninterrupted, in this process: the resumed LoRA must match bit for bit.
    config.update(project="uninterrupted", version=None, resume=False)
    reference = train(training_config(config))
    resumed = farm.projects / "killed" / "versions" / "v1" / "killed.safetensors"
    a, b = load_file(str(reference.lora_path)), load_file(str(resumed))
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_database_restart_mid_run_loses_nothing_and_runs_nothing_twice(farm):
    farm.fill_workers()
    rids = [farm.request(i, "POST", "/v1/trainings", {**JOB, "project": f"restart{i}", "steps": 6})["request_id"]
            for i in range(6)]
    from lorastudio.services.jobs import PostgresJobStore

    with PostgresJobStore(farm.db) as store:
        _wait(lambda: any(store.get(r).status.value == "IN_PROGRESS" for r in rids), 120, "a job to start")
    farm.server.restart("fast")  # every connection of every process is cut
    final = _done(farm, rids, 240)
    for rid, s in final.items():
        assert s["status"] == "COMPLETED", (rid, s.get("reason"), [x["message"][:300] for x in s["logs"]])
        assert s["attempts"] == 0 and len(_starts(s)) == 1, s["logs"]
    assert all(p.poll() is None for p in farm.workers.values())  # they reconnected, not died
