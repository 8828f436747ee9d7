"""`/v1/datasets/caption` and `/v1/datasets/captions`: caption on the server, edit, write back."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from lorastudio.testing.tiny_interrogators import write_tiny_wd14


@pytest.fixture
def world(tmp_path):
    from lorastudio.core.settings import StudioSettings
    from lorastudio.interfaces.api.server import create_app

    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    write_tiny_wd14(models / "interrogators" / "wd-tiny", size=4)
    data = tmp_path / "datasets" / "stickers"
    data.mkdir(parents=True)
    Image.new("RGB", (64, 64), (255, 0, 0)).save(data / "red.png")
    (data / "notes.md").write_text("not a picture")
    settings = StudioSettings(models_dir=models, outdir=tmp_path / "out", projects_dir=tmp_path / "projects",
                              device="cpu", include_bundled=False)
    app = create_app(settings, dataset_roots=[tmp_path / "datasets"])
    with TestClient(app, base_url="http://127.0.0.1:7860") as client:
        yield client, data, tmp_path


def test_preview_then_write_then_edit(world):
    client, data, _ = world
    r = client.post("/v1/datasets/caption", json={"images": str(data), "tagger": "wd-tiny", "trigger": "Zed",
                                                  "dry_run": True, "max_tags": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dry_run"] is True and not (data / "red.txt").exists()
    [entry] = body["entries"]
    assert entry["image"] == "red.png" and entry["action"] == "write"
    assert entry["caption"].startswith("Zed, ") and body["tag_frequency"]["Zed"] == 1
    r = client.post("/v1/datasets/caption", json={"images": str(data), "tagger": "wd-tiny", "trigger": "Zed",
                                                  "max_tags": 2})
    assert r.status_code == 200 and (data / "red.txt").read_text(encoding="utf-8") == entry["caption"] + "\n"
    r = client.put("/v1/datasets/captions", json={"images": str(data), "captions": {"red.png": "Zed,  red\nblob"}})
    assert r.status_code == 200 and r.json() == {"written": ["red.txt"]}
    assert (data / "red.txt").read_text(encoding="utf-8") == "Zed, red, blob\n"


def test_paths_are_refused(world):
    client, data, tmp_path = world
    r = client.post("/v1/datasets/caption", json={"images": str(data), "tagger": str(tmp_path / "models")})
    assert r.status_code == 422 and "not a path" in r.text
    r = client.post("/v1/datasets/caption", json={"images": str(tmp_path / "models"), "tagger": "wd-tiny"})
    assert r.status_code == 422 and "images" in r.text
    r = client.put("/v1/datasets/captions", json={"images": str(data),
                                                  "captions": {"red.png": "ok", "../../x.png": "bad"}})
    assert r.status_code == 422 and not (data / "red.txt").exists()  # nothing written when one edit is bad
    r = client.put("/v1/datasets/captions", json={"images": str(data), "captions": {"notes.md": "bad"}})
    assert r.status_code == 422 and "not a picture" in r.text


def test_broken_model_is_a_clear_400(world):
    client, data, tmp_path = world
    write_tiny_wd14(tmp_path / "models" / "interrogators" / "no-csv", with_csv=False)
    r = client.post("/v1/datasets/caption", json={"images": str(data), "tagger": "no-csv"})
    assert r.status_code == 400 and "selected_tags.csv: missing" in r.json()["detail"]
    assert not (data / "red.txt").exists()
