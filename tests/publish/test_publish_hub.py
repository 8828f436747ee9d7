"""`lorastudio publish` with the real huggingface_hub client against a fake Hub on 127.0.0.1.

The version folder is a real (tiny) training run with its report, so the files, the card and
the diffusers LoRA are the real ones."""

from __future__ import annotations

import io
import json
import logging
import socket
import sqlite3

import pytest

TOKEN = "hf_testtokenQ7xZ9secretvalue0123456789"
OTHER = "hf_readonlytokenQ7xZ9secret987654321"
USERS = {TOKEN: {"name": "alice", "orgs": ["stickers-club"]}, OTHER: {"name": "bob", "role": "read"}}
REQUIRED = {"world.safetensors", "pytorch_lora_weights.safetensors", "training_config.json", "report.json",
            "README.md", "images/report.png"}


@pytest.fixture(scope="module")
def version(tmp_path_factory):
    from lorastudio.core.settings import StudioSettings
    from lorastudio.services.report import write_report
    from lorastudio.testing.tiny_sd import save_sd1_single_file, tiny_sd1_pipeline
    from lorastudio.training.api import train
    from lorastudio.training.dataset.fixtures import draw_sticker_dataset

    root = tmp_path_factory.mktemp("publish")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    save_sd1_single_file(tiny_sd1_pipeline(0), root / "models" / "Stable-diffusion" / "tiny.safetensors")
    draw_sticker_dataset(root / "data", n=3, size=64)
    result = train(dict(images=root / "data", trigger="DeltamonStamp", base="tiny", steps=2, resolution=[64], rank=2,
                        seed=1, batch_size=1, models_dir=root / "models", projects_dir=root / "projects",
                        project="world", sample_every=1, sample_steps=2))
    write_report(result.version_dir, StudioSettings(models_dir=root / "models", device="cpu"),
                 {"seeds": 1, "weights": (0.0, 1.0), "steps": 2})
    return result.version_dir


@pytest.fixture
def hub(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from lorastudio.testing.fake_hub import FakeHub

    # the suite runs offline (conftest); huggingface_hub reads these once, at import
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with FakeHub(USERS) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        yield fake


def _cli(*args):
    from typer.testing import CliRunner

    from lorastudio.interfaces.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _scan_for_token(blobs: dict[str, bytes]) -> list[str]:
    return [name for name, data in blobs.items() if TOKEN.encode() in data]


def test_publish_uploads_every_file_in_one_commit_and_the_card_parses(hub, version, tmp_path, caplog):
    from huggingface_hub import ModelCard

    from lorastudio.core.png_text import read_infotext

    caplog.set_level(logging.DEBUG)
    desc = "デルタモンのステッカー LoRA です。 Deltamon sticker LoRA."
    preview = _cli("publish", version, "--repo", "alice/deltamon", "--to-folder", tmp_path / "preview",
                   "--description", desc, "--base-model-id", "stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert preview.exit_code == 0, preview.output
    assert hub.requests == []  # the dry run touches no network
    out = _cli("publish", version, "--repo", "alice/deltamon", "--description", desc, "--yes",
               "--base-model-id", "stable-diffusion-v1-5/stable-diffusion-v1-5", "--commit-message", "first LoRA")
    assert out.exit_code == 0, out.output
    repo = hub.repos["alice/deltamon"]
    assert len(repo.commits) == 1 and repo.commits[0]["summary"] == "first LoRA"
    files = repo.branches["main"]

    # --to-folder wrote exactly what was uploaded
    local = {p.relative_to(tmp_path / "preview").as_posix(): p.read_bytes()
             for p in (tmp_path / "preview").rglob("*") if p.is_file()}
    assert local == files
    assert REQUIRED <= set(files)
    samples = [p for p in files if p.startswith("images/samples/")]
    report_pics = [p for p in files if p.startswith("images/report/")]
    assert samples and len(report_pics) == 2 * 5  # weights 0 and 1 x 5 prompts x 1 seed
    # bytes: the LoRA files as written by training; PNGs keep their infotext
    assert files["world.safetensors"] == (version / "world.safetensors").read_bytes()
    assert files["pytorch_lora_weights.safetensors"] == (version / "diffusers" /
                                                         "pytorch_lora_weights.safetensors").read_bytes()
    assert "DeltamonStamp" in read_infotext(io.BytesIO(files[samples[0]]))
    # no local absolute path in the config or the report
    config = json.loads(files["training_config.json"])
    assert config["images"] == "data" and config["projects_dir"] == "projects" and config["models_dir"] == "models"
    assert str(tmp_path.parent) not in files["training_config.json"].decode()
    assert str(version) not in files["report.json"].decode()

    card = ModelCard(files["README.md"].decode())
    data = card.data.to_dict()
    assert data["base_model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert data["license"] == "creativeml-openrail-m" and data["instance_prompt"] == "DeltamonStamp"
    assert {"text-to-image", "lora", "diffusers", "template:sd-lora", "stable-diffusion"} <= set(data["tags"])
    assert data["widget"] and all(w["output"]["url"] in files for w in data["widget"])
    assert card.text.lstrip().startswith(desc)
    assert "<lora:world:" in card.text and "load_lora_weights(\"alice/deltamon\")" in card.text
    assert "![weight sweep](images/report.png)" in card.text and "| rank | 2 |" in card.text

    # the token: in no uploaded file, no output, no log; only in the Authorization headers
    assert _scan_for_token(files) == []
    assert TOKEN not in out.output and TOKEN not in preview.output and TOKEN not in caplog.text
    assert all(TOKEN.encode() not in r.body for r in hub.requests)
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.requests)


def test_diffusers_reads_the_uploaded_lora(hub, version, tmp_path):
    from lorastudio.testing.tiny_sd import tiny_sd1_pipeline

    assert _cli("publish", version, "--repo", "alice/dl", "--yes").exit_code == 0
    folder = tmp_path / "download"
    folder.mkdir()
    (folder / "pytorch_lora_weights.safetensors").write_bytes(
        hub.repos["alice/dl"].branches["main"]["pytorch_lora_weights.safetensors"])
    import torch
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    pipe = tiny_sd1_pipeline(0)
    pipe.load_lora_weights(str(folder))  # no weight_name: the default file name is found
    adapter = pipe.get_list_adapters()["unet"][0]
    loaded = get_peft_model_state_dict(pipe.unet, adapter_name=adapter)
    uploaded = {k[len("unet."):]: v for k, v in load_file(str(folder / "pytorch_lora_weights.safetensors")).items()
                if k.startswith("unet.")}
    # every uploaded UNet LoRA tensor landed on the model, unchanged
    assert uploaded and set(uploaded) == set(loaded)
    assert all(torch.equal(loaded[k].float(), uploaded[k].float()) for k in uploaded)


def test_revision_private_and_card_without_a_known_base(hub, version):
    from huggingface_hub import ModelCard

    out = _cli("publish", version, "--repo", "stickers-club/deltamon", "--private", "--revision", "v1", "--yes")
    assert out.exit_code == 0, out.output
    repo = hub.repos["stickers-club/deltamon"]
    assert repo.private and repo.commits[0]["branch"] == "v1" and repo.branches["main"] == {}
    card = ModelCard(repo.branches["v1"]["README.md"].decode())
    assert "base_model" not in card.data.to_dict() and "--base-model-id" in card.text


def test_no_token_fails_before_any_work(hub, version, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    out = _cli("publish", version, "--repo", "alice/x", "--yes")
    assert out.exit_code == 2 and "no Hugging Face token" in out.output
    assert hub.requests == []


def test_rejected_token_and_no_write_access_leave_the_repo_unchanged(hub, version, monkeypatch):
    assert _cli("publish", version, "--repo", "alice/keep", "--yes").exit_code == 0
    before = hub.snapshot()

    monkeypatch.setenv("HF_TOKEN", "hf_wrongtoken000000000000000000000")
    out = _cli("publish", version, "--repo", "alice/keep", "--yes")
    assert out.exit_code == 2 and "token rejected" in out.output
    assert "hf_wrongtoken" not in out.output

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = _cli("publish", version, "--repo", "someone-else/keep", "--yes")
    assert out.exit_code == 2 and "no write access" in out.output and "someone-else" in out.output

    monkeypatch.setenv("HF_TOKEN", OTHER)  # read-only token in its own namespace
    out = _cli("publish", version, "--repo", "bob/keep", "--yes")
    assert out.exit_code == 2 and "read-only" in out.output
    assert hub.snapshot() == before and "someone-else/keep" not in hub.repos and "bob/keep" not in hub.repos


def test_a_failed_commit_leaves_the_repo_as_it_was(hub, version):
    assert _cli("publish", version, "--repo", "alice/atomic", "--yes").exit_code == 0
    before = hub.snapshot()
    hub.fail_commit_with = 500
    out = _cli("publish", version, "--repo", "alice/atomic", "--yes", "--commit-message", "second")
    assert out.exit_code == 2 and "nothing was published" in out.output
    assert hub.snapshot() == before and len(hub.repos["alice/atomic"].commits) == 1


def test_network_down_is_a_clear_error(hub, version, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    out = _cli("publish", version, "--repo", "alice/offline", "--yes")
    assert out.exit_code == 2 and "cannot reach the Hub" in out.output and "nothing was published" in out.output
    assert "alice/offline" not in hub.repos


def test_http_api_publishes_a_finished_training_and_keeps_the_token_out_of_the_job_database(hub, version, tmp_path):
    from fastapi.testclient import TestClient

    from lorastudio.core.settings import StudioSettings
    from lorastudio.interfaces.api.server import create_app
    from lorastudio.services.jobs.store import SqliteJobStore

    projects = version.parent.parent.parent
    settings = StudioSettings(models_dir=tmp_path / "m", outdir=tmp_path / "o", projects_dir=projects, device="cpu",
                              include_bundled=False)
    db = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(db)
    job = store.submit("training", {"config": {"trigger": "DeltamonStamp"}})
    assert store.claim_next("test-worker", ["training"]).id == job.id
    assert store.complete(job.id, "test-worker", {"version_dir": str(version)})
    app = create_app(settings, store=store)
    with TestClient(app, base_url="http://127.0.0.1:7860") as c:
        dry = c.post(f"/v1/trainings/{job.id}/publish", json={"repo": "alice/api", "dry_run": True})
        assert dry.status_code == 200, dry.text
        assert REQUIRED <= set(dry.json()["files"]) and "alice/api" not in hub.repos
        r = c.post(f"/v1/trainings/{job.id}/publish", json={"repo": "alice/api", "description": "from the API"})
        assert r.status_code == 200, r.text
        assert REQUIRED <= set(hub.repos["alice/api"].branches["main"])
        rel = version.relative_to(projects).as_posix()
        r = c.post("/v1/publish", json={"repo": "alice/api2", "version_dir": rel})
        assert r.status_code == 200 and "alice/api2" in hub.repos, r.text
        bad = c.post("/v1/publish", json={"repo": "alice/api3", "version_dir": "../../etc"})
        assert bad.status_code == 422
        wrong = c.post(f"/v1/trainings/{job.id}/publish", json={"repo": "someone-else/x"})
        assert wrong.status_code == 400 and "no write access" in wrong.json()["detail"]
        assert TOKEN not in r.text + dry.text + wrong.text
    store.close()
    for path in [db, *db.parent.glob("jobs.sqlite3*")]:
        assert TOKEN.encode() not in path.read_bytes()
    with sqlite3.connect(db) as con:
        dump = "\n".join(con.iterdump())
    assert TOKEN not in dump


def test_http_api_takes_a_token_for_one_upload_and_never_sends_it_back(hub, version, tmp_path, monkeypatch, caplog):
    """The web page's Publish form sends the user's token once, in the body: it is used for that
    upload, and appears in no answer (a 422 included), no log and no uploaded file."""
    from fastapi.testclient import TestClient

    from lorastudio.core.settings import StudioSettings
    from lorastudio.interfaces.api.server import create_app

    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("HF_TOKEN")  # the server has no token of its own
    projects = version.parent.parent.parent
    rel = version.relative_to(projects).as_posix()
    settings = StudioSettings(models_dir=tmp_path / "m", outdir=tmp_path / "o", projects_dir=projects, device="cpu",
                              include_bundled=False)
    with TestClient(create_app(settings, run_worker=False), base_url="http://127.0.0.1:7860") as c:
        none = c.post("/v1/publish", json={"repo": "alice/tok", "version_dir": rel})
        assert none.status_code == 400 and "no Hugging Face token" in none.json()["detail"]
        ok = c.post("/v1/publish", json={"repo": "alice/tok", "version_dir": rel, "token": TOKEN})
        assert ok.status_code == 200, ok.text
        assert REQUIRED <= set(hub.repos["alice/tok"].branches["main"])
        rejected = c.post("/v1/publish", json={"repo": "alice/tok", "version_dir": rel, "token": OTHER + "x"})
        assert rejected.status_code == 400 and "token rejected" in rejected.json()["detail"]
        missing = c.post("/v1/publish", json={"version_dir": rel, "token": TOKEN})  # no repo: the body is echoed
        assert missing.status_code == 422 and "repo" in missing.text
        answers = ok.text + rejected.text + missing.text
    assert TOKEN not in answers and OTHER not in answers and TOKEN not in caplog.text
    assert _scan_for_token(hub.repos["alice/tok"].branches["main"]) == []


def test_report_command_line_writes_the_report_beside_the_lora(version, tmp_path):
    import shutil

    copy = tmp_path / "v"
    shutil.copytree(version, copy, ignore=shutil.ignore_patterns("report*", "cache", "checkpoints"))
    out = _cli("report", copy, "--seeds", "1", "--steps", "1", "--scorer", "pixel")
    assert out.exit_code == 0, out.output
    report = json.loads((copy / "report.json").read_text())
    assert report["weights"] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.25] and len(report["pictures"]) == 6 * 5
    assert "recommended weight" in out.output and str(copy / "report.json") in out.output
    bad = _cli("report", tmp_path / "nowhere")
    assert bad.exit_code == 2 and "config.json" in bad.output
