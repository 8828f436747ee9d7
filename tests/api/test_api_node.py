"""`serve --db postgresql://... --no-worker`: an API node that only queues, on a real PostgreSQL.

Jobs are run here by a JobWorker on another store connection, as a `lorastudio worker`
process would; the node's event stream is woken by LISTEN/NOTIFY.
"""

from __future__ import annotations

import json
import threading
import time

import pytest


@pytest.fixture
def node(make_client, postgres_url):
    from lorastudio.services.jobs import PostgresJobStore

    store = PostgresJobStore(postgres_url)
    yield make_client(store=store, run_worker=False), postgres_url
    store.close()


@pytest.fixture
def dataset(settings):
    folder = settings.projects_dir / "datasets" / "cats"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"only listed, never decoded here")
    return folder


def test_api_node_queues_but_runs_nothing_and_refuses_generation(node, dataset):
    c, url = node
    r = c.post("/v1/trainings", json={"images": str(dataset), "trigger": "zz", "base": "tiny"})
    assert r.status_code == 202, r.text
    rid = r.json()["request_id"]
    time.sleep(0.5)  # a worker thread would have claimed it by now
    status = c.get(f"/v1/trainings/{rid}/status").json()
    assert status["status"] == "IN_QUEUE" and status["queue_position"] == 0
    r = c.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64})
    assert r.status_code == 503 and "no-worker" in r.text

    from lorastudio.services.jobs import PostgresJobStore

    with PostgresJobStore(url) as other:  # what a worker on another machine sees
        job = other.get(rid)
        assert job.family == "sd1"  # read from the base model's header at submission
        assert other.claim_next("sdxl-box", ["training"], _caps(("sdxl",))) is None
        assert other.claim_next("sd1-box", ["training"], _caps(("sd1",))).id == rid


def _caps(families):
    from lorastudio.services.jobs import WorkerCapabilities

    return WorkerCapabilities(families=families)


def test_event_stream_is_woken_by_changes_made_elsewhere(node, dataset, monkeypatch):
    from lorastudio.interfaces.api import training_routes
    from lorastudio.services.jobs import PostgresJobStore

    # A long wait: only a notification can deliver the events within the test's ceiling.
    monkeypatch.setattr(training_routes, "SSE_NOTIFY_WAIT_S", 30.0)
    c, url = node
    rid = c.post("/v1/trainings", json={"images": str(dataset), "trigger": "zz", "base": "tiny"}).json()["request_id"]
    events, opened = [], threading.Event()

    def worker_elsewhere():
        opened.wait(30)
        time.sleep(0.3)
        with PostgresJobStore(url) as other:
            assert other.claim_next("remote")
            other.append_log(rid, "INFO", "step 1 on the remote box")
            time.sleep(0.3)
            other.complete(rid, "remote", {"files": {}})

    t = threading.Thread(target=worker_elsewhere)
    t.start()
    started = time.monotonic()
    with c.stream("GET", f"/v1/trainings/{rid}/events") as r:
        kind = None
        for line in r.iter_lines():
            opened.set()
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    t.join(30)
    assert time.monotonic() - started < 20  # far below two 30 s waits
    assert events[-1][0] == "done" and events[-1][1]["status"] == "COMPLETED"
    assert any(k == "log" and d["message"] == "step 1 on the remote box" for k, d in events)
    assert "IN_PROGRESS" in [d["status"] for k, d in events if k == "status"]
