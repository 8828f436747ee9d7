"""The small endpoints the page uses, called directly (they work without the page)."""

from __future__ import annotations

import io
import zipfile

import pytest


@pytest.fixture
def client(web_models, tmp_path):
    from fastapi.testclient import TestClient

    from lorastudio.core.settings import StudioSettings
    from lorastudio.interfaces.api.server import create_app

    settings = StudioSettings(models_dir=web_models, outdir=tmp_path / "outputs", projects_dir=tmp_path / "projects",
                              device="cpu", include_bundled=False)
    with TestClient(create_app(settings, poll_interval_s=0.05), base_url="http://127.0.0.1:7860") as c:
        c.projects = tmp_path / "projects"
        yield c


def _new(client) -> str:
    r = client.post("/v1/datasets")
    assert r.status_code == 201
    return r.json()["dataset_id"]


def test_upload_check_caption_and_delete(client, helpers):
    ds = _new(client)
    files = [("files", ("a.png", helpers.png((64, 64), (200, 0, 0), pattern=50), "image/png")),
             ("files", ("b.png", helpers.png((64, 64), (0, 0, 200), mode="RGBA", pattern=90), "image/png")),
             ("files", ("a.txt", b"a red thing", "text/plain")),
             ("files", ("copy.png", helpers.png((64, 64), (200, 0, 0), pattern=50), "image/png"))]
    report = client.post(f"/v1/datasets/{ds}/files?trigger=zzq&resolution=64", files=files).json()
    by_name = {f["name"]: f for f in report["files"]}
    assert set(by_name) == {"a.png", "b.png", "copy.png"}
    assert by_name["a.png"]["caption"] == "a red thing" and by_name["a.png"]["verdict"] == "ok"
    assert by_name["a.png"]["trained_caption"].startswith("zzq")
    assert by_name["b.png"]["transparent"] is True and by_name["a.png"]["transparent"] is False
    # copy.png is byte-identical to a.png: one of the two is reported, and without the server's paths.
    dup = [p for f in report["files"] for p in f["problems"] if p["code"] == "duplicate"]
    assert len(dup) == 1 and str(client.projects) not in dup[0]["message"]
    picture = client.get(by_name["a.png"]["url"])
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"

    assert client.put(f"/v1/datasets/{ds}/captions/b.png", json={"caption": "blue, round"}).status_code == 200
    folder = client.projects / "datasets" / ds
    assert (folder / "b.txt").read_text() == "blue, round\n"
    assert client.put(f"/v1/datasets/{ds}/captions/b.png", json={"caption": "  "}).status_code == 200
    assert not (folder / "b.txt").exists()
    assert client.delete(f"/v1/datasets/{ds}/files/copy.png").status_code == 200
    assert not (folder / "copy.png").exists()
    again = client.get(f"/v1/datasets/{ds}?trigger=zzq&resolution=64").json()
    assert again["errors"] == 0 and again["usable"] == 2


def test_bad_uploads_and_paths_are_refused(client, helpers):
    ds = _new(client)
    png = helpers.png((64, 64), (1, 2, 3))
    for name in (".hidden.png", "a:b.png"):
        r = client.post(f"/v1/datasets/{ds}/files", files=[("files", (name, png, "image/png"))])
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "files", r.text
    # A zip with an entry escaping the folder is refused whole.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("ok.png", png)
        z.writestr("../evil.png", png)
    r = client.post(f"/v1/datasets/{ds}/files", files=[("files", ("set.zip", buf.getvalue(), "application/zip"))])
    assert r.status_code == 422
    folder = client.projects / "datasets" / ds
    assert list(folder.iterdir()) == [] and not (client.projects / "datasets" / "evil.png").exists()
    # A good zip lands in the dataset, subfolders kept.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("10_cat/one.png", png)
        z.writestr("10_cat/one.txt", "one")
    r = client.post(f"/v1/datasets/{ds}/files", files=[("files", ("set.zip", buf.getvalue(), "application/zip"))])
    assert [f["name"] for f in r.json()["files"]] == ["10_cat/one.png"]
    (folder / "page.html").write_text("<script>alert(1)</script>")
    assert client.get(f"/v1/datasets/{ds}/files/page.html").status_code == 422  # only pictures are served
    assert client.get(f"/v1/datasets/{ds}/files/..%2F..%2Fjobs.sqlite3").status_code in (404, 422)
    assert client.put(f"/v1/datasets/{ds}/captions/%2E%2E/x.png", json={"caption": "x"}).status_code in (404, 422)
    assert client.get("/v1/datasets/upload-" + "0" * 32).status_code == 404
    assert client.get("/v1/datasets/not-an-id").status_code == 422


def test_schema_estimate_base_models_and_lora_cards(client):
    schema = client.get("/v1/training-config/schema").json()
    assert {"trigger", "base", "rank", "optimizer"} <= set(schema["properties"])
    assert not {"projects_dir", "models_dir", "images"} & set(schema["properties"])
    assert set(schema["required"]) == {"trigger", "base"}
    from lorastudio.testing.tiny_sd import tiny_sd1_pipeline

    bases = client.get("/v1/base-models").json()
    assert [(b["title"].split(" [")[0], b["family"]) for b in bases] == [("tiny.safetensors", "sd1")]
    # The native size read from the header is the size of the pipeline the file was saved from.
    pipe = tiny_sd1_pipeline(0)
    assert bases[0]["native_size"] == pipe.unet.config.sample_size * pipe.vae_scale_factor
    # The family's preset (kohya's SD 1.5 values) at the file's own size: what empty fields get.
    native = bases[0]["native_size"]
    assert {k: bases[0]["preset"][k] for k in ("rank", "lr", "steps", "resolution")} == \
        {"rank": 16, "lr": 1e-4, "steps": 1000, "resolution": [native]}
    est = client.post("/v1/training-estimate", json={"base": "tiny", "steps": 10}).json()
    assert est["source"] == "none" and est["seconds"] is None and est["model_bytes"] > 0
    # Memory: every tensor of the base in float32 on the CPU, counted here from the pipeline itself.
    params = sum(p.numel() for name in ("unet", "vae", "text_encoder") for p in getattr(pipe, name).parameters())
    mem = est["memory"]
    assert mem["device"] == "cpu" and mem["dtype"] == "float32"
    assert abs(mem["weights_bytes"] - 4 * params) <= 4 * 1000, (mem["weights_bytes"], 4 * params)  # + buffers
    assert mem["total_bytes"] == sum(mem[k] for k in ("weights_bytes", "lora_bytes", "optimizer_bytes",
                                                      "activations_bytes"))
    bigger = client.post("/v1/training-estimate", json={"base": "tiny", "rank": 32, "batch_size": 2,
                                                        "resolution": native * 2}).json()["memory"]
    assert bigger["lora_params"] == 2 * mem["lora_params"]  # the preset's rank is 16
    assert bigger["activations_bytes"] == 8 * mem["activations_bytes"]  # batch 2, four times the pixels
    r = client.post("/v1/training-estimate", json={"base": "tiny", "optimizer": "sgd"})
    assert r.status_code == 422 and "optimizer" in r.text
    r = client.post("/v1/training-estimate", json={"base": "nope", "steps": 10})
    assert r.status_code == 404
    cards = {c["name"]: c for c in client.get("/v1/loras").json()}
    assert cards["evil"]["rank"] == 4 and cards["evil"]["family"] == "sd_v1"
    assert cards["evil"]["trigger_words"][1] == "plain tag"  # by frequency
    assert "ss_tag_frequency" not in cards["evil"]["training"]


def test_trigger_words_prefer_modelspec_trigger_phrase():
    from lorastudio.interfaces.web.lora_cards import trigger_words

    assert trigger_words({"modelspec.trigger_phrase": "zzcat, cat ears", "ss_tag_frequency": {"a": {"x": 9}}}) == \
        ["zzcat", "cat ears"]
    assert trigger_words({"ss_tag_frequency": {"a": {"x": 1, "y": 3}, "b": {"x": 5}}}) == ["x", "y"]
    assert trigger_words({"ss_tag_frequency": "not json"}) == []


def test_native_size_from_the_header_matches_the_saved_pipeline(tmp_path):
    """The size the page offers by default, for SD 1.x and SDXL, read from the file alone."""
    from lorastudio.interfaces.web.training_aids import _family_and_size
    from lorastudio.testing.tiny_sd import save_sdxl_single_file, tiny_sdxl_pipeline

    pipe = tiny_sdxl_pipeline(0)
    path = save_sdxl_single_file(pipe, tmp_path / "xl.safetensors")
    family, size = _family_and_size(path)
    assert family.name == "sdxl"
    assert size == pipe.unet.config.sample_size * pipe.vae_scale_factor
