"""The /sdapi/v1 routes against a tiny real SD 1.x checkpoint."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

from lorastudio.testing.pixels import assert_same_picture

# What webuiapi 0.9 sends for txt2img(prompt=..., steps=2, ...): every field, most at defaults.
WEBUIAPI_TXT2IMG = {
    "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0,
    "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "",
    "hr_negative_prompt": "", "denoising_strength": 0.7, "firstphase_width": 0, "firstphase_height": 0,
    "prompt": "a red cat", "styles": [], "seed": 1234, "subseed": -1, "subseed_strength": 0.0,
    "seed_resize_from_h": 0, "seed_resize_from_w": 0, "batch_size": 2, "n_iter": 2, "steps": 2, "cfg_scale": 7.0,
    "width": 32, "height": 32, "restore_faces": False, "tiling": False, "do_not_save_samples": False,
    "do_not_save_grid": False, "negative_prompt": "blurry", "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0,
    "s_noise": 1, "override_settings": {}, "override_settings_restore_afterwards": True, "sampler_name": "Euler a",
    "scheduler": "automatic", "sampler_index": "Euler a", "script_name": None, "script_args": [],
    "send_images": True, "save_images": False, "alwayson_scripts": {},
}
SMALL = {"prompt": "a cat", "steps": 2, "width": 32, "height": 32, "seed": 7, "sampler_name": "Euler"}


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def _loc(response) -> list[str]:
    return [".".join(str(p) for p in d["loc"]) for d in response.json()["detail"]]


@pytest.mark.pixels
def test_txt2img_accepts_a_full_webuiapi_payload_and_answers_like_a1111(client):
    r = client.post("/sdapi/v1/txt2img", json=WEBUIAPI_TXT2IMG)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["images"]) == 4
    assert body["parameters"]["prompt"] == "a red cat" and body["parameters"]["n_iter"] == 2
    info = json.loads(body["info"])
    assert info["seed"] == 1234 and info["all_seeds"] == [1234, 1235, 1236, 1237]
    assert info["sampler_name"] == "Euler a" and info["steps"] == 2 and info["cfg_scale"] == 7.0
    assert (info["width"], info["height"], info["batch_size"], info["clip_skip"]) == (32, 32, 2, 1)
    assert info["sd_model_name"] == "tiny" and len(info["sd_model_hash"]) == 10
    assert info["negative_prompt"] == "blurry" and info["index_of_first_image"] == 0
    assert len(info["infotexts"]) == 4 and "Seed: 1236" in info["infotexts"][2]
    assert f"Model hash: {info['sd_model_hash']}" in info["infotexts"][0]
    # The PNGs carry their infotext, as A1111's do: png-info reads it back.
    back = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + body["images"][3]}).json()
    assert back["info"] == info["infotexts"][3]
    assert back["parameters"]["Prompt"] == "a red cat" and str(back["parameters"]["Seed"]) == "1237"
    assert Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).size == (32, 32)
    # Image 3 of a seed-1234 run is image 1 of a seed-1236 run, whatever the batching: the same noise,
    # through kernels that round a batch of 2 and a batch of 1 differently (lorastudio.testing.pixels).
    alone = client.post("/sdapi/v1/txt2img", json={**WEBUIAPI_TXT2IMG, "seed": 1236, "batch_size": 1, "n_iter": 1})
    assert_same_picture(_pixels(alone.json()["images"][0]), _pixels(body["images"][2]))
    assert not np.array_equal(_pixels(body["images"][0]), _pixels(body["images"][1]))


@pytest.mark.parametrize("prompt", ["a cat <lora:any:1e39>", "a cat <lora:any:0.5:-40>"])
def test_a_lora_weight_past_the_limit_is_a_422_and_the_server_draws_as_before(client, prompt):
    before = client.post("/sdapi/v1/txt2img", json=SMALL)
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": prompt})
    assert r.status_code == 422, r.text
    assert _loc(r) == ["body.prompt"] and "outside ±10" in r.json()["detail"][0]["msg"]
    assert prompt.split(" ", 2)[2] in r.json()["message"]  # the tag is named
    after = client.post("/sdapi/v1/txt2img", json=SMALL)
    assert np.array_equal(_pixels(after.json()["images"][0]), _pixels(before.json()["images"][0]))


@pytest.mark.parametrize("extra, field", [
    ({"enable_hr": True, "hr_checkpoint_name": "other.safetensors"}, "hr_checkpoint_name"),
    ({"enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"}, "hr_upscaler"),
    ({"restore_faces": True}, "restore_faces"),
    ({"tiling": True}, "tiling"),
    ({"styles": ["anime"]}, "styles"),  # no such style in the (absent) styles.csv
    ({"script_name": "prompt matrix"}, "script_name"),  # the X/Y/Z plot is the one script served
    ({"script_name": "x/y/z plot", "script_args": [26 + 40]}, "script_args[0]"),  # no such axis
    ({"script_name": "x/y/z plot", "script_args": [24, "0, 1"]}, "script_args[0]"),  # Eta: not offered yet
    ({"script_name": "x/y/z plot", "script_args": [4, "2, 5000"]}, "steps"),  # a cell's value out of range
    ({"script_name": "x/y/z plot", "script_args": [4, "2, x"]}, "script_args[1]"),
    ({"script_name": "x/y/z plot", "script_args": [9, "Euler, Euler b", [], 0, "", [], 0, "", [], True, False,
                                                   False, False, False, False, False, 0, True]}, "sampler_name"),
    ({"alwayson_scripts": {"ADetailer": {"args": []}}}, "alwayson_scripts.ADetailer"),  # ControlNet is served
    ({"refiner_checkpoint": "other"}, "refiner_checkpoint"),
    ({"firstphase_width": 64}, "firstphase_width"),
    ({"sampler_name": "Euler a", "eta": 0.5}, "eta"),
    ({"sampler_name": "Euler", "s_churn": 0.3}, "s_churn"),
    ({"override_settings": {"eta_noise_seed_delta": 31337}}, "override_settings.eta_noise_seed_delta"),
    ({"override_settings": {"samples_format": "jpg"}}, "override_settings.samples_format"),
    ({"sampler_name": "Euler b"}, "sampler_name"),
    ({"scheduler": "zigzag"}, "scheduler"),
    ({"width": 60}, "width"),
    ({"n_iter": 0}, "n_iter"),
    ({"lora_scale": 1.0}, "lora_scale"),  # unknown fields are refused, not ignored
])
def test_values_that_cannot_be_honoured_are_422_naming_the_field(client, extra, field):
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, **extra})
    assert r.status_code == 422, r.text
    assert any(loc.endswith(field) for loc in _loc(r)), r.text


def test_values_without_effect_in_a1111_either_are_accepted(client):
    # s_churn does nothing with DPM++ 2M in A1111; hires settings do nothing while enable_hr is false.
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "DPM++ 2M", "scheduler": "karras",
                                                "s_churn": 0.5, "hr_scale": 4, "hr_upscaler": "Lanczos",
                                                "send_images": False})
    assert r.status_code == 200, r.text
    assert r.json()["images"] == [] and "Schedule type: Karras" in json.loads(r.json()["info"])["infotexts"][0]


@pytest.mark.parametrize("raw, field", [
    ('{"prompt": "x", "steps": 2, "width": 64, "height": 64, "cfg_scale": NaN}', "cfg_scale"),
    ('{"prompt": "x", "steps": 2, "width": 64, "height": 64, "cfg_scale": Infinity}', "cfg_scale"),
    ('{"prompt": "x", "denoising_strength": -Infinity}', "denoising_strength"),
    ('{"prompt": "x", "override_settings": {"CLIP_stop_at_last_layers": NaN}}', "override_settings"),
    ('{"prompt": "x", "comments": {"a": [1, Infinity]}}', "comments"),
])
def test_nan_and_inf_are_422_in_every_numeric_field(client, raw, field):
    r = client.post("/sdapi/v1/txt2img", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert any(field in loc for loc in _loc(r)), r.text
    assert client.post("/sdapi/v1/options", content='{"x": NaN}',
                       headers={"content-type": "application/json"}).status_code == 422


def test_png_info_returns_items_and_parsed_parameters_and_refuses_bombs(client, imgs):
    text = "a dog\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x768"
    r = client.post("/sdapi/v1/png-info", json={"image": imgs.png(text={"parameters": text, "Software": "x"})})
    body = r.json()
    assert r.status_code == 200 and body["info"] == text and body["items"] == {"Software": "x"}
    p = body["parameters"]
    assert p["Prompt"] == "a dog" and p["Negative prompt"] == "ugly" and str(p["Size-2"]) == "768"
    empty = client.post("/sdapi/v1/png-info", json={"image": imgs.png()}).json()
    assert empty == {"info": "", "items": {}, "parameters": {}}
    assert client.post("/sdapi/v1/png-info", json={"image": imgs.bomb()}).status_code == 422


def test_progress_interrupt_and_skip_during_a_generation(client):
    idle = client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None
    done: dict = {}
    job = threading.Thread(target=lambda: done.update(r=client.post(
        "/sdapi/v1/txt2img", json={**SMALL, "steps": 3, "n_iter": 40, "force_task_id": "t1"})))
    job.start()
    seen = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        snap = client.get("/sdapi/v1/progress").json()
        if snap["state"]["job_count"] == 40 and snap["state"]["job_no"] >= 2 and snap["current_image"]:
            seen = snap
            break
        time.sleep(0.02)
    assert seen is not None, "never saw the generation running"
    assert 0 < seen["progress"] < 1 and seen["eta_relative"] >= 0
    assert Image.open(io.BytesIO(base64.b64decode(seen["current_image"]))).size == (32, 32)
    assert client.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()["current_image"] is None
    assert client.post("/sdapi/v1/skip").status_code == 200  # skips one batch, the run goes on
    assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 40
    assert client.post("/sdapi/v1/interrupt").json() == {}
    job.join(60)
    info = json.loads(done["r"].json()["info"])
    assert info["interrupted"] is True and 2 <= len(info["all_seeds"]) < 80
    assert client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0


def test_options_are_per_app_validated_and_drive_generation(client, make_client, settings):
    opts = client.get("/sdapi/v1/options").json()
    assert opts["sd_model_checkpoint"].startswith("tiny.safetensors") and opts["CLIP_stop_at_last_layers"] == 1
    assert client.post("/sdapi/v1/options", json={"my_extension_flag": [1, "a"], "CLIP_stop_at_last_layers": 2,
                                                  "outdir_txt2img_samples": "mine"}).json() is None
    assert client.get("/sdapi/v1/options").json()["my_extension_flag"] == [1, "a"]
    assert "my_extension_flag" not in make_client().get("/sdapi/v1/options").json()  # never global
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "save_images": True})
    assert "Clip skip: 2" in json.loads(r.json()["info"])["infotexts"][0]
    saved = list((settings.outdir / "mine").rglob("*.png"))
    assert len(saved) == 1 and saved[0].name.endswith("-7.png")
    for bad in ("../escape", "/etc", "%2e%2e/x", "a/../../b"):
        r = client.post("/sdapi/v1/options", json={"outdir_txt2img_samples": bad})
        assert r.status_code == 422 and _loc(r) == ["body.outdir_txt2img_samples"], (bad, r.text)
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": "2"}).status_code == 422
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"}).status_code == 404
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny"})
    assert r.status_code == 200
    after = client.get("/sdapi/v1/options").json()
    assert after["sd_model_checkpoint"] == f"tiny.safetensors [{after['sd_checkpoint_hash'][:10]}]"


def test_save_images_with_a_batch_makes_an_a1111_grid(client, settings):
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "batch_size": 2, "save_images": True}).json()
    info = json.loads(r["info"])
    assert len(r["images"]) == 3 and info["index_of_first_image"] == 1
    assert Image.open(io.BytesIO(base64.b64decode(r["images"][0]))).size == (64, 32)
    assert len(list((settings.outdir / "txt2img-images").rglob("*.png"))) == 2
    assert len(list((settings.outdir / "txt2img-grids").rglob("*.png"))) == 1


def test_model_references_cannot_point_outside_the_models_folder(client, models_root, tmp_path):
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((models_root / "Stable-diffusion" / "tiny.safetensors").read_bytes())
    link = models_root / "Stable-diffusion" / "link-out.safetensors"
    link.symlink_to(outside)
    try:
        for ref in (str(outside), "../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", str(link), "~/x.safetensors"):
            r = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": ref}})
            assert r.status_code == 422, (ref, r.text)
            assert _loc(r) == ["body.override_settings.sd_model_checkpoint"], (ref, r.text)
            assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": ref}).status_code == 422
    finally:
        link.unlink()


def test_listings(client):
    models = client.get("/sdapi/v1/sd-models").json()
    assert [m["model_name"] for m in models] == ["tiny"]
    assert set(models[0]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert models[0]["filename"].endswith("tiny.safetensors")
    assert client.get("/sdapi/v1/sd-vae").json() == []
    samplers = {s["name"]: s for s in client.get("/sdapi/v1/samplers").json()}
    assert "k_dpmpp_2m" in samplers["DPM++ 2M"]["aliases"] and "Euler a" in samplers
    scheds = {s["name"]: s["label"] for s in client.get("/sdapi/v1/schedulers").json()}
    assert scheds["karras"] == "Karras" and scheds["automatic"] == "Automatic"
    loras = client.get("/sdapi/v1/loras").json()
    assert loras[0]["name"] == "mystyle" and loras[0]["alias"] == "MyStyle"
    assert loras[0]["metadata"]["ss_tag_frequency"] == {"img": {"cat": 3}}
    assert client.post("/sdapi/v1/refresh-loras").status_code == 200
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    emb = client.get("/sdapi/v1/embeddings").json()
    assert emb["loaded"] == {} and emb["skipped"]["bad-hands"]["vectors"] == 3
    assert emb["skipped"]["bad-hands"]["shape"] == 32
    assert [u["name"] for u in client.get("/sdapi/v1/upscalers").json()][0] == "None"
    assert {"name": "Latent"} in client.get("/sdapi/v1/latent-upscale-modes").json()
    mem = client.get("/sdapi/v1/memory").json()
    assert mem["ram"]["total"] > 0 and "cuda" in mem
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": ["x/y/z plot", "controlnet"],
                                                      "img2img": ["x/y/z plot", "controlnet"]}
    info = client.get("/sdapi/v1/script-info").json()
    assert [(s["name"], s["is_img2img"]) for s in info] == [("x/y/z plot", False), ("x/y/z plot", True)]
    assert [a["label"] for a in info[0]["args"]][:3] == ["X type", "X values", "X values"]
    assert len(info[0]["args"]) == 18 and info[0]["args"][0]["choices"][4] == "Steps"
    assert info[1]["args"][0]["choices"][25] == "Denoising"  # img2img's own list of axes


def test_infotext_field_fills_what_the_request_left_out(client):
    text = "from infotext\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 99, Size: 32x32"
    r = client.post("/sdapi/v1/txt2img", json={"infotext": text, "steps": 2})
    info = json.loads(r.json()["info"])
    assert (info["prompt"], info["seed"], info["cfg_scale"], info["steps"]) == ("from infotext", 99, 5.0, 2)


def test_xyz_plot_on_img2img_keeps_each_cell_as_the_plain_request_makes_it(client, settings):
    init = base64.b64encode(_png_bytes(Image.new("RGB", (32, 32), (200, 40, 40)))).decode()
    body = {**SMALL, "init_images": [init], "denoising_strength": 0.5}
    # A1111 1.10's img2img axis 25 is Denoising; draw legend, include sub-images, no sub-grids
    r = client.post("/sdapi/v1/img2img", json={**body, "script_name": "X/Y/Z plot", "save_images": True,
                                               "script_args": [25, "0.3, 0.6", [], 0, "", [], 0, "", [],
                                                               True, True, False]})
    assert r.status_code == 200, r.text
    out, info = r.json(), json.loads(r.json()["info"])
    assert len(out["images"]) == 3 and info["index_of_first_image"] == 1
    assert "X Type: Denoising, X Values: \"0.3, 0.6\"" in info["infotexts"][0]
    for b64, strength, text in zip(out["images"][1:], (0.3, 0.6), info["infotexts"][1:]):
        plain = client.post("/sdapi/v1/img2img", json={**body, "denoising_strength": strength}).json()
        assert np.array_equal(_pixels(b64), _pixels(plain["images"][0]))  # same engine call: exact
        assert text == json.loads(plain["info"])["infotexts"][0]
    grid = Image.open(io.BytesIO(base64.b64decode(out["images"][0])))
    assert grid.size[0] == 64 and grid.size[1] > 32  # two tiles side by side under their legend
    # save_images: the grid goes to the grids folder and the cells to the samples folder, as A1111
    assert len(list((settings.outdir / "img2img-grids").rglob("*.png"))) == 1
    assert len(list((settings.outdir / "img2img-images").rglob("*.png"))) == 2


def _png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
