"""A1111 `/sdapi/v1/options`: per app instance, never global.

Options we act on are validated by type; options that would change images in ways we cannot
reproduce accept only the value we actually use (anything else is a 422, not a silent no-op);
options we do not know are stored as given, as A1111 stores them, and have no effect.
"""

from __future__ import annotations

import copy
import json
import threading
from pathlib import Path
from typing import Any

from lorastudio.core.errors import InvalidParameter
from lorastudio.interfaces.api.a1111_models import reject_non_finite
from lorastudio.interfaces.api.security import resolve_inside

# Output folders, relative to the outputs root (A1111 keeps them relative to its own folder).
OUTDIR_DEFAULTS: dict[str, str] = {
    "outdir_samples": "",
    "outdir_txt2img_samples": "txt2img-images",
    "outdir_img2img_samples": "img2img-images",
    "outdir_extras_samples": "extras-images",
    "outdir_grids": "",
    "outdir_txt2img_grids": "txt2img-grids",
    "outdir_img2img_grids": "img2img-grids",
    "outdir_save": "saved",
    "outdir_init_images": "init-images",
}

# Options with an effect on generation that only have the one value lorastudio implements.
FIXED: dict[str, Any] = {
    "eta_noise_seed_delta": 0,
    "s_min_uncond": 0.0,
    "s_churn": 0.0,
    "s_tmin": 0.0,
    "s_tmax": 0.0,
    "s_noise": 1.0,
    "eta_ancestral": 1.0,
    "eta_ddim": 0.0,
    "always_discard_next_to_last_sigma": False,
    "randn_source": "CPU",  # noise is drawn on the CPU so a seed gives the same image on every device
    "sd_unet": "Automatic",
    "token_merging_ratio": 0.0,
    "samples_format": "png",
    "grid_format": "png",
    "enable_pnginfo": True,
    "n_rows": -1,
    "use_old_hires_fix_width_height": False,
}

BOOLS: dict[str, bool] = {"samples_save": True, "grid_save": True, "return_grid": True,
                          "grid_only_if_multiple": True}
# lorastudio's generation settings that A1111's request bodies have no field for: options named
# "lorastudio_" + the GenerationParams field (per request in override_settings, or for every request
# through /sdapi/v1/options), with that field's default.
PARAM_OPTIONS: dict[str, str] = {"lorastudio_fast": "fast"}



def _param_default(name: str) -> Any:
    from lorastudio.core.params import GenerationParams

    return GenerationParams.model_fields[name].default  # the options of PARAM_OPTIONS are booleans


MAX_KEYS = 2000
MAX_VALUE_BYTES = 64 * 1024
MAX_KEY_CHARS = 200


class OptionsStore:
    def __init__(self, outputs_root: Path):
        self.outputs_root = Path(outputs_root).resolve()
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {
            "sd_model_checkpoint": None,
            "sd_checkpoint_hash": None,
            "sd_vae": "Automatic",
            "CLIP_stop_at_last_layers": 1,
            **BOOLS,
            **{option: _param_default(name) for option, name in PARAM_OPTIONS.items()},
            **FIXED,
            **{k: str(self.outputs_root / v) if v else "" for k, v in OUTDIR_DEFAULTS.items()},
        }

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._values)

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return copy.deepcopy(self._values.get(key, default))

    def validate(self, changes: dict[str, Any], *, prefix: str = "") -> dict[str, Any]:
        """Normalised copies of `changes`, or InvalidParameter naming the first bad key.

        sd_model_checkpoint and sd_vae are only type-checked here; the caller resolves them
        against the model folders, because that needs the catalog.
        """
        if not isinstance(changes, dict):
            raise InvalidParameter(prefix.rstrip(".") or "options", type(changes).__name__, "must be a JSON object")
        out: dict[str, Any] = {}
        with self._lock:
            new_keys = [k for k in changes if k not in self._values]
            if len(self._values) + len(new_keys) > MAX_KEYS:
                raise InvalidParameter(prefix + (new_keys[0] if new_keys else "options"), "...",
                                       f"more than {MAX_KEYS} options")
        for key, value in changes.items():
            field = prefix + key
            if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
                raise InvalidParameter(field, key, f"option names are 1-{MAX_KEY_CHARS} characters")
            try:
                reject_non_finite(value, field)
            except ValueError as exc:
                raise InvalidParameter(field, value, str(exc)) from None
            out[key] = self._check(field, key, value)
        return out

    def _check(self, field: str, key: str, value: Any) -> Any:
        if key in FIXED:
            want = FIXED[key]
            if isinstance(want, bool):
                same = value is want
            else:  # True == 1 in Python; an option set to true is not the number 1
                same = not isinstance(value, bool) and value == want
            if value is None or same:
                return want
            raise InvalidParameter(field, value, f"lorastudio only implements {key}={want!r}")
        if key in BOOLS or key in PARAM_OPTIONS:
            if not isinstance(value, bool):
                raise InvalidParameter(field, value, "must be true or false")
            return value
        if key == "CLIP_stop_at_last_layers":
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
                raise InvalidParameter(field, value, "must be an integer from 1 to 12")
            return value
        if key in ("sd_model_checkpoint", "sd_vae"):
            if not isinstance(value, str) or not value or len(value) > 1000:
                raise InvalidParameter(field, value, "must be a model name or title")
            return value
        if key == "sd_checkpoint_hash":
            raise InvalidParameter(field, value, "read-only; set sd_model_checkpoint instead")
        if key in OUTDIR_DEFAULTS:
            if not isinstance(value, str):
                raise InvalidParameter(field, value, "must be a folder path")
            if value == "":
                if OUTDIR_DEFAULTS[key]:
                    raise InvalidParameter(field, value, "cannot be empty")
                return ""
            return str(resolve_inside(value, [self.outputs_root], field=field, base=self.outputs_root))
        if len(json.dumps(value)) > MAX_VALUE_BYTES:
            raise InvalidParameter(field, "...", f"value over {MAX_VALUE_BYTES} bytes of JSON")
        return value

    def apply(self, validated: dict[str, Any]) -> None:
        with self._lock:
            self._values.update(copy.deepcopy(validated))

    def folder(self, kind: str, what: str, values: dict[str, Any] | None = None) -> Path:
        """Where `kind` ("txt2img"/"img2img") `what` ("samples"/"grids") go; outdir_samples wins."""
        v = values if values is not None else self.snapshot()
        general = v.get(f"outdir_{what}") or ""
        return Path(general or v[f"outdir_{kind}_{what}"])
