"""ControlNet units from the command line (`--controlnet M --control-image IMG ...`, repeatable)
and from a PNG's infotext (`ControlNet 0: "Module: canny, Model: ..."`, read by --from-png).

The i-th --control-module / --control-weight belongs to the i-th --controlnet; the picture of a
unit read from a PNG comes from the --control-image at its position (an infotext holds no pictures).
"""

from __future__ import annotations

from pathlib import Path

from lorastudio.core.errors import InvalidParameter


def controlnet_units(models: list[str] | None, images: list[Path] | None, modules: list[str] | None,
                     weights: list[float] | None, from_png: Path | None = None) -> list | None:
    from lorastudio.generation.controlnet_units import ControlNetUnit

    models, images, modules, weights = list(models or []), list(images or []), list(modules or []), list(weights or [])
    units: list[ControlNetUnit] = _units_in_png(from_png) if from_png is not None and not models else []
    for i, name in enumerate(models):
        units.append(ControlNetUnit(model=name, module=modules[i] if i < len(modules) else "none",
                                    weight=weights[i] if i < len(weights) else 1.0))
    if not units:
        if images or modules or weights:
            raise InvalidParameter("--controlnet", None, "--control-image/--control-module/--control-weight need "
                                                         "a --controlnet MODEL each")
        return None
    for flag, values in (("--control-module", modules), ("--control-weight", weights)):
        if len(values) > len(units):
            raise InvalidParameter(flag, values, f"{len(values)} given for {len(units)} --controlnet")
    if len(images) != len(units):
        raise InvalidParameter("--control-image", [str(p) for p in images],
                               f"give one picture per ControlNet unit ({len(units)}: "
                               + ", ".join(f"{u.module} with {u.model}" for u in units) + ")")
    return [u.model_copy(update={"image": _open(p)}) for u, p in zip(units, images)]


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise InvalidParameter("--control-image", str(path), f"not a readable picture: {exc}") from None


def _units_in_png(path: Path) -> list:
    from lorastudio.core.infotext import parse_infotext
    from lorastudio.core.png_text import read_infotext
    from lorastudio.generation.controlnet_units import parse_unit

    parsed = parse_infotext(read_infotext(path) or "")
    keys = sorted((k for k in parsed if k.startswith("ControlNet ") and k.split(" ", 1)[1].isdigit()),
                  key=lambda k: int(k.split(" ", 1)[1]))
    return [parse_unit(str(parsed[k])) for k in keys]
