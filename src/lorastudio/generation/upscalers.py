"""Image upscalers by name: the one list hires fix, Extras, `lorastudio upscale` and
/sdapi/v1/upscalers use.

The built-ins (None, Lanczos, Nearest), then upscalers given in-process (`extra`), then every model
file in the A1111 / ComfyUI upscaler folders (generation.model_upscalers). Each resolves to A1111's
`Upscaler.do_upscale`: (picture, scale) -> a larger picture (a model runs once, at its own scale);
the callers reach the size they need as A1111 does (hires fix: `hires_fix.upscale_image`; Extras:
`ImageUpscalers.to_size`). The hires-fix latent modes are not pictures and live with hires fix.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lorastudio.core.errors import NotFound
from lorastudio.generation.model_upscalers import (
    UpscalerEntry,
    load_upscaler,
    model_do_upscale,
    upscaler_entries,
)

DoUpscale = Callable[[Any, float], Any]  # A1111's do_upscale: (PIL picture, scale) -> PIL picture
Upscale = Callable[..., Any]  # (PIL picture, width, height) -> PIL picture

# name -> PIL resampling filter; "None" does not upscale (A1111: a plain resize where one is needed)
BUILTIN: Mapping[str, str | None] = MappingProxyType({"None": None, "Lanczos": "LANCZOS", "Nearest": "NEAREST"})


def _pil_do_upscale(resample: str) -> DoUpscale:
    def do_upscale(image, scale: float):
        from PIL import Image

        return image.resize((int(image.width * scale), int(image.height * scale)),
                            resample=getattr(Image.Resampling, resample))

    return do_upscale


@dataclass
class ImageUpscalers:
    """The upscalers of one models folder; model files are loaded when first used and kept."""

    models_root: Path | None = None
    allow_pickle: bool = False
    device: str = "cpu"
    tile: int = 192
    overlap: int = 16
    extra: Mapping[str, DoUpscale] = field(default_factory=dict)
    _loaded: dict = field(default_factory=dict, repr=False)  # (path, mtime, size) -> do_upscale

    def entries(self) -> list[UpscalerEntry]:
        return upscaler_entries(self.models_root) if self.models_root is not None else []

    def names(self) -> list[str]:
        return [*BUILTIN, *self.extra, *(e.name for e in self.entries())]

    def lookup(self, name: str) -> tuple[str, DoUpscale | None] | None:
        """(the listed name, do_upscale; None for "None") for a name in any case, or None when unknown."""
        wanted = (name or "").strip().lower()
        for label, resample in BUILTIN.items():
            if label.lower() == wanted:
                return label, None if resample is None else _pil_do_upscale(resample)
        for label, fn in self.extra.items():
            if label.lower() == wanted:
                return label, fn
        for e in self.entries():
            if wanted in (e.name.lower(), e.path.name.lower()):
                return e.name, self._model(e)
        return None

    def get(self, name: str) -> tuple[str, DoUpscale | None]:
        found = self.lookup(name)
        if found is None:
            from difflib import get_close_matches

            raise NotFound("upscaler", name, get_close_matches(name, self.names(), n=3, cutoff=0.3))
        return found

    def _model(self, entry: UpscalerEntry) -> DoUpscale:
        st = entry.path.stat()
        key = (entry.path, st.st_mtime_ns, st.st_size)
        if key not in self._loaded:
            desc = load_upscaler(entry.path, allow_pickle=self.allow_pickle, device=self.device)
            self._loaded = {key: model_do_upscale(desc, tile=self.tile, overlap=self.overlap)}  # one model kept
        return self._loaded[key]

    def to_size(self, name: str) -> Upscale:
        """Extras' (picture, width, height) -> picture: a built-in filter resizes straight to the size; a
        model runs (again while the picture is smaller than asked, at most 3 times, as A1111) and the
        result is resized to the exact size with Lanczos."""
        label, do_upscale = self.get(name)
        if do_upscale is None:
            from lorastudio.core.errors import InvalidParameter

            raise InvalidParameter("upscaler", name, "'None' does not upscale")
        resample = BUILTIN.get(label)

        def run_rgb(image, width: int, height: int):
            from PIL import Image

            if resample is not None:
                return image.resize((width, height), resample=getattr(Image.Resampling, resample))
            scale = max(width / image.width, height / image.height)
            for _ in range(3):
                if image.width >= width and image.height >= height:
                    break
                image = do_upscale(image, scale)
            return image if image.size == (width, height) else image.resize((width, height), Image.Resampling.LANCZOS)

        def run(image, width: int, height: int):
            # A1111's Extras drops transparency; stickers need it kept. A filter resizes RGBA itself
            # (PIL weighs colours by alpha); a model sees colours only, so the alpha channel goes through
            # it again as a grey picture (the outline stays as sharp as the colours).
            if not has_alpha(image):
                return run_rgb(image.convert("RGB"), width, height)
            rgba = image.convert("RGBA")
            if resample is not None:
                return run_rgb(rgba, width, height)
            out = run_rgb(rgba.convert("RGB"), width, height).convert("RGBA")
            out.putalpha(run_rgb(rgba.getchannel("A").convert("RGB"), width, height).convert("L"))
            return out

        return run


def has_alpha(image) -> bool:
    """Whether a PIL picture carries transparency (an alpha channel or a transparent palette colour)."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def upscaler_function(name: str, models_root: Path | None, *, allow_pickle: bool, device: str = "cpu",
                      tile: int = 192, overlap: int = 16) -> Upscale:
    """(picture, width, height) -> picture for an upscaler name (Extras, `lorastudio upscale`)."""
    return ImageUpscalers(models_root, allow_pickle=allow_pickle, device=device, tile=tile,
                          overlap=overlap).to_size(name)


def upscaler_listing(upscalers: ImageUpscalers) -> list[dict]:
    """A1111's /sdapi/v1/upscalers: the built-ins, then the model files with their scale."""
    out = [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4} for n in BUILTIN]
    out += [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4} for n in upscalers.extra]
    for e in upscalers.entries():
        out.append({"name": e.name, "model_name": e.folder, "model_path": str(e.path), "model_url": None,
                    "scale": e.scale_from_name or 4})  # A1111 lists ESRGAN-family files at 4 unless named
    return out
