"""A1111's hires fix: a txt2img first pass, an upscale, and an img2img second pass.

The numbers are A1111's (v1.10 `StableDiffusionProcessingTxt2Img`), because an A1111 PNG's
parameters must give the same picture here:

- Target size: `hr_scale` times the first-pass size, or `hr_resize_x/y` (one of them 0: the other
  from the aspect ratio; both set: scaled to cover, then the latents are cropped to fit).
- Upscale: a latent mode (`torch.nn.functional.interpolate` of the first-pass latents, by A1111's
  mode names) or an image upscaler (decode, upscale, encode) from `image_upscalers`.
- Second pass: `hr_second_pass_steps or steps` steps are run, the tail of a schedule of
  int(steps / denoising_strength) steps (A1111's `setup_img2img_steps` with explicit steps), with
  fresh noise from each image's seed at the new size (A1111 makes a new ImageRNG).
- Infotext: `Denoising strength`, `Hires sampler`, `Hires prompt`, `Hires negative prompt`,
  `Hires schedule type`, `Hires upscale` or `Hires resize`, `Hires steps`, `Hires upscaler`,
  Forge's `Hires CFG Scale`, in A1111's order; `Size` stays the first-pass size, as in A1111.

Image upscalers come from the one list generation.upscalers keeps (built-ins, model files such as
ESRGAN from the models folder), the same Extras and /sdapi/v1/upscalers use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import torch

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.params import GenerationParams
from lorastudio.core.prompt_syntax import extract_lora_tags
from lorastudio.core.samplers import resolve_sampler
from lorastudio.generation.composable import composable_conditioning, guidance_hooks


# A1111's shared.latent_upscale_modes: name -> (interpolate mode, antialias).
LATENT_UPSCALE_MODES: Mapping[str, tuple[str, bool]] = MappingProxyType({
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
})

# An image upscaler, A1111's `Upscaler.do_upscale`: (image, scale) -> a larger image.
ImageUpscaler = Callable[[Any, float], Any]


def _image_upscalers(upscalers):
    """The one upscaler list (generation.upscalers); a plain mapping adds in-process ones to the built-ins."""
    from lorastudio.generation.upscalers import ImageUpscalers

    if upscalers is None or isinstance(upscalers, Mapping):
        return ImageUpscalers(extra=upscalers or {})
    return upscalers


def upscaler_names(upscalers=None) -> list[str]:
    """`upscalers`: a generation.upscalers.ImageUpscalers, or a mapping of extra ones, or None."""
    return [*LATENT_UPSCALE_MODES, *_image_upscalers(upscalers).names()]


def resolve_upscaler(name: str | None, upscalers=None):
    """-> (A1111's label, "latent", (mode, antialias)) or (label, "image", do_upscale or None); any case."""
    wanted = (name or "Latent").strip()
    for label, spec in LATENT_UPSCALE_MODES.items():
        if label.lower() == wanted.lower():
            return label, "latent", spec
    images = _image_upscalers(upscalers)
    found = images.lookup(wanted)
    if found is None:
        raise InvalidParameter("hr_upscaler", name, f"unknown upscaler; known: {', '.join(upscaler_names(images))}")
    return found[0], "image", found[1]


def upscale_image(img, width: int, height: int, upscaler: ImageUpscaler | None):
    """A1111's `images.resize_image(0, ...)` with a named upscaler: upscale, then Lanczos to the exact size."""
    from PIL import Image

    lanczos = Image.Resampling.LANCZOS
    if upscaler is None:
        return img.resize((width, height), resample=lanczos)
    scale = max(width / img.width, height / img.height)
    if scale > 1.0:
        # A1111's Upscaler.upscale: up to three passes until the size (rounded down to 8) is reached.
        dest_w, dest_h = int((img.width * scale) // 8 * 8), int((img.height * scale) // 8 * 8)
        for _ in range(3):
            if img.width >= dest_w and img.height >= dest_h:
                break
            before = img.size
            img = upscaler(img, scale)
            if img.size == before:
                break
        if img.size != (dest_w, dest_h):
            img = img.resize((dest_w, dest_h), resample=lanczos)
    if img.size != (width, height):
        img = img.resize((width, height), resample=lanczos)
    return img


@dataclass(frozen=True)
class HiresTarget:
    upscale_w: int
    upscale_h: int
    truncate_x: int  # latent cells cropped (A1111's truncate_x / truncate_y)
    truncate_y: int
    factor: int  # pixels per latent cell (A1111's opt_f: 8 for SD; the tiny test VAEs differ)

    @property
    def cells(self) -> tuple[int, int]:
        """(height, width) of the upscaled latents, before the crop."""
        return self.upscale_h // self.factor, self.upscale_w // self.factor

    @property
    def width(self) -> int:
        return (self.cells[1] - self.truncate_x) * self.factor

    @property
    def height(self) -> int:
        return (self.cells[0] - self.truncate_y) * self.factor


def hires_target(params: GenerationParams, factor: int = 8) -> HiresTarget:
    """A1111's `calculate_target_resolution`."""
    w, h, rx, ry = params.width, params.height, params.hr_resize_x, params.hr_resize_y
    if rx == 0 and ry == 0:
        return HiresTarget(int(w * params.hr_scale), int(h * params.hr_scale), 0, 0, factor)
    if ry == 0:
        return HiresTarget(rx, rx * h // w, 0, 0, factor)
    if rx == 0:
        return HiresTarget(ry * w // h, ry, 0, 0, factor)
    if w / h < rx / ry:
        up_w, up_h = rx, rx * h // w
    else:
        up_w, up_h = ry * w // h, ry
    return HiresTarget(up_w, up_h, (up_w - rx) // factor, (up_h - ry) // factor, factor)


def second_pass_steps(params: GenerationParams) -> tuple[int, int]:
    """(schedule length, steps run): A1111 runs `hr_second_pass_steps or steps` steps, the tail of
    int(steps / min(strength, 0.999)) (setup_img2img_steps when steps are given)."""
    requested = params.hr_second_pass_steps or params.steps
    if params.denoising_strength <= 0:
        raise InvalidParameter("denoising_strength", params.denoising_strength,
                               "the hires fix needs a denoising strength above 0")
    return int(requested / min(params.denoising_strength, 0.999)), requested


def _num(x: float):
    return int(x) if float(x).is_integer() else x


def hires_infotext(params: GenerationParams, upscaler_label: str) -> dict[str, Any]:
    """The fields A1111 adds for the hires fix, in its order (Denoising strength first: it goes
    before Clip skip)."""
    prompt, negative = params.hr_prompt or params.prompt, params.hr_negative_prompt or params.negative_prompt
    same_sampler = params.hr_sampler_name in (None, "") or params.hr_sampler_name == params.sampler
    same_schedule = params.hr_scheduler in (None, "") or params.hr_scheduler == params.scheduler
    resized = params.hr_resize_x or params.hr_resize_y
    return {
        "Denoising strength": _num(params.denoising_strength),
        "Hires sampler": None if same_sampler else params.hr_sampler_name,
        "Hires prompt": prompt if prompt != params.prompt else None,
        "Hires negative prompt": negative if negative != params.negative_prompt else None,
        "Hires schedule type": None if same_schedule else params.hr_scheduler,
        "Hires upscale": None if resized else _num(params.hr_scale),
        "Hires resize": f"{params.hr_resize_x}x{params.hr_resize_y}" if resized else None,
        "Hires steps": params.hr_second_pass_steps or None,
        "Hires upscaler": upscaler_label,
        "Hires CFG Scale": None if params.hr_cfg is None else _num(params.hr_cfg),
    }


@dataclass
class HiresPlan:
    """Everything the second pass needs, prepared once per call (prompts encoded, scheduler built)."""

    pipe: Any
    step_cond: Any  # generation.prompt_editing.StepConditioning
    composable: Any  # generation.composable.ComposableGuidance, or None for a plain prompt
    params: GenerationParams  # the second pass: schedule steps, target size
    run: int
    strength: float
    target: HiresTarget
    kind: str  # "latent" or "image"
    upscale: Any
    infotext: dict[str, Any]
    control: Any = None  # the ControlNet units of the second pass (a ControlPlan), or None

    @property
    def first_pass_output(self) -> str:
        return "latent" if self.kind == "latent" else "np"


def plan_hires(model, params: GenerationParams, lora_tags: list, *, prepare_prompts=None,
               upscalers=None, control=None) -> HiresPlan:
    """Check the hires settings and build the second pass (its pipeline, scheduler and prompts).

    `control`: the generation's ControlPlan; its units for the second pass act there, maps at the hires size."""
    from lorastudio.generation.img2img import pipeline_strength

    family = model.family
    label, kind, upscale = resolve_upscaler(params.hr_upscaler, upscalers)
    choice = resolve_sampler(params.hr_sampler_name or params.sampler, params.hr_scheduler or params.scheduler)
    if not family.supports_sampler(choice):
        raise InvalidParameter("hr_sampler_name", params.hr_sampler_name, f"not available for {family.title} models")
    target = hires_target(params, model.pipe.vae_scale_factor)
    if target.width < target.factor or target.height < target.factor:
        raise InvalidParameter("hr_resize_x", params.hr_resize_x, "the hires size is smaller than one latent cell")
    second_control = control.for_pass("high", target.width, target.height) if control is not None else None
    if second_control is not None:
        pipe = second_control.pipeline(family, model.pipe, "img2img")
    else:
        pipe = family.img2img_pipeline(model.pipe, inpaint=False)
    schedule, run = second_pass_steps(params)
    prompt = params.hr_prompt or params.prompt
    negative = params.hr_negative_prompt or params.negative_prompt
    prompt_text, tags = extract_lora_tags(prompt)
    if sorted(map(repr, tags)) != sorted(map(repr, lora_tags)):
        raise InvalidParameter("hr_prompt", params.hr_prompt,
                               "LoRA tags in the hires prompt must be those of the prompt (one LoRA set per image)")
    pipe.scheduler = family.make_scheduler(model.base_scheduler_config, choice)
    extra = {}
    if prepare_prompts is not None:
        prompt_text, negative, extra = prepare_prompts(prompt_text, negative)
    cfg = params.cfg_scale if params.hr_cfg is None else params.hr_cfg
    # Prompt editing in the hires pass: `when` counts over both passes (A1111's hires_steps offsets).
    step_cond, composable = composable_conditioning(family, pipe, prompt_text, negative, params.steps,
                                                    clip_skip=params.clip_skip, cfg_scale=cfg,
                                                    guidance=params.guidance, hires_steps=run, control=second_control)
    second = params.model_copy(update={"steps": schedule, "width": target.width, "height": target.height})
    return HiresPlan(pipe=pipe, step_cond=step_cond, composable=composable, params=second, run=run,
                     strength=pipeline_strength(type(pipe), schedule, run), target=target, kind=kind,
                     upscale=upscale, infotext=hires_infotext(params, label), control=second_control)


def upscaled_latents(model, plan: HiresPlan, first) -> torch.Tensor:
    """The first pass's output (latents, or decoded PIL images) -> the second pass's start latents."""
    from lorastudio.generation.img2img import encode_init_images

    t = plan.target
    if plan.kind == "latent":
        if first.ndim != 4:
            raise InvalidParameter("hr_upscaler", "Latent", f"latent upscaling is not available for "
                                   f"{model.family.title} models; use an image upscaler such as Lanczos")
        mode, antialias = plan.upscale
        latents = torch.nn.functional.interpolate(first, size=t.cells, mode=mode, antialias=antialias)
    else:
        # A1111 resizes to the exact target and lets the VAE floor it to whole cells; the image is
        # resized to whole cells directly, which is the same size of latents.
        size = (t.cells[1] * t.factor, t.cells[0] * t.factor)
        images = [upscale_image(im, *size, plan.upscale) for im in first]
        latents = encode_init_images(model.family, plan.pipe, images)
    h, w = latents.shape[-2:]
    return latents[..., t.truncate_y // 2:h - (t.truncate_y + 1) // 2, t.truncate_x // 2:w - (t.truncate_x + 1) // 2]


def run_second_pass(model, plan: HiresPlan, first, seeds: list[int], batch_index: int, on_progress=None,
                    should_stop=None, subseeds: list[int] | None = None) -> list:
    """Upscale the first pass and denoise it again: the img2img pass, fresh noise from each seed
    (with the variation seeds mixed in, as A1111's new ImageRNG for the hires pass does)."""
    from lorastudio.generation.img2img import _denoise
    from lorastudio.generation.noise import seeded_generators
    from lorastudio.generation.txt2img import seed_brownian_noise
    from lorastudio.generation.variation_seeds import given_noise, variation_noise

    latents = upscaled_latents(model, plan, first)
    gens = seeded_generators(seeds)
    seed_brownian_noise(plan.pipe, seeds[0])
    noise = variation_noise(plan.params, seeds, subseeds or seeds, latents.shape[1:])
    cond = plan.step_cond.kwargs_at(0)
    if plan.control is not None:
        cond = {**cond, **plan.control.call_kwargs("img2img", model.family)}
    with given_noise(plan.pipe, noise), guidance_hooks(plan.composable, plan.pipe), \
            plan.control.hooks(plan.pipe, model.family, seeds[0]) if plan.control is not None else contextlib.nullcontext():
        return _denoise(plan.pipe, cond, plan.params, latents, plan.strength, plan.run, None, gens, batch_index,
                        on_progress, should_stop, step_cond=plan.step_cond)
