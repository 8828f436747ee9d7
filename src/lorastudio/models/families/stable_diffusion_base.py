"""What SD 1.x and SDXL share: a UNet denoising DDPM latents of an SD VAE, CLIP text encoders.

The two family files subclass `StableDiffusionFamily` and keep only what differs (checkpoint
layouts, pipeline classes, how prompts are encoded, SDXL's size conditioning, LoRA naming).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from lorastudio.core.errors import ModelFileError
from lorastudio.core.samplers import SamplerChoice
from lorastudio.models.families.base import KohyaLoraRule, LoadOptions, ModelFamily, TrainableFamily

UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
CLIP_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
# kohya sd-scripts networks/lora.py: UNET_TARGET_REPLACE_MODULE, UNET_TARGET_REPLACE_MODULE_CONV2D_3X3 and
# TEXT_ENCODER_TARGET_REPLACE_MODULE, the same for SD 1.x and SDXL (sdxl_train_network.py uses networks/lora.py).
# The class names must be kohya's for the same layers to train; transformers' CLIP attention class has had
# several names (CLIPAttention, CLIPSdpaAttention), all listed.
UNET_KOHYA_BLOCKS = ("Transformer2DModel",)
UNET_KOHYA_CONV_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
CLIP_KOHYA_BLOCKS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")


class StableDiffusionFamily(ModelFamily, TrainableFamily):
    denoiser_name = "unet"
    # diffusers pipeline class names whose folders this family loads.
    pipeline_names: ClassVar[frozenset[str]]
    controlnet_pipeline_names: ClassVar[dict[str, str]]  # mode (txt2img, img2img, inpaint) -> diffusers class

    def claims_folder(self, model_index) -> bool:
        return model_index.get("_class_name") in self.pipeline_names

    def replace_vae(self, pipe, path: Path, options: LoadOptions) -> None:
        replace_sd_vae(pipe, path, options)

    # --- generation ------------------------------------------------------------------------
    def supports_sampler(self, choice: SamplerChoice) -> bool:
        return choice.sampler.scheduler_class != "FlowMatchEulerDiscreteScheduler"

    def make_scheduler(self, base_config, choice: SamplerChoice):
        from lorastudio.models.schedulers import build_scheduler

        return build_scheduler(base_config, choice)

    def native_resolution(self, pipe) -> int:
        # The UNet config's sample_size (latent side) times the VAE factor, as diffusers' own default.
        return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)

    def latent_shape(self, pipe, width: int, height: int) -> tuple[int, ...]:
        f = pipe.vae_scale_factor
        # the VAE's channels: an inpainting UNet takes more (mask and masked image) than it denoises
        return (pipe.vae.config.latent_channels, height // f, width // f)

    def infotext_fields(self, params) -> dict[str, Any]:
        return {"Clip skip": params.clip_skip if params.clip_skip > 1 else None}

    def lora_state_dict_kwargs(self, pipe) -> dict[str, Any]:
        # SGM block names are mapped with the UNet's layout, as load_lora_weights does.
        return {"unet_config": pipe.unet.config}

    def encode_images(self, pipe, pixels):
        return encode_sd_latents(pipe, pixels)

    # --- training --------------------------------------------------------------------------
    def training_defaults(self, pipe) -> dict[str, Any]:
        # kohya / A1111 train-tools values for a character LoRA on SD 1.5; kohya's SDXL values are
        # the same at the model's own size (1024 px).
        return {"rank": 16, "alpha": 8.0, "lr": 1e-4, "te_lr": 5e-5, "steps": 1000,
                "resolution": [self.native_resolution(pipe)], "train_text_encoder": False}

    def trainable_modules(self, pipe, *, text_encoders: bool):
        mods = {"unet": pipe.unet}
        if text_encoders:
            mods.update((name, getattr(pipe, name)) for name in self.text_encoder_names)
        return mods

    def lora_targets(self) -> dict[str, list[str]]:
        return {"unet": list(UNET_LORA_TARGETS), **{name: list(CLIP_LORA_TARGETS) for name in self.text_encoder_names}}

    def kohya_lora_rules(self) -> dict[str, KohyaLoraRule]:
        clip = KohyaLoraRule(blocks=CLIP_KOHYA_BLOCKS)
        return {"unet": KohyaLoraRule(blocks=UNET_KOHYA_BLOCKS, conv_blocks=UNET_KOHYA_CONV_BLOCKS),
                **{name: clip for name in self.text_encoder_names}}

    def noise_schedule(self, pipe):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(pipe.scheduler.config)

    def training_loss(self, pipe, modules, latents, cond, gens, config, mask=None, sample_weights=None, *, schedule):
        from lorastudio.models.objectives import ddpm_noised, weighted_mse

        nb = ddpm_noised(schedule, latents, gens, noise_offset=config.noise_offset,
                         min_snr_gamma=config.min_snr_gamma)
        pred = self._predict_noise(pipe, modules["unet"], nb.noisy, nb.timesteps, cond)
        return weighted_mse(pred, nb.target, nb.weights, mask, sample_weights)

    def _predict_noise(self, pipe, unet, noisy, timesteps, cond):
        """The UNet's prediction for noisy latents [B, C, h, w] at `timesteps`, given `encode_captions`' output."""
        dtype = next(unet.parameters()).dtype
        return unet(noisy.to(dtype), timesteps, encoder_hidden_states=cond["hidden"].to(dtype)).sample

    # --- ControlNet (claims_controlnet stays per family: the key markers differ) ---------------
    def load_controlnet(self, path, shapes, pipe, options, *, folder_config=None):
        from lorastudio.models.controlnet.sd_controlnet import load_sd_controlnet

        return load_sd_controlnet(path, shapes, pipe, options, folder_config=folder_config)

    def controlnet_pipeline(self, pipe, controlnets, mode: str):
        import diffusers

        cls = getattr(diffusers, self.controlnet_pipeline_names[mode])
        return cls.from_pipe(pipe, controlnet=controlnets if len(controlnets) > 1 else controlnets[0])



def encode_sd_latents(pipe, pixels):
    vae = pipe.vae
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    # The mean, not a sample: cached latents must not depend on when they were computed.
    latents = dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def config_cache(options: LoadOptions) -> Path:
    """Where config skeletons are written (under the caller's cache folder)."""
    return options.cache_dir / "configs"


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
    import hashlib
    import json

    from lorastudio.core.atomic import atomic_write_text

    cfg = {k: v for k, v in dict(pipe.vae.config).items() if not k.startswith("_")}
    cfg["_class_name"] = "AutoencoderKL"
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = config_cache(options) / f"vae-{digest}"
    if not (folder / "config.json").exists():
        atomic_write_text(folder / "config.json", json.dumps(cfg, indent=1, default=str))
    return str(folder)
