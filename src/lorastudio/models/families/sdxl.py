"""Stable Diffusion XL (base): everything specific to this family lives here (what it shares with
SD 1.x is in stable_diffusion_base.py)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from lorastudio.core.errors import UnknownModelFamily
from lorastudio.models.devices import torch_dtype
from lorastudio.models.families.base import Conditioning, LoadOptions
from lorastudio.models.families.stable_diffusion_base import StableDiffusionFamily, config_cache, with_inpainting_txt2img

# stabilityai/stable-diffusion-xl-base-1.0's scheduler config.
from lorastudio.models.formats.sd_config_inference import SDXL_SCHEDULER


class SDXLFamily(StableDiffusionFamily):
    name = "sdxl"
    title = "SDXL"
    modelspec_architecture = "stable-diffusion-xl-v1-base"
    modelspec_implementation = "https://github.com/Stability-AI/generative-models"
    base_model_version = "sdxl_base_v1-0"
    # diffusers' ControlNet pipelines per mode, sharing the base pipeline's modules
    controlnet_pipeline_names = {"txt2img": "StableDiffusionXLControlNetPipeline",
                                 "img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
                                 "inpaint": "StableDiffusionXLControlNetInpaintPipeline"}
    default_size = 1024
    default_cfg = 7.0
    reference_fidelity_power = 3.0  # the extension's style_fidelity ** 3 for SDXL reference units
    text_encoder_names = ("text_encoder", "text_encoder_2")
    pipeline_names = frozenset({"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                                "StableDiffusionXLInpaintPipeline"})

    def training_preset(self, size: int) -> dict[str, Any]:
        # kohya's SDXL LoRA values: SD 1.5's, at the model's own size (1024 px).
        return {"rank": 16, "alpha": 8.0, "lr": 1e-4, "te_lr": 5e-5, "steps": 1000, "resolution": [size],
                "train_text_encoder": False}

    def claims_checkpoint(self, keys: Collection[str]) -> bool:
        keys = set(keys)
        if "model.diffusion_model.input_blocks.0.0.weight" not in keys:
            return False
        has_l = any(k.startswith("conditioner.embedders.0.transformer.") for k in keys)
        has_g = any(k.startswith("conditioner.embedders.1.model.") for k in keys)
        if not has_l and any(k.startswith("conditioner.embedders.0.model.") for k in keys):
            raise UnknownModelFamily("checkpoint", "SDXL refiner checkpoints are not supported yet")
        return has_l and has_g

    def claims_lora(self, shapes: Mapping[str, tuple[int, ...]]) -> bool:
        keys = list(shapes)
        if any(k.startswith(("lora_te_", "text_encoder.")) and not k.startswith("text_encoder_2") for k in keys):
            return any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in keys)
        if any(k.startswith("lora_unet_down_blocks_0_attentions") or k.startswith("unet.down_blocks.0.attentions")
               for k in keys):
            return False  # SD 1.x has attention in the first down block, SDXL does not
        return any(k.startswith(("lora_unet_", "lora_te1_", "lora_te2_", "unet.", "text_encoder_2.")) for k in keys)

    # --- loading -------------------------------------------------------------------------
    def native_size(self, shapes, metadata) -> int:
        # The same configs load_checkpoint builds: latent size × the VAE's downscale factor.
        from lorastudio.models.formats.sd_config_inference import infer_sdxl_configs

        configs = infer_sdxl_configs(dict(shapes), dict(metadata))
        return int(configs["unet"]["sample_size"]) * 2 ** (len(configs["vae"]["block_out_channels"]) - 1)

    def load_checkpoint(self, path: Path, shapes, metadata, options: LoadOptions):
        from diffusers import StableDiffusionXLPipeline

        from lorastudio.models.formats.config_dir import make_config_dir
        from lorastudio.models.formats.sd_config_inference import infer_sdxl_configs

        configs = infer_sdxl_configs(dict(shapes), dict(metadata))
        cfg_dir = make_config_dir(
            "StableDiffusionXLPipeline", configs,
            {"tokenizer": {"kind": "clip", "pad_token": "<|endoftext|>"},
             "tokenizer_2": {"kind": "clip", "pad_token": "!"}},
            SDXL_SCHEDULER, config_cache(options))
        pipe = StableDiffusionXLPipeline.from_single_file(
            str(path), config=str(cfg_dir), local_files_only=True, torch_dtype=torch_dtype(options.dtype))
        return with_inpainting_txt2img(pipe)

    def load_folder(self, path: Path, options: LoadOptions):
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline.from_pretrained(str(path), local_files_only=True,
                                                         torch_dtype=torch_dtype(options.dtype))
        return with_inpainting_txt2img(pipe)

    # --- generation ------------------------------------------------------------------------
    def encode_prompts(self, pipe, prompt: str, negative_prompt: str, *, clip_skip: int, cfg_scale: float,
                       guidance: float) -> Conditioning:
        import torch

        cond, pooled = self._encode(pipe, prompt, clip_skip)
        if negative_prompt == "" and pipe.config.get("force_zeros_for_empty_prompt", True):
            # SDXL's empty negative is zeros, in A1111 and diffusers alike.
            uncond, unpooled = torch.zeros_like(cond), torch.zeros_like(pooled)
        else:
            uncond, unpooled = self._encode(pipe, negative_prompt, clip_skip)
        if cond.shape[1] != uncond.shape[1]:
            from lorastudio.models.conditioning import pad_to_same_length

            empty, _ = self._encode(pipe, "", clip_skip)
            cond, uncond = pad_to_same_length(cond, uncond, empty)
        return Conditioning({"prompt_embeds": cond, "negative_prompt_embeds": uncond,
                             "pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": unpooled,
                             "guidance_scale": cfg_scale})

    def _encode(self, pipe, text: str, clip_skip: int):
        import torch

        from lorastudio.models.conditioning import ClipEncodeSpec, encode_clip

        # SDXL conditions on the penultimate layer of both encoders, without the final norm.
        spec_l = ClipEncodeSpec(skip_layers=clip_skip, final_norm_on_skip=False)
        spec_g = ClipEncodeSpec(skip_layers=clip_skip, final_norm_on_skip=False, pad_token="!")
        h1, _, _ = encode_clip(pipe.tokenizer, pipe.text_encoder, text, spec_l)
        h2, pooled, _ = encode_clip(pipe.tokenizer_2, pipe.text_encoder_2, text, spec_g, want_pooled=True)
        return torch.cat([h1, h2.to(h1.dtype)], dim=-1), pooled

    def textual_inversion_targets(self, pipe):
        return [("clip_l", pipe.tokenizer, pipe.text_encoder), ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2)]

    def img2img_pipeline(self, pipe, inpaint: bool):
        from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline

        return (StableDiffusionXLInpaintPipeline if inpaint else StableDiffusionXLImg2ImgPipeline).from_pipe(pipe)

    # --- ControlNet ------------------------------------------------------------------------
    def claims_controlnet(self, shapes) -> bool:
        from lorastudio.models.controlnet.sd_controlnet import SDXL_MARKERS, has_hint_encoder

        # SDXL's UNet (and so its ControlNets) embeds the size/crop/pooled-text vector.
        return has_hint_encoder(shapes) and any(k in shapes for k in SDXL_MARKERS)

    # --- training --------------------------------------------------------------------------
    def encode_captions(self, pipe, captions: list[str], *, clip_skip: int):
        import torch

        hidden, pooled = [], []
        for c in captions:
            h, p = self._encode(pipe, c, clip_skip)
            hidden.append(h[:, :77])  # one chunk per caption, as kohya trains by default
            pooled.append(p)
        return {"hidden": torch.cat(hidden), "pooled": torch.cat(pooled)}

    def _predict_noise(self, pipe, unet, noisy, timesteps, cond):
        import torch

        dtype = next(unet.parameters()).dtype
        b, _, h, w = noisy.shape
        px_h, px_w = h * pipe.vae_scale_factor, w * pipe.vae_scale_factor
        # SDXL's size conditioning: original size, crop top-left, target size (no crop: buckets fit).
        time_ids = torch.tensor([[px_h, px_w, 0, 0, px_h, px_w]], dtype=dtype, device=noisy.device).repeat(b, 1)
        return unet(noisy.to(dtype), timesteps, encoder_hidden_states=cond["hidden"].to(dtype),
                    added_cond_kwargs={"text_embeds": cond["pooled"].to(dtype), "time_ids": time_ids}).sample

    def export_kohya(self, pipe, lora, *, alpha: float, rank: int, overrides=None):
        from lorastudio.models.formats.kohya_lora_sd import kohya_lora_from_peft
        from lorastudio.models.formats.ldm_unet_names import layout_from_unet_config

        tes = {k: v for k, v in lora.items() if k != "unet"}
        return kohya_lora_from_peft(lora["unet"], tes, alpha=alpha, rank=rank, unet_naming="ldm",
                                    layout=layout_from_unet_config(pipe.unet.config), overrides=overrides)

