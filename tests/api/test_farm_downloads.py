"""Result downloads from any API node: a `lorastudio worker` process with its own projects folder
gets an uploaded dataset from an S3 bucket (moto's server) and uploads the run there, and two API
nodes on other folders (a `serve --no-worker` process and an in-process app) serve the LoRA,
samples and config from the bucket.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.farm]


def _env(**extra: str) -> dict[str, str]:
    from lorastudio.testing.s3_server import TEST_CREDENTIALS

    src = str(Path(__file__).resolve().parents[2] / "src")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONUNBUFFERED="1", **TEST_CREDENTIALS, **extra)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _get(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def _wait(predicate, timeout: float, what: str, logs: list[Path]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    tails = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")


def test_a_run_trained_elsewhere_downloads_from_every_api_node(tmp_path, postgres_url, models_root, make_client,
                                                                 settings, monkeypatch):
    from lorastudio.services.artifacts import open_artifact_store
    from lorastudio.services.jobs import PostgresJobStore
    from lorastudio.testing.postgres_server import free_port
    from lorastudio.testing.s3_server import TEST_CREDENTIALS, S3Server
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    data = tmp_path / "datasets" / "stickers"
    draw_sticker_dataset(data, n=2, size=32)
    cli = [sys.executable, "-m", "lorastudio.interfaces.cli.app"]
    procs, logs = [], [tmp_path / "worker.log", tmp_path / "api.log"]
    with S3Server() as s3:
        s3.create_bucket("farm")
        bucket = "s3://farm/runs"
        try:
            # Each process on its own projects folder: they share only the database and the bucket.
            procs.append(subprocess.Popen(
                [*cli, "worker", "--db", postgres_url, "--device", "cpu", "--models-dir", str(models_root),
                 "--projects-dir", str(tmp_path / "worker"), "--artifacts", bucket, "--s3-endpoint", s3.url,
                 "--poll-interval", "0.1", "--no-report"],
                env=_env(), stdout=open(logs[0], "wb"), stderr=subprocess.STDOUT))
            port = free_port()
            # The API node takes the store from the environment, as compose.yaml sets it.
            procs.append(subprocess.Popen(
                [*cli, "serve", "--db", postgres_url, "--no-worker", "--port", str(port),
                 "--models-dir", str(models_root), "--projects-dir", str(tmp_path / "api"),
                 "--outdir", str(tmp_path / "out"), "--dataset-root", str(tmp_path / "datasets")],
                env=_env(LORASTUDIO_ARTIFACTS=bucket, LORASTUDIO_S3_ENDPOINT=s3.url),
                stdout=open(logs[1], "wb"), stderr=subprocess.STDOUT))
            api = f"http://127.0.0.1:{port}"

            def up():
                assert all(p.poll() is None for p in procs), "a farm process died"
                try:
                    return _get(api + "/v1/trainings", 2) is not None
                except (urllib.error.URLError, OSError):
                    return False

            _wait(up, 120, "the API process", logs)
            # The dataset is uploaded as a zip: it reaches the worker through the bucket too.
            archive = io.BytesIO()
            with zipfile.ZipFile(archive, "w") as z:
                for picture in sorted(data.iterdir()):
                    z.write(picture, picture.name)
            config = {"trigger": "zzfar", "project": "far", "base": "tiny", "steps": 1, "resolution": [32],
                      "rank": 4, "seed": 3, "sample_steps": 1}
            r = httpx.post(api + "/v1/trainings", files={"images": ("stickers.zip", archive.getvalue())},
                           data={"config": json.dumps(config)}, timeout=60)
            assert r.status_code == 202, r.text
            rid = r.json()["request_id"]
            uploads = tmp_path / "api" / ".lorastudio" / "uploads"
            assert not [f for f in uploads.rglob("*") if f.is_file()]  # node A kept no copy

            def finished():
                status = json.loads(_get(f"{api}/v1/trainings/{rid}/status"))
                return status if status["status"] in ("COMPLETED", "FAILED", "CANCELLED") else None

            status = _wait(finished, 240, "the training", logs)
            assert status["status"] == "COMPLETED", status
            messages = [line["message"] for line in json.loads(_get(f"{api}/v1/trainings/{rid}/status?logs=1"))["logs"]]
            fetched = f"fetched the uploaded dataset ({len(list(data.iterdir()))} files) from the artifact store"
            assert fetched in messages, messages  # pictures and captions, from the bucket
            for name, value in TEST_CREDENTIALS.items():
                monkeypatch.setenv(name, value)
            store_b = open_artifact_store(bucket, endpoint_url=s3.url)
            assert not store_b.list(".lorastudio"), "the uploaded dataset stays in the bucket after the run"
            version = tmp_path / "worker" / "far" / "versions" / "v1"
            made = {p.name: p.read_bytes() for p in (version / "far.safetensors", version / "config.json")}
            made.update({p.name: p.read_bytes() for p in (version / "samples").glob("*.png")})
            assert len(made) >= 3, sorted(made)  # the LoRA, its config, at least one sample
            shutil.rmtree(tmp_path / "worker")  # the worker's machine is gone: only the bucket has the run

            # Node A (the serve process) and node B (an app in this process, a third projects folder).
            with PostgresJobStore(postgres_url) as store:
                node_b = make_client(store=store, run_worker=False,
                                     settings=settings.model_copy(update={"projects_dir": tmp_path / "b"}),
                                     artifacts=store_b)
                result_a = json.loads(_get(f"{api}/v1/trainings/{rid}/result"))
                result_b = node_b.get(f"/v1/trainings/{rid}/result").json()
                assert result_a["lora"]["name"] == result_b["lora"]["name"] == "far.safetensors"
                for result in (result_a, result_b):
                    served = {f["name"]: f for f in result["files"]}
                    for name, content in made.items():
                        assert served[name]["size"] == len(content), (name, served[name])
                path = urllib.parse.urlsplit(result_a["lora"]["url"]).path
                assert _get(api + path) == made["far.safetensors"]
                for name, content in made.items():
                    r = node_b.get(urllib.parse.urlsplit(next(f["url"] for f in result_b["files"]
                                                              if f["name"] == name)).path)
                    assert r.status_code == 200 and r.content == content, name
                    assert r.headers["content-length"] == str(len(content))
                    assert name in r.headers["content-disposition"]
            assert not list((tmp_path / "api").rglob("far.safetensors"))  # streamed, not copied to node A
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
