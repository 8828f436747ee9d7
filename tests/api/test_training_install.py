"""A training run through the queue installs its LoRA into models/Lora; Japanese names work end to end."""

from __future__ import annotations

import base64
import json
import time


def _wait_done(c, rid: str, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = c.get(f"/v1/trainings/{rid}/status", params={"logs": 1}).json()
        if status["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
            return status
        time.sleep(0.05)
    raise AssertionError("the training did not finish")


def test_queue_installs_the_lora_and_its_japanese_tag_generates(make_client, settings, models_root, imgs):
    from lorastudio.core.infotext import parse_infotext

    name, version = "自作LORA", "第一版"
    folder = settings.projects_dir / "datasets" / "写真"
    folder.mkdir(parents=True)
    for i, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        (folder / f"{i}.png").write_bytes(base64.b64decode(imgs.png((64, 64), color=color)))
        (folder / f"{i}.txt").write_text(f"{name} square", encoding="utf-8")
    c = make_client()
    body = {"images": "datasets/写真", "trigger": name, "project": name, "version": version, "base": "tiny",
            "steps": 2, "resolution": 64, "rank": 2}
    r = c.post("/v1/trainings", json=body)
    assert r.status_code == 202, r.text
    done = _wait_done(c, r.json()["request_id"])
    assert done["status"] == "COMPLETED", done.get("reason")

    installed = models_root / "Lora" / f"{name}.safetensors"
    trained = settings.projects_dir / name / "versions" / version / f"{name}.safetensors"
    assert installed.read_bytes() == trained.read_bytes()
    result = c.get(f"/v1/trainings/{done['request_id']}/result").json()
    assert (result["installed_lora"], result["lora_tag"]) == (str(installed), f"<lora:{name}:1>")
    # the log reaches API clients with the server's folders named, not spelled out (<models>)
    assert f"installed as <models>/Lora/{name}.safetensors; use it with <lora:{name}:1>" in \
        [line["message"] for line in done["logs"]], done["logs"]

    loras = [entry["name"] for entry in c.get("/sdapi/v1/loras").json()]
    assert name in loras
    r = c.post("/sdapi/v1/txt2img", json={"prompt": f"{name} square {result['lora_tag']}", "steps": 2,
                                          "width": 64, "height": 64, "seed": 1})
    assert r.status_code == 200, r.text
    fields = parse_infotext(json.loads(r.json()["info"])["infotexts"][0])
    assert fields["Lora hashes"].startswith(f"{name}: ")
