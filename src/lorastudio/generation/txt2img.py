"""txt2img: a loaded model + GenerationParams -> images with their A1111 infotext.

Reads as numbered steps, diffusers-style: check inputs, apply LoRAs, encode prompts, prepare
noise, denoise (the diffusers pipeline), write outputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lorastudio import __version__
from lorastudio.core.errors import InvalidParameter
from lorastudio.core.infotext import format_infotext
from lorastudio.core.params import GenerationParams
from lorastudio.core.prompt_syntax import extract_lora_tags
from lorastudio.core.samplers import resolve_sampler
from lorastudio.generation.composable import composable_conditioning, guidance_hooks
from lorastudio.generation.finite import check_latents, finite_pil
from lorastudio.generation.noise import all_seeds, resolve_seed
from lorastudio.generation.prompt_editing import step_callback_inputs, swap_for_next_call
from lorastudio.generation.variation_seeds import seeded_noise, subseeds_for, variation_infotext
from lorastudio.lora.activation import ActiveLora
from lorastudio.models.loaded import LoadedModel

ProgressFn = Callable[[int, int, int], None]  # (batch index, step, steps per batch)


@dataclass
class GeneratedImage:
    image: Any  # PIL.Image
    seed: int
    infotext: str
    path: Path | None = None


@dataclass
class GenerationResult:
    images: list[GeneratedImage] = field(default_factory=list)
    seed: int = 0
    all_seeds: list[int] = field(default_factory=list)
    params: GenerationParams | None = None
    interrupted: bool = False

    @property
    def infotexts(self) -> list[str]:
        return [im.infotext for im in self.images]


def build_infotext(model: LoadedModel, params: GenerationParams, seed: int, choice, loras: list[ActiveLora],
                   model_hash: str | None, extra: dict[str, Any] | None = None,
                   img2img: dict[str, Any] | None = None, variation: dict[str, Any] | None = None) -> str:
    fields: dict[str, Any] = {
        "Steps": params.steps,
        "Sampler": model.family.sampler_label(choice),
        "Schedule type": choice.schedule,
        "CFG scale": _num(params.cfg_scale),
        "Seed": seed,
        "Size": f"{params.width}x{params.height}",
        "Model hash": model_hash,
        "Model": Path(model.name).stem,
        "VAE hash": model.vae_sha256[:10] if model.vae_sha256 else None,
        "VAE": Path(model.vae_name).stem if model.vae_name else None,  # A1111 writes the file's stem
        **(variation or {}),  # Variation seed, Variation seed strength, Seed resize from
    }
    img2img = dict(img2img or {})
    if "Denoising strength" in img2img:  # A1111 writes it before Clip skip, its mask fields before Lora hashes
        fields["Denoising strength"] = img2img.pop("Denoising strength")
    fields.update(model.family.infotext_fields(params))
    fields.update(img2img)
    if loras:
        # As A1111: names lose ":" and "," so the list can be read back.
        fields["Lora hashes"] = ", ".join(
            f"{lo.name.replace(':', '').replace(',', '')}: {lo.short_hash}" for lo in loras)
    fields.update(extra or {})  # after Lora hashes, where A1111 puts `TI hashes`
    fields["Version"] = f"lorastudio {__version__}"
    return format_infotext(params.prompt, params.negative_prompt, fields)


def _num(x: float):
    return int(x) if float(x).is_integer() else x


def run_txt2img(model: LoadedModel, params: GenerationParams, *, activate_loras: Callable[[list], list[ActiveLora]],
                model_hash: str | None, save_to: Path | None, on_progress: ProgressFn | None = None,
                should_stop: Callable[[], bool] | None = None, pipeline_override=None,
                prepare_prompts: Callable[[str, str], tuple[str, str, dict]] | None = None,
                upscalers=None, control=None, fast=None) -> GenerationResult:
    """`control`: a generation.controlnet_units.ControlPlan (ControlNet units), or None.
    `fast`: the model's generation.fast_mode.FastMode when params.fast asks for it, else None."""
    family, pipe = model.family, pipeline_override or model.pipe
    # With the hires fix, a unit acts in the passes its hr_option names (the extension's rule).
    first_control = (control.for_pass("low", params.width, params.height) if control is not None and params.enable_hr
                     else control)
    if first_control is not None:
        pipe = first_control.pipeline(family, pipe, "txt2img")
    # 1. check inputs
    choice = resolve_sampler(params.sampler, params.scheduler)
    if not family.supports_sampler(choice):
        raise InvalidParameter("sampler", params.sampler, f"not available for {family.title} models")
    prompt_text, tags = extract_lora_tags(params.prompt)
    # 2. LoRAs from the prompt
    loras = activate_loras(tags)
    pipe.scheduler = family.make_scheduler(model.base_scheduler_config, choice)
    # 3. prompts (textual-inversion embeddings named in them become their tokens first)
    negative, extra = params.negative_prompt, {}
    if prepare_prompts is not None:
        prompt_text, negative, extra = prepare_prompts(prompt_text, negative)
    # prompt editing [from:to:when] and alternation [a|b]: the texts per step, encoded once each
    # the fast mode keeps encodings across requests (same model, texts, LoRA text weights, embeddings)
    cache = fast.encode_cache(model, loras, extra, params) if fast is not None else None
    # composable AND: one conditioning per sub-prompt, combined by the family's guidance hook
    step_cond, composable = composable_conditioning(family, pipe, prompt_text, negative, params.steps,
                                                    clip_skip=params.clip_skip, cfg_scale=params.cfg_scale,
                                                    guidance=params.guidance, control=control, cache=cache)
    control_kwargs: dict = {}
    if control is not None:
        control_kwargs = first_control.call_kwargs("txt2img", family) if first_control is not None else {}
        extra = {**extra, **control.infotext()}
    hires = None
    if params.enable_hr:
        from lorastudio.generation.hires_fix import plan_hires

        hires = plan_hires(model, params, tags, prepare_prompts=prepare_prompts, upscalers=upscalers,
                           control=control)
    seed = resolve_seed(params.seed)
    seeds = all_seeds(seed, params.batch_size * params.batch_count)
    subseeds = subseeds_for(params, len(seeds))
    result = GenerationResult(seed=seed, all_seeds=seeds, params=params)
    shape = family.latent_shape(pipe, params.width, params.height)
    for b in range(params.batch_count):
        batch_seeds = seeds[b * params.batch_size:(b + 1) * params.batch_size]
        batch_subseeds = subseeds[b * params.batch_size:(b + 1) * params.batch_size]
        # 4. noise from each image's own seed (and variation seed), on the CPU
        latents, gens = seeded_noise(params, batch_seeds, batch_subseeds, shape)
        latents = family.pack_latents(pipe, latents).to(pipe.device, dtype=family.denoiser(pipe).dtype)
        seed_brownian_noise(pipe, batch_seeds[0])
        # 5. denoise (in the fast mode with the fast copy of the denoiser, on every pass; it is swapped
        # in first, so the composable-guidance hook lands on the module that runs)
        with contextlib.ExitStack() as stack:
            if fast is not None:
                stack.enter_context(fast.denoising(family, [pipe, *([hires.pipe] if hires else [])], loras,
                                                   _largest_pixels(params, hires)))
            with first_control.hooks(pipe, family, batch_seeds[0]) if first_control is not None else contextlib.nullcontext(), \
                    guidance_hooks(composable, pipe):
                images = _denoise(pipe, {**step_cond.kwargs_at(0), **control_kwargs}, params, latents, gens, b,
                                  on_progress, should_stop, output_type=hires.first_pass_output if hires else "np",
                                  step_cond=step_cond)
            if hires is not None:  # 5b. hires fix: upscale, then the img2img second pass
                from lorastudio.generation.hires_fix import run_second_pass

                images = run_second_pass(model, hires, images, batch_seeds, b, on_progress, should_stop,
                                         subseeds=batch_subseeds)
        # 6. outputs
        sub_of = dict(zip(batch_seeds, batch_subseeds))
        collect_outputs(result, images, batch_seeds, save_to,
                        lambda s: build_infotext(model, params, s, choice, loras, model_hash, extra,
                                                 img2img=hires.infotext if hires else None,
                                                 variation=variation_infotext(params, sub_of[s])))
        if should_stop and should_stop():
            # As A1111: what was made so far is kept, the remaining batches are not started.
            result.interrupted = True
            break
    return result


def _largest_pixels(params: GenerationParams, hires) -> int:
    if hires is None:
        return params.width * params.height
    return max(params.width * params.height, hires.params.width * hires.params.height)


def collect_outputs(result: GenerationResult, images, seeds, save_to: Path | None, infotext_for) -> None:
    """Attach each image's infotext, save it (never overwriting) and add it to the result."""
    from lorastudio.generation.outputs import save_image

    for img, s in zip(images, seeds):
        info = infotext_for(s)
        gi = GeneratedImage(img, s, info)
        if save_to is not None:
            gi.path = save_image(img, save_to, s, info)
        result.images.append(gi)


def _denoise(pipe, cond_kwargs, params, latents, gens, batch_index, on_progress, should_stop, output_type="np",
             step_cond=None):
    def on_step_end(p, step, timestep, kwargs):
        check_latents(kwargs.get("latents"), step + 1)
        swap_for_next_call(step_cond, p, step, kwargs)
        if on_progress:
            on_progress(batch_index, step + 1, params.steps)
        if should_stop and should_stop():
            p._interrupt = True
        return kwargs

    with torch.inference_mode():
        out = pipe(
            **cond_kwargs,
            num_inference_steps=params.steps,
            width=params.width,
            height=params.height,
            num_images_per_prompt=len(gens),
            latents=latents,
            generator=gens,
            callback_on_step_end=on_step_end,
            callback_on_step_end_tensor_inputs=["latents", *step_callback_inputs(step_cond, pipe)],
            output_type=output_type,
        )
    if output_type == "latent":  # the hires fix upscales these
        check_latents(out.images, params.steps)
        return out.images
    return finite_pil(pipe, out.images)


def seed_brownian_noise(pipe, seed: int) -> None:
    # DPM++ SDE draws its noise from a Brownian tree seeded at construction, not from the
    # generators: seed it from the image seed so the same seed gives the same picture.
    sched = pipe.scheduler
    if "noise_sampler_seed" in sched.config:
        pipe.scheduler = type(sched).from_config(sched.config, noise_sampler_seed=seed)

