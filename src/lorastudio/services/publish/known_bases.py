"""Base models recognised by the SHA-256 of their published single file (the `ss_new_sd_model_hash`
our kohya metadata carries), with the Hub id and licence the model card takes from them.

Sources of the hashes:
- SD 1.5: the Git LFS object ids (SHA-256) of `v1-5-pruned-emaonly.safetensors` and
  `v1-5-pruned.safetensors` in stable-diffusion-v1-5/stable-diffusion-v1-5 (the ids in the Hub's
  cdn-lfs download URLs; A1111 shows them as [6ce0161689] and [1a189f0be6]);
- SDXL 1.0 base: the LFS object id of `sd_xl_base_1.0.safetensors` in
  stabilityai/stable-diffusion-xl-base-1.0 (A1111 [31e35c80fc]);
- FLUX.1 dev / schnell: the sha256sum table in black-forest-labs/flux, docs/text-to-image.md.
Left out: SD 1.5 `.ckpt` files and the `sd_xl_base_1.0_0.9vae` variant (not checked against a
published source here).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KnownBase:
    title: str
    hub_id: str
    license: str
    license_name: str | None = None
    license_link: str | None = None


SD15 = KnownBase("Stable Diffusion 1.5", "stable-diffusion-v1-5/stable-diffusion-v1-5", "creativeml-openrail-m")
SDXL = KnownBase("Stable Diffusion XL 1.0 base", "stabilityai/stable-diffusion-xl-base-1.0", "openrail++")
FLUX_DEV = KnownBase("FLUX.1 [dev]", "black-forest-labs/FLUX.1-dev", "other", "flux-1-dev-non-commercial-license",
                     "https://huggingface.co/black-forest-labs/FLUX.1-dev/blob/main/LICENSE.md")
FLUX_SCHNELL = KnownBase("FLUX.1 [schnell]", "black-forest-labs/FLUX.1-schnell", "apache-2.0")

BY_SHA256: dict[str, KnownBase] = {
    "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa": SD15,  # v1-5-pruned-emaonly.safetensors
    "1a189f0be69d6106a48548e7626207dddd7042a418dbf372cefd05e0cdba61b6": SD15,  # v1-5-pruned.safetensors
    "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b": SDXL,  # sd_xl_base_1.0.safetensors
    "4610115bb0c89560703c892c59ac2742fa821e60ef5871b33493ba544683abd7": FLUX_DEV,  # flux1-dev.safetensors
    "9403429e0052277ac2a87ad800adece5481eecefd9ed334e1f348723621d2a0a": FLUX_SCHNELL,  # flux1-schnell.safetensors
}

# Known bases given by Hub id (--base-model-id) take the same licence.
BY_HUB_ID: dict[str, KnownBase] = {b.hub_id.lower(): b for b in BY_SHA256.values()}

# The Hub's tag for the architecture named in the LoRA's `modelspec.architecture` (before "/lora").
ARCHITECTURE_TAGS: dict[str, str] = {
    "stable-diffusion-v1": "stable-diffusion",
    "stable-diffusion-v2": "stable-diffusion",
    "stable-diffusion-xl-v1-base": "stable-diffusion-xl",
    "flux-1-dev": "flux",
    "flux-1-schnell": "flux",
}


def architecture_tag(architecture: str) -> str | None:
    return ARCHITECTURE_TAGS.get(architecture.split("/")[0])
