"""Publish from the LoRA page: a LoRA trained on this server goes to a fake Hugging Face Hub (the
real huggingface_hub client inside `lorastudio serve`, `HF_ENDPOINT` on 127.0.0.1). The user's
token is typed once: it reaches the Hub, and nothing else keeps it (page storage, server log,
uploaded files).

This module runs its own server: publishing needs huggingface_hub's offline mode off, which the
suite's shared server keeps on."""

from __future__ import annotations

import re
import shutil
import time

import pytest
from playwright.sync_api import expect

TIMEOUT = 120_000
TOKEN = "hf_webpagetokenQ7xZ9secret0123456789"
USERS = {TOKEN: {"name": "alice", "orgs": []}}


@pytest.fixture(scope="module")
def hub():
    from lorastudio.testing.fake_hub import FakeHub

    with FakeHub(USERS) as fake:
        yield fake


@pytest.fixture(scope="module")
def server(web_models, hub, tmp_path_factory, helpers):
    """Overrides the shared server for this module (open_page then drives this one)."""
    work = tmp_path_factory.mktemp("publish-server")
    models = work / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(web_models / "Stable-diffusion" / "tiny.safetensors", models / "Stable-diffusion")
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None,
           "HF_TOKEN": None, "HF_HOME": str(work / "hf-home")}  # no token of its own: the page gives one
    srv = helpers.Server(models, work, env=env)
    try:
        srv.wait_up()
        yield srv
    finally:
        srv.stop()


def _train(server, images: str) -> str:
    return server.api("POST", "/v1/trainings", json={"images": images, "trigger": "zzpub", "base": "tiny", "steps": 2,
                                                     "rank": 2, "resolution": [32]}).json()["request_id"]


def _trained(server, helpers) -> str:
    """A tiny training through the API, installed into models/Lora as the page does when it ends."""
    ds = server.api("POST", "/v1/datasets").json()
    files = [("files", (f"p{i}.png", helpers.png((64, 64), c, pattern=60), "image/png"))
             for i, c in enumerate([(200, 30, 30), (30, 200, 30)])]
    assert server.api("POST", f"/v1/datasets/{ds['dataset_id']}/files", files=files).status_code == 200
    rid = _train(server, ds["images"])
    deadline = time.monotonic() + 300
    while (status := server.api("GET", f"/v1/trainings/{rid}/status").json()["status"]) not in (
            "COMPLETED", "FAILED", "CANCELLED"):
        assert time.monotonic() < deadline, server.tail()
        time.sleep(0.5)
    assert status == "COMPLETED", server.tail()
    assert server.api("POST", "/v1/loras/install", json={"request_id": rid}).status_code == 200
    return rid


def test_publish_from_the_lora_page_with_a_token_typed_once(open_page, server, hub, helpers, shots):
    _trained(server, helpers)
    page = open_page()
    page.click("[data-tab=loras]")
    card = page.locator("#lora-grid article.card[data-name='zzpub']")
    expect(card).to_be_visible(timeout=TIMEOUT)
    card.locator("button.publish-open").click()
    form = page.locator("#publish-form")
    expect(form).to_be_visible()

    # A wrong token: the Hub's refusal is shown, nothing is published.
    form.locator("[name=repo]").fill("alice/zzpub")
    form.locator("[name=token]").fill("hf_not_a_real_token_000000000000")
    open_page.allow(page, 400)
    form.locator("#publish-submit").click()
    expect(page.locator("#publish-error")).to_contain_text("token rejected", timeout=TIMEOUT)
    assert "alice/zzpub" not in hub.repos

    form.locator("[name=private]").check()
    form.locator("[name=description]").fill("ステッカーの LoRA です。")
    form.locator("[name=token]").fill(TOKEN)
    form.locator("#publish-submit").click()
    expect(page.locator("#publish-status")).to_contain_text("Published", timeout=TIMEOUT)
    expect(page.locator("#publish-error")).to_be_hidden()
    expect(form.locator("[name=token]")).to_have_value("")  # sent once, then gone from the form
    repo = hub.repos["alice/zzpub"]
    files = repo.branches["main"]
    assert repo.private and len(repo.commits) == 1
    assert {"zzpub.safetensors", "pytorch_lora_weights.safetensors", "README.md"} <= set(files)
    assert files["README.md"].decode().count("ステッカーの LoRA です。") == 1
    expect(page.locator("#publish-link a")).to_have_attribute("href", re.compile("^" + re.escape(hub.url)))
    page.screenshot(path=str(shots / "loras-publish-en.png"), full_page=True)

    # The token went to the Hub in the Authorization header and nowhere else.
    stored = page.evaluate("JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage), "
                           "location.href, document.cookie])")
    assert TOKEN not in stored
    assert TOKEN not in server.tail() and TOKEN.encode() not in server.log.read_bytes()
    assert all(TOKEN.encode() not in data for data in files.values())
    assert any(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub.requests)
