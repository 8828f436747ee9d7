"""The X/Y/Z plot's axes, how their values are written, and what one cell changes (pure).

Byte-compatible with AUTOMATIC1111 v1.10's `scripts/xyz_grid.py`, because API clients send its
positional `script_args` (axis types as indices into its list of axes) and users paste its value
texts and read back its infotext fields (`X Type`, `X Values`, `Fixed X Values`):

- values are one CSV line (quotes allowed, a space after a comma ignored, each value stripped);
- on whole-number axes `1-5` is 1..5, `1-10 (+3)` is 1, 4, 7, 10 and `1-10 [4]` is 4 values spread
  evenly (truncated to whole numbers); on decimal axes `0-1 (+0.25)` steps until it passes the end
  (A1111 adds one step to the end, so `1-10 (+2)` reaches 11) and `0.5-1 [3]` is 3 values spread
  evenly, ends included;
- the legend is "Label: value" except for Prompt S/R, Sampler and Prompt order (the value alone)
  and Checkpoint name (the file name without folders);
- the axis with the highest cost (Checkpoint name, then VAE) is the outer loop, so a model loads
  once per value.

Axes lorastudio cannot vary yet are listed too (the indices must match A1111's) and refused by
name when asked for.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass
from itertools import permutations
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lorastudio.core.errors import InvalidParameter

Mode = Literal["txt2img", "img2img"]
SCRIPT_TITLE = "X/Y/Z plot"
BOTH = ("txt2img", "img2img")


@dataclass(frozen=True)
class Axis:
    label: str
    kind: Literal["int", "float", "str", "permutations"]
    sets: str | None  # the GenerationParams field it sets, a special key ("prompt_sr", ...), or None: not offered
    modes: tuple[str, ...] = BOTH
    legend: Literal["label", "value", "basename", "nothing", "joined"] = "label"
    cost: float = 0.0
    has_choices: bool = False  # A1111 shows a dropdown: its API reads the `*_values_dropdown` list

    @property
    def supported(self) -> bool:
        return self.sets is not None


# A1111 1.10's list, in its order (its API numbers the axes by position in the mode's sublist).
# The last one, "LoRA weight", is lorastudio's own and comes after A1111's so their indices stay.
AXES: tuple[Axis, ...] = (
    Axis("Nothing", "str", "nothing", legend="nothing"),
    Axis("Seed", "int", "seed"),
    Axis("Var. seed", "int", "subseed"),
    Axis("Var. strength", "float", "subseed_strength"),
    Axis("Steps", "int", "steps"),
    Axis("Hires steps", "int", "hr_second_pass_steps", modes=("txt2img",)),
    Axis("CFG Scale", "float", "cfg_scale"),
    Axis("Image CFG Scale", "float", None, modes=("img2img",)),
    Axis("Prompt S/R", "str", "prompt_sr", legend="value"),
    Axis("Prompt order", "permutations", "prompt_order", legend="joined"),
    Axis("Sampler", "str", "sampler", modes=("txt2img",), legend="value", has_choices=True),
    Axis("Hires sampler", "str", "hr_sampler_name", modes=("txt2img",), has_choices=True),
    Axis("Sampler", "str", "sampler", modes=("img2img",), legend="value", has_choices=True),
    Axis("Checkpoint name", "str", "model", legend="basename", cost=1.0, has_choices=True),
    Axis("Negative Guidance minimum sigma", "float", None),
    Axis("Sigma Churn", "float", None),
    Axis("Sigma min", "float", None),
    Axis("Sigma max", "float", None),
    Axis("Sigma noise", "float", None),
    Axis("Schedule type", "str", "scheduler", has_choices=True),
    Axis("Schedule min sigma", "float", None),
    Axis("Schedule max sigma", "float", None),
    Axis("Schedule rho", "float", None),
    Axis("Skip Early CFG", "float", None),
    Axis("Beta schedule alpha", "float", None),
    Axis("Beta schedule beta", "float", None),
    Axis("Eta", "float", None),
    Axis("Clip skip", "int", "clip_skip"),
    Axis("Denoising", "float", "denoising_strength"),
    Axis("Initial noise multiplier", "float", None),
    Axis("Extra noise", "float", None),
    Axis("Hires upscaler", "str", "hr_upscaler", modes=("txt2img",), has_choices=True),
    Axis("Cond. Image Mask Weight", "float", None, modes=("img2img",)),
    Axis("VAE", "str", "vae", cost=0.7, has_choices=True),
    Axis("Styles", "str", "styles", has_choices=True),
    Axis("UniPC Order", "int", None, cost=0.5),
    Axis("Face restore", "str", None, legend="value"),
    Axis("Token merging ratio", "float", None),
    Axis("Token merging ratio high-res", "float", None),
    Axis("Always discard next-to-last sigma", "str", None, has_choices=True),
    Axis("SGM noise multiplier", "str", None, has_choices=True),
    Axis("Refiner checkpoint", "str", None, legend="basename", cost=1.0, has_choices=True),
    Axis("Refiner switch at", "float", None),
    Axis("RNG source", "str", None, has_choices=True),
    Axis("FP8 mode", "str", None, cost=0.9, has_choices=True),
    Axis("Size", "str", "size"),
    Axis("LoRA weight", "float", "lora_weight"),
)


def axes_for(mode: Mode) -> list[Axis]:
    """The axes A1111's dropdown lists in `mode`, in order: script_args' type indices point here."""
    return [a for a in AXES if mode in a.modes]


def find_axis(ref: int | str, mode: Mode, field: str = "x_type") -> Axis:
    """An axis by A1111 index (as its API sends it) or by label (any case)."""
    listed = axes_for(mode)
    if isinstance(ref, bool) or not isinstance(ref, (int, str)):
        raise InvalidParameter(field, ref, "an axis index or name")
    if isinstance(ref, int) or (isinstance(ref, str) and ref.strip().isdigit()):
        i = int(ref)
        if not 0 <= i < len(listed):
            raise InvalidParameter(field, ref, f"no axis {i} in {mode}; there are {len(listed)} (0 = Nothing)")
        axis = listed[i]
    else:
        key = ref.strip().lower()
        matches = [a for a in listed if a.label.lower() == key]
        if not matches:
            raise InvalidParameter(field, ref, f"unknown {mode} axis; known: "
                                   + ", ".join(a.label for a in listed if a.supported))
        axis = matches[0]
    if not axis.supported:
        raise InvalidParameter(field, axis.label, "this X/Y/Z axis is not supported by lorastudio yet; supported: "
                               + ", ".join(a.label for a in listed if a.supported))
    return axis


# --- values -----------------------------------------------------------------------------------------
_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*\d+(?:\.\d*)?"
_INT_STEP = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\(([+-]\d+)\s*\))?\s*")
_INT_COUNT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\[(\d+)\s*])?\s*")
_FLOAT_STEP = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
_FLOAT_COUNT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\[(\d+(?:\.\d*)?)\s*])?\s*")
MAX_AXIS_VALUES = 1000


def split_values(text: str) -> list[str]:
    """One CSV line (quotes group commas, a space after a comma is skipped), each value stripped."""
    rows = csv.reader(io.StringIO(text or ""), skipinitialspace=True)
    return [v.strip() for row in rows for v in row]


def _num(text: str) -> str:
    return text.replace(" ", "")  # "- 5" is -5, as Python's int()/float() of A1111's groups allow


def _linspace(start: float, stop: float, num: int) -> list[float]:
    # numpy.linspace's values: start + i * step, the last one exactly `stop`
    if num <= 0:
        return []
    if num == 1:
        return [float(start)]
    step = (stop - start) / (num - 1)
    return [start + i * step for i in range(num - 1)] + [float(stop)]


def _arange(start: float, stop: float, step: float) -> list[float]:
    # numpy.arange's values: ceil((stop - start) / step) of them, start + i * step
    if step == 0:
        raise ValueError("a step of 0")
    n = max(0, math.ceil((stop - start) / step))
    if n > MAX_AXIS_VALUES:
        raise ValueError(f"{n} values (at most {MAX_AXIS_VALUES})")
    return [start + i * step for i in range(n)]


def _expand_int(value: str) -> list:
    m = _INT_STEP.fullmatch(value)
    if m:
        start, end = int(_num(m.group(1))), int(_num(m.group(2))) + 1
        step = int(m.group(3)) if m.group(3) is not None else 1
        if step == 0:
            raise ValueError("a step of 0")
        r = range(start, end, step)
        if len(r) > MAX_AXIS_VALUES:
            raise ValueError(f"{len(r)} values (at most {MAX_AXIS_VALUES})")
        return list(r)
    m = _INT_COUNT.fullmatch(value)
    if m:
        num = int(m.group(3)) if m.group(3) is not None else 1
        if num > MAX_AXIS_VALUES:
            raise ValueError(f"{num} values (at most {MAX_AXIS_VALUES})")
        return [int(x) for x in _linspace(int(_num(m.group(1))), int(_num(m.group(2))), num)]
    return [value]


def _expand_float(value: str) -> list:
    m = _FLOAT_STEP.fullmatch(value)
    if m:
        start, end = float(_num(m.group(1))), float(_num(m.group(2)))
        step = float(m.group(3)) if m.group(3) is not None else 1.0
        return _arange(start, end + step, step)
    m = _FLOAT_COUNT.fullmatch(value)
    if m:
        num = int(float(m.group(3))) if m.group(3) is not None else 1
        if num > MAX_AXIS_VALUES:
            raise ValueError(f"{num} values (at most {MAX_AXIS_VALUES})")
        return _linspace(float(_num(m.group(1))), float(_num(m.group(2))), num)
    return [value]


def parse_axis_values(axis: Axis, text: str, dropdown: list | None = None, *, csv_mode: bool = False,
                      field: str = "x_values") -> list:
    """The values of one axis, as A1111's `process_axis` makes them from the text (or dropdown list)."""
    if axis.sets == "nothing":
        return [0]
    if axis.has_choices and not csv_mode and dropdown:
        raw = [str(v).strip() for v in dropdown]
    else:
        # A1111 reads only the dropdown list for these axes unless csv_mode is set; the text is
        # read when the list is empty, so a client that sends only text still gets its values.
        raw = split_values(text)
    try:
        if axis.kind == "int":
            out = [int(v) for item in raw for v in _expand_int(item)]
        elif axis.kind == "float":
            out = [float(v) for item in raw for v in _expand_float(item)]
        elif axis.kind == "permutations":
            if len(raw) > 6:
                raise ValueError(f"{len(raw)} items make {math.factorial(len(raw))} orders (at most 6 items)")
            out = [tuple(p) for p in permutations(raw)]
        else:
            out = list(raw)
    except ValueError as exc:
        raise InvalidParameter(field, text, f"not a list of {axis.kind} values for {axis.label} ({exc})") from None
    if not out:
        raise InvalidParameter(field, text, f"{axis.label} needs at least one value")
    if len(out) > MAX_AXIS_VALUES:
        raise InvalidParameter(field, text, f"{len(out)} values (at most {MAX_AXIS_VALUES})")
    return out


def values_text(axis: Axis, text: str, dropdown: list | None, csv_mode: bool) -> str:
    """The `X Values` text A1111 writes in the grid's infotext (a dropdown list as one CSV line)."""
    if axis.has_choices and not csv_mode and dropdown:
        out = io.StringIO()
        csv.writer(out).writerow([str(v) for v in dropdown])
        return out.getvalue().strip()
    return text


def format_axis_value(axis: Axis, value: Any) -> str:
    """The legend of one value, as A1111 writes it."""
    if isinstance(value, float):
        value = round(value, 8)
    if axis.legend == "nothing":
        return ""
    if axis.legend == "joined":
        return ", ".join(value)
    if axis.legend == "basename":
        return os.path.basename(str(value))
    if axis.legend == "value":
        return str(value)
    return f"{axis.label}: {value}"


# --- one cell ----------------------------------------------------------------------------------------
_LORA_TAG = re.compile(r"<lora:[^>]+>")


def apply_axis(values: dict[str, Any], axis: Axis, value: Any, all_values: list, field: str = "x_values") -> None:
    """Change the GenerationParams values of one cell as A1111's axis does (in place)."""
    key = axis.sets
    if key == "nothing":
        return
    if key == "prompt_sr":
        # A1111: the first value is searched for; every value, the first included, replaces it.
        find = all_values[0]
        prompt, negative = values.get("prompt", ""), values.get("negative_prompt", "")
        if find not in prompt and find not in negative:
            raise InvalidParameter(field, find, "Prompt S/R did not find it in the prompt or negative prompt")
        values["prompt"], values["negative_prompt"] = prompt.replace(find, value), negative.replace(find, value)
    elif key == "prompt_order":
        values["prompt"] = reorder_prompt(values.get("prompt", ""), value)
    elif key == "size":
        values["width"], values["height"] = parse_size(value, field)
    elif key == "styles":
        values["styles"] = [*values.get("styles", []), *str(value).split(",")]
    elif key == "vae":
        values["vae"] = None if str(value).strip().lower() in ("", "none", "auto", "automatic") else value
    elif key == "lora_weight":
        values["prompt"] = set_lora_weights(values.get("prompt", ""), value, field)
    else:
        values[key] = value


def reorder_prompt(prompt: str, order: tuple[str, ...]) -> str:
    """A1111's Prompt order: the tokens, where they first occur, put back in the given order."""
    found = sorted((prompt.find(token), token) for token in order)
    parts, rest = [], prompt
    for _, token in found:
        n = rest.find(token)
        parts.append(rest[:n])
        rest = rest[n + len(token):]
    return "".join(part + token for part, token in zip(parts, order)) + rest


def parse_size(value: str, field: str = "x_values") -> tuple[int, int]:
    """"512x768" -> (512, 768), as A1111's Size axis reads it."""
    w, sep, h = str(value).partition("x")
    try:
        if not sep:
            raise ValueError
        return int(w.strip()), int(h.strip())
    except ValueError:
        raise InvalidParameter(field, value, "a size is WIDTHxHEIGHT, e.g. 512x768") from None


def set_lora_weights(prompt: str, weight: float, field: str = "x_values") -> str:
    """Every `<lora:name:w>` tag of the prompt at `weight`: its text-encoder weight and, when the tag
    gives one, its UNet weight (A1111's `<lora:name:te:unet>`); named fields (`dyn=...`) are kept."""
    if not _LORA_TAG.search(prompt):
        raise InvalidParameter(field, weight, "the LoRA weight axis needs a <lora:name:weight> tag in the prompt")
    w = f"{round(weight, 8):g}" if isinstance(weight, float) else str(weight)

    def reweigh(m: re.Match) -> str:
        parts = m.group(0)[1:-1].split(":")
        positional = [i for i in range(2, len(parts)) if "=" not in parts[i]][:2]
        for i in positional:
            parts[i] = w
        if not positional:
            parts.insert(2, w)
        return "<" + ":".join(parts) + ">"

    return _LORA_TAG.sub(reweigh, prompt)


def cell_order(costs: tuple[float, float, float], sizes: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """(ix, iy, iz) in the order A1111 runs the cells: the costliest axis outermost, then the next;
    with no clear costliest axis, Z then Y then X."""
    cx, cy, cz = costs
    first, second = "z", "y"
    if cx > cy and cx > cz:
        first, second = "x", ("y" if cy > cz else "z")
    elif cy > cx and cy > cz:
        first, second = "y", ("x" if cx > cz else "z")
    elif cz > cx and cz > cy:
        first, second = "z", ("x" if cx > cy else "y")
    third = ({"x", "y", "z"} - {first, second}).pop()
    n = dict(zip("xyz", sizes))
    out = []
    for a in range(n[first]):
        for b in range(n[second]):
            for c in range(n[third]):
                idx = {first: a, second: b, third: c}
                out.append((idx["x"], idx["y"], idx["z"]))
    return out


def vary_seed(seed: int, ix: int, iy: int, iz: int, sizes: tuple[int, int, int],
              vary: tuple[bool, bool, bool]) -> int:
    """A1111's "Vary seeds for X/Y/Z": the seed moves on along each ticked axis."""
    xdim = sizes[0] if vary[0] else 1
    ydim = sizes[1] if vary[1] else 1
    return seed + (ix if vary[0] else 0) + (iy * xdim if vary[1] else 0) + (iz * xdim * ydim if vary[2] else 0)


# --- the options --------------------------------------------------------------------------------------
class XyzPlotOptions(BaseModel):
    """A1111's X/Y/Z plot settings, with its names (`script_args` in the API, flags of `lorastudio xyz`)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    x_type: str = Field("Seed", max_length=100, description="X axis: Seed, Steps, CFG Scale, Sampler, Schedule type, "
                        "Prompt S/R, Checkpoint name, VAE, Clip skip, Denoising, Hires upscaler, Size, LoRA weight, "
                        "... (A1111's names or its index)")
    x_values: str = Field("", max_length=10_000, description="X values: a CSV line; ranges 1-5, 1-10 (+2), 0.5-1 [3]")
    x_values_dropdown: list[str] = Field(default_factory=list, json_schema_extra={"cli": False},
                                         description="X values picked from A1111's dropdown")
    y_type: str = Field("Nothing", max_length=100, description="Y axis (as the X axis)")
    y_values: str = Field("", max_length=10_000, description="Y values")
    y_values_dropdown: list[str] = Field(default_factory=list, json_schema_extra={"cli": False},
                                         description="Y values picked from A1111's dropdown")
    z_type: str = Field("Nothing", max_length=100, description="Z axis: one grid per value, side by side")
    z_values: str = Field("", max_length=10_000, description="Z values")
    z_values_dropdown: list[str] = Field(default_factory=list, json_schema_extra={"cli": False},
                                         description="Z values picked from A1111's dropdown")
    draw_legend: bool = Field(True, description="Write the axis values around the grid")
    include_lone_images: bool = Field(False, description="Return each cell's image (with its own infotext) after "
                                      "the grid")
    include_sub_grids: bool = Field(False, description="Keep the grid of each Z value too (with a Z axis)")
    no_fixed_seeds: bool = Field(False, description="Keep -1 for seeds: every cell draws its own random seed",
                                 json_schema_extra={"cli": "keep-random-seeds"})
    vary_seeds_x: bool = Field(False, description="Seed + 1 for each X value")
    vary_seeds_y: bool = Field(False, description="Seed + (number of X values) for each Y value")
    vary_seeds_z: bool = Field(False, description="Seed moves on for each Z value too")
    margin_size: int = Field(0, ge=0, le=500, description="Grid margins in pixels")
    csv_mode: bool = Field(False, json_schema_extra={"cli": False},
                           description="Read the value texts of dropdown axes (A1111's 'Use text inputs')")


# script_args positions in A1111 1.10's Script.run (after p).
SCRIPT_ARG_NAMES = ("x_type", "x_values", "x_values_dropdown", "y_type", "y_values", "y_values_dropdown",
                    "z_type", "z_values", "z_values_dropdown", "draw_legend", "include_lone_images",
                    "include_sub_grids", "no_fixed_seeds", "vary_seeds_x", "vary_seeds_y", "vary_seeds_z",
                    "margin_size", "csv_mode")


def options_from_script_args(args: list, mode: Mode) -> XyzPlotOptions:
    """A1111's positional script_args (1.10's layout; missing trailing ones take its defaults)."""
    from lorastudio.core.params import build_model

    if len(args) > len(SCRIPT_ARG_NAMES):
        raise InvalidParameter("script_args", f"<{len(args)} values>",
                               f"the X/Y/Z plot takes at most {len(SCRIPT_ARG_NAMES)} (A1111 1.10's order: "
                               + ", ".join(SCRIPT_ARG_NAMES) + ")")
    data: dict[str, Any] = {}
    for i, (name, value) in enumerate(zip(SCRIPT_ARG_NAMES, args)):
        if value is None:
            continue
        if name.endswith("_type"):
            value = find_axis(value, mode, f"script_args[{i}]").label  # an index means this mode's list
        elif name.endswith("_dropdown"):
            if not isinstance(value, list):
                raise InvalidParameter(f"script_args[{i}]", value, f"{name} is a list of values")
            value = [str(v) for v in value]
        elif name.endswith("_values"):
            value = str(value)
        data[name] = value
    try:
        return build_model(XyzPlotOptions, data)
    except InvalidParameter as exc:
        i = SCRIPT_ARG_NAMES.index(exc.field) if exc.field in SCRIPT_ARG_NAMES else None
        raise InvalidParameter(f"script_args[{i}]" if i is not None else "script_args", exc.value, exc.why) from None


@dataclass(frozen=True)
class PlotAxis:
    axis: Axis
    values: list
    text: str  # what `X Values` holds in the infotext

    @property
    def labels(self) -> list[str]:
        return [format_axis_value(self.axis, v) for v in self.values]


def plot_axes(options: XyzPlotOptions, mode: Mode) -> tuple[PlotAxis, PlotAxis, PlotAxis]:
    out = []
    for name in "xyz":
        axis = find_axis(getattr(options, f"{name}_type"), mode, f"{name}_type")
        text, dropdown = getattr(options, f"{name}_values"), getattr(options, f"{name}_values_dropdown")
        values = parse_axis_values(axis, text, dropdown, csv_mode=options.csv_mode, field=f"{name}_values")
        out.append(PlotAxis(axis, values, values_text(axis, text, dropdown, options.csv_mode)))
    return out[0], out[1], out[2]


def grid_fields(axes: tuple[PlotAxis, PlotAxis, PlotAxis], *, with_z: bool, fixed_seeds: bool) -> dict[str, str]:
    """The fields A1111 adds to a grid's infotext: Script, X/Y (and on the main grid Z) Type and Values,
    and `Fixed X Values` (the seeds drawn for -1) on a seed axis."""
    out = {"Script": SCRIPT_TITLE}
    for name, pa in zip("XYZ", axes):
        if name == "Z" and not with_z:
            break
        if pa.axis.sets == "nothing":
            continue
        out[f"{name} Type"] = pa.axis.label
        out[f"{name} Values"] = pa.text
        if pa.axis.label in ("Seed", "Var. seed") and fixed_seeds:
            out[f"Fixed {name} Values"] = ", ".join(str(v) for v in pa.values)
    return out


def add_infotext_fields(infotext: str, fields: dict[str, Any]) -> str:
    """`fields` written into an infotext's parameter line before `Version` (where A1111's extra
    generation parameters go), or at its end."""
    from lorastudio.core.infotext import quote

    lines = infotext.split("\n")
    head, last = lines[:-1], lines[-1]
    added = ", ".join(f"{k}: {quote(v)}" for k, v in fields.items() if v is not None)
    if not added:
        return infotext
    at = last.find(", Version: ")
    last = f"{last[:at]}, {added}{last[at:]}" if at >= 0 else (f"{last}, {added}" if last else added)
    return "\n".join([*head, last])


# A1111's labels of the script's controls, in script_args order (what /sdapi/v1/script-info shows).
_ARG_LABELS = ("X type", "X values", "X values", "Y type", "Y values", "Y values", "Z type", "Z values", "Z values",
               "Draw legend", "Include Sub Images", "Include Sub Grids", "Keep -1 for seeds", "Vary seeds for X",
               "Vary seeds for Y", "Vary seeds for Z", "Grid margins (px)", "Use text inputs instead of dropdowns")


def script_info(mode: Mode) -> dict[str, Any]:
    """The plot's entry in A1111's /sdapi/v1/script-info: its arguments, defaults and choices."""
    defaults = XyzPlotOptions()
    labels = [a.label for a in axes_for(mode)]
    args = []
    for name, label in zip(SCRIPT_ARG_NAMES, _ARG_LABELS):
        arg: dict[str, Any] = {"label": label, "value": getattr(defaults, name), "minimum": None, "maximum": None,
                               "step": None, "choices": None}
        if name.endswith("_type"):
            arg["choices"] = labels
        elif name == "margin_size":
            arg.update(minimum=0, maximum=500, step=2)
        args.append(arg)
    return {"name": SCRIPT_TITLE.lower(), "is_alwayson": False, "is_img2img": mode == "img2img", "args": args}
