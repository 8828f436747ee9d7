"""What SD 1.x and SDXL share: a UNet denoising DDPM latents of an SD VAE, CLIP text encoders.

The two family files subclass `StableDiffusionFamily` and keep only what differs (checkpoint
layouts, pipeline classes, how prompts are encoded, SDXL's size conditioning, LoRA naming).
"""

from __future__ import annotations

import contextlib
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

    # The extension reduces SDXL's reference style fidelity (0.5 -> 0.125): its attention injection is unstable there.
    reference_fidelity_power: ClassVar[float] = 1.0

    def reference_style_fidelity(self, module: str, style_fidelity: float) -> float:
        return max(0.0, min(1.0, float(style_fidelity))) ** self.reference_fidelity_power

    def is_inpainting_model(self, pipe) -> bool:
        return is_sd_inpainting_unet(pipe)

    def composable_guidance(self, pipe, weights: list[float], extra_conds):
        return _composable_unet_hook(pipe.unet, weights, extra_conds)

    # --- training --------------------------------------------------------------------------
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
        built = cls.from_pipe(pipe, controlnet=controlnets if len(controlnets) > 1 else controlnets[0])
        if mode == "inpaint":
            # diffusers' ControlNet inpaint pipelines take the init pictures as pixels and encode them
            # themselves, sampling the VAE posterior with the seeds' generators. Encoded to the mean, as
            # every img2img here is (generation/img2img.py), a seed's first draw stays the noise txt2img
            # and plain inpainting start from.
            built._encode_vae_image = lambda image, generator: encode_sd_latents(built, image)
        return built



@contextlib.contextmanager
def _composable_unet_hook(unet, weights: list[float], extra_conds):
    """A1111's composable guidance on a diffusers SD / SDXL pipeline.

    The pipeline calls the UNet once per step on [uncond; cond] and forms u + g * (c - u). A forward
    hook replaces the cond half c by c' = u + sum(w_i * (c_i - u)), c_0 being the pipeline's own cond
    and c_1.. the other sub-prompts, predicted by extra UNet calls on the cond half, so that the
    pipeline's own formula gives A1111's u + g * sum(w_i * (c_i - u)). SDXL's pooled text embeddings
    go with each sub-prompt (A1111 stacks the `vector` conditioning the same way)."""
    import torch

    state = {"call": 0, "inside": False}

    def hook(module, args, kwargs, output):
        if state["inside"]:
            return None
        sample = args[0] if args else kwargs["sample"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        out = output[0] if isinstance(output, tuple) else output.sample
        n = sample.shape[0] // 2
        uncond, cond = out[:n], out[n:]
        combined = uncond + weights[0] * (cond - uncond)
        rest = {k: v for k, v in kwargs.items() if k not in ("sample", "timestep", "encoder_hidden_states")}
        t_half = t[n:] if torch.is_tensor(t) and t.ndim and t.shape[0] == 2 * n else t
        added = rest.get("added_cond_kwargs") or None
        state["inside"] = True
        try:
            for weight, cond_kwargs in zip(weights[1:], extra_conds(state["call"])):
                ehs = cond_kwargs["prompt_embeds"]
                call = dict(rest)
                if added is not None:
                    pooled = cond_kwargs["pooled_prompt_embeds"]
                    call["added_cond_kwargs"] = {
                        **{k: v[n:] for k, v in added.items()},
                        "text_embeds": pooled.expand(n, *pooled.shape[1:]).to(added["text_embeds"]),
                    }
                pred = module(sample[n:], t_half, encoder_hidden_states=ehs.expand(n, *ehs.shape[1:]).to(sample.dtype),
                              **call)
                pred = pred[0] if isinstance(pred, tuple) else pred.sample
                combined = combined + weight * (pred - uncond)
        finally:
            state["inside"] = False
        state["call"] += 1
        full = torch.cat([uncond, combined])
        return (full, *output[1:]) if isinstance(output, tuple) else type(output)(sample=full)

    handle = unet.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def is_sd_inpainting_unet(pipe) -> bool:
    unet = pipe.unet
    return unet.config.in_channels == 2 * pipe.vae.config.latent_channels + 1


def with_inpainting_txt2img(pipe):
    """Let an inpainting model (SD 1.x or SDXL) draw from text alone, as A1111 does.

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
