"""FLUX.1 (dev and schnell): everything specific to this family lives here.

Users keep FLUX either as one all-in-one file or as a transformer-only file (flux1-dev.safetensors)
with the autoencoder in models/VAE (ae.safetensors) and the text encoders in
models/text_encoder (clip_l.safetensors, t5xxl_*.safetensors), as Forge does.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from lorastudio.core.errors import ModelFileError
from lorastudio.core.samplers import SamplerChoice
from lorastudio.models.devices import torch_dtype
from lorastudio.models.families.base import Conditioning, LoadOptions, ModelFamily, TrainableFamily

# Where the separate component files are looked for, by component.
_SEPARATE = {
    "vae": ("vae_dir", ("ae.safetensors", "flux*ae*.safetensors", "ae*.safetensors")),
    "text_encoder": ("text_encoder_dir", ("clip_l*.safetensors",)),
    "text_encoder_2": ("text_encoder_dir", ("t5xxl*.safetensors", "t5*.safetensors")),
}

TRANSFORMER_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj",
                            "to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
                            "proj_mlp", "proj_out")


class FluxFamily(ModelFamily, TrainableFamily):
    name = "flux"
    title = "FLUX.1"
    base_model_version = "flux1"
    modelspec_architecture = "flux-1-dev"
    modelspec_implementation = "https://github.com/black-forest-labs/flux"
    default_size = 1024
    default_sampler = "Euler (flow)"
    default_cfg = 1.0
    gpu_dtype = "bfloat16"
    denoiser_name = "transformer"
    text_encoder_names = ("text_encoder", "text_encoder_2")  # CLIP-L, T5-XXL
    # Flow matching has no epsilon / v prediction type: the key is left out of a LoRA's metadata,
    # as kohya's sd-scripts does for its flow-matching models.
    modelspec_prediction_type = None
    # diffusers' FLUX ControlNet pipeline (InstantX / Shakker-Labs style ControlNets). Its img2img and
    # inpaint ones encode the init picture themselves (no latents in) and sample the control picture's
    # posterior with the seed's generators before the noise, so a seed would not start from its own
    # noise: those modes are refused, not run differently.
    controlnet_pipeline_names = {"txt2img": "FluxControlNetPipeline"}
    # The extension's control modes scale a UNet's 13 residuals; a FLUX ControlNet gives one per block.
    controlnet_control_modes = False

    def claims_checkpoint(self, keys: Collection[str]) -> bool:
        from lorastudio.models.formats.flux_checkpoint import detect_flux_layout

        return detect_flux_layout(keys) is not None

    def claims_folder(self, model_index: Mapping[str, Any]) -> bool:
        return model_index.get("_class_name") in ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")

    def claims_lora(self, shapes: Mapping[str, tuple[int, ...]]) -> bool:
        # BFL block names (kohya, ComfyUI, fal) anywhere; diffusers names only at the start, since
        # SD UNet LoRAs also contain `..._attentions_0_transformer_blocks_0_...`.
        starts = ("transformer.", "lora_transformer_", "transformer_blocks.", "single_transformer_blocks.",
                  "base_model.model.transformer_blocks.", "base_model.model.single_transformer_blocks.")
        return any("double_blocks" in k or "single_blocks" in k or k.startswith(starts) for k in shapes)

    # --- loading -------------------------------------------------------------------------
    def load_checkpoint(self, path: Path, shapes, metadata, options: LoadOptions):
        from safetensors.torch import load_file

        from lorastudio.models.formats.flux_checkpoint import (infer_component_config, infer_flux_configs,
                                                               split_flux_checkpoint)
        from lorastudio.models.formats.flux_components import build_flux_modules

        parts = split_flux_checkpoint(load_file(str(path)), source=path)
        configs = infer_flux_configs(dict(shapes), dict(metadata), source=path)
        for comp, (dir_attr, patterns) in _SEPARATE.items():
            if comp in parts:
                continue
            found = _find_component(getattr(options, dir_attr), patterns)
            if found is None:
                raise ModelFileError(path, f"this FLUX.1 file has no {comp}; put {patterns[0]} in "
                                           f"{getattr(options, dir_attr)} (as Forge keeps it) or use an all-in-one file")
            from lorastudio.core.safetensors_header import read_header

            header = read_header(found)
            configs[comp] = infer_component_config(comp, {k: t.shape for k, t in header.tensors.items()},
                                                   header.metadata, source=found)
            parts[comp] = load_file(str(found))
        modules = build_flux_modules(parts, configs, source=path)
        return self._assemble(modules, configs, options)

    def _assemble(self, modules, configs, options: LoadOptions):
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
        from transformers import CLIPTokenizer, T5TokenizerFast

        from lorastudio.models.formats.flux_checkpoint import t5_tokenizer_dir

        clip_dir = Path(__file__).resolve().parent.parent / "bundled" / "tokenizers" / "clip"
        tok = CLIPTokenizer(str(clip_dir / "vocab.json"), str(clip_dir / "merges.txt"), pad_token="<|endoftext|>",
                            model_max_length=77)
        tok2 = T5TokenizerFast.from_pretrained(str(t5_tokenizer_dir()), local_files_only=True)
        sched_cfg = {k: v for k, v in configs["scheduler"].items() if not k.startswith("_")}
        dtype = torch_dtype(options.dtype)
        pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(sched_cfg),
                            vae=modules["vae"], text_encoder=modules["text_encoder"], tokenizer=tok,
                            text_encoder_2=modules["text_encoder_2"], tokenizer_2=tok2,
                            transformer=modules["transformer"])
        return pipe.to(dtype=dtype)

    def load_folder(self, path: Path, options: LoadOptions):
        from diffusers import FluxPipeline

        return FluxPipeline.from_pretrained(str(path), local_files_only=True, torch_dtype=torch_dtype(options.dtype))

    def replace_vae(self, pipe, path: Path, options: LoadOptions) -> None:
        from safetensors.torch import load_file

        from lorastudio.models.formats.flux_checkpoint import infer_component_config
        from lorastudio.models.formats.flux_components import build_flux_modules
        from lorastudio.models.loader import probe_checkpoint

        st_path, shapes, metadata = probe_checkpoint(path, options)
        try:
            cfg = infer_component_config("vae", shapes, metadata, source=path)
        except (KeyError, IndexError, ValueError) as exc:
            raise ModelFileError(path, f"not a FLUX.1 autoencoder: {exc}") from None
        if cfg.get("latent_channels") != pipe.vae.config.latent_channels:
            raise ModelFileError(path, f"VAE has {cfg.get('latent_channels')} latent channels; this FLUX.1 model "
                                       f"needs {pipe.vae.config.latent_channels}")
        vae = build_flux_modules({"vae": load_file(str(st_path))}, {"vae": cfg}, source=path)["vae"]
        pipe.vae = vae.to(pipe.device, pipe.vae.dtype)

    # --- generation ------------------------------------------------------------------------
    def supports_sampler(self, choice: SamplerChoice) -> bool:
        # Forge calls FLUX's flow-matching Euler plain "Euler" (and writes it so in infotexts). Its
        # schedule is the model's own shifted one, so other schedule types are refused, not ignored.
        euler = choice.sampler.scheduler_class == "FlowMatchEulerDiscreteScheduler" or choice.sampler.name == "Euler"
        return euler and choice.schedule in ("Automatic", "Simple")

    def make_scheduler(self, base_config, choice: SamplerChoice):
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(base_config)

    def encode_prompts(self, pipe, prompt: str, negative_prompt: str, *, clip_skip: int, cfg_scale: float,
                       guidance: float) -> Conditioning:
        from lorastudio.core.prompt_syntax import parse_prompt_attention

        # FLUX has no classifier-free guidance; emphasis markup is removed (its weights are not
        # applied to T5, as in most FLUX front-ends) so `(word:1.2)` is not read as literal text.
        text = "".join(t for t, w in parse_prompt_attention(prompt) if t != "BREAK")
        embeds, pooled, _ = pipe.encode_prompt(prompt=text, prompt_2=None, device=pipe._execution_device,
                                               num_images_per_prompt=1, max_sequence_length=self._max_seq(pipe))
        kwargs = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if pipe.transformer.config.guidance_embeds:
            kwargs["guidance_scale"] = guidance
        return Conditioning(kwargs)

    def _max_seq(self, pipe) -> int:
        return min(512, int(getattr(pipe.tokenizer_2, "model_max_length", 512) or 512))

    def native_resolution(self, pipe) -> int:
        # diffusers' own default: the pipeline's default_sample_size (latent side) times the VAE factor.
        return int(pipe.default_sample_size * pipe.vae_scale_factor)

    def latent_shape(self, pipe, width: int, height: int) -> tuple[int, ...]:
        f = pipe.vae_scale_factor * 2  # latents are packed 2x2
        return (pipe.transformer.config.in_channels // 4, 2 * (height // f), 2 * (width // f))

    def pack_latents(self, pipe, latents):
        b, c, h, w = latents.shape
        return pipe._pack_latents(latents, b, c, h, w)

    def sampler_label(self, choice: SamplerChoice) -> str:
        # Forge writes FLUX's flow-matching Euler simply as "Euler".
        return "Euler" if choice.sampler.name == "Euler (flow)" else choice.sampler.name

    def infotext_fields(self, params) -> dict[str, Any]:
        # As Forge writes FLUX images: "Sampler: Euler, Schedule type: Simple", which reads back as flow Euler.
        return {"Schedule type": "Simple", "Distilled CFG Scale": params.guidance}

    def img2img_pipeline(self, pipe, inpaint: bool):
        from diffusers import FluxImg2ImgPipeline, FluxInpaintPipeline

        return (FluxInpaintPipeline if inpaint else FluxImg2ImgPipeline).from_pipe(pipe)

    # --- ControlNet (diffusers' FluxControlNetModel layout: single file or folder) ----------
    def claims_controlnet(self, shapes) -> bool:
        return "controlnet_x_embedder.weight" in shapes and "x_embedder.weight" in shapes

    def controlnet_image_argument(self, mode: str) -> str:
        return "control_image"  # in every FLUX ControlNet pipeline, txt2img included

    def load_controlnet(self, path, shapes, pipe, options, *, folder_config=None):
        from diffusers import FluxControlNetModel
        from safetensors.torch import load_file

        base = pipe.transformer.config
        inner, width = base.num_attention_heads * base.attention_head_dim, int(shapes["x_embedder.weight"][0])
        if width != inner:
            raise ModelFileError(path, f"is a ControlNet for a FLUX.1 transformer {width} wide; the loaded model's "
                                       f"is {inner} wide")
        dtype = torch_dtype(options.dtype)
        try:
            if folder_config is not None:
                cn = FluxControlNetModel.from_pretrained(str(Path(path).parent), local_files_only=True,
                                                         torch_dtype=dtype)
            else:  # a single file in diffusers' names: the config is read off the shapes and the base model
                cn = FluxControlNetModel(**_controlnet_config(base, shapes))
                cn.load_state_dict(load_file(str(path)), strict=True)
                cn = cn.to(dtype)
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise ModelFileError(path, f"cannot be read as a FLUX.1 ControlNet for this model: {exc}") from None
        return cn.to(pipe.device).eval()

    def controlnet_pipeline(self, pipe, controlnets, mode: str):
        import diffusers

        from lorastudio.core.errors import InvalidParameter

        if mode not in self.controlnet_pipeline_names:
            raise InvalidParameter("controlnet", "<unit>", f"{self.title} ControlNets act in txt2img only (and in "
                                   f"the first hires pass: hr_option 'Low res only'), not in {mode}")
        cls = getattr(diffusers, self.controlnet_pipeline_names[mode])
        return cls.from_pipe(pipe, controlnet=controlnets if len(controlnets) > 1 else controlnets[0])

    # --- training --------------------------------------------------------------------------
    def training_preset(self, size: int) -> dict[str, Any]:
        # fal's FLUX LoRA trainer / ai-toolkit: rank 16, lr 4e-4, 1000 steps, at the model's size (1024 px).
        return {"rank": 16, "alpha": 16.0, "lr": 4e-4, "te_lr": 4e-4, "steps": 1000, "resolution": [size],
                "train_text_encoder": False, "timestep_sampling": "shift"}

    def trainable_modules(self, pipe, *, text_encoders: bool):
        mods = {"transformer": pipe.transformer}
        if text_encoders:
            mods["text_encoder"] = pipe.text_encoder
        return mods

    def lora_targets(self) -> dict[str, list[str]]:
        return {"transformer": list(TRANSFORMER_LORA_TARGETS), "text_encoder": ["q_proj", "k_proj", "v_proj", "out_proj"]}

    def encode_images(self, pipe, pixels):
        vae = pipe.vae
        latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean
        return (latents - vae.config.shift_factor) * vae.config.scaling_factor

    def encode_captions(self, pipe, captions: list[str], *, clip_skip: int):
        from lorastudio.core.prompt_syntax import parse_prompt_attention

        texts = ["".join(t for t, _ in parse_prompt_attention(c) if t != "BREAK") for c in captions]
        embeds, pooled, _ = pipe.encode_prompt(prompt=texts, prompt_2=None, device=pipe._execution_device,
                                               num_images_per_prompt=1, max_sequence_length=self._max_seq(pipe))
        return {"embeds": embeds, "pooled": pooled}

    def training_loss(self, pipe, modules, latents, cond, gens, config, mask=None, sample_weights=None, *, schedule):
        import torch

        from lorastudio.models.objectives import flow_noised, weighted_mse

        model = modules["transformer"]
        nb = flow_noised(latents, gens, sampling=config.timestep_sampling or "shift", shift=config.discrete_flow_shift)
        b, c, h, w = nb.noisy.shape
        dtype = next(model.parameters()).dtype
        packed = pipe._pack_latents(nb.noisy, b, c, h, w).to(dtype)
        img_ids = pipe._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, dtype)
        txt_ids = torch.zeros(cond["embeds"].shape[1], 3, device=latents.device, dtype=dtype)
        guidance = None
        # accelerate wraps the transformer in DistributedDataParallel on several processes; the
        # config lives on the wrapped module.
        if _unwrap(model).config.guidance_embeds:
            guidance = torch.full((b,), float(config.guidance), device=latents.device, dtype=dtype)
        pred = model(hidden_states=packed, timestep=nb.timesteps.to(dtype), guidance=guidance,
                     pooled_projections=cond["pooled"].to(dtype), encoder_hidden_states=cond["embeds"].to(dtype),
                     txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        pred = pipe._unpack_latents(pred, h * pipe.vae_scale_factor, w * pipe.vae_scale_factor, pipe.vae_scale_factor)
        return weighted_mse(pred, nb.target, nb.weights, mask, sample_weights)

    def export_kohya(self, pipe, lora, *, alpha: float, rank: int, overrides=None):
        if overrides:
            raise ValueError("FLUX.1 LoRAs train one rank for every layer (no conv_dim)")
        from lorastudio.models.formats.kohya_lora_flux import kohya_flux_lora_from_peft

        return kohya_flux_lora_from_peft(lora["transformer"], lora.get("text_encoder"), alpha=alpha, rank=rank)


def _controlnet_config(base, shapes) -> dict[str, Any]:
    """FluxControlNetModel's arguments for a single file: block counts, widths and options from its
    tensors; head layout and rotary axes from the base transformer it was trained beside."""

    def count(prefix: str) -> int:
        return len({k.split(".")[1] for k in shapes if k.startswith(prefix + ".")})

    hint = shapes.get("input_hint_block.conv_out.weight")
    mode = shapes.get("controlnet_mode_embedder.weight")
    return dict(patch_size=base.patch_size, in_channels=int(shapes["x_embedder.weight"][1]),
                num_layers=count("controlnet_blocks"), num_single_layers=count("controlnet_single_blocks"),
                attention_head_dim=base.attention_head_dim, num_attention_heads=base.num_attention_heads,
                joint_attention_dim=int(shapes["context_embedder.weight"][1]),
                pooled_projection_dim=int(shapes["time_text_embed.text_embedder.linear_1.weight"][1]),
                guidance_embeds="time_text_embed.guidance_embedder.linear_1.weight" in shapes,
                axes_dims_rope=list(base.axes_dims_rope), num_mode=int(mode[0]) if mode else None,
                conditioning_embedding_channels=int(hint[0]) if hint else None)


def _unwrap(m):
    return getattr(m, "module", m)


def _find_component(folder: Path | None, patterns: tuple[str, ...]) -> Path | None:
    if folder is None or not Path(folder).is_dir():
        return None
    for pattern in patterns:
        hits = sorted(Path(folder).glob(pattern))
        if hits:
            return hits[0]
    return None
