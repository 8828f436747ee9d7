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


def test_caption_mask_and_crop_take_a_zip_like_the_dataset_ingest(world):
    import zipfile

    import numpy as np

    from lorastudio.testing.tiny_interrogators import write_tiny_u2net

    client, data, tmp_path = world
    write_tiny_u2net(tmp_path / "models" / "rembg" / "u2net.onnx", size=32)
    archive = data.parent / "set.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(data / "red.png", "10_sticker/red.png")
        with z.open("10_sticker/half.png", "w") as f:
            rgba = np.zeros((32, 64, 4), np.uint8)
            rgba[:, 40:, 3] = 255  # the subject is the opaque right part
            Image.fromarray(rgba, "RGBA").save(f, format="PNG")
    r = client.post("/v1/datasets/caption", json={"images": str(archive), "tagger": "wd-tiny"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "out"
    r = client.post("/v1/datasets/caption", json={"images": str(archive), "tagger": "wd-tiny", "trigger": "Zed",
                                                  "out": str(data.parent / "cap")})
    assert r.status_code == 200, r.text
    assert (data.parent / "cap" / "10_sticker" / "red.txt").read_text(encoding="utf-8").startswith("Zed, ")
    r = client.post("/v1/datasets/mask", json={"images": str(archive), "model": "u2net",
                                               "out": str(data.parent / "masked")})
    assert r.status_code == 200, r.text
    by_image = {m["image"]: m["source"] for m in r.json()["masks"]}
    assert by_image == {"10_sticker/half.png": "alpha", "10_sticker/red.png": "model"}
    assert (data.parent / "masked" / "10_sticker" / "red.mask.png").is_file()
    r = client.post("/v1/datasets/mask", json={"images": str(archive), "model": "../../etc/x",
                                               "out": str(data.parent / "m2")})
    assert r.status_code == 422 and not (data.parent / "m2").exists()
    r = client.post("/v1/datasets/crop", json={"images": str(archive), "out": str(data.parent / "crops"),
                                               "resolution": 64, "bucket_step": 8})
    assert r.status_code == 200, r.text
    assert sorted(c["image"] for c in r.json()["crops"]) == ["10_sticker/half.png", "10_sticker/red.png"]
    r = client.post("/v1/datasets/crop", json={"images": str(archive), "out": str(data.parent / "crops")})
    assert r.status_code == 422 and "not empty" in r.text  # never into a folder that has files
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == ["10_sticker/half.png", "10_sticker/red.png"]  # never changed
