"""img2img and inpainting: a loaded model + GenerationParams + init images -> images with their infotext.

The same steps as txt2img (LoRAs, prompts, per-image seeds, infotext), run on the family's img2img
or inpaint pipeline built over the loaded modules. Where diffusers' defaults differ from A1111,
A1111 wins:

- Steps. A1111 runs int(min(strength, 0.999) * steps) + 1 steps, the tail of a `steps`-step
  schedule (20 steps at 0.75: 16; at 0: 1, from the smallest noise level). Diffusers' pipelines
  run int(steps * strength) (15; and refuse 0). The strength handed to the pipeline is picked so
  it runs A1111's count from the same point of the schedule; the infotext keeps `Steps: 20`.
- Noise. Init images are encoded to the VAE's mean and given to the pipeline as latents, so the
  pipeline's first draw from each image's generator is the noise added: the very noise txt2img
  starts from at that seed (A1111's `rng.next()`). A1111 samples the VAE posterior with an
  unseeded draw; the mean is what makes a seed reproduce exactly.
- Inpainting. The mask is prepared as A1111 prepares it (img2img_inputs) and the original is
  pasted back over the unmasked area after decoding. "Only masked" denoises the region around the
  mask at width x height and pastes it back into the init image's frame (A1111's `uncrop`); resize
  mode 3 encodes the init image at its own size and resizes the latents (bilinear, as A1111).
- Variation seeds. The noise is A1111's mix of seed and variation seed, handed to the pipeline's
  scheduler in place of its own draw (generation/variation_seeds.py).
- Inpainting models (SD 1.x with a 9-channel UNet input). As A1111's `inpainting_image_conditioning`
  (with the default inpainting_mask_weight 1): the mask is the blurred mask rounded to 0/1, the
  masked image is the init image (after "fill") with the masked area set to grey (0 in [-1, 1]),
  encoded to the VAE mean; the UNet gets [latents, mask at latent size (nearest), masked-image
  latents]. diffusers' StableDiffusionInpaintPipeline, which runs the steps, concatenates in that
  order. Like diffusers (and unlike A1111, which also blends the original latents back at every
  step), no per-step blend is done for these models: the model sees the original through the
  extra channels, and the unmasked area is pasted back after decoding as for any model.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.params import GenerationParams, Img2ImgOptions, img2img_steps
from lorastudio.core.prompt_syntax import extract_lora_tags
from lorastudio.core.samplers import resolve_sampler
from lorastudio.generation.composable import composable_conditioning, guidance_hooks
from lorastudio.generation.finite import check_latents, finite_pil
from lorastudio.generation.img2img_inputs import apply_overlay, prepare_inputs, uncrop
from lorastudio.generation.noise import all_seeds, initial_noise, resolve_seed, seeded_generators
from lorastudio.generation.prompt_editing import step_callback_inputs, swap_for_next_call
from lorastudio.generation.txt2img import (
    GenerationResult,
    ProgressFn,
    seed_brownian_noise,
    build_infotext,
    collect_outputs,
)
from lorastudio.generation.variation_seeds import (
    given_latents,
    given_noise,
    subseeds_for,
    variation_infotext,
    variation_noise,
)
from lorastudio.lora.activation import ActiveLora
from lorastudio.models.loaded import LoadedModel


def pipeline_strength(pipeline_class, steps: int, run: int) -> float:
    """The `strength` for which a diffusers img2img/inpaint pipeline class runs exactly `run` of `steps`.

    SD pipelines keep int(steps * strength) steps, FLUX ones steps - int(steps - steps * strength).
    No single float satisfies both roundings for every (steps, run) (steps * (run / steps) is not
    always run in binary), so the pipeline's own get_timesteps is asked, with a stand-in
    scheduler, which candidate it honours.
    """
    if run >= steps:
        return 1.0
    stand_in = SimpleNamespace(scheduler=SimpleNamespace(timesteps=list(range(steps)), order=1))
    for strength in (run / steps, (run + 0.5) / steps, (run - 0.5) / steps):
        _, kept = pipeline_class.get_timesteps(stand_in, steps, strength, "cpu")
        if kept == run:
            return strength
    raise RuntimeError(f"{pipeline_class.__name__}: no strength runs {run} of {steps} steps")


def encode_init_images(family, pipe, images: list) -> torch.Tensor:
    """RGB images -> the scaled latents the pipeline would make, from the VAE posterior's mean."""
    return encode_pixels(family, pipe, [_to_pixels(im) for im in images])


def _to_pixels(im) -> torch.Tensor:
    """An RGB image as a [1, 3, H, W] tensor in [-1, 1]."""
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1


def _mask_fraction(image_mask, round_mask: bool) -> np.ndarray:
    m = np.asarray(image_mask.convert("L"), dtype=np.float32) / 255.0
    return np.around(m) if round_mask else m


def masked_image_latents(family, pipe, images: list, image_mask, round_mask: bool = True) -> torch.Tensor:
    """A1111's masked-image conditioning of an inpainting model: each image with the masked area
    (rounded, unless mask_round is off) set to 0, i.e. grey, encoded like an init image."""
    keep = 1.0 - _mask_fraction(image_mask, round_mask)
    keep_t = torch.from_numpy(keep)[None, None]
    return encode_pixels(family, pipe, [_to_pixels(im) * keep_t for im in images])


def conditioning_mask(image_mask, round_mask: bool = True):
    """The mask an inpainting model is conditioned on: A1111 rounds the blurred mask to 0 / 1 (with
    mask_round, its default)."""
    from PIL import Image

    levels = np.rint(_mask_fraction(image_mask, round_mask) * 255)
    return Image.fromarray(levels.astype(np.uint8), mode="L")


def encode_pixels(family, pipe, pixel_list: list) -> torch.Tensor:
    """[1, 3, H, W] tensors in [-1, 1] -> scaled latents from the VAE posterior's mean."""
    vae = pipe.vae
    # SDXL's VAE overflows in float16; diffusers encodes such VAEs (force_upcast) in float32.
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        latents = []
        for pixels in pixel_list:  # one at a time: a batch of large images would need the memory of all
            with torch.no_grad():
                latents.append(family.encode_images(pipe, pixels))
    finally:
        if upcast:
            vae.to(torch.float16)
    return torch.cat(latents)


def run_img2img(model: LoadedModel, params: GenerationParams, init_images: list, *, mask=None,
                options: Img2ImgOptions | None = None, activate_loras: Callable[[list], list[ActiveLora]],
                model_hash: str | None, save_to: Path | None, on_progress: ProgressFn | None = None,
                should_stop: Callable[[], bool] | None = None,
                prepare_prompts: Callable[[str, str], tuple[str, str, dict]] | None = None,
                control=None, fast=None) -> GenerationResult:
    """`control`: a generation.controlnet_units.ControlPlan (ControlNet units), or None.
    `fast`: the model's generation.fast_mode.FastMode when params.fast asks for it, else None."""
    family = model.family
    options = options or Img2ImgOptions()
    # 1. check inputs
    choice = resolve_sampler(params.sampler, params.scheduler)
    if not family.supports_sampler(choice):
        raise InvalidParameter("sampler", params.sampler, f"not available for {family.title} models")
    if len(init_images) not in (1, params.batch_size):
        # A1111 silently shrinks the batch to the image count; we do not change what was asked for.
        raise InvalidParameter("init_images", f"<{len(init_images)} images>",
                               f"give one image, or one per image of the batch (batch_size={params.batch_size})")
    # images and mask, as A1111 prepares them ("only masked" with a blank mask is plain img2img)
    inputs = prepare_inputs(init_images, mask, params.width, params.height, options, model.pipe.vae_scale_factor)
    inpaint = inputs.latent_mask is not None
    prompt_text, tags = extract_lora_tags(params.prompt)
    # 2. LoRAs and embeddings first: the img2img pipeline is built over the modules they changed
    loras = activate_loras(tags)
    negative, extra = params.negative_prompt, {}
    if prepare_prompts is not None:
        prompt_text, negative, extra = prepare_prompts(prompt_text, negative)
    # A ControlNet inpaint pipeline runs when a unit acts (a unit with an empty guidance range does not)
    control_inpaint = control is not None and mask is not None and bool(control.acting)
    if (control_inpaint or (control is not None and mask is not None and control.references)) \
            and inputs.paste_to is not None:
        # "Only masked": the units see the same region of their pictures as the denoiser of the init image.
        x, y, w, h = inputs.paste_to
        control = control.for_masked_region((x, y, x + w, y + h), mask.size, params.width, params.height)
    if control_inpaint and options.inpainting_fill in (2, 3):
        # diffusers' ControlNet inpaint pipelines start from the encoded picture; there is no latent to fill
        raise InvalidParameter("inpainting_fill", options.inpainting_fill, "with ControlNet units, masked content "
                               "is 0 (fill) or 1 (original); latent noise / latent nothing are not available")
    if control is not None:
        mode = "img2img" if mask is None else "inpaint"
        pipe = control.pipeline(family, model.pipe, mode)
        cond_extra, extra = control.call_kwargs(mode, family), {**extra, **control.infotext()}
    else:
        pipe, cond_extra = family.img2img_pipeline(model.pipe, inpaint=inpaint), {}
    pipe.scheduler = family.make_scheduler(model.base_scheduler_config, choice)
    if inpaint and not options.mask_round:
        # A soft latent mask: the pipeline's mask processor would binarise it.
        pipe.mask_processor = type(pipe.mask_processor).from_config(pipe.mask_processor.config, do_binarize=False)
    # 3. prompts, then latents
    shape = family.latent_shape(pipe, params.width, params.height)
    cache = fast.encode_cache(model, loras, extra, params) if fast is not None else None
    step_cond, composable = composable_conditioning(family, pipe, prompt_text, negative, params.steps,
                                                    clip_skip=params.clip_skip, cfg_scale=params.cfg_scale,
                                                    guidance=params.guidance, control=control, cache=cache)
    init_latents = encode_init_images(family, pipe, inputs.images)
    if options.resize_mode == 3 and inputs.paste_to is None:
        # "Just resize (latent upscale)": the init image is encoded at its own size, the latents resized.
        init_latents = torch.nn.functional.interpolate(init_latents, size=tuple(shape[-2:]), mode="bilinear")
    if tuple(init_latents.shape[-2:]) != tuple(shape[-2:]):
        # FLUX packs 2x2 latent cells: 520 px encodes to 65 cells, which do not pack (txt2img rounds down).
        side = "width" if init_latents.shape[-1] != shape[-1] else "height"
        value, f = getattr(params, side), pipe.vae_scale_factor
        fits = [v for v in range(value - value % 8, 7, -8) if family.latent_shape(pipe, v, v)[-1] * f == v]
        raise InvalidParameter(side, value, f"does not fit this {family.title} model's latent grid"
                               + (f"; nearest below: {fits[0]}" if fits else ""))
    run = img2img_steps(params.steps, params.denoising_strength)
    strength = pipeline_strength(type(pipe), params.steps, run)
    img2img_info = {"Denoising strength": params.denoising_strength, **inputs.infotext}
    repaint = None
    if inputs.latent_mask is not None:
        repaint = torch.from_numpy(inputs.latent_mask)[None, None].to(init_latents.device, init_latents.dtype)
    channels = None  # (mask image, masked-image latents) for an inpainting model
    if inpaint and family.is_inpainting_model(pipe):
        channels = (conditioning_mask(inputs.image_mask, options.mask_round),
                    masked_image_latents(family, pipe, inputs.images, inputs.image_mask, options.mask_round))

    seed = resolve_seed(params.seed)
    seeds = all_seeds(seed, params.batch_size * params.batch_count)
    subseeds = subseeds_for(params, len(seeds))
    result = GenerationResult(seed=seed, all_seeds=seeds, params=params)
    for b in range(params.batch_count):
        batch_seeds = seeds[b * params.batch_size:(b + 1) * params.batch_size]
        batch_subseeds = subseeds[b * params.batch_size:(b + 1) * params.batch_size]
        latents = init_latents.expand(len(batch_seeds), *shape) if len(init_latents) == 1 else init_latents
        if repaint is not None and options.inpainting_fill == 2:
            # "latent noise": A1111 puts the seeds' own noise in the masked area.
            noise, _ = initial_noise(batch_seeds, shape)
            latents = latents * (1 - repaint) + noise.to(latents) * repaint
        elif repaint is not None and options.inpainting_fill == 3:
            latents = latents * (1 - repaint)  # "latent nothing"
        # 4. noise: drawn by the pipeline from each image's own generator; with variation seeds,
        # A1111's mixed noise is handed to the scheduler in its place
        gens = seeded_generators(batch_seeds)
        seed_brownian_noise(pipe, batch_seeds[0])
        noise = variation_noise(params, batch_seeds, batch_subseeds, shape)
        # 5. denoise
        latents = latents.to(pipe.device, dtype=family.denoiser(pipe).dtype)
        # the fast copy is swapped in first, so the composable-guidance hook lands on the module that runs
        with contextlib.ExitStack() as stack:
            if fast is not None:
                stack.enter_context(fast.denoising(family, [pipe], loras, params.width * params.height))
            def hooks():
                return (control.hooks(pipe, family, batch_seeds[0]) if control is not None
                        else contextlib.nullcontext())

            with given_noise(pipe, noise), guidance_hooks(composable, pipe):
                given = given_latents(pipe, noise, strength, latents)
                if control_inpaint:
                    # The ControlNet inpaint pipeline takes the pictures (it encodes them to the same latents, see
                    # family.controlnet_pipeline) and masks them itself; an inpainting model gets the rounded mask.
                    pictures = inputs.images if len(inputs.images) > 1 else inputs.images * len(batch_seeds)
                    pipe_mask = (conditioning_mask(inputs.image_mask, options.mask_round) if channels is not None
                                 else inputs.pipeline_mask)
                    with hooks():
                        images = _denoise(pipe, {**step_cond.kwargs_at(0), **cond_extra}, params, pictures, strength,
                                          run, pipe_mask, gens, b, on_progress, should_stop, step_cond=step_cond,
                                          extra_kwargs=given, pixels_in=True)
                elif channels is not None:
                    cond_mask, masked = channels
                    masked = masked.expand(len(batch_seeds), *masked.shape[1:]) if len(masked) == 1 else masked
                    with hooks():  # reference units may act on an inpainting model
                        images = _denoise(pipe, step_cond.kwargs_at(0), params, latents, strength, run, cond_mask,
                                          gens, b, on_progress, should_stop, masked_latents=masked,
                                          step_cond=step_cond, extra_kwargs=given)
                else:
                    with hooks():
                        images = _denoise(pipe, {**step_cond.kwargs_at(0), **cond_extra}, params, latents, strength,
                                          run, inputs.pipeline_mask, gens, b, on_progress, should_stop,
                                          step_cond=step_cond, extra_kwargs=given)
        # 6. outputs ("only masked": the result is pasted back into the init image's frame first)
        if inputs.paste_to is not None:
            size = inputs.overlays[0].size
            images = [uncrop(img, size, inputs.paste_to) for img in images]
        if inputs.overlays is not None:
            images = [apply_overlay(img, inputs.overlays[i % len(inputs.overlays)]) for i, img in enumerate(images)]
        sub_of = dict(zip(batch_seeds, batch_subseeds))
        collect_outputs(result, images, batch_seeds, save_to,
                        lambda s: build_infotext(model, params, s, choice, loras, model_hash, extra,
                                                 img2img=img2img_info, variation=variation_infotext(params, sub_of[s])))
        if should_stop and should_stop():
            result.interrupted = True
            break
    return result


def _denoise(pipe, cond_kwargs, params, latents, strength, run, mask_image, gens, batch_index, on_progress,
             should_stop, masked_latents=None, step_cond=None, extra_kwargs=None, pixels_in=False):
    """`latents`: the init latents, or (pixels_in) the init pictures for a pipeline that encodes them."""
    def on_step_end(p, step, timestep, kwargs):
        check_latents(kwargs.get("latents"), step + 1)
        swap_for_next_call(step_cond, p, step, kwargs)
        if on_progress:
            on_progress(batch_index, step + 1, run)
        if should_stop and should_stop():
            p._interrupt = True
        return kwargs

    kwargs = dict(image=latents, strength=strength, num_inference_steps=params.steps,
                  num_images_per_prompt=len(gens), generator=gens, callback_on_step_end=on_step_end,
                  callback_on_step_end_tensor_inputs=["latents", *step_callback_inputs(step_cond, pipe)],
                  output_type="np")
    if mask_image is not None and pixels_in:
        kwargs.update(mask_image=mask_image)
    elif mask_image is not None:
        # A 4-channel denoiser does not read masked_image_latents; it is given so the pipeline does
        # not mask the (already encoded) image itself. An inpainting model reads the real ones.
        masked = latents if masked_latents is None else masked_latents.to(latents)
        kwargs.update(mask_image=mask_image, masked_image_latents=masked)
    kwargs.update(extra_kwargs or {})
    if "height" in inspect.signature(pipe.__call__).parameters:
        # FLUX and inpaint pipelines take the size; SD img2img ones read it off the latents.
        kwargs.update(height=params.height, width=params.width)
    with torch.inference_mode():
        return finite_pil(pipe, pipe(**cond_kwargs, **kwargs).images)
