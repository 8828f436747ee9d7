"""A run interrupted on one machine resumes on another that shares only the job queue and an
S3 bucket (moto's server): the checkpoint comes from the bucket, the LoRA is bit-identical."""

from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.slow


def test_resume_on_another_machine_from_the_bucket(tmp_path, s3_endpoint, monkeypatch):
    import boto3
    import torch
    from safetensors.torch import load_file

    from lorastudio.core.settings import StudioSettings
    from lorastudio.interfaces.api.training_jobs import make_training_handler
    from lorastudio.services.artifacts import open_artifact_store
    from lorastudio.services.jobs import JobStatus, JobWorker, SqliteJobStore
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline
    from lorastudio.training.api import train
    from lorastudio.training.config import training_config
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="runs")
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    save_sd1_single_file(tiny_sd1_pipeline(0), models / "Stable-diffusion" / "tiny.safetensors")
    draw_sticker_dataset(tmp_path / "data", n=4, size=64)
    config = training_config({"images": str(tmp_path / "data"), "trigger": "zz", "project": "moved",
                              "base": str(models / "Stable-diffusion" / "tiny.safetensors"), "steps": 4,
                              "save_every": 2, "resolution": [64], "rank": 4, "lr": 5e-3, "seed": 3,
                              "sample_steps": 1, "projects_dir": str(tmp_path / "a"),
                              "models_dir": str(models)})
    db = tmp_path / "jobs.db"
    store = SqliteJobStore(db, heartbeat_timeout_s=30)
    rid = store.submit("training", {"config": config.model_dump(mode="json"), "webhook_url": None}).id

    # Machine A: trains to its first checkpoint, then hangs (a machine that dropped off the network).
    release, hung = threading.Event(), threading.Event()

    def train_then_hang(cfg, on_event, should_stop=None, yield_point=None):
        def watch(ev):
            on_event(ev)
            if ev.kind == "checkpoint":
                hung.set()
                release.wait(120)
                raise RuntimeError("machine A came back too late")
        return train(cfg, watch, should_stop=should_stop, yield_point=yield_point)

    def node(name: str, **kw):
        # No LoRA report: minutes on the tiny model, and it has its own tests.
        settings = StudioSettings(models_dir=models, projects_dir=tmp_path / name, device="cpu",
                                  include_bundled=False, report_after_training=False)
        bucket = open_artifact_store("s3://runs/farm", endpoint_url=s3_endpoint)
        return JobWorker(kw.pop("store", store), {"training": make_training_handler(settings, artifacts=bucket, **kw)},
                         worker_id=name, poll_interval_s=0.05)

    a = node("a", train_fn=train_then_hang)
    a.start(recover=False)
    try:
        assert hung.wait(180), "machine A never reached its checkpoint"
        # Machine B: its own empty projects folder; its clock is past A's lease, so it takes the job over.
        b_store = SqliteJobStore(db, heartbeat_timeout_s=30, clock=lambda: time.time() + 1000)
        b = node("b", store=b_store)
        b.start(recover=True)
        deadline = time.monotonic() + 180
        while b_store.get(rid).status != JobStatus.COMPLETED and time.monotonic() < deadline:
            time.sleep(0.1)
        b.stop(30)
    finally:
        release.set()
        a.stop(60)
    done = store.get(rid)
    assert done.status == JobStatus.COMPLETED and done.worker_id == "b" and done.attempts == 1
    messages = [line.message for line in store.logs(rid)]
    assert "fetched 1 checkpoint(s) of moved/versions/v1 from the artifact store" in messages
    assert any(m.startswith("resuming moved/v1 from its last checkpoint") for m in messages)
    assert not (tmp_path / "a" / "moved" / "versions" / "v1" / "moved.safetensors").exists()
    resumed = tmp_path / "b" / "moved" / "versions" / "v1" / "moved.safetensors"
    # The finished run is in the bucket too, for a machine that has neither folder.
    bucket = open_artifact_store("s3://runs/farm", endpoint_url=s3_endpoint)
    bucket.get_file("moved/versions/v1/moved.safetensors", tmp_path / "from-bucket.safetensors")
    assert (tmp_path / "from-bucket.safetensors").read_bytes() == resumed.read_bytes()

    reference = train(config.model_copy(update={"projects_dir": tmp_path / "ref"}))
    x, y = load_file(str(reference.lora_path)), load_file(str(resumed))
    assert x.keys() == y.keys() and x
    assert all(torch.equal(x[k], y[k]) for k in x)
    store.close()
    b_store.close()
