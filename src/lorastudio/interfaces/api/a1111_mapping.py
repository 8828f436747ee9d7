"""From an A1111 request to GenerationParams, and from our result to A1111's `info` JSON.

The rule: a field at its A1111 default, or at a value that has no effect in A1111 either (hires
settings while enable_hr is false, s_churn with a sampler that has no churn), is accepted; any
other value the engine cannot honour is a 422 naming the field. A request is never quietly
turned into a different image than the one asked for.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorastudio.core.errors import InvalidParameter
from lorastudio.core.infotext import parse_infotext
from lorastudio.core.params import SEED_MAX, GenerationParams, Img2ImgOptions, validate_params
from lorastudio.core.prompt_syntax import extract_lora_tags
from lorastudio.core.samplers import SCHEDULE_TYPES, resolve_sampler
from lorastudio.core.xyz_axes import SCRIPT_ARG_NAMES, SCRIPT_TITLE, XyzPlotOptions, options_from_script_args
from lorastudio.interfaces.api.a1111_models import Img2ImgRequest, Txt2ImgRequest, _ProcessingRequest
from lorastudio.interfaces.api.controlnet_request import script_args, units_from_args
from lorastudio.interfaces.api.options import PARAM_OPTIONS

# GenerationParams field -> the A1111 request field a client should fix.
_A1111_FIELD = {
    "sampler": "sampler_name",
    "batch_count": "n_iter",
    "guidance": "distilled_cfg_scale",
    "model": "override_settings.sd_model_checkpoint",
    "vae": "override_settings.sd_vae",
    "clip_skip": "override_settings.CLIP_stop_at_last_layers",
}

# infotext key (as params_from_infotext returns it) -> request field or override option
_FROM_INFOTEXT = {
    "prompt": "prompt", "negative_prompt": "negative_prompt", "steps": "steps", "sampler": "sampler_name",
    "scheduler": "scheduler", "cfg_scale": "cfg_scale", "seed": "seed", "width": "width", "height": "height",
    "guidance": "distilled_cfg_scale", "denoising_strength": "denoising_strength",
    # hires fix and variation seeds: the same names on both sides
    **{k: k for k in ("enable_hr", "hr_scale", "hr_resize_x", "hr_resize_y", "hr_second_pass_steps", "hr_upscaler",
                      "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt", "hr_cfg", "subseed",
                      "subseed_strength", "seed_resize_from_w", "seed_resize_from_h")},
}
_INFOTEXT_OPTIONS = {"clip_skip": "CLIP_stop_at_last_layers", "model": "sd_model_checkpoint", "vae": "sd_vae"}

# A1111 passes these to the k-diffusion samplers whose signature has them; elsewhere they do nothing.
_CHURN_SAMPLERS = {"Euler", "Heun", "DPM2"}
_NOT_YET = "is not supported by lorastudio yet"


@dataclass
class GenerationPlan:
    kind: str
    params: GenerationParams
    subseed: int
    checkpoint_title: str
    samples_dir: Path
    grids_dir: Path
    save_samples: bool
    make_grid: bool
    return_grid: bool
    save_grid: bool
    send_images: bool
    persist_options: dict[str, Any] = field(default_factory=dict)
    comments: dict[str, Any] = field(default_factory=dict)
    task_id: str | None = None
    img2img: Img2ImgOptions | None = None  # set for kind "img2img"
    init_images: list = field(default_factory=list)  # decoded PIL images
    mask: Any = None
    styles: list = field(default_factory=list)
    controlnet: list | None = None  # ControlNetUnit, from alwayson_scripts.controlnet
    xyz: XyzPlotOptions | None = None  # script_name "x/y/z plot"


def schedulers() -> list[dict[str, Any]]:
    out = []
    for label in SCHEDULE_TYPES:
        name = label.lower().replace(" ", "_")
        out.append({"name": name, "label": label, "aliases": None,
                    "default_rho": 7.0 if label == "Karras" else -1.0, "need_inner_model": False})
    return out


def scheduler_label(value: str | None) -> str:
    if not value:
        return "Automatic"
    key = value.strip().lower().replace("_", " ")
    for label in SCHEDULE_TYPES:
        if label.lower() == key:
            return label
    raise InvalidParameter("scheduler", value, f"unknown schedule type; known: "
                           f"{', '.join(s['name'] for s in schedulers())}")


def _refuse(field_name: str, value: Any, why: str = _NOT_YET) -> None:
    raise InvalidParameter(field_name, value, why + "; leave it at its A1111 default")


def _zero(v: Any) -> bool:
    return v is None or v == 0


def apply_infotext(req: _ProcessingRequest) -> _ProcessingRequest:
    """A1111 1.8+: values from `infotext` fill in every field the request did not set itself."""
    if not req.infotext:
        return req
    from lorastudio.core.infotext_params import params_from_infotext

    given = req.model_fields_set
    found = params_from_infotext(req.infotext)
    update: dict[str, Any] = {}
    for key, target in _FROM_INFOTEXT.items():
        if key in found and target not in given and target in type(req).model_fields:
            update[target] = found[key]
    if isinstance(req, Img2ImgRequest):
        from lorastudio.core.infotext_params import img2img_options_from_infotext

        for target, value in img2img_options_from_infotext(req.infotext).items():
            if target not in given:
                update[target] = int(value) if target == "inpainting_mask_invert" else value
    overrides = dict(req.override_settings or {})
    for key, option in _INFOTEXT_OPTIONS.items():
        if key in found and option not in overrides:
            overrides[option] = found[key]
    if overrides:
        update["override_settings"] = overrides
    try:
        return type(req).model_validate({**req.model_dump(exclude_unset=True), **update})
    except Exception as exc:  # pydantic ValidationError: the infotext held an out-of-range value
        raise InvalidParameter("infotext", req.infotext[:80], f"holds a value this API refuses ({exc})") from None


def check_common(req: _ProcessingRequest, sampler_name: str, stochastic: bool) -> None:
    """Refuse what we cannot honour in the fields txt2img and img2img share."""
    if req.restore_faces:
        _refuse("restore_faces", True, "face restoration is " + _NOT_YET)
    if req.tiling:
        _refuse("tiling", True, "tiling is " + _NOT_YET)
    if not _zero(req.s_min_uncond):
        _refuse("s_min_uncond", req.s_min_uncond)
    uses_churn = sampler_name in _CHURN_SAMPLERS
    for name, default in (("s_churn", 0), ("s_tmin", 0), ("s_tmax", 0)):
        value = getattr(req, name)
        if uses_churn and value not in (None, default):
            _refuse(name, value, f"{name} with sampler {sampler_name} is " + _NOT_YET)
    if (uses_churn or stochastic) and req.s_noise not in (None, 1):
        _refuse("s_noise", req.s_noise, f"s_noise with sampler {sampler_name} is " + _NOT_YET)
    if req.eta is not None:
        # Ancestral/SDE samplers in diffusers run at eta 1, DDIM at 0; the rest do not use eta.
        if stochastic and req.eta != 1:
            _refuse("eta", req.eta, f"{sampler_name} runs with eta 1 only")
        if sampler_name == "DDIM" and req.eta != 0:
            _refuse("eta", req.eta, "DDIM runs with eta 0 only")
    if req.refiner_checkpoint not in (None, "", "None"):
        _refuse("refiner_checkpoint", req.refiner_checkpoint, "the refiner is " + _NOT_YET)
    if req.firstpass_image:
        _refuse("firstpass_image", "<image>", "a given first-pass image is " + _NOT_YET)
    if req.script_name not in (None, "", "None") and not is_xyz_plot(req.script_name):
        _refuse("script_name", req.script_name, f"the only script here is {XYZ_SCRIPT!r}")
    for name in script_args(req.alwayson_scripts)[1]:  # controlnet's own args are read by _controlnet_units
        if not _is_dynamic_prompts(name):
            _refuse(f"alwayson_scripts.{name}", "...", "the always-on scripts here are controlnet and Dynamic Prompts")
    if req.disable_extra_networks and extract_lora_tags(req.prompt or "")[1]:
        _refuse("disable_extra_networks", True, "generating with <lora:...> tags left inactive is " + _NOT_YET)


# sd-dynamic-prompts' script arguments, in its order; only the first two have an effect here.
_DYNAMIC_ARGS = ("is_enabled", "is_combinatorial", "combinatorial_batches", "is_magic_prompt", "is_feeling_lucky",
                 "is_attention_grabber", "min_attention", "max_attention", "magic_prompt_length", "magic_temp_value",
                 "use_fixed_seed", "unlink_seed_from_prompt", "disable_negative_prompt", "enable_jinja_templates")
_DYNAMIC_REFUSED = ("is_magic_prompt", "is_feeling_lucky", "is_attention_grabber", "use_fixed_seed",
                    "unlink_seed_from_prompt", "disable_negative_prompt", "enable_jinja_templates")


def _is_dynamic_prompts(name: str) -> bool:
    return name.lower().startswith("dynamic prompts")


def dynamic_prompts_mode(req: _ProcessingRequest) -> str:
    """The sd-dynamic-prompts always-on script ("Dynamic Prompts v2.x": {"args": [...]}) as a mode."""
    for name, value in (req.alwayson_scripts or {}).items():
        if not _is_dynamic_prompts(name):
            continue
        args = list((value or {}).get("args") or []) if isinstance(value, dict) else []
        given = dict(zip(_DYNAMIC_ARGS, args))
        for key in _DYNAMIC_REFUSED:
            if given.get(key):
                _refuse(f"alwayson_scripts.{name}.args", key, f"the Dynamic Prompts option {key} is " + _NOT_YET)
        if given.get("combinatorial_batches", 1) not in (1, None):
            _refuse(f"alwayson_scripts.{name}.args", "combinatorial_batches", "combinatorial batches are " + _NOT_YET)
        if not given.get("is_enabled", True):
            return "off"
        return "combinatorial" if given.get("is_combinatorial") else "random"
    return "off"


XYZ_SCRIPT = SCRIPT_TITLE.lower()  # A1111 lists scripts by lower-case title and matches script_name to it


def is_xyz_plot(script_name: str | None) -> bool:
    return (script_name or "").strip().lower() == XYZ_SCRIPT


def xyz_options(req: _ProcessingRequest, kind: str) -> XyzPlotOptions | None:
    """`script_name: "x/y/z plot"` with A1111's positional script_args, as options; None without it."""
    if not is_xyz_plot(req.script_name):
        return None
    return options_from_script_args(list(req.script_args or []), kind)


def _script_arg_error(exc: InvalidParameter) -> InvalidParameter:
    """An axis or values error named by its script_args position; a cell's value by its A1111 field."""
    if exc.field in SCRIPT_ARG_NAMES:
        return InvalidParameter(f"script_args[{SCRIPT_ARG_NAMES.index(exc.field)}]", exc.value, exc.why)
    return _renamed(exc)


def check_txt2img(req: Txt2ImgRequest, hires_supported: bool) -> None:
    if req.enable_hr and not hires_supported:
        _refuse("enable_hr", True, "hires fix is " + _NOT_YET)
    if req.enable_hr:
        if req.hr_checkpoint_name not in (None, "", "Use same checkpoint"):
            _refuse("hr_checkpoint_name", req.hr_checkpoint_name, "a second checkpoint for the hires pass is " + _NOT_YET)
        if req.hr_additional_modules not in (None, [], ["Use same choices"]):
            _refuse("hr_additional_modules", req.hr_additional_modules, "other modules for the hires pass are " + _NOT_YET)
        if req.hr_distilled_cfg is not None and req.hr_distilled_cfg != req.distilled_cfg_scale:
            _refuse("hr_distilled_cfg", req.hr_distilled_cfg, "a different distilled CFG for the hires pass is " + _NOT_YET)
    if req.firstphase_width or req.firstphase_height:
        _refuse("firstphase_width", req.firstphase_width, "the old hires first-pass size is " + _NOT_YET)


def check_img2img(req: Img2ImgRequest) -> Img2ImgOptions:
    """Refuse the img2img settings we cannot honour; the rest become Img2ImgOptions."""
    if req.initial_noise_multiplier not in (None, 1):
        _refuse("initial_noise_multiplier", req.initial_noise_multiplier)
    if req.latent_mask:
        _refuse("latent_mask", "<image>", "a separate latent mask is " + _NOT_YET)
    blur_x = req.mask_blur_x if req.mask_blur_x is not None else 4
    blur_y = req.mask_blur_y if req.mask_blur_y is not None else 4
    if req.mask_blur is not None:  # A1111: mask_blur sets both directions
        blur_x = blur_y = req.mask_blur
    # A1111's API defaults: "only masked" on (inpaint_full_res true) with padding 0, mask rounding on.
    return Img2ImgOptions(resize_mode=req.resize_mode or 0, mask_blur_x=blur_x, mask_blur_y=blur_y,
                          inpainting_fill=req.inpainting_fill or 0,
                          inpainting_mask_invert=bool(req.inpainting_mask_invert),
                          inpaint_full_res=req.inpaint_full_res is not False,
                          inpaint_full_res_padding=req.inpaint_full_res_padding or 0,
                          mask_round=req.mask_round is not False)


def plan_generation(req: _ProcessingRequest, state, kind: str, *, hires_supported: bool = False) -> GenerationPlan:
    req = apply_infotext(req)
    sampler_in = req.sampler_name or req.sampler_index or "Euler"
    try:
        choice = resolve_sampler(sampler_in, scheduler_label(req.scheduler))
    except InvalidParameter as exc:
        raise _renamed(exc) from None
    check_common(req, choice.sampler.name, choice.sampler.stochastic)
    if isinstance(req, Txt2ImgRequest):
        check_txt2img(req, hires_supported)
    img2img = check_img2img(req) if isinstance(req, Img2ImgRequest) else None

    overrides = state.options.validate(req.override_settings or {}, prefix="override_settings.")
    effective = {**state.options.snapshot(), **overrides}
    model_ref = effective.get("sd_model_checkpoint") or state.current_checkpoint_title()
    if not model_ref:
        raise InvalidParameter("override_settings.sd_model_checkpoint", None,
                               f"no checkpoint found in {state.catalog.root.checkpoints}")
    entry = state.checkpoint_entry(model_ref, "override_settings.sd_model_checkpoint")
    vae = state.vae_name(effective.get("sd_vae"), "override_settings.sd_vae")

    seed = req.seed if req.seed is not None and req.seed != -1 else secrets.randbelow(SEED_MAX + 1)
    subseed = req.subseed if req.subseed is not None and req.subseed != -1 else secrets.randbelow(SEED_MAX + 1)
    values: dict[str, Any] = {
        "prompt": req.prompt or "",
        "negative_prompt": req.negative_prompt or "",
        "steps": _or(req.steps, 50),
        "cfg_scale": _or(req.cfg_scale, 7.0),
        "sampler": sampler_in,
        "scheduler": choice.schedule,
        "seed": seed,
        "width": _or(req.width, 512),
        "height": _or(req.height, 512),
        "batch_size": _or(req.batch_size, 1),
        "batch_count": _or(req.n_iter, 1),
        "clip_skip": effective.get("CLIP_stop_at_last_layers", 1),
        "styles": list(req.styles or []),
        "model": str(entry.path),
        "vae": vae,
    }
    if img2img is not None:
        values["denoising_strength"] = _or(req.denoising_strength, 0.75)
    if isinstance(req, Txt2ImgRequest) and req.enable_hr:
        values.update(hires_values(req))
    if isinstance(req, Txt2ImgRequest):
        values["dynamic_prompts"] = dynamic_prompts_mode(req)
    elif dynamic_prompts_mode(req) != "off":
        _refuse("alwayson_scripts", "Dynamic Prompts", "dynamic prompts in img2img are " + _NOT_YET)
    values.update(subseed=subseed, subseed_strength=_or(req.subseed_strength, 0.0),
                  seed_resize_from_w=_or(req.seed_resize_from_w, -1), seed_resize_from_h=_or(req.seed_resize_from_h, -1))
    values.update({name: effective[option] for option, name in PARAM_OPTIONS.items() if option in effective})
    distilled = getattr(req, "distilled_cfg_scale", None)
    if distilled is not None:
        values["guidance"] = distilled
    try:
        params = validate_params(values)
    except InvalidParameter as exc:
        raise _renamed(exc) from None
    n_images = params.batch_size * params.batch_count
    xyz = xyz_options(req, kind)
    if xyz is not None:
        from lorastudio.generation.xyz_plot import plan_cells

        try:
            _, cells = plan_cells(params, xyz, kind)  # every cell checked (and its work counted) before any runs
        except InvalidParameter as exc:
            raise _script_arg_error(exc) from None
        work = sum(c.params.steps * c.params.width * c.params.height * n_images for c in cells)
        limit = state.limits.max_generation_work
        if limit is not None and work > limit:
            raise InvalidParameter("script_args", f"<{len(cells)} cells>", f"steps × width × height × images of "
                                   f"all the X/Y/Z cells = {work} is over this server's limit of {limit}")
    else:
        state.check_generation_work(params.steps, params.width, params.height, n_images)

    save_images = bool(req.save_images)
    persist = overrides if req.override_settings_restore_afterwards is False else {}
    return GenerationPlan(
        kind=kind,
        params=params,
        subseed=subseed,
        checkpoint_title=state.checkpoint_title(entry),
        samples_dir=state.options.folder(kind, "samples", effective),
        grids_dir=state.options.folder(kind, "grids", effective),
        save_samples=save_images and not req.do_not_save_samples and bool(effective.get("samples_save", True)),
        make_grid=save_images and not req.do_not_save_grid and (n_images >= 2 or xyz is not None),
        return_grid=bool(effective.get("return_grid", True)),
        save_grid=bool(effective.get("grid_save", True)),
        send_images=req.send_images is not False,
        persist_options=persist,
        comments=dict(req.comments or {}),
        task_id=req.force_task_id,
        styles=list(req.styles or []),
        img2img=img2img,
        controlnet=_controlnet_units(req, state),
        xyz=xyz,
    )


def hires_values(req: Txt2ImgRequest) -> dict[str, Any]:
    """The hires-fix request fields as GenerationParams values (A1111's "Use same ..." = not set)."""
    def same(v):
        return None if v in (None, "", "Use same sampler", "Use same scheduler") else v

    return {
        "enable_hr": True,
        "denoising_strength": _or(req.denoising_strength, 0.75),
        "hr_scale": _or(req.hr_scale, 2.0),
        "hr_upscaler": req.hr_upscaler or "Latent",  # A1111's latent_upscale_default_mode
        "hr_second_pass_steps": _or(req.hr_second_pass_steps, 0),
        "hr_resize_x": _or(req.hr_resize_x, 0),
        "hr_resize_y": _or(req.hr_resize_y, 0),
        "hr_sampler_name": same(req.hr_sampler_name),
        "hr_scheduler": scheduler_label(same(req.hr_scheduler)) if same(req.hr_scheduler) else None,
        "hr_prompt": req.hr_prompt or "",
        "hr_negative_prompt": req.hr_negative_prompt or "",
        "hr_cfg": req.hr_cfg,
    }


def _controlnet_units(req, state) -> list | None:
    args = script_args(req.alwayson_scripts)[0]
    if not args:
        return None
    limits = state.limits
    return units_from_args(args, max_bytes=limits.max_image_bytes, max_pixels=limits.max_image_pixels) or None


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _renamed(exc: InvalidParameter) -> InvalidParameter:
    name = _A1111_FIELD.get(exc.field, exc.field)
    return InvalidParameter(name, exc.value, exc.why) if name != exc.field else exc


def renamed_error(exc: InvalidParameter) -> InvalidParameter:
    """An engine error, with the field named as an A1111 client knows it."""
    return _renamed(exc)


def info_json(plan: GenerationPlan, infotexts: list[str], seeds: list[int], index_of_first_image: int,
              interrupted: bool, job_timestamp: str) -> str:
    """The `info` string of A1111's response (Processed.js())."""
    p = plan.params
    first = infotexts[min(index_of_first_image, len(infotexts) - 1)] if infotexts else ""
    parsed = parse_infotext(first) if first else {}
    standard = {"Prompt", "Negative prompt", "Steps", "Sampler", "CFG scale", "Seed", "Size-1", "Size-2",
                "Model hash", "Model", "VAE hash", "VAE", "Clip skip", "Version"}
    n = len(seeds)
    info = {
        "prompt": p.prompt,
        "all_prompts": [p.prompt] * n,
        "negative_prompt": p.negative_prompt,
        "all_negative_prompts": [p.negative_prompt] * n,
        "seed": seeds[0] if seeds else p.seed,
        "all_seeds": seeds,
        "subseed": plan.subseed,
        "all_subseeds": [(plan.subseed + i) % (SEED_MAX + 1) for i in range(n)],
        "subseed_strength": p.subseed_strength,
        "width": p.width,
        "height": p.height,
        "sampler_name": _sampler_label(p.sampler),
        "scheduler": p.scheduler,
        "cfg_scale": p.cfg_scale,
        "steps": p.steps,
        "batch_size": p.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": parsed.get("Model"),
        "sd_model_hash": parsed.get("Model hash"),
        "sd_vae_name": parsed.get("VAE"),
        "sd_vae_hash": parsed.get("VAE hash"),
        "seed_resize_from_w": p.seed_resize_from_w,
        "seed_resize_from_h": p.seed_resize_from_h,
        "denoising_strength": p.denoising_strength if plan.kind == "img2img" or p.enable_hr else None,
        "extra_generation_params": {k: v for k, v in parsed.items()
                                    if k not in standard and not k.startswith(("Hires", "Size"))},
        "index_of_first_image": index_of_first_image,
        "infotexts": infotexts,
        "styles": list(plan.styles),
        "job_timestamp": job_timestamp,
        "clip_skip": p.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": parsed.get("Version"),
        "comments": "".join(f"{c}\n" for c in plan.comments),
        "interrupted": interrupted,
        "sd_model_checkpoint": plan.checkpoint_title,
    }
    return json.dumps(info, ensure_ascii=False, default=str)


def _sampler_label(name: str) -> str:
    try:
        return resolve_sampler(name).sampler.name
    except InvalidParameter:
        return name
