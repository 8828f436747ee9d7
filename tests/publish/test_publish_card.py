"""The model card's base model, licence and tags for each known base, read back with the Hub's
own parser (huggingface_hub.ModelCard); and local paths cut out of what is published."""

from __future__ import annotations

import pytest

from lorastudio.services.publish.card import build_card
from lorastudio.services.publish.options import publish_options
from lorastudio.services.publish.repo_files import RepoFiles, strip_local_paths

CONFIG = {"trigger": "DeltamonStamp", "base": "model.safetensors", "steps": 1000, "rank": 16}


def _card(sha: str, arch: str, **opts):
    from huggingface_hub import ModelCard

    text = build_card(name="deltamon", config=CONFIG, report=None,
                      metadata={"ss_new_sd_model_hash": sha, "modelspec.architecture": arch},
                      files=RepoFiles(), options=publish_options({"repo": "alice/deltamon", **opts}))
    card = ModelCard(text)
    return card.data.to_dict(), card.text


@pytest.mark.parametrize("sha,arch,base,license_,tag", [
    ("6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa", "stable-diffusion-v1/lora",
     "stable-diffusion-v1-5/stable-diffusion-v1-5", "creativeml-openrail-m", "stable-diffusion"),
    ("31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b", "stable-diffusion-xl-v1-base/lora",
     "stabilityai/stable-diffusion-xl-base-1.0", "openrail++", "stable-diffusion-xl"),
    ("9403429e0052277ac2a87ad800adece5481eecefd9ed334e1f348723621d2a0a", "flux-1-dev/lora",
     "black-forest-labs/FLUX.1-schnell", "apache-2.0", "flux"),
])
def test_known_bases_are_recognised_by_their_sha256(sha, arch, base, license_, tag):
    data, text = _card(sha, arch)
    assert data["base_model"] == base and data["license"] == license_ and tag in data["tags"]
    assert data["instance_prompt"] == "DeltamonStamp" and "template:sd-lora" in data["tags"]
    assert f'from_pretrained("{base}"' in text and "| rank | 16 |" in text


def test_flux_dev_takes_its_non_commercial_licence():
    data, _ = _card("4610115bb0c89560703c892c59ac2742fa821e60ef5871b33493ba544683abd7", "flux-1-dev/lora")
    assert data["base_model"] == "black-forest-labs/FLUX.1-dev"
    assert data["license"] == "other" and data["license_name"] == "flux-1-dev-non-commercial-license"


def test_unknown_base_is_left_out_and_said_so_unless_given():
    data, text = _card("ab" * 32, "stable-diffusion-v1/lora")
    assert "base_model" not in data and "license" not in data and "--base-model-id" in text
    data, _ = _card("ab" * 32, "stable-diffusion-xl-v1-base/lora", base_model_id="stabilityai/stable-diffusion-xl-base-1.0")
    assert data["base_model"] == "stabilityai/stable-diffusion-xl-base-1.0" and data["license"] == "openrail++"
    data, _ = _card("ab" * 32, "stable-diffusion-v1/lora", base_model_id="someone/custom-model", license="mit")
    assert data["base_model"] == "someone/custom-model" and data["license"] == "mit"


def test_local_absolute_paths_become_file_names():
    cleaned = strip_local_paths({"images": "/home/ana/private/stickers", "reg_images": "C:\\Users\\ana\\reg",
                                 "base": "~/models/sd15.safetensors", "trigger": "DeltamonStamp",
                                 "resolution": [512], "sample_prompts": ["DeltamonStamp, a/b"]})
    assert cleaned == {"images": "stickers", "reg_images": "reg", "base": "sd15.safetensors",
                       "trigger": "DeltamonStamp", "resolution": [512], "sample_prompts": ["DeltamonStamp, a/b"]}


def test_bad_options_name_the_field():
    from lorastudio.core.errors import InvalidParameter

    with pytest.raises(InvalidParameter) as e:
        publish_options({"repo": "no-slash"})
    assert e.value.field == "repo"
