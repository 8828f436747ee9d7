"""Stable Diffusion 1.x: everything specific to this family lives here (what it shares with SDXL
is in stable_diffusion_base.py)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from lorastudio.models.devices import torch_dtype
from lorastudio.models.families.base import Conditioning, LoadOptions
from lorastudio.models.families.stable_diffusion_base import (
    StableDiffusionFamily,
    config_cache,
    with_inpainting_txt2img,
)

# The noise schedule SD 1.x was trained with (runwayml/stable-diffusion-v1-5's scheduler config).
from lorastudio.models.formats.sd_config_inference import SD1_SCHEDULER


class SD1Family(StableDiffusionFamily):
    name = "sd1"
    title = "SD 1.x"
    modelspec_architecture = "stable-diffusion-v1"
    modelspec_implementation = "diffusers"
    base_model_version = "sd_v1"
    # diffusers' ControlNet pipelines per mode, sharing the base pipeline's modules
    controlnet_pipeline_names = {"txt2img": "StableDiffusionControlNetPipeline",
                                 "img2img": "StableDiffusionControlNetImg2ImgPipeline",
                                 "inpaint": "StableDiffusionControlNetInpaintPipeline"}
    default_size = 512
    text_encoder_names = ("text_encoder",)
    pipeline_names = frozenset({"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline",
                                "StableDiffusionInpaintPipeline"})

    def training_preset(self, size: int) -> dict[str, Any]:
        # kohya / A1111 train-tools values for a character LoRA on SD 1.5, at 512 px.
        return {"rank": 16, "alpha": 8.0, "lr": 1e-4, "te_lr": 5e-5, "steps": 1000, "resolution": [size],
                "train_text_encoder": False}

    def claims_checkpoint(self, keys: Collection[str]) -> bool:
        keys = set(keys)
        return "model.diffusion_model.input_blocks.0.0.weight" in keys and any(
            k.startswith("cond_stage_model.transformer.") for k in keys)

    def checkpoint_key_renames(self, keys: Collection[str]) -> dict[str, str]:
        from lorastudio.models.formats.checkpoint_facts import legacy_sd1_text_encoder_renames

        return legacy_sd1_text_encoder_renames(keys)

    def claims_lora(self, shapes: Mapping[str, tuple[int, ...]]) -> bool:
        keys = list(shapes)
        if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) or "input_blocks" in k for k in keys):
            return False
        return any(k.startswith(("lora_unet_", "lora_te_", "unet.", "text_encoder.")) for k in keys)

    # --- loading -------------------------------------------------------------------------
    def native_size(self, shapes, metadata) -> int:
        # The same configs load_checkpoint builds: latent size × the VAE's downscale factor.
        from lorastudio.models.formats.sd_config_inference import infer_sd1_configs

        configs = infer_sd1_configs(dict(shapes), dict(metadata))
        return int(configs["unet"]["sample_size"]) * 2 ** (len(configs["vae"]["block_out_channels"]) - 1)

    def load_checkpoint(self, path: Path, shapes, metadata, options: LoadOptions):
        from diffusers import StableDiffusionPipeline

        from lorastudio.models.formats.config_dir import make_config_dir
        from lorastudio.models.formats.sd_config_inference import infer_sd1_configs

        configs = infer_sd1_configs(dict(shapes), dict(metadata))
        cfg_dir = make_config_dir(
            "StableDiffusionPipeline", configs,
            {"tokenizer": {"kind": "clip", "pad_token": "<|endoftext|>"}},
            SD1_SCHEDULER, config_cache(options))
        pipe = StableDiffusionPipeline.from_single_file(
            str(path), config=str(cfg_dir), local_files_only=True, torch_dtype=torch_dtype(options.dtype),
            safety_checker=None, requires_safety_checker=False)
        return with_inpainting_txt2img(pipe)

    def load_folder(self, path: Path, options: LoadOptions):
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(
            str(path), local_files_only=True, torch_dtype=torch_dtype(options.dtype),
            safety_checker=None, requires_safety_checker=False)
        return with_inpainting_txt2img(pipe)

    # --- generation ------------------------------------------------------------------------
    def encode_prompts(self, pipe, prompt: str, negative_prompt: str, *, clip_skip: int, cfg_scale: float,
                       guidance: float) -> Conditioning:
        from lorastudio.models.conditioning import ClipEncodeSpec, encode_clip, pad_to_same_length

        spec = ClipEncodeSpec(skip_layers=clip_skip - 1)
        cond, _, _ = encode_clip(pipe.tokenizer, pipe.text_encoder, prompt, spec)
        uncond, _, _ = encode_clip(pipe.tokenizer, pipe.text_encoder, negative_prompt, spec)
        if cond.shape[1] != uncond.shape[1]:
            empty, _, _ = encode_clip(pipe.tokenizer, pipe.text_encoder, "", spec)
            cond, uncond = pad_to_same_length(cond, uncond, empty)
        return Conditioning({"prompt_embeds": cond, "negative_prompt_embeds": uncond, "guidance_scale": cfg_scale})

    def textual_inversion_targets(self, pipe):
        return [(None, pipe.tokenizer, pipe.text_encoder)]

    def img2img_pipeline(self, pipe, inpaint: bool):
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

        return (StableDiffusionInpaintPipeline if inpaint else StableDiffusionImg2ImgPipeline).from_pipe(pipe)

    # --- ControlNet ------------------------------------------------------------------------
    def claims_controlnet(self, shapes) -> bool:
        from lorastudio.models.controlnet.sd_controlnet import SDXL_MARKERS, context_width, has_hint_encoder

        # SD 2.x ControlNets read 1024-wide OpenCLIP embeddings; SD 1.x ones CLIP-L's 768.
        return (has_hint_encoder(shapes) and not any(k in shapes for k in SDXL_MARKERS)
                and context_width(shapes) != 1024)

    # --- training --------------------------------------------------------------------------
    def encode_captions(self, pipe, captions: list[str], *, clip_skip: int):
        import torch

        from lorastudio.models.conditioning import ClipEncodeSpec, encode_clip

        spec = ClipEncodeSpec(skip_layers=clip_skip - 1)
        # One 77-token chunk per caption, as kohya trains by default (longer captions are cut).
        hidden = [encode_clip(pipe.tokenizer, pipe.text_encoder, c, spec)[0][:, :77] for c in captions]
        return {"hidden": torch.cat(hidden)}

    def export_kohya(self, pipe, lora, *, alpha: float, rank: int, overrides=None):
        from lorastudio.models.formats.kohya_lora_sd import kohya_lora_from_peft

        tes = {k: v for k, v in lora.items() if k != "unet"}
        return kohya_lora_from_peft(lora["unet"], tes, alpha=alpha, rank=rank, unet_naming="diffusers", layout=None,
                                    overrides=overrides)
