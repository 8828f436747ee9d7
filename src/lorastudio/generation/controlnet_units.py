"""ControlNet units, as the A1111 ControlNet extension defines them, turned into a diffusers call.

A unit is: a ControlNet model, a control picture (preprocessed by `module`), a weight, the part of
the sampling it acts in (guidance start / end), a control mode, a resize mode and pixel perfect.
`prepare_control` loads and preprocesses; the returned `ControlPlan` builds the family's diffusers
ControlNet pipeline over the loaded modules (txt2img, img2img, inpaint) and holds the call's extra
arguments. With the hires fix, `for_pass` gives the units of each pass (the extension's hr_option),
their maps made again at the second pass's size.

Control modes follow the extension (hook.py): "My prompt is more important" scales the 13 (SD 1.x)
ControlNet outputs by 0.825 ** (12 - i) (the deepest kept whole, the shallowest ~0.1);
"ControlNet is more important" does that too and gives the control to the conditional half of the
CFG batch only. Both are forward hooks on the ControlNet module, removed after the call.

The reference units (reference_only, reference_adain, reference_adain+attn) have no ControlNet model:
their picture steers the UNet's own attention and statistics (generation/reference_attention.py),
installed by `hooks` for the call, like the control modes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lorastudio.core.errors import InvalidParameter
from lorastudio.generation.reference_attention import is_reference


class ResizeMode(str, Enum):
    JUST_RESIZE = "Just Resize"
    CROP_AND_RESIZE = "Crop and Resize"
    RESIZE_AND_FILL = "Resize and Fill"


class ControlMode(str, Enum):
    BALANCED = "Balanced"
    PROMPT = "My prompt is more important"
    CONTROL = "ControlNet is more important"


_RESIZE_NAMES = {0: ResizeMode.JUST_RESIZE, 1: ResizeMode.CROP_AND_RESIZE, 2: ResizeMode.RESIZE_AND_FILL,
                 "Just Resize": ResizeMode.JUST_RESIZE, "Crop and Resize": ResizeMode.CROP_AND_RESIZE,
                 "Resize and Fill": ResizeMode.RESIZE_AND_FILL, "Inner Fit (Scale to Fit)": ResizeMode.CROP_AND_RESIZE,
                 "Outer Fit (Shrink to Fit)": ResizeMode.RESIZE_AND_FILL, "Envelope (Outer Fit)": ResizeMode.RESIZE_AND_FILL,
                 "Scale to Fit (Inner Fit)": ResizeMode.CROP_AND_RESIZE}
# The extension's HiResFixOption: the passes of the hires fix a unit acts in.
HR_OPTIONS = {"Both": ("low", "high"), "Low res only": ("low",), "High res only": ("high",)}
_CONTROL_NAMES = {0: ControlMode.BALANCED, 1: ControlMode.PROMPT, 2: ControlMode.CONTROL,
                  **{m.value: m for m in ControlMode}}


class ControlNetUnit(BaseModel):
    """One unit, with the fields (and defaults) of the extension's API (`alwayson_scripts.controlnet.args`)."""

    model_config = ConfigDict(extra="ignore", arbitrary_types_allowed=True)

    enabled: bool = True
    module: str = "none"
    model: str = "None"
    weight: float = Field(1.0, ge=0.0, le=2.0)
    image: Any = None  # a PIL image (interfaces decode base64 / files); None: the img2img init image
    mask: Any = None
    resize_mode: ResizeMode = ResizeMode.CROP_AND_RESIZE
    low_vram: bool = False
    processor_res: int = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = Field(0.0, ge=0.0, le=1.0)
    guidance_end: float = Field(1.0, ge=0.0, le=1.0)
    pixel_perfect: bool = False
    control_mode: ControlMode = ControlMode.BALANCED
    hr_option: str = "Both"  # the hires fix passes it acts in: Both, Low res only, High res only
    save_detected_map: bool = True

    @field_validator("resize_mode", mode="before")
    @classmethod
    def _resize(cls, v):
        if v not in _RESIZE_NAMES:
            raise ValueError(f"resize_mode {v!r}: one of {[m.value for m in ResizeMode]} (or 0, 1, 2)")
        return _RESIZE_NAMES[v]

    @field_validator("control_mode", mode="before")
    @classmethod
    def _control(cls, v):
        if v not in _CONTROL_NAMES:
            raise ValueError(f"control_mode {v!r}: one of {[m.value for m in ControlMode]} (or 0, 1, 2)")
        return _CONTROL_NAMES[v]

    @field_validator("hr_option", mode="before")
    @classmethod
    def _hr_option(cls, v):
        for name in HR_OPTIONS:
            if str(v).strip().lower() == name.lower():
                return name
        raise ValueError(f"hr_option {v!r}: one of {list(HR_OPTIONS)}")

    @model_validator(mode="after")
    def _order(self):
        if self.guidance_start > self.guidance_end:
            raise ValueError(f"guidance_start ({self.guidance_start}) is after guidance_end ({self.guidance_end})")
        return self

    def with_slider_defaults(self) -> "ControlNetUnit":
        """-1 (or out-of-range) slider values replaced by the preprocessor's defaults, as the extension does."""
        from lorastudio.generation.preprocessors import find_preprocessor

        pre = find_preprocessor(self.module)
        update = {}
        for field_name, slider in (("processor_res", pre.resolution), ("threshold_a", pre.threshold_a),
                                   ("threshold_b", pre.threshold_b)):
            value = getattr(self, field_name)
            if slider is not None and not slider.minimum <= value <= slider.maximum:
                update[field_name] = int(slider.value) if field_name == "processor_res" else float(slider.value)
        return self.model_copy(update={**update, "module": pre.name})


def pixel_perfect_resolution(image_hw: tuple[int, int], width: int, height: int, resize_mode: ResizeMode) -> int:
    """The preprocessor resolution that makes the map exactly the generation's size (the extension's rule)."""
    raw_h, raw_w = image_hw
    k0, k1 = height / raw_h, width / raw_w
    k = min(k0, k1) if resize_mode == ResizeMode.RESIZE_AND_FILL else max(k0, k1)
    return int(np.round(k * min(raw_h, raw_w)))


def control_map(unit: ControlNetUnit, image, width: int, height: int, models_root=None, allow_pickle: bool = False,
                device="cpu", cache=None):
    """The unit's picture preprocessed and fitted to width x height (a PIL RGB image); a detector network runs
    on `device`, its file read through `cache` (preprocessors.AnnotatorCache, or None: read every time)."""
    from PIL import Image

    from lorastudio.generation.img2img_inputs import resize_image
    from lorastudio.generation.preprocessors import run_preprocessor

    rgb = np.asarray(image.convert("RGB"))
    res = unit.processor_res
    detected = run_preprocessor(unit.module, rgb, resolution=res, threshold_a=unit.threshold_a,
                                threshold_b=unit.threshold_b, models_root=models_root, allow_pickle=allow_pickle,
                                device=device, cache=cache)
    return resize_image(_a1111_resize(unit.resize_mode), Image.fromarray(detected), width, height)


@dataclass
class ControlPlan:
    """What a generation needs for its ControlNet units."""

    units: list[ControlNetUnit]
    controlnets: list[Any]  # diffusers ControlNetModel, one per unit
    maps: list[Any]  # PIL control maps at the generation's size
    titles: list[str]  # "name [hash]", as the extension lists models
    cfg: bool = True  # the pipeline runs an unconditional half
    inpaint_masks: list[Any] = field(default_factory=list)  # per unit: mask (L) for inpaint_only, or None
    sources: list[Any] = field(default_factory=list)  # per unit: the picture its map was made from
    models_root: Any = None  # where preprocessors find their weights
    mask_sources: list[Any] = field(default_factory=list)  # per unit: inpaint_only's mask as given, or None
    allow_pickle: bool = False  # whether they may read .pth weights (weights-only)
    second_pass: bool = False  # the units of the hires fix's second pass (reference units: fidelity 0 there)
    device: Any = "cpu"  # where detector networks run: the generation's device
    annotator_cache: Any = None  # preprocessors.AnnotatorCache of the engine, or None (files read every time)

    def _map(self, unit: ControlNetUnit, image, width: int, height: int):
        return control_map(unit, image, width, height, self.models_root, self.allow_pickle, self.device,
                           self.annotator_cache)

    def for_pass(self, which: str, width: int, height: int) -> "ControlPlan | None":
        """The units acting in one pass of the hires fix ("low": the first, "high": the second, its maps
        made again at that pass's size, as the extension does); None when no unit acts there."""
        keep = [i for i, u in enumerate(self.units) if which in HR_OPTIONS[u.hr_option]]
        if not keep:
            return None
        maps = [self.maps[i] if which == "low" else self._map(self.units[i], self.sources[i], width, height)
                for i in keep]
        return ControlPlan([self.units[i] for i in keep], [self.controlnets[i] for i in keep], maps,
                           [self.titles[i] for i in keep], cfg=self.cfg, sources=[self.sources[i] for i in keep],
                           models_root=self.models_root, allow_pickle=self.allow_pickle,
                           second_pass=which == "high", device=self.device, annotator_cache=self.annotator_cache)

    def for_masked_region(self, region: tuple[int, int, int, int], frame: tuple[int, int], width: int,
                          height: int) -> "ControlPlan":
        """The units of an "only masked" inpaint, as the extension prepares them: each unit's picture
        (and inpaint_only mask) fitted to the init image's frame with the unit's resize mode, cropped to
        the masked region (x1, y1, x2, y2), fitted to width x height ("Resize and fill"), then
        preprocessed again (pixel perfect measured on the crop)."""
        from lorastudio.generation.img2img_inputs import resize_image

        def crop(picture, unit, mode: str):
            fitted = resize_image(_a1111_resize(unit.resize_mode), picture.convert(mode), *frame)
            return resize_image(2, fitted.crop(region), width, height)

        units, maps, sources, masks = [], [], [], []
        for i, unit in enumerate(self.units):
            source = crop(self.sources[i], unit, "RGB")
            if unit.pixel_perfect and unit.processor_res != -1:
                unit = unit.model_copy(update={"processor_res": pixel_perfect_resolution(
                    (source.height, source.width), width, height, unit.resize_mode)})
            units.append(unit)
            sources.append(source)
            maps.append(self._map(unit, source, width, height))
            given = self.mask_sources[i] if self.mask_sources else None
            masks.append(None if given is None else crop(given, unit, "L").convert("L"))
        return ControlPlan(units, self.controlnets, maps, self.titles, cfg=self.cfg,
                           inpaint_masks=masks if any(m is not None for m in masks) else [], sources=sources,
                           models_root=self.models_root, mask_sources=self.mask_sources,
                           allow_pickle=self.allow_pickle, second_pass=self.second_pass, device=self.device,
                           annotator_cache=self.annotator_cache)

    @property
    def acting(self) -> list[int]:
        # A unit whose guidance range is empty never acts (the extension allows start == end;
        # diffusers refuses it), so it is left out of the call and kept in the infotext. The reference
        # units act through `hooks`, not through a ControlNet pipeline.
        return [i for i, u in enumerate(self.units)
                if u.guidance_end > u.guidance_start and self.controlnets[i] is not None]

    @property
    def references(self) -> list[int]:
        """The reference units (no ControlNet model; they act through `hooks`)."""
        return [i for i, u in enumerate(self.units) if is_reference(u.module)]

    def pipeline(self, family, pipe, mode: str):
        for unit in self.units:
            if is_reference(unit.module):
                family.reference_style_fidelity(unit.module, unit.threshold_a)  # refused by name where unavailable
        if not family.controlnet_control_modes:
            for i, u in enumerate(self.units):
                if u.control_mode != ControlMode.BALANCED:
                    raise InvalidParameter(f"controlnet[{i}].control_mode", u.control_mode.value,
                                           f"{family.title} ControlNets have only the balanced mode")
        if not self.acting:
            return pipe if mode == "txt2img" else family.img2img_pipeline(pipe, inpaint=mode == "inpaint")
        built = family.controlnet_pipeline(pipe, [self.controlnets[i] for i in self.acting], mode)
        # from_pipe does not carry the progress-bar setting over; ours reports through callbacks
        built.set_progress_bar_config(**getattr(pipe, "_progress_bar_config", {}))
        return built

    def call_kwargs(self, mode: str, family) -> dict[str, Any]:
        acting = self.acting
        if not acting:
            return {}
        images = [self._control_input(i) for i in acting]
        units = [self.units[i] for i in acting]
        one = len(units) == 1
        return {
            family.controlnet_image_argument(mode): images[0] if one else images,
            "controlnet_conditioning_scale": units[0].weight if one else [u.weight for u in units],
            "control_guidance_start": [u.guidance_start for u in units],
            "control_guidance_end": [u.guidance_end for u in units],
        }

    def _control_input(self, i: int):
        mask = self.inpaint_masks[i] if self.inpaint_masks else None
        if mask is None:
            return self.maps[i]
        import torch

        # The inpaint ControlNet reads the masked area as -1 (the extension's inpaint_only).
        pixels = torch.from_numpy(np.asarray(self.maps[i].convert("RGB"), dtype=np.float32) / 255.0)
        masked = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0) > 0.5
        pixels[masked] = -1.0
        return pixels.permute(2, 0, 1)[None]

    @contextlib.contextmanager
    def hooks(self, pipe=None, family=None, seed: int = 0):
        """The control modes' hooks and the reference units (which need the running `pipe`, its `family`
        and the seed of the batch's first image), for the denoising call made inside the block."""
        handles = []
        try:
            for unit, cn in zip(self.units, self.controlnets):
                if cn is not None and unit.control_mode != ControlMode.BALANCED:
                    handles.append(cn.register_forward_hook(_soft_injection(unit.control_mode == ControlMode.CONTROL
                                                                             and self.cfg)))
            with self._references(pipe, family, seed):
                yield
        finally:
            for h in handles:
                h.remove()

    def _references(self, pipe, family, seed: int):
        from lorastudio.generation.reference_attention import ReferenceUnit, installed

        refs = self.references
        if not refs:
            return contextlib.nullcontext()
        if pipe is None or family is None:
            raise ValueError("reference units need the pipeline and its family in ControlPlan.hooks")
        import torch

        units = []
        for i in refs:
            unit = self.units[i]
            fidelity = family.reference_style_fidelity(unit.module, unit.threshold_a)
            if unit.control_mode == ControlMode.CONTROL:
                fidelity = 1.0  # the extension's cfg_injection
            elif unit.control_mode == ControlMode.PROMPT or self.second_pass:
                fidelity = 0.0  # soft injection, and the hires fix's second pass
            pixels = torch.from_numpy(np.asarray(self.maps[i].convert("RGB"), dtype=np.float32) / 127.5 - 1.0)
            with torch.inference_mode():
                latent = family.encode_images(pipe, pixels.permute(2, 0, 1)[None])
            units.append(ReferenceUnit(unit.module, latent, unit.weight, unit.guidance_start, unit.guidance_end,
                                       fidelity))
        return installed(pipe, family.denoiser(pipe), units, seed=seed, cfg=self.cfg)

    def infotext(self) -> dict[str, str]:
        return {f"ControlNet {i}": serialize_unit(u, t) for i, (u, t) in enumerate(zip(self.units, self.titles))}


def _soft_injection(conditional_only: bool) -> Callable:
    def hook(module, args, output):
        down, mid = output[0], output[1]
        n = len(down) + 1
        scales = [0.825 ** float(12 - i) for i in range(max(n, 13))][:n]  # the extension's 13 values, zipped
        down = tuple(d * s for d, s in zip(down, scales))
        mid = mid * scales[n - 1]
        if conditional_only:
            half = mid.shape[0] // 2  # diffusers stacks [unconditional, conditional]
            keep = mid.new_ones(mid.shape[0]).view(-1, 1, 1, 1)
            keep[:half] = 0
            down, mid = tuple(d * keep for d in down), mid * keep
        return (down, mid) if isinstance(output, tuple) else type(output)(down, mid)

    return hook


# --- infotext, as the extension writes and reads it (scripts/infotext.py) ----------------------------
# Fields in ControlNetUnit order, minus image/enabled/advanced_weighting/...; "-1" sliders are left out.
_INFOTEXT_FIELDS = ("module", "model", "weight", "resize_mode", "low_vram", "processor_res", "threshold_a",
                    "threshold_b", "guidance_start", "guidance_end", "pixel_perfect", "control_mode", "hr_option",
                    "save_detected_map")


def _display(field_name: str) -> str:
    return " ".join(w.capitalize() for w in field_name.split("_"))


def serialize_unit(unit: ControlNetUnit, model_title: str) -> str:
    values = {**unit.model_dump(), "model": model_title}
    parts = []
    for name in _INFOTEXT_FIELDS:
        v = values[name]
        if v == -1:
            continue
        if isinstance(v, Enum):
            v = v.value
        elif isinstance(v, float) or name in ("weight", "guidance_start", "guidance_end"):
            v = float(v)  # the extension's pydantic floats print as 1.0
        parts.append(f"{_display(name)}: {v}")
    return ", ".join(parts)


def parse_unit(text: str) -> ControlNetUnit:
    """The extension's `parse_unit`: 'Module: canny, Model: x [h], Weight: 1.0, ...' -> a unit."""
    fields: dict[str, Any] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.strip().partition(": ")
        if not sep:
            raise InvalidParameter("ControlNet", text, f"cannot read {item.strip()!r} (expected 'Name: value')")
        fields["_".join(w.lower() for w in key.split(" "))] = _parse_value(value)
    return ControlNetUnit(**fields)


def _parse_value(value: str):
    if value in ("True", "False"):
        return value == "True"
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return value


def controlnet_title(path) -> str:
    """"name [hash]" as the extension lists a model: A1111's legacy 8-digit model hash."""
    from pathlib import Path

    from lorastudio.core.hashes import addnet_hash_legacy

    path = Path(path)
    if path.is_dir():
        return path.name
    with open(path, "rb") as fh:
        return f"{path.stem} [{addnet_hash_legacy(fh)[:8]}]"


def prepare_control(units: list[ControlNetUnit], *, width: int, height: int, cfg: bool,
                    load: Callable[[str], tuple[Any, str]], models_root=None, init_image=None,
                    mask=None, allow_pickle: bool = False, device="cpu", annotator_cache=None) -> ControlPlan | None:
    """The plan for the enabled units (None when there are none).

    `load(model name) -> (ControlNetModel, title)`; a unit without a picture uses the img2img init
    image, as the extension does; `inpaint_only` marks the img2img mask on its map. Detector networks run on
    `device`, their files read through `annotator_cache` (or every time when None).
    """
    active = [u.with_slider_defaults() for u in units if u.enabled]
    if not active:
        return None
    modules, titles, maps, masks, sources, mask_sources = [], [], [], [], [], []
    for i, unit in enumerate(active):
        if is_reference(unit.module):
            # no ControlNet model (the extension ignores the unit's model); the map is the picture itself
            image = unit.image if unit.image is not None else init_image
            if image is None:
                raise InvalidParameter(f"controlnet[{i}].image", None, "a reference unit needs a picture in txt2img")
            modules.append(None)
            titles.append("None")
            maps.append(control_map(unit, image, width, height, models_root, allow_pickle, device, annotator_cache))
            sources.append(image)
            masks.append(None)
            mask_sources.append(None)
            continue
        if unit.model in (None, "", "None"):
            raise InvalidParameter(f"controlnet[{i}].model", unit.model, "each unit needs a ControlNet model")
        image = unit.image if unit.image is not None else init_image
        if image is None:
            raise InvalidParameter(f"controlnet[{i}].image", None, "a unit needs a control image in txt2img")
        if unit.pixel_perfect and unit.processor_res != -1:
            # as the extension: the resolution written to the infotext is the one used
            hw = (image.height, image.width)
            unit = active[i] = unit.model_copy(update={"processor_res": pixel_perfect_resolution(
                hw, width, height, unit.resize_mode)})
        module, title = load(unit.model)
        modules.append(module)
        titles.append(title)
        maps.append(control_map(unit, image, width, height, models_root, allow_pickle, device, annotator_cache))
        sources.append(image)
        unit_mask = unit.mask if unit.mask is not None else mask
        if unit.module == "inpaint_only":
            if unit_mask is None:
                raise InvalidParameter(f"controlnet[{i}].module", unit.module, "needs a mask (inpaint, or the unit's mask)")
            from lorastudio.generation.img2img_inputs import resize_image

            masks.append(resize_image(_a1111_resize(unit.resize_mode), unit_mask.convert("L"), width, height))
            mask_sources.append(unit_mask)
        else:
            masks.append(None)
            mask_sources.append(None)
    return ControlPlan(active, modules, maps, titles, cfg=cfg,
                       inpaint_masks=masks if any(m is not None for m in masks) else [], sources=sources,
                       models_root=models_root, mask_sources=mask_sources, allow_pickle=allow_pickle,
                       device=device, annotator_cache=annotator_cache)


def _a1111_resize(mode: ResizeMode) -> int:
    """A1111's resize_image mode number for a unit's resize mode."""
    return {ResizeMode.JUST_RESIZE: 0, ResizeMode.CROP_AND_RESIZE: 1, ResizeMode.RESIZE_AND_FILL: 2}[mode]
