"""`serve --db postgresql://... --no-worker`: an API node that only queues, on a real PostgreSQL.

Jobs are run here by a JobWorker on another store connection, as a `lorastudio worker`
process would; the node's event stream is woken by LISTEN/NOTIFY.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

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


def test_with_an_artifact_store_uploads_and_results_go_through_it(make_client, tmp_path):
    """serve --artifacts with its own worker: the uploaded zip and the finished run pass through the
    store (what lets other nodes serve them); downloads are read back from it."""
    import io
    import zipfile

    from lorastudio.services.artifacts import DirectoryArtifactStore
    from lorastudio.training.events import TrainingEvent, TrainingResult
    from lorastudio.training.project import version_dir

    seen = []

    def train(config, on_event=None, *, should_stop=None, yield_point=None):
        seen.append(sorted(p.name for p in Path(config.images).iterdir()))
        vdir = version_dir(config.projects_dir, config.project, config.version, resume=config.resume).make()
        lora = vdir.lora(config.project)
        lora.write_bytes(b"lora-bytes")
        vdir.config.write_text("{}")
        on_event(TrainingEvent("done", 1, 1, path=lora, message="saved"))
        return TrainingResult(vdir.root, lora, None, vdir.config, [], 1, 0.5)

    bucket = DirectoryArtifactStore(tmp_path / "bucket")
    c = make_client(train_fn=train, artifacts=bucket)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.png", b"not decoded by the stand-in")
        z.writestr("a.txt", b"zz, a cat")
    r = c.post("/v1/trainings", files={"images": ("d.zip", archive.getvalue())},
               data={"config": json.dumps({"trigger": "zz", "base": "tiny", "project": "st"})})
    assert r.status_code == 202, r.text
    rid = r.json()["request_id"]
    deadline = time.monotonic() + 60
    while (status := c.get(f"/v1/trainings/{rid}/status?logs=1").json())["status"] not in ("COMPLETED", "FAILED"):
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    assert status["status"] == "COMPLETED", status
    assert seen == [["a.png", "a.txt"]]  # the worker trained on the copy fetched from the store
    assert any("fetched the uploaded dataset (2 files)" in line["message"] for line in status["logs"])
    assert bucket.list() == ["st/versions/v1/config.json", "st/versions/v1/st.safetensors"]  # upload removed
    (tmp_path / "projects" / "st" / "versions" / "v1" / "st.safetensors").write_bytes(b"local copy, not served")
    result = c.get(f"/v1/trainings/{rid}/result").json()
    assert result["lora"]["size"] == len(b"lora-bytes")
    assert c.get(result["lora"]["url"]).content == b"lora-bytes"
