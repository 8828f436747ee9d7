"""Bad input and faults through the HTTP API: each answers with a status and a message, never a
500 with a traceback, never a server path the client did not give."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import pytest


def png_b64(size=(32, 32)) -> str:
    import base64

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()

CJK_258 = "日" * 86  # 86 characters, 258 bytes in UTF-8: over the 255-byte file-name limit
LONG = "a" * 300
TINY = {"prompt": "a red cat", "steps": 1, "width": 32, "height": 32, "seed": 7}


def _detail_text(r) -> str:
    return json.dumps(r.json())


@pytest.mark.parametrize("path, body", [
    ("/sdapi/v1/options", {"sd_model_checkpoint": CJK_258}),
    ("/sdapi/v1/options", {"sd_model_checkpoint": LONG + ".safetensors"}),
    ("/sdapi/v1/options", {"sd_vae": LONG}),
    ("/sdapi/v1/options", {"outdir_txt2img_samples": "sub/" + LONG}),
    ("/sdapi/v1/txt2img", {**TINY, "override_settings": {"sd_model_checkpoint": LONG}}),
    ("/sdapi/v1/txt2img", {**TINY, "override_settings": {"sd_vae": CJK_258}}),
    ("/sdapi/v1/txt2img", {**TINY, "prompt": f"a cat <lora:{LONG}:1>"}),
    ("/sdapi/v1/txt2img", {**TINY, "hr_checkpoint_name": LONG}),
    ("/sdapi/v1/txt2img", {**TINY, "prompt": "x" * 100_001}),
    ("/sdapi/v1/img2img", {**TINY, "init_images": [png_b64((32, 32))], "override_settings": {"sd_model_checkpoint": LONG}}),
])
def test_names_past_the_filesystem_limit_are_422_naming_the_field(client, path, body):
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    text = _detail_text(r)
    assert "Traceback" not in text and len(text) < 5000
    assert "bytes" in text or "at most" in text


@pytest.mark.parametrize("change, field", [
    ({"project": "日" * 80}, "project"),
    ({"version": LONG}, "version"),
    ({"output_name": CJK_258}, "output_name"),
    ({"base": LONG}, "base"),
    ({"trigger": "t" * 100_001}, "trigger"),
])
def test_training_names_and_texts_past_the_limits_are_422(make_client, settings, change, field):
    data = Path(settings.projects_dir) / "datasets" / "d"
    data.mkdir(parents=True)
    c = make_client()
    r = c.post("/v1/trainings", json={"images": str(data), "trigger": "zz", "base": "tiny", **change})
    assert r.status_code == 422, r.text
    assert field in _detail_text(r) and "Traceback" not in r.text


def test_training_dataset_path_with_a_part_past_255_bytes_is_422(make_client, settings):
    c = make_client()
    r = c.post("/v1/trainings", json={"images": str(Path(settings.projects_dir) / LONG), "trigger": "zz",
                                      "base": "tiny"})
    assert r.status_code == 422 and "images" in r.text and "255" in r.text, r.text


def test_an_unhandled_error_is_500_without_traceback_or_server_paths(settings, engine, monkeypatch, caplog):
    from fastapi.testclient import TestClient

    from lorastudio.interfaces.api.server import create_app

    def crash(*_a, **_k):
        raise RuntimeError(f"boom in {Path(engine.catalog.root.root) / 'secret.bin'}")

    monkeypatch.setattr(engine, "txt2img", crash)
    # As a real server does: the exception is answered, not re-raised into the test.
    with TestClient(create_app(settings, engine=engine, poll_interval_s=0.05), base_url="http://127.0.0.1:7860",
                    raise_server_exceptions=False) as client, \
            caplog.at_level(logging.ERROR, logger="lorastudio.interfaces.api.server"):
        r = client.post("/sdapi/v1/txt2img", json=TINY)
    assert r.status_code == 500
    body = r.json()
    assert "secret.bin" not in r.text and str(engine.catalog.root.root) not in r.text
    assert "Traceback" not in r.text and body["incident"] in body["detail"]
    # ... while the server log has the whole story under the same incident id.
    record = next(rec for rec in caplog.records if body["incident"] in rec.getMessage())
    assert record.exc_info is not None and "secret.bin" in str(record.exc_info[1])


def test_a_model_error_does_not_show_the_servers_folders(make_client, settings, tmp_path):
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine

    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "Stable-diffusion" / "broken.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{not json")
    s = StudioSettings(models_dir=models, outdir=tmp_path / "o", projects_dir=tmp_path / "p", device="cpu",
                       include_bundled=False)
    c = make_client(settings=s, engine=GenerationEngine(s))
    r = c.post("/sdapi/v1/txt2img", json={**TINY, "override_settings": {"sd_model_checkpoint": "broken"}})
    assert 400 <= r.status_code < 500, r.text
    assert str(models) not in r.text and "broken.safetensors" in r.text


def test_disk_full_while_saving_outputs_is_507_and_leaves_no_file(client, settings, monkeypatch):
    real_fsync = os.fsync

    def full(fd):
        real_fsync(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # where atomic writes meet the disk
    r = client.post("/sdapi/v1/txt2img", json={**TINY, "save_images": True})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert r.status_code == 507, r.text
    detail = r.json()["detail"]
    assert detail.startswith("no space left on <outputs>") and "free space" in detail, detail
    outputs = Path(settings.outdir)
    leftovers = [p for p in outputs.rglob("*") if p.is_file() and p.name != "config.json"] if outputs.exists() else []
    assert leftovers == []


def test_disk_full_while_receiving_an_upload_is_507_and_cleans_up(make_client, settings, monkeypatch):
    real_copy = shutil.copyfileobj

    def copy_until_full(src, dst, length=0):
        dst.write(src.read(100))  # some bytes land, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.png", b"\x89PNG" + b"0" * 5000)
    c = make_client()
    monkeypatch.setattr(shutil, "copyfileobj", copy_until_full)
    r = c.post("/v1/trainings", files={"images": ("d.zip", buf.getvalue(), "application/zip")},
               data={"config": json.dumps({"trigger": "zz", "base": "tiny"})})
    monkeypatch.setattr(shutil, "copyfileobj", real_copy)
    assert r.status_code == 507, r.text
    assert r.json()["detail"].startswith("no space left on <upload>") and "free space" in r.json()["detail"]
    uploads = Path(settings.projects_dir).resolve() / ".lorastudio" / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []


@pytest.fixture
def models_with_broken_first(models_root, tmp_path):
    """A models folder whose first files (by name) are a truncated download and a pickle."""
    root = tmp_path / "models"
    ckpt = root / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    (ckpt / "0-truncated.safetensors").write_bytes(b"\xff" * 64)
    (ckpt / "1-pickled.ckpt").write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    os.link(models_root / "Stable-diffusion" / "tiny.safetensors", ckpt / "good.safetensors")
    return root


def test_broken_files_that_sort_first_do_not_become_the_default(make_client, models_with_broken_first, tmp_path,
                                                                caplog):
    from lorastudio.core.settings import StudioSettings
    from lorastudio.generation.engine import GenerationEngine

    s = StudioSettings(models_dir=models_with_broken_first, outdir=tmp_path / "o", projects_dir=tmp_path / "p",
                       device="cpu", include_bundled=False)
    engine = GenerationEngine(s)
    assert engine.default_checkpoint().name == "good.safetensors"
    c = make_client(settings=s, engine=engine)
    assert c.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("good.safetensors")
    r = c.post("/sdapi/v1/txt2img", json=TINY)
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["info"])["sd_model_name"] == "good"
    with caplog.at_level(logging.WARNING, logger="lorastudio.interfaces.api.a1111_routes"):
        names = [m["model_name"] for m in c.get("/sdapi/v1/sd-models").json()]
    assert names == ["0-truncated", "1-pickled", "good"]
    logged = " ".join(rec.getMessage() for rec in caplog.records)
    assert "0-truncated.safetensors cannot be loaded" in logged and "1-pickled.ckpt cannot be loaded" in logged
    assert "good.safetensors" not in logged


def test_broken_files_are_marked_in_lorastudio_models(models_with_broken_first):
    from typer.testing import CliRunner

    from lorastudio.interfaces.cli.app import app

    r = CliRunner().invoke(app, ["models", "--models-dir", str(models_with_broken_first), "--no-hash"])
    assert r.exit_code == 0, r.output
    lines = [ln.strip() for ln in r.output.splitlines()]
    assert any(ln.startswith("0-truncated.safetensors  (broken:") for ln in lines), r.output
    assert any(ln.startswith("1-pickled.ckpt  (broken: a pickle file") for ln in lines), r.output
    # a good file is listed with its storage dtype, not as broken
    assert any(ln.startswith("good.safetensors  (") and "broken" not in ln for ln in lines), r.output


def test_memory_reports_the_machines_ram(client):
    ram = client.get("/sdapi/v1/memory").json()["ram"]
    # sysconf asks the kernel directly (sysinfo), not /proc/meminfo: an independent figure.
    assert ram["total"] == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < ram["free"] <= ram["total"] and ram["used"] == ram["total"] - ram["free"]


@pytest.mark.parametrize("path, body, words", [
    ("/sdapi/v1/img2img", {**TINY, "init_images": ["aGVsbG8="]}, "PNG, JPEG"),
    ("/sdapi/v1/png-info", {"image": "aGVsbG8="}, "PNG, JPEG"),
    ("/sdapi/v1/options", {"sd_model_checkpoint": "a\x00b"}, "NUL byte"),
])
def test_messages_say_what_is_wrong_without_internal_reprs(client, path, body, words):
    r = client.post(path, json=body)
    assert r.status_code == 422 and words in r.text, r.text
    assert "_io.BytesIO" not in r.text and " at 0x" not in r.text


def test_a_full_job_database_is_507_not_500(settings, engine, tmp_path, monkeypatch):
    import sqlite3

    from fastapi.testclient import TestClient

    from lorastudio.interfaces.api.server import create_app

    data = Path(settings.projects_dir) / "datasets" / "d"
    data.mkdir(parents=True)
    app = create_app(settings, engine=engine, poll_interval_s=0.05)

    def full(*_a, **_k):
        raise sqlite3.OperationalError("database or disk is full")  # SQLite's own text for SQLITE_FULL

    with TestClient(app, base_url="http://127.0.0.1:7860", raise_server_exceptions=False) as c:
        monkeypatch.setattr(app.state.api.store, "submit", full)
        r = c.post("/v1/trainings", json={"images": str(data), "trigger": "zz", "base": "tiny"})
    assert r.status_code == 507 and r.json()["detail"].startswith("no space left on"), r.text
