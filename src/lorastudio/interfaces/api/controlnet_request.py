"""The ControlNet extension's request shape: `alwayson_scripts: {"controlnet": {"args": [unit, ...]}}`.

Units come as dicts (the extension's API and webuiapi's `ControlNetUnit.to_dict()`); images as
base64 (a data: URL too), `{"image": ..., "mask": ...}` or `[image, mask]`. Older clients send
`input_image` and `guessmode`; both are read.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from lorastudio.core.errors import InvalidParameter

SCRIPT_NAME = "controlnet"
MAX_UNITS = 8


def script_args(alwayson_scripts: dict[str, Any] | None) -> tuple[list | None, dict[str, Any]]:
    """(the ControlNet unit dicts or None, the remaining scripts)."""
    rest = dict(alwayson_scripts or {})
    key = next((k for k in rest if k.lower() == SCRIPT_NAME), None)
    if key is None:
        return None, rest
    block = rest.pop(key)
    args = block.get("args") if isinstance(block, dict) else block
    if not isinstance(args, list):
        raise InvalidParameter(f"alwayson_scripts.{key}.args", args, "a list of ControlNet units")
    if len(args) > MAX_UNITS:
        raise InvalidParameter(f"alwayson_scripts.{key}.args", f"<{len(args)} units>", f"at most {MAX_UNITS}")
    return args, rest


def units_from_args(args: list, *, max_bytes: int, max_pixels: int) -> list:
    """Unit dicts -> ControlNetUnit with decoded PIL images (disabled units dropped)."""
    from lorastudio.generation.controlnet_units import ControlNetUnit
    from lorastudio.interfaces.api.images import decode_image

    units = []
    for i, raw in enumerate(args):
        where = f"alwayson_scripts.controlnet.args.{i}"
        if not isinstance(raw, dict):
            raise InvalidParameter(where, raw, "each unit is an object")
        raw = dict(raw)
        if not raw.get("enabled", True):
            continue
        image, mask = raw.pop("image", None), raw.pop("mask", None)
        image = image if image not in (None, "") else raw.pop("input_image", None)
        mask = mask if mask not in (None, "") else raw.pop("mask_image", None)
        if isinstance(image, dict):
            image, mask = image.get("image"), image.get("mask", mask)
        elif isinstance(image, (list, tuple)) and len(image) == 2 and all(isinstance(x, str) for x in image):
            image, mask = image
        if "guessmode" in raw and "control_mode" not in raw:
            raw["control_mode"] = 2 if raw.pop("guessmode") else 0

        def decode(data, name):
            if data in (None, ""):
                return None
            if not isinstance(data, str):
                raise InvalidParameter(f"{where}.{name}", "<value>", "a base64 picture")
            return decode_image(data, f"{where}.{name}", max_bytes=max_bytes, max_pixels=max_pixels)

        try:
            unit = ControlNetUnit(**raw, image=decode(image, "image"), mask=decode(mask, "mask"))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(x) for x in err["loc"]) or "unit"
            raise InvalidParameter(f"{where}.{field}", err.get("input"), err["msg"]) from None
        units.append(unit)
    return units
