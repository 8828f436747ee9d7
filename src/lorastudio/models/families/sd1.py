"""Stable Diffusion 1.x: everything specific to this family lives here."""

from __future__ import annotations

import weakref
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from lorastudio.core.errors import ModelFileError
from lorastudio.core.samplers import SamplerChoice
from lorastudio.models.families.base import Conditioning, LoadOptions, ModelFamily, TrainableFamily

# The noise schedule SD 1.x was trained with (runwayml/stable-diffusion-v1-5's scheduler config).
from lorastudio.models.formats.sd_config_inference import SD1_SCHEDULER

SD1_PIPELINES = {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"}


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


class SD1Family(ModelFamily, TrainableFamily):
    name = "sd1"
    title = "SD 1.x"
    modelspec_architecture = "stable-diffusion-v1"
    modelspec_implementation = "diffusers"
    base_model_version = "sd_v1"
    default_size = 512

    def claims_checkpoint(self, keys: Collection[str]) -> bool:
        keys = set(keys)
        return "model.diffusion_model.input_blocks.0.0.weight" in keys and any(
            k.startswith("cond_stage_model.transformer.") for k in keys)

    def claims_folder(self, model_index: Mapping[str, Any]) -> bool:
        return model_index.get("_class_name") in SD1_PIPELINES

    def claims_lora(self, shapes: Mapping[str, tuple[int, ...]]) -> bool:
        keys = list(shapes)
        if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) or "input_blocks" in k for k in keys):
            return False
        return any(k.startswith(("lora_unet_", "lora_te_", "unet.", "text_encoder.")) for k in keys)

    # --- loading -------------------------------------------------------------------------
    def load_checkpoint(self, path: Path, shapes, metadata, options: LoadOptions):
        from diffusers import StableDiffusionPipeline

        from lorastudio.models.formats.config_dir import make_config_dir
        from lorastudio.models.formats.sd_config_inference import infer_sd1_configs

        configs = infer_sd1_configs(dict(shapes), dict(metadata))
        cfg_dir = make_config_dir(
            "StableDiffusionPipeline", configs,
            {"tokenizer": {"kind": "clip", "pad_token": "<|endoftext|>"}},
            SD1_SCHEDULER, _cache_root(options))
        pipe = StableDiffusionPipeline.from_single_file(
            str(path), config=str(cfg_dir), local_files_only=True, torch_dtype=torch_dtype(options.dtype),
            safety_checker=None, requires_safety_checker=False)
        return _with_inpainting_txt2img(pipe)

    def load_folder(self, path: Path, options: LoadOptions):
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(
            str(path), local_files_only=True, torch_dtype=torch_dtype(options.dtype),
            safety_checker=None, requires_safety_checker=False)
        return _with_inpainting_txt2img(pipe)

    def replace_vae(self, pipe, path: Path, options: LoadOptions) -> None:
        replace_sd_vae(pipe, path, options)

    # --- generation ------------------------------------------------------------------------
    def supports_sampler(self, choice: SamplerChoice) -> bool:
        return choice.sampler.scheduler_class != "FlowMatchEulerDiscreteScheduler"

    def make_scheduler(self, base_config, choice: SamplerChoice):
        from lorastudio.generation.schedulers import build_scheduler

        return build_scheduler(base_config, choice)

    def encode_prompts(self, pipe, prompt: str, negative_prompt: str, *, clip_skip: int, cfg_scale: float,
                       guidance: float) -> Conditioning:
        from lorastudio.generation.conditioning import ClipEncodeSpec, encode_clip, pad_to_same_length

        spec = ClipEncodeSpec(skip_layers=clip_skip - 1)
        cond, _, _ = encode_clip(pipe.tokenizer, pipe.text_encoder, prompt, spec)
        uncond, _, _ = encode_clip(pipe.tokenizer, pipe.text_encoder, negative_prompt, spec)
        if cond.shape[1] != uncond.shape[1]:
            empty, _, _ = encode_clip(pipe.tokenizer, pipe.text_encoder, "", spec)
            cond, uncond = pad_to_same_length(cond, uncond, empty)
        return Conditioning({"prompt_embeds": cond, "negative_prompt_embeds": uncond, "guidance_scale": cfg_scale})

    def latent_shape(self, pipe, width: int, height: int) -> tuple[int, ...]:
        f = pipe.vae_scale_factor
        # the VAE's channels: an inpainting UNet takes more (mask and masked image) than it denoises
        return (pipe.vae.config.latent_channels, height // f, width // f)

    def infotext_fields(self, params) -> dict[str, Any]:
        return {"Clip skip": params.clip_skip if params.clip_skip > 1 else None}

    def is_inpainting_model(self, pipe) -> bool:
        return is_sd_inpainting_unet(pipe)

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

    def load_controlnet(self, path, shapes, pipe, options, *, folder_config=None):
        from lorastudio.models.controlnet.sd_controlnet import load_sd_controlnet

        return load_sd_controlnet(path, shapes, pipe, options, folder_config=folder_config)

    def controlnet_pipeline(self, pipe, controlnets, mode: str):
        import diffusers

        cls = {"txt2img": diffusers.StableDiffusionControlNetPipeline,
               "img2img": diffusers.StableDiffusionControlNetImg2ImgPipeline,
               "inpaint": diffusers.StableDiffusionControlNetInpaintPipeline}[mode]
        return cls.from_pipe(pipe, controlnet=controlnets if len(controlnets) > 1 else controlnets[0])

    # --- training --------------------------------------------------------------------------
    def training_defaults(self, pipe) -> dict[str, Any]:
        # kohya / A1111 train-tools values for a character LoRA on SD 1.5.
        return {"rank": 16, "alpha": 8.0, "lr": 1e-4, "te_lr": 5e-5, "steps": 1000,
                "resolution": [native_resolution(pipe)], "train_text_encoder": False}

    def trainable_modules(self, pipe, *, text_encoders: bool):
        mods = {"unet": pipe.unet}
        if text_encoders:
            mods["text_encoder"] = pipe.text_encoder
        return mods

    def lora_targets(self) -> dict[str, list[str]]:
        return {"unet": list(UNET_LORA_TARGETS), "text_encoder": list(CLIP_LORA_TARGETS)}

    def encode_images(self, pipe, pixels):
        return encode_sd_latents(pipe, pixels)

    def encode_captions(self, pipe, captions: list[str], *, clip_skip: int):
        import torch

        from lorastudio.generation.conditioning import ClipEncodeSpec, encode_clip

        spec = ClipEncodeSpec(skip_layers=clip_skip - 1)
        # One 77-token chunk per caption, as kohya trains by default (longer captions are cut).
        hidden = [encode_clip(pipe.tokenizer, pipe.text_encoder, c, spec)[0][:, :77] for c in captions]
        return {"hidden": torch.cat(hidden)}

    def training_loss(self, pipe, modules, latents, cond, gens, config, mask=None, sample_weights=None):
        from lorastudio.training.objectives import ddpm_noised, weighted_mse

        nb = ddpm_noised(noise_scheduler(pipe), latents, gens, noise_offset=config.noise_offset,
                         min_snr_gamma=config.min_snr_gamma)
        unet = modules["unet"]
        pred = unet(nb.noisy.to(_dtype_of(unet)), nb.timesteps, encoder_hidden_states=cond["hidden"].to(_dtype_of(unet))).sample
        return weighted_mse(pred, nb.target, nb.weights, mask, sample_weights)

    def export_kohya(self, pipe, lora, *, alpha: float, rank: int):
        from lorastudio.models.formats.kohya_lora_sd import kohya_lora_from_peft

        tes = {k: v for k, v in lora.items() if k != "unet"}
        return kohya_lora_from_peft(lora["unet"], tes, alpha=alpha, rank=rank, unet_naming="diffusers", layout=None)



UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
CLIP_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def native_resolution(pipe) -> int:
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def _dtype_of(module):
    return next(module.parameters()).dtype


_NOISE_SCHEDULERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def noise_scheduler(pipe):
    """The training noise schedule, built once per pipeline from the config it was loaded with
    (previews swap `pipe.scheduler` for samplers; training must not follow them)."""
    from diffusers import DDPMScheduler

    sched = _NOISE_SCHEDULERS.get(pipe)
    if sched is None:
        sched = _NOISE_SCHEDULERS[pipe] = DDPMScheduler.from_config(pipe.scheduler.config)
    return sched


def encode_sd_latents(pipe, pixels):
    vae = pipe.vae
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    # The mean, not a sample: cached latents must not depend on when they were computed.
    latents = dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def is_sd_inpainting_unet(pipe) -> bool:
    unet = pipe.unet
    return unet.config.in_channels == 2 * pipe.vae.config.latent_channels + 1


def _with_inpainting_txt2img(pipe):
    """Let an inpainting model draw from text alone, as A1111 does.

    A1111 (`txt2img_image_conditioning`) gives an inpainting UNet a mask of ones (everything is
    repainted) and the latents of a mid-grey picture as the masked image. The hook below adds
    exactly those channels whenever the UNet is called with the plain latent channels only
    (txt2img, training previews); inpainting pipelines pass all channels and are left alone.
    The grey latents are encoded once per size, VAE and dtype (the VAE mean, as our img2img
    encodes init images).
    """
    import weakref

    if not is_sd_inpainting_unet(pipe):
        return pipe
    pipe_ref = weakref.ref(pipe)
    grey: dict[tuple, Any] = {}

    def add_conditioning(module, args, kwargs):
        import torch

        sample = args[0] if args else kwargs["sample"]
        owner = pipe_ref()
        latent_channels = owner.vae.config.latent_channels if owner is not None else None
        if owner is None or sample.shape[1] != latent_channels:
            return None
        vae, f = owner.vae, owner.vae_scale_factor
        key = (id(vae), sample.shape[-2], sample.shape[-1], sample.dtype, sample.device,
               torch.is_inference_mode_enabled())
        if key not in grey:
            pixels = torch.zeros(1, 3, sample.shape[-2] * f, sample.shape[-1] * f, device=vae.device, dtype=vae.dtype)
            with torch.no_grad():
                grey.clear()  # one size at a time is what a generation needs
                grey[key] = encode_sd_latents(owner, pixels).to(sample.device, sample.dtype)
        masked = grey[key].expand(sample.shape[0], -1, -1, -1)
        mask = torch.ones_like(sample[:, :1])
        full = torch.cat([sample, mask, masked], dim=1)
        return ((full, *args[1:]), kwargs) if args else (args, {**kwargs, "sample": full})

    pipe.unet.register_forward_pre_hook(add_conditioning, with_kwargs=True)
    return pipe


def _cache_root(options: LoadOptions) -> Path:
    return (options.cache_dir or Path.home() / ".cache" / "lorastudio") / "configs"


def replace_sd_vae(pipe, path: Path, options: LoadOptions) -> None:
    """Load an SD-style VAE file (A1111 `models/VAE`) into the pipeline, checking it fits."""
    from diffusers import AutoencoderKL

    from lorastudio.models.loader import probe_checkpoint

    st_path, shapes, _ = probe_checkpoint(path, options)
    try:
        vae = AutoencoderKL.from_single_file(
            str(st_path), config=_vae_config_dir(pipe, options), local_files_only=True,
            torch_dtype=pipe.vae.dtype)
    except Exception as exc:  # diffusers raises several types for mismatched tensors
        raise ModelFileError(path, f"VAE does not fit the {pipe.__class__.__name__} model: {exc}") from None
    pipe.vae = vae.to(pipe.device)


def _vae_config_dir(pipe, options: LoadOptions) -> str:
    import json

    from lorastudio.core.atomic import atomic_write_text

    cfg = {k: v for k, v in dict(pipe.vae.config).items() if not k.startswith("_")}
    cfg["_class_name"] = "AutoencoderKL"
    import hashlib

    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = _cache_root(options) / f"vae-{digest}"
    if not (folder / "config.json").exists():
        atomic_write_text(folder / "config.json", json.dumps(cfg, indent=1, default=str))
    return str(folder)
