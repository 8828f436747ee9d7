"""The /v1/trainings queue: submit, status, events, result files, cancel, resume, webhooks.

The queue and its HTTP contract are under test here, so `train` is a stand-in with the real
signature that writes real files into the real version folder layout; generation during a
"training" uses the real tiny model, through the worker's priority lane.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

ZERO_ID = "00000000-0000-4000-8000-000000000000"


class FakeTrain:
    """lorastudio.training.api.train's contract: events, should_stop, yield_point, TrainingResult."""

    def __init__(self, steps: int = 4):
        self.steps = steps
        self.gate = threading.Event()
        self.started = threading.Event()
        self.configs = []
        self.step_done = 0
        self.fail_with: Exception | None = None

    def __call__(self, config, on_event=None, *, should_stop=None, yield_point=None):
        from lorastudio.training.events import TrainingEvent, TrainingResult, TrainingStopped
        from lorastudio.training.project import version_dir

        self.configs.append(config)
        images = Path(config.images)
        self.seen_files = sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file())
        on_event(TrainingEvent("log", message=f"loading {Path(config.base).name}"))
        if self.fail_with is not None:
            raise self.fail_with
        vdir = version_dir(config.projects_dir, config.project, config.version, resume=config.resume).make()
        self.started.set()
        for step in range(1, self.steps + 1):
            while True:
                yield_point()
                if should_stop():
                    raise TrainingStopped()
                if self.gate.wait(0.01):
                    break
            on_event(TrainingEvent("progress", step=step, total_steps=self.steps, loss=1.0 / step, eta_s=0.5))
            self.step_done = step
        lora = vdir.lora(config.output_name or config.project)
        lora.write_bytes(b"lora-bytes")
        vdir.config.write_text(config.model_dump_json())
        sample = vdir.samples / "step-000004-0.png"
        sample.write_bytes(b"png-bytes")
        on_event(TrainingEvent("done", self.steps, self.steps, path=lora, message=f"saved {lora}"))
        return TrainingResult(vdir.root, lora, vdir.diffusers, vdir.config, [sample], self.steps, 0.25)


@pytest.fixture
def dataset(settings) -> Path:
    folder = settings.projects_dir / "datasets" / "cats"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"not decoded by the fake trainer")
    return folder


def _wait(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _status(c, rid: str, **params) -> dict:
    r = c.get(f"/v1/trainings/{rid}/status", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_submit_status_logs_result_and_files(make_client, dataset, settings):
    train = FakeTrain()
    c = make_client(train_fn=train)
    r = c.post("/v1/trainings", json={"images": str(dataset), "trigger": "zzcat", "base": "tiny", "steps": 4,
                                      "rank": 4})
    assert r.status_code == 202, r.text
    sub = r.json()
    rid = sub["request_id"]
    assert sub["status_url"].endswith(f"/v1/trainings/{rid}/status") and sub["cancel_url"].endswith("/cancel")
    second = c.post("/v1/trainings", json={"images": "datasets/cats", "trigger": "zzdog", "base": "tiny"}).json()
    _wait(train.started.is_set, what="training start")
    running = _wait(lambda: (s := _status(c, rid)) and s["status"] == "IN_PROGRESS" and s, what="IN_PROGRESS")
    queued = _status(c, second["request_id"])
    assert queued["status"] == "IN_QUEUE" and queued["queue_position"] == 0
    assert running["progress"]["project"] == "zzcat" and running["progress"]["version"] == "v1"
    train.gate.set()
    done = _wait(lambda: (s := _status(c, rid, logs=1)) and s["status"] == "COMPLETED" and s, what="COMPLETED")
    messages = [line["message"] for line in done["logs"]]
    assert "loading tiny.safetensors" in messages and all(line["timestamp"] for line in done["logs"])
    assert done["progress"]["step"] == 4 and done["progress"]["loss"] == 0.25

    cfg = train.configs[0]
    assert Path(cfg.images) == dataset.resolve() and cfg.projects_dir == settings.projects_dir.resolve()
    assert cfg.base.endswith("Stable-diffusion/tiny.safetensors") and cfg.rank == 4 and not cfg.resume
    result = c.get(f"/v1/trainings/{rid}/result").json()
    assert result["lora"]["name"] == "zzcat.safetensors" and result["config"]["name"] == "config.json"
    assert [s["name"] for s in result["samples"]] == ["step-000004-0.png"]
    lora = c.get(result["lora"]["url"])
    assert lora.status_code == 200 and lora.content == b"lora-bytes"
    for name in ("..%2F..%2Fetc%2Fpasswd", "dataset.zip", "%2e%2e", "jobs.sqlite3"):
        assert c.get(f"/v1/trainings/{rid}/files/{name}").status_code == 404, name
    # The second job ran after the first, into its own project.
    _wait(lambda: _status(c, second["request_id"])["status"] == "COMPLETED", what="second job")
    assert train.configs[1].project == "zzdog"


def test_generation_runs_between_training_steps(make_client, dataset):
    train = FakeTrain(steps=2)
    c = make_client(train_fn=train)
    rid = c.post("/v1/trainings", json={"images": str(dataset), "trigger": "zz", "base": "tiny"}).json()["request_id"]
    _wait(train.started.is_set, what="training start")
    r = c.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 32, "height": 32, "seed": 3})
    assert r.status_code == 200 and len(r.json()["images"]) == 1
    assert train.step_done == 0 and _status(c, rid)["status"] == "IN_PROGRESS"  # served at a yield point
    train.gate.set()
    _wait(lambda: _status(c, rid)["status"] == "COMPLETED", what="COMPLETED")


def test_cancel_running_and_queued_jobs(make_client, dataset):
    train = FakeTrain()
    c = make_client(train_fn=train)
    body = {"images": str(dataset), "trigger": "zz", "base": "tiny"}
    first = c.post("/v1/trainings", json=body).json()["request_id"]
    second = c.post("/v1/trainings", json=body).json()["request_id"]
    _wait(train.started.is_set, what="training start")
    r = c.put(f"/v1/trainings/{second}/cancel")
    assert r.status_code == 202 and r.json() == {"status": "CANCELLATION_REQUESTED", "job_status": "CANCELLED"}
    r = c.put(f"/v1/trainings/{first}/cancel")
    # The trainer polls should_stop every 10 ms: it may already have stopped when the answer is built.
    assert r.status_code == 202 and r.json()["job_status"] in ("IN_PROGRESS", "CANCELLED")
    _wait(lambda: _status(c, first)["status"] == "CANCELLED", what="CANCELLED")
    assert c.put(f"/v1/trainings/{first}/cancel").status_code == 400
    r = c.get(f"/v1/trainings/{first}/result")
    assert r.status_code == 409 and r.json()["status"] == "CANCELLED"
    assert len(train.configs) == 1


def test_a_failed_training_reports_its_reason(make_client, dataset):
    from lorastudio.core.errors import DatasetError

    train = FakeTrain()
    train.fail_with = DatasetError("cats/a.png: not a picture")
    c = make_client(train_fn=train)
    rid = c.post("/v1/trainings", json={"images": str(dataset), "trigger": "zz", "base": "tiny"}).json()["request_id"]
    failed = _wait(lambda: (s := _status(c, rid, logs=1)) and s["status"] == "FAILED" and s, what="FAILED")
    assert failed["reason"] == "DatasetError: cats/a.png: not a picture"
    # The client sees the message; the traceback (with the server's file paths) stays server-side.
    errors = [line["message"] for line in failed["logs"] if line["level"] == "ERROR"]
    assert errors == ["DatasetError: cats/a.png: not a picture"]
    assert not any("Traceback" in line["message"] or 'File "/' in line["message"] for line in failed["logs"])
    store = c.app.state.api.store
    assert any("Traceback" in line.message for line in store.logs(rid))  # kept for the server's owner
    r = c.get(f"/v1/trainings/{rid}/result")
    assert r.status_code == 409 and r.json()["reason"] == failed["reason"]


def test_client_sees_no_server_paths_in_reasons_and_logs(make_client, dataset, settings):
    from lorastudio.core.errors import ModelFileError

    train = FakeTrain()
    projects = Path(settings.projects_dir).resolve()
    secret = "/srv/internal/cache/x.bin"
    train.fail_with = ModelFileError(projects / "zz" / "v1" / "state.pt", f"cannot open {secret}")
    c = make_client(train_fn=train)
    rid = c.post("/v1/trainings", json={"images": str(dataset), "trigger": "zz", "base": "tiny"}).json()["request_id"]
    failed = _wait(lambda: (s := _status(c, rid, logs=1)) and s["status"] == "FAILED" and s, what="FAILED")
    text = json.dumps(failed)
    assert str(projects) not in text and "/srv/internal" not in text, text
    assert failed["reason"] == "ModelFileError: <projects>/zz/v1/state.pt: cannot open .../x.bin"


def test_events_stream_logs_status_and_done(make_client, dataset):
    train = FakeTrain(steps=2)
    train.gate.set()
    c = make_client(train_fn=train)
    rid = c.post("/v1/trainings", json={"images": str(dataset), "trigger": "zz", "base": "tiny"}).json()["request_id"]
    events = []
    with c.stream("GET", f"/v1/trainings/{rid}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "done" and events[-1][1]["status"] == "COMPLETED"
    assert "log" in kinds and "status" in kinds
    assert any(d.get("message", "").startswith("saved ") for k, d in events if k == "log")


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o100644 << 16  # a regular file, as `zip` and Windows tools mark it
            zf.writestr(info, data)
    return buf.getvalue()


def test_zip_upload_is_extracted_safely_inside_the_uploads_folder(make_client, settings, imgs):
    import base64

    train = FakeTrain(steps=1)
    train.gate.set()
    c = make_client(train_fn=train)
    png = base64.b64decode(imgs.png((64, 64)))
    data = _zip({"cats/a.png": png, "cats/a.txt": b"a cat", "cats/b.png": png})
    r = c.post("/v1/trainings", files={"images": ("cats.zip", data, "application/zip")},
               data={"config": json.dumps({"trigger": "zzz", "base": "tiny", "steps": 1})})
    assert r.status_code == 202, r.text
    rid = r.json()["request_id"]
    _wait(lambda: _status(c, rid)["status"] == "COMPLETED", what="COMPLETED")
    images = Path(train.configs[0].images)
    assert images.is_relative_to(settings.projects_dir.resolve() / ".lorastudio" / "uploads")
    assert train.seen_files == ["cats/a.png", "cats/a.txt", "cats/b.png"]
    assert not images.parent.exists()  # the upload is removed once the run no longer needs it

    evil = _zip({"../../escaped.txt": b"x"})
    r = c.post("/v1/trainings", files={"images": ("e.zip", evil)}, data={"config": '{"trigger": "a", "base": "tiny"}'})
    assert r.status_code == 422 and "images" in r.text
    assert not list(settings.projects_dir.rglob("escaped.txt")) and not (settings.projects_dir / "escaped.txt").exists()
    r = c.post("/v1/trainings", files={"images": ("e.zip", b"PK\x03\x04 not really")},
               data={"config": '{"trigger": "a", "base": "tiny"}'})
    assert r.status_code == 422
    r = c.post("/v1/trainings", files={"images": ("e.zip", data)}, data={"config": '{"trigger": "a", "steps": NaN}'})
    assert r.status_code == 422


@pytest.mark.parametrize("change, status, field", [
    ({"images": "/etc"}, 422, "images"),
    ({"images": "../../.."}, 422, "images"),
    ({"images": "datasets/%2e%2e/%2e%2e/x"}, 422, "images"),
    ({"images": "datasets/link-out"}, 422, "images"),
    ({"images": "datasets/missing"}, 422, "images"),
    ({"reg_images": "/etc"}, 422, "reg_images"),
    ({"reg_images": "datasets/link-out"}, 422, "reg_images"),
    ({"reg_images": "datasets/missing"}, 422, "reg_images"),
    ({"reg_images": 5}, 422, "reg_images"),
    ({"projects_dir": "/tmp"}, 422, "projects_dir"),
    ({"models_dir": "/"}, 422, "models_dir"),
    ({"base": "/etc/passwd"}, 422, "base"),
    ({"base": "no-such-model"}, 404, None),
    ({"trigger": None}, 422, "trigger"),
    ({"steps": 0}, 422, "steps"),
    ({"lr": float("nan")}, 422, None),
    ({"webhook_url": "http://127.0.0.1:9/hook"}, 422, "webhook_url"),
    ({"surprise": 1}, 422, "surprise"),
])
def test_bad_submissions_are_refused_naming_the_field(make_client, dataset, tmp_path, change, status, field):
    (dataset.parent / "link-out").symlink_to(tmp_path)
    c = make_client(train_fn=FakeTrain())
    body = {"images": str(dataset), "trigger": "zz", "base": "tiny", **change}
    raw = json.dumps(body)  # NaN written as the bare NaN token, as a careless client would
    r = c.post("/v1/trainings", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    if field:
        assert field in json.dumps(r.json()["detail"]), r.text
    assert c.get("/v1/trainings").json() == []


def test_unknown_and_malformed_ids(client):
    assert client.get(f"/v1/trainings/{ZERO_ID}/status").status_code == 404
    assert client.get(f"/v1/trainings/{ZERO_ID}/result").status_code == 404
    assert client.put(f"/v1/trainings/{ZERO_ID}/cancel").status_code == 404
    assert client.get("/v1/trainings/../../etc/status").status_code == 404
    assert client.get("/v1/trainings/not-a-uuid/status").status_code == 422
    assert client.post("/v1/trainings", content=b"x", headers={"content-type": "text/plain"}).status_code == 415


_CRASHING_WORKER = """
import os, sys, time
from lorastudio.services.jobs import SqliteJobStore
store = SqliteJobStore(sys.argv[1])
job = store.claim_next("doomed-worker")
store.update_progress(job.id, {"project": "zz", "version": "v1", "step": 2}, "doomed-worker")
print(job.id, flush=True)
time.sleep(600)
"""


def test_a_job_whose_server_was_killed_resumes_in_the_same_version(make_client, dataset, settings, models_root):
    """SIGKILL the process running a job; the next app recovers it and resumes from its checkpoint."""
    from lorastudio.services.jobs import SqliteJobStore
    from lorastudio.training.config import training_config

    db = settings.projects_dir / ".lorastudio" / "jobs.sqlite3"
    cfg = training_config({"images": str(dataset), "trigger": "zz", "steps": 4,
                           "base": str(models_root / "Stable-diffusion" / "tiny.safetensors"),
                           "projects_dir": str(settings.projects_dir), "models_dir": str(models_root)})
    store = SqliteJobStore(db)
    rid = store.submit("training", {"config": cfg.model_dump(mode="json"), "webhook_url": None}).id
    store.close()
    (settings.projects_dir / "zz" / "versions" / "v1" / "checkpoints" / "step-000002").mkdir(parents=True)
    # A real process claims the job, reports progress (the pinned version), and dies mid-run.
    child = subprocess.Popen([sys.executable, "-c", _CRASHING_WORKER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == rid
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(30)
    store = SqliteJobStore(db)
    assert store.get(rid).status.value == "IN_PROGRESS"
    store.close()

    train = FakeTrain()
    train.gate.set()
    c1 = make_client(train_fn=train)
    done = _wait(lambda: (s := _status(c1, rid, logs=1)) and s["status"] == "COMPLETED" and s, what="COMPLETED")
    assert done["attempts"] == 1
    cfg = train.configs[0]
    assert cfg.resume is True and cfg.version == "v1" and cfg.project == "zz"
    assert any("resuming zz/v1" in line["message"] for line in done["logs"])


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_to_an_allowed_host_is_called_once(make_client, dataset):
    _Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    server.timeout = 0.2
    stop = threading.Event()

    def serve():
        while not stop.is_set():  # bounded: one request per loop, until the test ends
            server.handle_request()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        train = FakeTrain(steps=1)
        train.gate.set()
        c = make_client(train_fn=train, webhook_hosts=["127.0.0.1"])
        url = f"http://127.0.0.1:{server.server_port}/done"
        rid = c.post("/v1/trainings", json={"images": str(dataset), "trigger": "zz", "base": "tiny",
                                            "webhook_url": url}).json()["request_id"]
        _wait(lambda: _Hook.received, what="webhook call")
        assert _Hook.received[0]["request_id"] == rid and _Hook.received[0]["status"] == "COMPLETED"
        assert _Hook.received[0]["result"]["lora"] == "zz.safetensors"
        time.sleep(1.5)
        assert len(_Hook.received) == 1
    finally:
        stop.set()
        t.join(5)
        server.server_close()


def test_a_real_training_through_the_api(make_client, settings, imgs):
    """The real train() on the tiny model: a kohya LoRA comes back as a download."""
    import base64

    from lorastudio.core.safetensors_header import read_header

    folder = settings.projects_dir / "datasets" / "real"
    folder.mkdir(parents=True)
    for i, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        (folder / f"{i}.png").write_bytes(base64.b64decode(imgs.png((64, 64), color=color)))
        (folder / f"{i}.txt").write_text("a square")
    c = make_client()
    rid = c.post("/v1/trainings", json={"images": "datasets/real", "trigger": "zzsq", "base": "tiny", "steps": 2,
                                        "resolution": 64, "rank": 2}).json()["request_id"]
    done = _wait(lambda: (s := _status(c, rid)) and s["status"] in ("COMPLETED", "FAILED") and s, timeout=120,
                 what="the end of the training")
    assert done["status"] == "COMPLETED", done.get("reason")
    result = c.get(f"/v1/trainings/{rid}/result").json()
    lora = c.get(result["lora"]["url"])
    path = settings.projects_dir / "lora.safetensors"
    path.write_bytes(lora.content)
    assert any(k.startswith("lora_unet_") for k in read_header(path).tensors)


# Two real servers and a real training; it runs with every `pytest`: restarts must never lose a job.
@pytest.mark.slow
def test_sigkill_of_a_real_server_mid_training_then_restart_resumes(server_process, models_root, tmp_path, imgs):
    """A real server process trains for real, is SIGKILLed after a checkpoint, and a new server
    on the same folders finishes the job from that checkpoint."""
    import base64

    import httpx

    projects = tmp_path / "projects"
    folder = projects / "datasets" / "real"
    folder.mkdir(parents=True)
    for i, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        (folder / f"{i}.png").write_bytes(base64.b64decode(imgs.png((64, 64), color=color)))
    args = ["--models-dir", str(models_root), "--outdir", str(tmp_path / "out"), "--projects-dir", str(projects),
            "--no-report"]
    first = server_process(args)
    first.wait_up()
    rid = httpx.post(first.url + "/v1/trainings", timeout=30, json={
        "images": "datasets/real", "trigger": "zzkill", "base": "tiny", "steps": 12, "save_every": 2,
        "resolution": 64, "rank": 2}).json()["request_id"]

    def checkpointed():
        s = httpx.get(f"{first.url}/v1/trainings/{rid}/status", timeout=30).json()
        assert s["status"] in ("IN_QUEUE", "IN_PROGRESS"), s
        return s.get("progress", {}).get("last_checkpoint")

    _wait(checkpointed, timeout=180, what="a first checkpoint")
    first.kill(signal.SIGKILL)

    second = server_process(args)
    second.wait_up()
    done = _wait(lambda: (s := httpx.get(f"{second.url}/v1/trainings/{rid}/status", params={"logs": 1},
                                         timeout=30).json()) and s["status"] in ("COMPLETED", "FAILED") and s,
                 timeout=180, what="the resumed training to end")
    assert done["status"] == "COMPLETED", done.get("reason")
    assert done["attempts"] == 1 and done["progress"]["step"] == 12
    assert any("resuming zzkill/v1" in line["message"] for line in done["logs"])
    result = httpx.get(f"{second.url}/v1/trainings/{rid}/result", timeout=30).json()
    assert result["lora"]["name"] == "zzkill.safetensors"
    assert httpx.get(result["lora"]["url"], timeout=30).status_code == 200
