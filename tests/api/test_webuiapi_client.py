"""The published `webuiapi` client against a real server process on 127.0.0.1."""

from __future__ import annotations

import httpx
import pytest

webuiapi = pytest.importorskip("webuiapi")

USER, PASSWORD = "studio", "pw-for-tests"


@pytest.fixture
def server(server_process, models_root, tmp_path):
    # The password travels in the environment, not on the command line (visible in `ps`).
    proc = server_process(["--models-dir", str(models_root), "--outdir", str(tmp_path / "outputs"),
                           "--projects-dir", str(tmp_path / "projects")],
                          env={"LORASTUDIO_API_AUTH": f"{USER}:{PASSWORD}", "OMP_NUM_THREADS": "1"})
    proc.wait_up(auth=(USER, PASSWORD))
    return proc


def test_webuiapi_against_a_real_server(server):
    # Without credentials a real process answers 401 on every route, docs included.
    for path in ("/sdapi/v1/sd-models", "/openapi.json", "/docs"):
        assert httpx.get(server.url + path, timeout=10).status_code == 401
    assert httpx.post(server.url + "/sdapi/v1/txt2img", json={}, timeout=10).status_code == 401

    api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=2,
                            username=USER, password=PASSWORD)
    models = api.get_sd_models()
    assert [m["model_name"] for m in models] == ["tiny"]
    assert [lo["alias"] for lo in api.get_loras()] == ["MyStyle"]

    result = api.txt2img(prompt="a tiny cat", negative_prompt="blurry", seed=77, width=32, height=32,
                         batch_size=2)
    assert len(result.images) == 2 and result.image.size == (32, 32)
    assert result.info["all_seeds"] == [77, 78] and result.info["sampler_name"] == "Euler a"
    assert result.parameters["prompt"] == "a tiny cat"

    info = api.png_info(result.images[1])
    assert "Seed: 78" in info.info and "Negative prompt: blurry" in info.info

    with pytest.raises(RuntimeError) as err:
        api.img2img(images=[result.image], prompt="x", width=32, height=32)
    assert err.value.args[0] == 422 and "init_images" in err.value.args[1]

    with pytest.raises(RuntimeError) as err:
        api.txt2img(prompt="x", width=32, height=32, restore_faces=True)
    assert err.value.args[0] == 422 and "restore_faces" in err.value.args[1]

    api.set_options({"CLIP_stop_at_last_layers": 2, "some_extension_option": "kept"})
    options = api.get_options()
    assert options["CLIP_stop_at_last_layers"] == 2 and options["some_extension_option"] == "kept"
    api.util_set_model("tiny")
    assert api.util_get_current_model().startswith("tiny.safetensors [")
    again = api.txt2img(prompt="a tiny cat", seed=77, width=32, height=32)
    assert "Clip skip: 2" in again.info["infotexts"][0]
    assert api.get_progress()["state"]["job_count"] == 0
